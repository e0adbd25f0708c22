"""Ctrl-C and channel operations: `interrupts` holds a SIGINT off while one runs (see
`aia.transport`), so that a message stream is never left out of step by an interrupt."""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Any, Optional


class _Interrupts:
    """Holds a Ctrl-C off while a channel operation runs, so that it never lands between a
    read (or a write) and the accounting of what it moved: the stream stays in step.

    It works only while ``installed`` (the central, during a run or a request: see `held`):
    then its SIGINT handler, if the interrupt lands inside an operation, only remembers it,
    and the operation delivers it (to the handler it replaced, normally raising
    KeyboardInterrupt) as it returns. The central's operations never block (its end of each
    channel is non-blocking), so the interrupt waits microseconds, at most the unpickling of
    one message. Elsewhere (a worker, another thread) ``torn`` is the fallback.
    """

    def __init__(self) -> None:
        self.inside = False  # a channel operation is running
        self.pending: Optional[tuple] = None  # (signum, frame) of an interrupt held off
        self.depth = 0
        self.previous: Any = None

    def install(self) -> bool:
        """Take over SIGINT (main thread only; nested calls count). Whether it did."""
        if threading.current_thread() is not threading.main_thread():
            return False
        if self.depth == 0:
            try:
                previous = signal.signal(signal.SIGINT, self._handler)
            except ValueError:
                return False
            # Ours still there (replaced over by someone who did not restore it): the default.
            self.previous = signal.default_int_handler if previous == self._handler else previous
        self.depth += 1
        return True

    def uninstall(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            previous = self.previous
            if signal.getsignal(signal.SIGINT) == self._handler:  # a bound method: ==, not is
                signal.signal(signal.SIGINT, previous)
            self.deliver()  # one held off at the very end still arrives
            self.previous = None

    @contextlib.contextmanager
    def held(self):
        """Channel operations within are not cut by a Ctrl-C (delivered right after each)."""
        installed = self.install()
        try:
            yield
        finally:
            if installed:
                self.uninstall()

    @contextlib.contextmanager
    def deferred(self):
        """A Ctrl-C within is delivered as the block ends (while `held`; elsewhere a no-op).

        For steps a KeyboardInterrupt must not cut, beyond channel operations: a fork, whose
        at-fork hooks in the parent (logging's lock release) run Python code that an
        interrupt's exception escapes only as "Exception ignored", so the Ctrl-C would be
        lost; and the start of a worker, whose handle must be recorded before anything
        raises (else its process and socket are owned by nobody).
        """
        if self.inside:  # nested in an operation that delivers it
            yield
            return
        self.inside = True
        try:
            yield
        finally:
            self.inside = False
            self.deliver()

    def _handler(self, signum, frame) -> None:
        if self.inside:
            self.pending = (signum, frame)
        else:
            self._call(signum, frame)

    def deliver(self) -> None:
        if self.pending is not None:
            signum, frame = self.pending
            self.pending = None
            self._call(signum, frame)

    def _call(self, signum, frame) -> None:
        previous = self.previous
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # SIG_DFL, or None once uninstalled
            raise KeyboardInterrupt


interrupts = _Interrupts()


def _whole(operation):
    """A channel operation that a Ctrl-C does not cut in the middle (see `_Interrupts`)."""

    @functools.wraps(operation)
    def whole(*args, **kwargs):
        guard = interrupts
        if guard.inside:  # nested
            return operation(*args, **kwargs)
        guard.inside = True
        try:
            return operation(*args, **kwargs)
        finally:
            guard.inside = False
            if guard.pending is not None:
                guard.deliver()

    return whole
