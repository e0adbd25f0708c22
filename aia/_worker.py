"""The loop of a local worker process.

A worker holds, between runs, the objects of `aia.DistributedObject`s built on it, and during
a run the algorithm (its own copy) and its problem. It serves, in order, what the central
sends on its channel:

    CONTROL ("setup", algorithm, problem)  -> REPLY True, or ERROR (the constructor raised)
    QUERY q                                -> ANSWER answer(q, problem), or ERROR
    CONTROL ("end",)                       -> (drops the run's algorithm and problem)
    CONTROL ("store", id, make)            -> REPLY True, or ERROR (make raised)
    CONTROL ("apply", id, fn)              -> REPLY fn(object), or ERROR
    CONTROL ("free", id)                   -> (no reply)
    CONTROL ("stop",)                      -> exits

Every reply carries the run (or request) id it answers, so the central can drop the late
answer of a run that already ended. A worker ignores SIGINT (the central stops it: Ctrl-C in
a terminal reaches the whole process group) and exits by itself if the central dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

import cloudpickle

from . import transport
from .transport import ANSWER, ERROR, QUERY, REPLY, Channel, ChannelClosed
from .worker_state import WorkerState, remote_error
from .worker_state import limit_blas as _limit_blas

#: Sockets of the central, registered so a forked worker can close its inherited copies
#: (a copy left open would hide the central's death from the other workers).
central_sockets: "set[Any]" = set()



def main(pid: int, channel: Channel, blas_threads: int, inherited: list,
         parent: Optional[int], kernel_guard: bool) -> None:
    """Entry point of a worker process (the target of ``multiprocessing.Process``).

    ``parent`` is the pid our parent must have (None under forkserver, whose server is the
    parent); ``kernel_guard`` asks the kernel to kill us when that parent dies.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM ends a worker at once (the central's stop): a forked worker would otherwise
    # inherit the handler `aia.start` gives the central during a run (SystemExit)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A process group of our own: what we fork (a process pool in answer) is in it, and the
    # central kills the group once we are gone, so that nothing we started is orphaned.
    try:
        os.setpgid(0, 0)
    except (AttributeError, OSError):
        pass
    for sock in inherited:  # fork only: other workers' and the central's ends
        try:
            sock.close()
        except OSError:
            pass
    _release_forkserver()
    if kernel_guard:
        _die_with_parent()
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the central died before we got here
    _limit_blas(blas_threads)
    _watch_parent(os.getppid())
    channel.send(REPLY, os.getpid(), 0)
    Worker(pid, channel).serve()


class Interrupted(BaseException):
    """Raised in ``answer`` when the central ended the run the answer was for.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` in user code does
    not swallow it."""


class Worker(WorkerState):
    """A `WorkerState` served over a channel to the central, with the end-of-run interrupt
    (SIGUSR1) that abandons an answer of an ended run."""

    def __init__(self, pid: int, channel: Channel):
        super().__init__(pid)
        self.channel = channel
        self.answering = False
        # An interrupt that came while we were not answering (the query still arriving, or
        # being unpickled): the answer it was meant for is abandoned as soon as it starts.
        # Cleared by the end of the run and by a set-up, which always follow it.
        self.interrupt_pending = False
        signal.signal(signal.SIGUSR1, self._interrupt)

    def _interrupt(self, signum, frame) -> None:
        """The central ended the run while we were answering: abandon the answer.

        Only ``answer`` itself is interrupted (the flag is cleared before any send, so a frame
        is never cut in half); a C call that holds the GIL finishes first. Outside ``answer``
        the interrupt is kept for the answer about to start.
        """
        if self.answering:
            self.answering = False
            raise Interrupted("the run this answer was for has ended")
        self.interrupt_pending = True

    def serve(self) -> None:
        while True:
            try:
                kind, run, message = self.channel.recv()
            except ChannelClosed:
                os._exit(0)  # the central is gone: nothing left to serve
            except transport.Undecodable as exc:
                # E.g. a query holding an instance of a class defined in the central's script
                # after this worker started: plain pickle refers to it by a name we lack.
                self.channel.send(ERROR, remote_error(RuntimeError(
                    f"the worker cannot unpickle what the central sent: {exc}")), exc.run)
                continue
            if kind == QUERY:
                if run == self.run:
                    self.reply(run, lambda: self.answer_now(run, message), ANSWER)
            elif message[0] == "stop":
                return
            else:
                self.control(run, message)

    def control(self, run: int, message: tuple) -> None:
        command = message[0]
        if command == "setup":
            self.begin(run)
            self.interrupt_pending = False
            self.reply(run, lambda: self.setup(run, *message[1:]))
        elif command == "end":
            self.end()
            self.interrupt_pending = False
        elif command == "store":
            obj_id, make = message[1], message[2]
            self.reply(run, lambda: self.store(obj_id, cloudpickle.loads(make)))
        elif command == "apply":
            obj_id, fn = message[1], message[2]
            self.reply(run, lambda: self.apply(obj_id, cloudpickle.loads(fn)))
        elif command == "set":
            self.set(message[1], message[2])
        elif command == "free":
            self.free(message[1])

    def answer_now(self, run: int, q: Any) -> Any:
        """`WorkerState.answer`, abandoned if the run ends before or while it runs."""
        self.answering = True
        try:
            if self.interrupt_pending:  # the run ended before this answer began
                self.interrupt_pending = False
                raise Interrupted("the run this answer was for had ended before it began")
            return self.answer(run, q)
        finally:
            self.answering = False

    def reply(self, run: int, compute, kind: int = REPLY) -> None:
        """Send ``compute()`` back, or the exception it raised as text."""
        try:
            data, buffers = transport.dumps(compute())
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the central
            self.channel.send(ERROR, remote_error(exc), run)
            return
        self.channel.send_pickled(kind, run, data, buffers)


def _release_forkserver() -> None:
    """Close our copy of the forkserver's "alive" pipe (forkserver hands one to every child,
    fork copies the central's). The forkserver exits when every copy is closed; while a
    worker held one, the central's death left the forkserver, hence the parent-death signal
    and the parent check of its busy workers, waiting for ever."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is None:
        return
    try:
        os.close(fd)
    except OSError:
        pass
    server._forkserver_alive_fd = None


def _die_with_parent() -> None:
    """Linux: SIGKILL us when the parent dies, even inside a C call that holds the GIL.

    The kernel sends it when the *thread* that forked us exits, so the central only asks for
    it when it forks from its main thread (or from the single-threaded forkserver).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _watch_parent(parent: int, interval: float = 0.2) -> None:
    """Exit when the parent dies, even while ``answer`` is busy computing.

    The parent is the central (fork, spawn) or the forkserver, which itself exits with the
    central; either way, once it is gone we are re-parented and ``getppid`` changes.
    """

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="aia-parent-watch", daemon=True).start()
