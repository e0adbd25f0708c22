"""Worker processes on this machine: `LocalCluster`.

Each worker is a `multiprocessing.Process` with its own stream socket to the central
(`aia.transport`). During a run the central waits on one poller (epoll on Linux) over every
live worker's socket and process sentinel, so a worker that dies is seen as soon as the
operating system reaps it, not at the next timeout.

Start method: ``fork`` on Linux by default. It starts a worker in milliseconds and needs no
``if __name__ == "__main__"`` guard in the user's script (spawn and forkserver import the main
module again in every worker). The algorithm and the problem constructor still travel by
cloudpickle, so a persistent cluster started before a class was defined runs it all the same.
If the central runs threads of its own that hold locks (forking such a process can deadlock
the child), pass ``start_method="forkserver"`` or ``"spawn"``; ``forkserver`` preloads `aia`
and numpy in its server so later workers start fast. A central connected to Ray gets
``forkserver`` by default: Ray's gRPC threads make a forked child hang at start and, seen in
the contract suite, leave the driver's next call to Ray's GCS waiting forever. Other platforms
default to ``spawn``.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import multiprocessing.util  # noqa: F401 - its exit handler must be registered before ours
import os
import select
import selectors
import signal
import sys
import threading
import time
import weakref
from typing import Any, Optional, Sequence

from . import _worker, transport
from .cluster import (Answer, BuildProblem, Cluster, Failed, ObjectStore, Run, WorkerClock,
                      raise_failures)
from .transport import ANSWER, CONTROL, ERROR, QUERY, Channel, ChannelClosed

log = logging.getLogger("aia")

START_TIMEOUT = 60.0  # seconds for a worker to come up (spawn imports numpy afresh)
STOP_GRACE = 1.0  # seconds for a worker to exit on a stop message before it is terminated
#: Seconds (at least) a worker's set-up may outlast the others' before it counts as failed,
#: when the run tolerates failures (`aia.start`'s ``resilience``).
SETUP_PATIENCE = 1.0
_clusters: "weakref.WeakSet[LocalCluster]" = weakref.WeakSet()


def cpu_count() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_start_method() -> str:
    """``fork`` on Linux unless this process is connected to Ray (see the module's
    docstring), ``spawn`` elsewhere."""
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return "forkserver" if _connected_to_ray() else "fork"
    return "spawn"


def _connected_to_ray() -> bool:
    ray = sys.modules.get("ray")  # never imported here: only a central that uses Ray has it
    try:
        return bool(ray is not None and ray.is_initialized())
    except Exception:  # noqa: BLE001 - a half-imported or stubbed module: not connected
        return False


class _Handle(WorkerClock):
    """The central's view of one worker."""

    def __init__(self, pid: int, process, channel: Channel, generation: int = 0):
        self.pid = pid
        self.process = process
        self.channel = channel
        self.generation = generation
        self.os_pid: Optional[int] = None
        self.dead = False
        # Readable once the process has ended. A pidfd (Linux) watches the process itself:
        # the sentinel is a pipe that a child the worker forked (a process pool in answer)
        # inherits, and then its end never comes while that child lives.
        self.pidfd = _pidfd(process.pid)
        self.death_fd = process.sentinel if self.pidfd is None else self.pidfd
        # abandoned: (run, when) of an ended run whose answer it was interrupted in; cleared
        # by any message of that run (the answer, or the Interrupted error).
        WorkerClock.__init__(self)

    def exit_failure(self, wait: float = 1.0) -> Failed:
        """The failure of a worker whose process ended (or whose channel broke)."""
        torn = self.channel.torn  # cut mid-message: the process may well be alive
        code = self.reap(0 if torn else wait)
        self.dead = True
        if code is not None:  # gone for good: its shared memory and its children with it
            self.channel.release_shared()
            self.kill_children()
        cause = describe_exit(code)
        if code is None and torn:
            cause = ("its channel was cut in the middle of a message (interrupted, or the "
                     "worker stalled past the time limit); the worker is replaced")
        return Failed(self.pid, cause, None, self.os_pid, code)


    def reap(self, wait: float) -> Optional[int]:
        """The exit code, waiting up to ``wait`` seconds for the process to end (None: it
        still runs)."""
        if self.pidfd is None:
            self.process.join(wait)
        elif select.select([self.pidfd], [], [], wait)[0]:
            # Ended: reap it (its sentinel, which join waits for, may be held by a child).
            for _ in range(100):
                code = self.process.exitcode
                if code is not None:
                    return code
                time.sleep(0.001)
        return self.process.exitcode

    def kill_children(self) -> None:
        """Kill what the worker forked and left behind (its process group: see
        `_worker.main`), which would live on as orphans."""
        if self.os_pid is not None and sys.platform != "win32":
            try:
                os.killpg(self.os_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass

    def close_pidfd(self) -> None:
        """Once the handle is done with (the process is gone)."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
            self.death_fd = -1  # never waited on again


def _pidfd(pid: Optional[int]) -> Optional[int]:
    """A descriptor readable when process ``pid`` ends, where the system has them."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # an older kernel, or already reaped
        return None


def describe_exit(code: Optional[int]) -> str:
    """Why a worker process ended, with the likely causes, as loky says it."""
    if code is None:
        return "stopped answering (its channel closed while the process is still running)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {
            "SIGKILL": " (killed: kill -9, or the out-of-memory killer)",
            "SIGSEGV": " (a segmentation fault in native code)",
            "SIGTERM": " (terminated)",
            "SIGABRT": " (aborted, often a failed assertion in native code)",
        }.get(name, "")
        return f"worker process was unexpectedly terminated by {name}{hint}, exit code {code}"
    return f"worker process exited unexpectedly with exit code {code} (sys.exit or os._exit)"


