"""`SHIELD`: clean-up that finishes even when interrupted (Ctrl-C), shared by the engines."""

from __future__ import annotations

import signal
import threading
from typing import Any


class Shield:
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

    def __enter__(self) -> "Shield":
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


SHIELD = Shield()
