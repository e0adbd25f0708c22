"""Algorithms, problems and process helpers for the failure tests (test_failures.py).

Every algorithm here keeps worker-side state on ``self``: each worker answers on its own copy
of the algorithm, so ``self.answers`` counts the answers of that worker only. The problem of
each process is its pid (see `pid_problem`), which is how a worker knows who it is.
"""

from __future__ import annotations

import faulthandler
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time

import psutil

from tests.processes import living_children

import aia

# -- how a worker fails (the rows of the crash table) ----------------------------------


class FailureError(ValueError):
    """The exception the "raise" row raises on a worker."""


def _raise():
    raise FailureError("boom on worker 1")


def _exit():
    os._exit(3)


def _sigkill():
    os.kill(os.getpid(), signal.SIGKILL)


def _segfault():
    # No core file, and no faulthandler dump inherited from pytest: a plain SIGSEGV.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    faulthandler.disable()
    faulthandler._sigsegv()


def _unpicklable():
    return threading.Lock()  # returned as the answer: it cannot be pickled


def _unpicklable_generator():
    return (i for i in range(3))


FAILURES = {
    "raise": _raise,
    "exit": _exit,
    "sigkill": _sigkill,
    "segfault": _segfault,
    "unpicklable": _unpicklable,
    "generator": _unpicklable_generator,
}


def pid_problem(pid):
    return pid


class FailOnce(aia.AbstractAlgorithm):
    """Worker 1 fails (``how``) on its ``at``-th answer; the others answer normally.

    The query is a counter; every answer sleeps ``delay`` seconds so that both workers take
    part in the asynchronous mode.
    """

    def __init__(self, how=None, at=3, delay=0.005, failing_worker=1):
        self.how = how
        self.at = at
        self.delay = delay
        self.failing_worker = failing_worker
        self.answers = 0  # worker side: this worker's answers so far
        self.steps = 0  # central side

    def initialize(self, problem):
        return 0

    def answer(self, q, problem):
        self.answers += 1
        if self.how and problem == self.failing_worker and self.answers == self.at:
            result = FAILURES[self.how]()
            if result is not None:
                return result
        time.sleep(self.delay)
        return q + 1

    def central_step(self, a, worker, problem):
        self.steps += 1
        return a

    def sync_central_step(self, answers, workers, problem):
        self.steps += 1
        return max(answers)


class SignalsItselfAtItsThirdAnswer(aia.AbstractAlgorithm):
    """Each worker process (or only the one of problem ``only``) sends itself ``sig`` at its
    third answer: SIGKILL dies mid-run, SIGSTOP freezes (a fresh process counts from 0)."""

    def __init__(self, sig: int, only=None):
        self.sig, self.only = sig, only
        self.answered = 0

    def initialize(self, problem):
        return 0

    def answer(self, q, problem):
        self.answered += 1
        if self.answered == 3 and self.only in (None, problem):
            os.kill(os.getpid(), self.sig)
        time.sleep(0.005)
        return q + 1

    def sync_central_step(self, answers, workers, problem):
        return max(answers)


class TwoArgumentError(Exception):
    """An exception that pickles but cannot be unpickled (its ``__init__`` needs two
    arguments, pickle calls it with one): it must still reach the central, as text."""

    def __init__(self, site, reason):
        super().__init__(f"site {site}: {reason}")


class RaisesUnpicklableError(FailOnce):
    def answer(self, q, problem):
        self.answers += 1
        if problem == 1 and self.answers == self.at:
            raise TwoArgumentError("a.csv", "column gre is missing")
        return q + 1


class FailingProblem:
    """A problem constructor that fails on worker 1 (raises or exits), fine elsewhere."""

    def __init__(self, how):
        self.how = how

    def __call__(self, pid):
        if pid == 1:
            if self.how == "raise":
                raise LookupError("no data for site 1")
            os._exit(5)
        return pid


class Recording(FailOnce):
    """Remembers on the central whether ``initialize`` was called."""

    initialized = False

    def initialize(self, problem):
        self.initialized = True
        return 0


class HangOnWorker1(FailOnce):
    """Worker 1 never answers. ``how``: "sleep" (sleeps forever), "stubborn" (sleeps forever
    and swallows every exception, so no interrupt gets it out), "stubborn_noterm" (the
    same, ignoring SIGTERM too: only SIGKILL ends it)."""

    def __init__(self, how="sleep"):
        super().__init__()
        self.how = how

    def answer(self, q, problem):
        if problem == 1:
            if self.how == "stubborn_noterm":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                try:
                    time.sleep(100)
                except BaseException:
                    if self.how == "sleep":
                        raise

        time.sleep(0.005)
        return q + 1


class HookError(RuntimeError):
    """Raised by a central hook of `FailingHook`."""