class LocalCluster(Cluster, ObjectStore):
    """``n_workers`` persistent worker processes on this machine, ids 1..n.

    Use as a context manager (or call ``close``). Workers keep the objects of
    `aia.DistributedObject` between runs. ``blas_threads`` caps each worker's BLAS threads
    (default: the cores divided among the workers, at least 1).
    """

    replaces_workers = True

    def __init__(self, n_workers: Optional[int] = None, *, start_method: Optional[str] = None,
                 blas_threads: Optional[int] = None):
        n = cpu_count() if n_workers is None else n_workers
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_workers: expected a positive int, got {n_workers!r}")
        method = start_method or os.environ.get("AIA_START_METHOD") or default_start_method()
        if method not in mp.get_all_start_methods():
            raise ValueError(f"start_method: expected one of {mp.get_all_start_methods()}, "
                             f"got {method!r}")
        self.start_method = method
        self.blas_threads = blas_threads or max(1, cpu_count() // n)
        self._workers: dict[int, _Handle] = {}
        self._next_id = 0
        self._closed = False
        _clusters.add(self)
        try:
            self._start(n)
        except BaseException:
            self.close()
            raise

    # -- life cycle ---------------------------------------------------------------------
    def _start(self, n: int) -> None:
        if self.start_method == "forkserver":
            mp.get_context("forkserver").set_forkserver_preload(["aia._worker", "numpy"])
        for pid in range(1, n + 1):
            self._spawn(pid)
        self._await_ready(self._workers, time.monotonic() + START_TIMEOUT)
        log.debug("started %d workers (%s)", n, self.start_method)

    def _spawn(self, pid: int, generation: int = 0) -> "_Handle":
        """Start worker ``pid`` and record its handle in ``_workers``; a Ctrl-C meanwhile is
        raised only once it is recorded (see `transport._Interrupts.deferred`), so that
        closing the cluster stops it."""
        with transport.interrupts.held(), transport.interrupts.deferred():
            handle = self._start_process(pid, generation)
            self._workers[pid] = handle
        return handle

    def _start_process(self, pid: int, generation: int) -> "_Handle":
        ctx = mp.get_context(self.start_method)
        central, worker = transport.pipe(nonblocking=True)  # the central never blocks a send
        _worker.central_sockets.add(central.sock)
        fork = self.start_method == "fork"
        inherited = list(_worker.central_sockets) if fork else []
        parent = None if self.start_method == "forkserver" else os.getpid()
        # PR_SET_PDEATHSIG follows the thread that starts the child: safe from the main
        # thread, or from the single-threaded forkserver.
        guard = sys.platform.startswith("linux") and (
            self.start_method == "forkserver"
            or threading.current_thread() is threading.main_thread())
        process = ctx.Process(target=_worker.main, name=f"aia-worker-{pid}",
                              args=(pid, worker, self.blas_threads, inherited, parent, guard))
        try:
            process.start()
        except BaseException:  # e.g. no memory to fork: no socket of it stays open
            _worker.central_sockets.discard(central.sock)
            central.close()
            raise
        finally:
            worker.close()  # the child has its own copy now
        return _Handle(pid, process, central, generation)

    def _replace(self, h: "_Handle", why: str = "is still busy with an answer of an ended "
                 "run and ignored the interrupt") -> "_Handle":
        """Stop a worker that is stuck (it ignored the interrupt of an ended run) or whose
        channel is torn, and start a fresh one in its slot. Its distributed objects are lost
        (see `generation`)."""
        log.warning("aia: worker %d (pid %s) %s; restarting it (its distributed objects are "
                    "lost)", h.pid, h.os_pid, why)
        _stop([h], grace=0.0)
        _worker.central_sockets.discard(h.channel.sock)
        h.channel.close()
        h.close_pidfd()
        fresh = self._spawn(h.pid, h.generation + 1)
        self._await_ready({h.pid: fresh}, time.monotonic() + START_TIMEOUT)
        return fresh

    def generation(self, pid: int) -> int:
        """How many times worker ``pid`` was restarted (its objects die with each one)."""
        return self._workers[pid].generation

    def _await_ready(self, handles: dict, deadline: float) -> None:
        with transport.interrupts.held():
            self._await_each(handles, deadline)

    def _await_each(self, handles: dict, deadline: float) -> None:
        waiting = dict(handles)
        while waiting:
            ready = self._wait_on(waiting.values(), deadline)
            if not ready:
                raise TimeoutError(f"workers {sorted(waiting)} did not start within "
                                   f"{START_TIMEOUT:.0f} s")
            for handle, what in ready:
                if what == "dead":
                    failed = handle.exit_failure()
                    raise RuntimeError(f"worker {handle.pid} failed to start: {failed.cause}")
                try:
                    hello = handle.channel.poll()
                except ChannelClosed:
                    failed = handle.exit_failure()
                    raise RuntimeError(f"worker {handle.pid} failed to start: {failed.cause}")
                if hello is not None:  # else: the rest of it is still to come
                    handle.os_pid = hello[2]
                    del waiting[handle.pid]

    @property
    def pids(self) -> list:
        return list(self._workers)

    def alive(self) -> list:
        """The workers that can take part in a run: alive, and with a channel in step (one
        torn by an interrupt is replaced at the next run)."""
        return [pid for pid, h in self._workers.items()
                if not h.dead and not h.channel.torn and h.process.is_alive()]

    def os_pids(self) -> dict:
        """``{worker id: operating-system process id}``."""
        return {pid: h.os_pid for pid, h in self._workers.items()}

    def close(self, grace: float = STOP_GRACE) -> None:
        """Stop every worker: a stop message, then terminate, then kill. Idempotent.

        ``grace``: the seconds workers get to exit on the stop message before they are
        terminated (a temporary cluster of `aia.start` gives none: nothing of theirs is kept).
        It finishes even if interrupted: a Ctrl-C meanwhile kills the workers at once and is
        raised once they are gone, so no process is left behind.
        """
        if self._closed:
            return
        handles = list(self._workers.values())
        with _SHIELD:
            _stop(handles, grace)
            for h in handles:
                _worker.central_sockets.discard(h.channel.sock)
                h.channel.close()
                h.close_pidfd()
                h.dead = True
                try:
                    h.process.close()
                except ValueError:
                    pass
            self._closed = True  # only now: an atexit handler after an interrupt retries

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.alive())} alive"
        return f"LocalCluster({len(self._workers)} workers, {state}, {self.start_method})"

    # -- waiting ------------------------------------------------------------------------
    def _wait_on(self, handles, deadline: Optional[float]) -> list:
        """``[(handle, "message" | "dead"), ...]`` ready before ``deadline``. Meanwhile it
        writes what waits in their channels' outboxes, as their sockets take it."""
        handles = [h for h in handles if not h.dead]
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            with selectors.DefaultSelector() as selector:
                for h in handles:
                    events = selectors.EVENT_READ
                    if h.channel.outbox:
                        events |= selectors.EVENT_WRITE
                    selector.register(h.channel.fileno(), events, (h, "message"))
                    selector.register(h.death_fd, selectors.EVENT_READ, (h, "dead"))
                ready = selector.select(timeout)
            messages, deaths = [], []
            for key, events in ready:
                h, what = key.data
                if what == "dead":
                    deaths.append(h)
                    continue
                if events & selectors.EVENT_WRITE:
                    try:
                        h.channel.flush()
                    except ChannelClosed:
                        events |= selectors.EVENT_READ  # its recv reports the failure
                if events & selectors.EVENT_READ:
                    messages.append(h)
            # Messages first: an answer sent just before death still counts.
            out = [(h, "message") for h in messages]
            out += [(h, "dead") for h in deaths if h not in messages]
            if out or not ready or (deadline is not None and time.monotonic() >= deadline):
                return out
    def _handle(self, pid: int) -> _Handle:
        if self._closed:
            raise RuntimeError("this LocalCluster is closed")
        return self._workers[pid]

    # -- requests (set-up and distributed objects) -------------------------------------
    def _request(self, pids: Sequence[int], message: tuple,
                 deadline: Optional[float] = None, run: Optional[int] = None,
                 tolerate: Optional[int] = None) -> dict:
        """Send a control message to each of ``pids``; ``{pid: ("ok", value) | Failed}``.

        ``tolerate``: how many may fail (None: every reply is needed). Once the others have
        replied, those still working get `SETUP_PATIENCE` (at least; twice the time taken
        so far) and are then failed: one frozen worker does not hold the run up.
        """
        with transport.interrupts.held():  # a Ctrl-C leaves every channel in step
            return self._request_all(pids, message, deadline, run, tolerate)

    def _request_all(self, pids: Sequence[int], message: tuple, deadline: Optional[float],
                     run: Optional[int], tolerate: Optional[int]) -> dict:
        if run is None:
            run = self._new_id()
        results: dict[int, Any] = {}
        waiting = {}
        began = time.monotonic()
        bound = None  # when the last workers of a tolerant request are given up
        started: dict[int, float] = {}  # when each worker was sent the message

        def give_up_at(h: _Handle) -> float:  # a fresh replacement gets its patience too
            return max(bound, started.get(h.pid, began) + SETUP_PATIENCE)

        def boundable(h: _Handle) -> bool:  # stuck in an earlier run: replaced, not failed
            return h.abandoned is None or h.abandoned[0] == run

        # A worker stuck in an earlier run is replaced after its patience, and at the latest
        # halfway to the time limit, so that its replacement still has time to set up.
        halfway = None if deadline is None else began + (deadline - began) / 2

        def replace_at(h: _Handle) -> float:
            at = h.give_up_at()
            return at if halfway is None else min(at, halfway)
        for pid in pids:
            h = self._handle(pid)
            if h.channel.torn and not h.channel.closed:
                # Cut mid-message (Ctrl-C, or stalled past a time limit): its stream is out
                # of step for good, so a fresh worker takes its place.
                h = self._replace(h, "has a channel cut in the middle of a message")
            if h.dead:
                results[pid] = Failed(pid, "worker process is dead", None, h.os_pid,
                                      h.process.exitcode)
                continue
            h.channel.deadline = deadline
            started[pid] = time.monotonic()
            try:
                h.channel.send(CONTROL, message, run)
                waiting[pid] = h
            except ChannelClosed:
                failed = h.exit_failure()
                if h.abandoned is not None and _builds_its_problem(message):
                    # Died in an ended run's answer: a fresh worker in its place.
                    self._resend(self._replace(h, "died in an answer of an ended run"),
                                 message, run, deadline, waiting, results, started)
                else:
                    results[pid] = failed
        while waiting:
            if bound is None and tolerate is not None:
                failed = sum(isinstance(r, Failed) for r in results.values())
                if len(waiting) <= tolerate - failed:  # the run can go on without them
                    now = time.monotonic()
                    bound = now + max(SETUP_PATIENCE, 2 * (now - began))
            limit = deadline
            cut = [give_up_at(h) for h in waiting.values() if bound is not None and boundable(h)]
            if cut:
                limit = min(cut) if deadline is None else min(min(cut), deadline)
            stale = [replace_at(h) for h in waiting.values() if h.abandoned]
            if stale:
                limit = min(stale) if limit is None else min(min(stale), limit)
            ready = self._wait_on(waiting.values(), limit)
            for h, what in ready:
                event = self._receive(h, run) if what == "message" else h.exit_failure()
                if (isinstance(event, Failed) and h.abandoned is not None
                        and h.abandoned[0] != run and _builds_its_problem(message)):
                    # It died finishing the answer of an ended run: that run's failure, not
                    # this one's. A fresh worker builds the problem in its place.
                    self._resend(self._replace(h, "died in an answer of an ended run"),
                                 message, run, deadline, waiting, results, started)
                    continue
                if event is not None:
                    results[h.pid] = event
                    waiting.pop(h.pid, None)
            if ready:
                continue
            now = time.monotonic()
            late = [h for h in waiting.values()
                    if bound is not None and boundable(h) and now >= give_up_at(h)]
            for h in late:
                h.abandoned = (run, now)  # replaced at the next request if still stuck
                waiting.pop(h.pid)
                results[h.pid] = Failed(
                    h.pid, f"did not finish its set-up within {now - started[h.pid]:.1f} s, "
                    "while the other workers were ready (frozen, or far slower than they)",
                    None, h.os_pid)
            if not waiting:
                break
            stuck = [h for h in waiting.values() if h.abandoned and now >= replace_at(h)]
            for h in stuck:  # stuck in an ended run's answer: a new worker
                self._resend(self._replace(h), message, run, deadline, waiting, results, started)
            if deadline is not None and now >= deadline:
                for pid, h in waiting.items():
                    h.abandoned = (run, now)  # replaced at the next request if still stuck
                    results[pid] = Failed(pid, "did not reply before the time limit", None,
                                          h.os_pid)
                break
        return results

    @staticmethod
    def _resend(fresh: _Handle, message: tuple, run: int, deadline: Optional[float],
                waiting: dict, results: dict, started: dict) -> None:
        """Send ``message`` again, to the worker that took another's place."""
        fresh.channel.deadline = deadline
        started[fresh.pid] = time.monotonic()
        try:
            fresh.channel.send(CONTROL, message, run)
            waiting[fresh.pid] = fresh
        except ChannelClosed:
            results[fresh.pid] = fresh.exit_failure()
            waiting.pop(fresh.pid, None)


    def _receive(self, h: _Handle, run: int):
        """The next message of ``h`` for ``run`` as an event (None: a stale one, dropped, or
        one not all in yet: never waits for the rest)."""
        try:
            message = h.channel.poll()
            if message is None:
                return None
            kind, msg_run, value = message
        except ChannelClosed:
            return h.exit_failure()
        except transport.Undecodable as exc:
            if h.abandoned is not None and exc.run == h.abandoned[0]:
                h.abandoned = None
            if exc.run != run:
                return None
            return Failed(h.pid, f"sent a message the central cannot unpickle ({exc}); "
                          "answers must be made of classes importable on the central",
                          None, h.os_pid)
        if h.abandoned is not None and msg_run == h.abandoned[0]:
            h.abandoned = None  # it is back from the ended run
        if msg_run != run:
            return None
        if kind == ERROR:
            return Failed.raised(h.pid, value, h.os_pid)
        if kind == ANSWER:
            return Answer(h.pid, value)
        return ("ok", value)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def open_run(self, algorithm: bytes, problem: tuple, pids: Sequence[int],
                 deadline: Optional[float]) -> tuple:
        return self.open_run_tolerating(algorithm, problem, pids, deadline, None)

    def open_run_tolerating(self, algorithm: bytes, problem: tuple, pids: Sequence[int],
                            deadline: Optional[float], tolerate: Optional[int]) -> tuple:
        run = self._new_id()
        results = self._request(pids, ("setup", algorithm, problem), deadline, run, tolerate)
        failed = [r for r in results.values() if isinstance(r, Failed)]
        live = [pid for pid in pids if not isinstance(results[pid], Failed)]
        return LocalRun(self, run, live), failed

    def store(self, obj_id: int, make: bytes, pids: Sequence[int]) -> None:
        raise_failures(self._request(pids, ("store", obj_id, make)), "building the object")

    def apply(self, obj_id: int, pid: int, fn: bytes) -> Any:
        return self.apply_all(obj_id, [pid], fn)[pid]

    def apply_all(self, obj_id: int, pids: Sequence[int], fn: bytes) -> dict:
        results = self._request(pids, ("apply", obj_id, fn))
        raise_failures(results, "applying the function")
        return {pid: value for pid, (_, value) in results.items()}

    def free(self, obj_id: int, pids: Sequence[int]) -> None:
        if self._closed:
            return
        for pid in pids:
            h = self._workers.get(pid)
            if h is not None and not h.dead:
                try:
                    h.channel.send(CONTROL, ("free", obj_id))
                except ChannelClosed:
                    pass


