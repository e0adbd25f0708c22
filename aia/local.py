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
import selectors
import sys
import threading
import time
import weakref
from typing import Any, Optional, Sequence

from . import _worker, requests, transport
from .requests import SETUP_PATIENCE
from .cluster import Answer, BuildProblem, Cluster, Failed, ObjectStore, raise_failures
from .local_handle import _Handle, describe_exit  # noqa: F401 (describe_exit: aia.local's)
from .local_run import LocalRun
from .local_stop import STOP_GRACE, _stop
from .poller import SPIN, Poller as _Poller  # noqa: F401 (aia.local's, for the tests)
from .shield import SHIELD as _SHIELD
from .transport import ANSWER, CONTROL, ERROR, ChannelClosed

log = logging.getLogger("aia")

START_TIMEOUT = 60.0  # seconds for a worker to come up (spawn imports numpy afresh)
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
        raised only once it is recorded (see `aia.interrupts`' ``deferred``), so that
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
        log.warning("aia: worker %d (process %s) %s; restarting it (its distributed objects are "
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
        request = _Request(self, message, self._new_id() if run is None else run, deadline)
        return requests.request(request, pids, deadline, tolerate, SETUP_PATIENCE)

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


class _Request(requests.Requester):
    """A control message to workers of a `LocalCluster` (`aia.requests.request`)."""

    def __init__(self, cluster: LocalCluster, message: tuple, run: int,
                 deadline: Optional[float]):
        self.cluster, self.message, self.run, self.deadline = cluster, message, run, deadline
        self.rebuildable = _builds_its_problem(message)

    def prepare(self, pid: int) -> _Handle:
        h = self.cluster._handle(pid)
        if h.channel.torn and not h.channel.closed:
            # Cut mid-message (Ctrl-C, or stalled past a time limit): its stream is out of
            # step for good, so a fresh worker takes its place.
            h = self.cluster._replace(h, "has a channel cut in the middle of a message")
        return h

    def dead(self, h: _Handle) -> Optional[Failed]:
        if not h.dead:
            return None
        return Failed(h.pid, "worker process is dead", None, h.os_pid, h.process.exitcode)

    def post(self, h: _Handle) -> Optional[Failed]:
        h.channel.deadline = self.deadline
        try:
            h.channel.send(CONTROL, self.message, self.run)
        except ChannelClosed:
            return h.exit_failure()
        return None

    def token(self, h: _Handle) -> int:
        return self.run

    def collect(self, handles: list, limit: Optional[float]) -> list:
        return [(h, self.cluster._receive(h, self.run) if what == "message"
                 else h.exit_failure()) for h, what in self.cluster._wait_on(handles, limit)]

    def replace(self, h: _Handle, why: Optional[str] = None) -> _Handle:
        return self.cluster._replace(h) if why is None else self.cluster._replace(h, why)


def _builds_its_problem(message: tuple) -> bool:
    """A set-up whose problem the worker builds (a fresh worker can do it as well), not one
    on the object of a DistributedObject (which dies with its worker)."""
    return message[0] == "setup" and isinstance(message[2], BuildProblem)


@atexit.register
def _close_all() -> None:
    """Stop the workers of clusters the user forgot to close."""
    for cluster in list(_clusters):
        try:
            cluster.close()
        except KeyboardInterrupt:  # its workers are gone all the same; on to the next
            pass