class FailingHook(FailOnce):
    """One central hook (``hook``) raises `HookError` once 3 central steps are done."""

    def __init__(self, hook):
        super().__init__()
        self.hook = hook

    def _maybe_fail(self, name):
        if self.hook == name and self.steps >= 3:
            raise HookError(f"{name} failed at step {self.steps}")

    # The query is the number of central steps: a checkpoint's query names its iteration.
    def central_step(self, a, worker, problem):
        self.steps += 1
        self._maybe_fail("central_step")
        return self.steps

    def sync_central_step(self, answers, workers, problem):
        self.steps += 1
        self._maybe_fail("sync_central_step")
        return self.steps

    def stopnow(self, stopat):
        limit = stopat["limit"]  # a custom key, so that stopnow is called
        self._maybe_fail("stopnow")
        return self.steps >= limit

    def savenow(self, saveat):
        every = saveat["every"]
        self._maybe_fail("savenow")
        return self.steps % every == 0

    def report(self):
        if self.hook == "report":
            raise HookError("report failed")
        return {}


class LockedAlgorithm(FailOnce):
    """Holds a lock: cannot be sent to the workers."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()


class BadQuery(FailOnce):
    """Returns an unpicklable query at step ``at`` (0: from ``initialize``)."""

    def __init__(self, at, make):
        super().__init__()
        self.at_step = at
        self.make = make

    def _query(self, a):
        return self.make() if self.steps == self.at_step else a

    def initialize(self, problem):
        return self._query(0)

    def central_step(self, a, worker, problem):
        self.steps += 1
        return self._query(a)

    def sync_central_step(self, answers, workers, problem):
        self.steps += 1
        return self._query(max(answers))


# -- processes -------------------------------------------------------------------------


def descendants() -> set:
    """The pids of every live (non-zombie) descendant of this process (but multiprocessing's
    forkserver and resource tracker, servers that live as long as it: `tests.processes`)."""
    return {p.pid for p in living_children()}


def alive(pids) -> list:
    """Those of ``pids`` that still run (a zombie is not running)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids, timeout: float) -> list:
    """Wait up to ``timeout`` seconds for ``pids`` to end; those still alive."""
    deadline = time.monotonic() + timeout
    left = alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = alive(left)
    return left


def kill_all(pids) -> None:
    """Last-resort cleanup of processes a test started (by pid, never by name)."""
    for pid in alive(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Script:
    """A Python script run in its own session, its stdout read line by line with timeouts."""

    def __init__(self, path, *args, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, str(path), *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, env=env)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.stdout: list = []
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()
        self._err_thread = threading.Thread(target=self._read_err, daemon=True)
        self._err_thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output: the script exited

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def expect(self, prefix: str, count: int = 1, timeout: float = 20.0) -> list:
        """The next ``count`` lines starting with ``prefix`` (others are kept in stdout)."""
        found = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:  # timed out, or the script exited first
                self._err_thread.join(0 if self.proc.poll() is None else 5)
                raise AssertionError(
                    f"no {prefix!r} line within {timeout} s; stdout {self.stdout}, "
                    f"exit code {self.proc.poll()}, stderr:\n{self.stderr}")
            self.stdout.append(line)
            if line.startswith(prefix):
                found.append(line)
        return found

    def rest(self) -> list:
        """The stdout lines not yet read (call once the process has exited)."""
        self._err_thread.join(5)
        time.sleep(0.05)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.stdout
            if line is not None:
                self.stdout.append(line)

    def descendants(self) -> set:
        try:
            return {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def cleanup(self, extra=()) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        kill_all(extra)


# -- more ways for an answer or an exception to go wrong -------------------------------


class BadStrError(Exception):
    """An exception whose ``str`` itself raises."""

    def __str__(self):
        raise RuntimeError("__str__ is broken")


def _refuse_to_unpickle(text):
    raise ValueError(f"cannot rebuild {text}")


class UnpicklesBadly:
    """Pickles fine on the worker; unpickling it (in the central) raises."""

    def __reduce__(self):
        return _refuse_to_unpickle, ("an UnpicklesBadly",)


class WorkerOnlyFailure(FailOnce):
    """Worker 1, on its 3rd answer, raises a `BadStrError` or returns an `UnpicklesBadly`."""

    def answer(self, q, problem):
        self.answers += 1
        if problem == 1 and self.answers == self.at:
            if self.how == "bad_str":
                raise BadStrError()
            return UnpicklesBadly()
        time.sleep(self.delay)
        return q + 1


_CENTRAL = os.getpid()


class FailsToLoadOnWorkers(FailOnce):
    """Unpickling this algorithm raises on the workers (not in the central)."""

    def __setstate__(self, state):
        if os.getpid() != _CENTRAL:
            raise ImportError("module needed by the algorithm is missing on this worker")
        self.__dict__.update(state)