def _builds_its_problem(message: tuple) -> bool:
    """A set-up whose problem the worker builds (a fresh worker can do it as well), not one
    on the object of a DistributedObject (which dies with its worker)."""
    return message[0] == "setup" and isinstance(message[2], BuildProblem)


class _Shield:
    """Clean-up that finishes even when interrupted.

    While one is active (in the main thread, where Python delivers SIGINT), a Ctrl-C does not
    stop the clean-up where it stands, which would leave workers running and the interpreter
    waiting for them at exit: it is remembered, the waits are cut short (``hit``: workers are
    killed at once) and KeyboardInterrupt is raised when the outermost clean-up is done. A
    second Ctrl-C changes nothing. Nested uses share one state.
    """

    SLICE = 0.05  # seconds: a wait checks ``hit`` at least this often

    def __init__(self) -> None:
        self.depth = 0
        self.hit = False
        self.previous: Any = None
        self.installed = False

    def __enter__(self) -> "_Shield":
        if self.depth == 0:
            self.hit = False
            self.installed = False
            if threading.current_thread() is threading.main_thread():
                try:
                    self.previous = signal.signal(signal.SIGINT, self._interrupted)
                    self.installed = True
                except ValueError:  # e.g. an interpreter being torn down
                    pass
        self.depth += 1
        return self

    def _interrupted(self, signum, frame) -> None:
        self.hit = True

    def __exit__(self, kind, value, tb) -> None:
        self.depth -= 1
        if self.depth:
            return
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)
            self.previous, self.installed = None, False
        if self.hit and kind is None:
            self.hit = False
            raise KeyboardInterrupt("interrupted while stopping the workers (they are gone)")


