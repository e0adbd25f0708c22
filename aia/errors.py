"""Errors raised by `aia`.

The tree of every exception `aia` raises to its user::

    RuntimeError
     ├── WorkerFailedError          a worker failed once more than `resilience` allows
     └── InjectedFailure            aia.memory: the failure `InMemoryCluster.fail` injects
    Exception
     └── RemoteError                the text of an exception raised on a worker, attached as
                                    the ``__cause__`` of WorkerFailedError
    ValueError
     ├── CheckpointError            aia.checkpoint: a checkpoint that cannot be resumed (a
     │                              corrupt file, another algorithm class)
     └── aia.folder.Rejected        a folder file refused (not ours, tampered, too large)
          └── aia.folder.codec.Undecodable   its contents do not decode
    TimeoutError
     └── aia.folder.SitesTimeoutError   no answer from the named sites within ``timeout``
    OSError
     └── aia.folder.safefs.UnsafePath   a path of the folder that is not what it must be (a
                                        link, a FIFO, a device, too large)

Internal, never raised to the user (each engine turns them into failures): ChannelClosed
(EOFError) and Undecodable of `aia.frames` (both named by `aia.transport` too), Stale of
`aia.worker_state` (a query of an ended run), and Interrupted (a BaseException) in a local
worker whose run ended.

Bad arguments are the standard ``TypeError`` / ``ValueError``, raised before any process
starts. Exceptions raised in the central's own code (the central step, a hook) propagate
unchanged after the workers are shut down; they carry the history recorded so far as
``exc.history`` (see ``attach_history``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Failure:
    """One worker failure: who, when, and why.

    ``cause`` is a one-line description ("raised ValueError: ...", "died with exit code -9
    (SIGKILL)"). ``traceback`` is the remote traceback text for an exception, else None.
    """

    worker: int
    iteration: int
    cause: str
    traceback: Optional[str] = None
    os_pid: Optional[int] = None  # the operating-system process id, where there is one
    exitcode: Optional[int] = None

    @property
    def pid(self) -> Optional[int]:
        """Deprecated: ``os_pid`` (a ``pid`` is a worker id in aia, as in ``start(pids=)``)."""
        warnings.warn("Failure.pid is deprecated: use os_pid (the worker's id is worker)",
                      DeprecationWarning, stacklevel=2)
        return self.os_pid

    def __str__(self) -> str:
        where = f"worker {self.worker}" + (f" (process {self.os_pid})" if self.os_pid else "")
        return f"{where} at iteration {self.iteration}: {self.cause}"


class RemoteError(Exception):
    """An exception raised on a worker, carried back as text.

    Exceptions travel as text (type name, message, traceback) so that one whose class cannot
    be unpickled in the central still arrives intact.
    """

    def __init__(self, type_name: str, message: str, traceback: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}\n\nRemote traceback:\n{self.traceback}"


class WorkerFailedError(RuntimeError):
    """A worker failed and the run could not tolerate it.

    Attributes: ``worker`` (its id), ``os_pid`` (its process id, where there is one),
    ``exitcode`` (for a process that died), ``iteration``, ``traceback`` (the remote
    traceback as text, for an exception), ``failures`` (every failure of the run so far, this
    one last) and ``history`` (the `aia.History` recorded before the failure).
    """

    def __init__(self, failure: Failure, failures: list, history=None, hint: str = ""):
        self.worker = failure.worker
        self.os_pid = failure.os_pid
        self.exitcode = failure.exitcode
        self.iteration = failure.iteration
        self.traceback = failure.traceback
        self.failures = list(failures)
        self.history = history
        message = f"{failure}"
        if len(self.failures) > 1:
            message += f" ({len(self.failures)} failures in this run, more than resilience allows)"
        if hint:
            message += f"\n{hint}"
        if failure.traceback:
            message += f"\n\nRemote traceback:\n{failure.traceback}"
        super().__init__(message)

    @property
    def pid(self) -> Optional[int]:
        """Deprecated: ``os_pid`` (a ``pid`` is a worker id in aia, as in ``start(pids=)``)."""
        warnings.warn("WorkerFailedError.pid is deprecated: use os_pid (the worker's id is "
                      "worker)", DeprecationWarning, stacklevel=2)
        return self.os_pid


def attach_history(exc: BaseException, history) -> None:
    """Give an exception raised during a run the history recorded before it."""
    try:
        if getattr(exc, "history", None) is None:
            exc.history = history
    except (AttributeError, TypeError):  # exceptions with __slots__ or read-only attributes
        pass