_SHIELD = _Shield()


def _stop(handles, grace: float) -> None:
    """Stop workers: a stop message, then terminate, then kill; each step bounded, and the
    whole of it carried through a Ctrl-C (see `_Shield`)."""
    with _SHIELD:
        for h in handles:
            if not h.dead:
                try:
                    h.channel.send(CONTROL, ("stop",))
                except (ChannelClosed, OSError):
                    pass
        _drain_until_exit(handles, grace)
        for h in handles:
            if h.process.is_alive():
                h.process.terminate()
                _continue(h.process)  # a stopped (SIGSTOP) process gets its SIGTERM now
        _join_all(handles, STOP_GRACE)
        for h in handles:
            if h.process.is_alive():
                h.process.kill()
                h.reap(5.0)
        for h in handles:
            h.kill_children()  # nothing the workers forked outlives them
            h.dead = True


def _continue(process) -> None:
    try:
        os.kill(process.pid, signal.SIGCONT)
    except (ProcessLookupError, PermissionError, TypeError):
        pass


def _drain_until_exit(handles, grace: float) -> None:
    """Wait up to ``grace`` seconds for the processes to exit, meanwhile reading (and
    dropping) what they still send and writing what waits for them: a worker blocked
    sending a large answer, or waiting for the rest of a message, gets to its stop."""
    deadline = time.monotonic() + grace
    watched = {h for h in handles if h.process.is_alive()}
    readers = {h for h in watched if not h.channel.closed and not h.channel.torn}
    while watched:
        timeout = min(deadline - time.monotonic(), _SHIELD.SLICE)
        if timeout <= 0 or _SHIELD.hit:
            return
        with selectors.DefaultSelector() as selector:
            for h in watched:
                selector.register(h.death_fd, selectors.EVENT_READ, (h, "dead"))
            for h in readers:
                events = selectors.EVENT_READ
                if h.channel.outbox:
                    events |= selectors.EVENT_WRITE
                selector.register(h.channel.fileno(), events, (h, "channel"))
            ready = selector.select(timeout)
        for key, events in ready:
            h, what = key.data
            if what == "dead":
                h.process.join(0)
                watched.discard(h)
                continue
            if h not in readers:
                continue
            try:
                if events & selectors.EVENT_WRITE:
                    h.channel.flush()
                if events & selectors.EVENT_READ:
                    h.channel.poll()  # what is there, never waiting for more
            except (ChannelClosed, transport.Undecodable):
                readers.discard(h)  # closed, out of step, or stalled: its exit is waited for


def _join_all(handles, grace: float) -> None:
    """Wait up to ``grace`` seconds for the processes to end (less after a Ctrl-C)."""
    deadline = time.monotonic() + grace
    for h in handles:
        while not _SHIELD.hit:
            left = deadline - time.monotonic()
            h.process.join(max(0.0, min(left, _SHIELD.SLICE)))
            if left <= 0 or h.process.exitcode is not None:
                break


class LocalRun(Run):
    """The workers of one run on a `LocalCluster`.

    It waits on one poller (epoll on Linux) registered once with every live worker's socket
    and process sentinel: the same wait as `multiprocessing.connection.wait`, without
    building and registering a new selector at every step of the loop.
    """

    def __init__(self, cluster: LocalCluster, run: int, pids: Sequence[int]):
        self.cluster = cluster
        self.run = run
        self.live = {pid: cluster._workers[pid] for pid in pids}
        self.broken: list[Failed] = []  # failures found while sending, reported by wait
        self.busy: set[int] = set()  # workers with a query outstanding
        self.poller = _Poller()
        # Until close: a Ctrl-C never lands in the middle of a channel operation.
        self.guarded = transport.interrupts.install()
        for h in self.live.values():
            self.poller.register(h.channel.fileno(), (h, "message"))
            self.poller.register(h.death_fd, (h, "dead"))
            if h.channel.outbox:  # e.g. the rest of its set-up
                self.poller.write_when_ready(h.channel)

    def send(self, pid: int, query: Any) -> None:
        self._send(pid, query)

    def broadcast(self, pids: Sequence[int], query: Any) -> None:
        message = transport.encode(query)  # pickled once; large arrays written once
        for pid in pids:
            self._send(pid, None, message)

    def _send(self, pid: int, query: Any, message: Optional[transport.Message] = None) -> None:
        """Send ``query`` (or, already encoded, ``message``) to worker ``pid``."""
        h = self.live.get(pid)
        if h is None:
            return
        try:
            if message is None:
                h.channel.send(QUERY, query, self.run)
            else:
                h.channel.send_message(QUERY, self.run, message)
        except ChannelClosed:
            self._lose(h)
            self.broken.append(h.exit_failure())
            return
        if h.channel.outbox:  # the socket did not take it all: written as it can
            self.poller.write_when_ready(h.channel)
        h.sent_at = time.monotonic()
        self.busy.add(pid)

    def replace(self, pid: int, algorithm: bytes, problem, deadline: Optional[float]):
        """Start a fresh worker in the slot of worker ``pid``, which failed in this run, and
        set it up for the run (its problem rebuilt from ``problem``). Returns None once it
        takes part, or the `Failed` of its set-up."""
        cluster = self.cluster
        self._lose(cluster._workers[pid])
        cluster._replace(cluster._workers[pid], "failed; a fresh worker takes its slot")
        result = cluster._request([pid], ("setup", algorithm, problem), deadline, self.run)[pid]
        if isinstance(result, Failed):
            return result
        h = cluster._workers[pid]
        self.live[pid] = h
        self.poller.register(h.channel.fileno(), (h, "message"))
        self.poller.register(h.death_fd, (h, "dead"))
        return None

    def _answered(self, h: _Handle) -> None:
        self.busy.discard(h.pid)
        h.answer_time = time.monotonic() - h.sent_at

    def _lose(self, h: _Handle) -> None:
        self.busy.discard(h.pid)
        if self.live.pop(h.pid, None) is not None:
            self.poller.unregister(h.channel.fileno())
            self.poller.unregister(h.death_fd)

    def wait(self, timeout: Optional[float]) -> list:
        if self.broken:
            events, self.broken = self.broken, []
            return events
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            events: list = []
            ready = self.poller.poll(timeout)
            # Messages first: an answer sent just before a worker died still counts.
            for h, what in ready:
                if what == "message" and h.pid in self.live:
                    self._take(h, self.cluster._receive(h, self.run), events)
            if len(events) < len(ready):  # deaths, or stale messages
                for h, what in ready:
                    # A death whose worker had a message ready too (more may follow in its
                    # socket) shows up again at the next wait.
                    if (what == "dead" and h.pid in self.live
                            and (h, "message") not in ready):
                        self._take(h, h.exit_failure(), events)
            if events:
                return events
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return events

    def _take(self, h: _Handle, event, events: list) -> None:
        if event is None:
            return  # a late answer of an earlier run
        self._answered(h)
        if isinstance(event, Failed):
            self._lose(h)
        events.append(event)

    def close(self) -> None:
        if self.guarded:
            self.guarded = False
            transport.interrupts.uninstall()
        with _SHIELD:  # every worker hears of the end, even through a Ctrl-C
            for h in list(self.live.values()):
                if h.pid in self.busy and h.os_pid is not None:
                    # Its answer is of no use any more: interrupt it so the worker is ready
                    # for the next run (see _worker.Worker._interrupt).
                    try:
                        os.kill(h.os_pid, signal.SIGUSR1)
                        h.abandoned = (self.run, time.monotonic())
                    except (ProcessLookupError, PermissionError):
                        pass
                try:
                    h.channel.send(CONTROL, ("end",), self.run)
                except ChannelClosed:
                    pass
                self._lose(h)
            self.poller.close()


#: Seconds a fast loop polls before it sleeps (see `_Poller.poll`).
SPIN = 50e-6


class _Poller:
    """Readiness of file descriptors, each tagged with its data: epoll where there is one
    (the loop's hottest call: it skips the `selectors` layer, ~4 us a step), else the
    platform's default selector.

    Adaptive polling: while answers come back within ``SPIN`` of the wait that expects them,
    the wait polls for up to ``SPIN`` before it sleeps. A sleeping process (and on a virtual
    machine its idle CPU) takes tens of microseconds to wake, more than a fast answer takes
    to come. As soon as one wait takes longer, the next ones sleep at once, so workers that
    compute for longer never pay a busy central. Measured (benchmarks/overhead.py loops, 2
    cores, 5 alternating runs each): the 10-float loop 14.5k -> 17.0k it/s with 2 workers,
    18.5k -> 18.7k with 4.
    """

    def __init__(self) -> None:
        self._fast = False  # the latest wait ended within SPIN
        self._data: dict = {}
        self._writers: dict = {}  # fd -> channel with an outbox to write when it can
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        if self._epoll is None:
            self._selector = selectors.DefaultSelector()

    def register(self, fd: int, data: Any) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
            self._data[fd] = data
        else:
            self._selector.register(fd, selectors.EVENT_READ, data)

    def unregister(self, fd: int) -> None:
        self._writers.pop(fd, None)
        if self._epoll is not None:
            self._epoll.unregister(fd)
            del self._data[fd]
        else:
            self._selector.unregister(fd)

    def write_when_ready(self, channel: Channel) -> None:
        """Also watch ``channel`` (registered already) for writability, and write its outbox
        then, until it is empty."""
        fd = channel.fileno()
        if fd in self._writers:
            return
        self._writers[fd] = channel
        if self._epoll is not None:
            self._epoll.modify(fd, select.EPOLLIN | select.EPOLLOUT)
        else:
            key = self._selector.get_key(fd)
            self._selector.modify(fd, selectors.EVENT_READ | selectors.EVENT_WRITE, key.data)

    def _written(self, fd: int) -> bool:
        """Write more of ``fd``'s outbox; whether the descriptor still counts as readable
        (a closed peer: its receive reports the failure)."""
        channel = self._writers[fd]
        try:
            if not channel.flush():
                return False
        except ChannelClosed:
            pass
        del self._writers[fd]
        if self._epoll is not None:
            self._epoll.modify(fd, select.EPOLLIN)
        else:
            key = self._selector.get_key(fd)
            self._selector.modify(fd, selectors.EVENT_READ, key.data)
        return channel.closed or channel.torn

    def poll(self, timeout: Optional[float]) -> list:
        """The data of the descriptors ready within ``timeout`` seconds (None: no limit).
        Descriptors only writable are written (their outboxes) and not returned."""
        if self._epoll is None:
            ready = self._selector.select(timeout)
            if self._writers:
                return [key.data for key, events in ready
                        if not (events & selectors.EVENT_WRITE
                                and not self._written(key.fd)
                                and not events & selectors.EVENT_READ)]
            return [key.data for key, _ in ready]
        data, epoll = self._data, self._epoll
        start = time.perf_counter()
        if self._fast:
            end = start + (SPIN if timeout is None else min(SPIN, timeout))
            while True:
                ready = epoll.poll(0)
                if ready:
                    return self._ready(ready)
                if time.perf_counter() >= end:
                    break
        ready = epoll.poll(-1 if timeout is None else timeout)
        self._fast = time.perf_counter() - start <= SPIN
        return self._ready(ready)

    def _ready(self, ready: list) -> list:
        data = self._data
        if not self._writers:  # the loop's common case
            return [data[fd] for fd, _ in ready]
        out = []
        for fd, events in ready:
            if events & select.EPOLLOUT and fd in self._writers:
                readable = self._written(fd)
                if not (readable or events & ~select.EPOLLOUT):
                    continue
            out.append(data[fd])
        return out

    def close(self) -> None:
        (self._epoll if self._epoll is not None else self._selector).close()


@atexit.register
def _close_all() -> None:
    """Stop the workers of clusters the user forgot to close."""
    for cluster in list(_clusters):
        try:
            cluster.close()
        except KeyboardInterrupt:  # its workers are gone all the same; on to the next
            pass
