"""Waiting for the folder to change: file events, with a look every ``poll`` seconds anyway.

Both sides loop: look at the folder, and if there is nothing to do, wait. `Waiter.wait`
returns as soon as a file under the watched directory is created, replaced, deleted or
closed after writing (watchdog: inotify on Linux, FSEvents on macOS,
ReadDirectoryChangesW on Windows), and after ``poll`` seconds at the latest. So a local
folder answers within milliseconds, and a folder that sends no events (a network share, a
synced folder whose client writes without them) still works, at ``poll`` seconds a look.

Events only wake the loop: it then reads the folder as it would after a sleep, through the
same checks (`aia.folder.safefs`, `aia.folder.codec`). Nothing in an event is trusted or
used besides "something changed". Temporary files (``.~*``, the writers' own) wake nobody;
a flood of events (another member writing without end) wakes the loop at most about once
a millisecond. If events cannot be had (watchdog missing, the inotify watch limit reached),
the loop logs it once and looks every ``poll`` seconds, as before events.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("aia.folder")

#: A flood: more looks woken by events than this within `WINDOW` seconds. Past it, each
#: look woken by an event waits `MIN_GAP` first (an exchange wakes a side a few times).
FLOOD, WINDOW, MIN_GAP = 200, 0.1, 0.001


class Waiter:
    """``wait(seconds)``: sleep until the watched directory changes, or ``seconds`` pass.

    Call `arm` before each look at the folder: a change that happens during the look then
    ends the next `wait` at once, so no change is missed between a look and a wait.
    ``watch=False`` (or no events to be had): plain sleeps. ``ignore(parts)``: the changes
    that wake nobody, by their path's parts under ``root`` (a side's own writes, the files
    of the other sites: each would cost a look for nothing)."""

    def __init__(self, root: Path, who: str, watch: bool = True,
                 ignore: Optional[Callable[[tuple], bool]] = None):
        self.root = Path(root)
        self.who = who
        self.watch = bool(watch)
        self.ignore = ignore
        self.changed = threading.Event()
        self._observer = None
        self._started = False
        self._window = (0.0, 0)  # (its start, looks woken by events in it)

    @property
    def watching(self) -> bool:
        """Whether file events wake this waiter (known once it has been armed)."""
        return self._observer is not None

    def arm(self) -> None:
        """Before a look at the folder: changes from now on end the next `wait`. The first
        call starts watching (its watches are in place when it returns, so the look that
        follows and the events after it miss nothing)."""
        if self.watch and not self._started:
            self._started = True
            self._observer = _start_observer(self.root, self.changed, self.who, self.ignore)
        self.changed.clear()

    def wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._observer is None:
            time.sleep(seconds)
            return
        if self.changed.wait(seconds):
            now = time.monotonic()
            start, count = self._window
            if now - start > WINDOW:
                start, count = now, 0
            self._window = (start, count + 1)
            if count >= FLOOD:  # someone writes without end: no faster than a look a ms
                time.sleep(MIN_GAP)

    def close(self) -> None:
        """Stop watching (its inotify instance is freed); the next `arm` starts again."""
        observer, self._observer = self._observer, None
        self._started = False
        if observer is not None:
            try:
                observer.stop()
                observer.join(2)
            except Exception:  # noqa: BLE001 - closing never fails the caller
                pass


def _start_observer(root: Path, changed: threading.Event, who: str, ignore=None):
    """A started watchdog observer of ``root`` (recursive) that sets ``changed``; None (and
    a warning) if events cannot be had."""
    try:
        from watchdog import events  # noqa: PLC0415 - only where events are used
        from watchdog.observers import Observer  # noqa: PLC0415
    except ImportError:
        log.warning("%s: watchdog is not installed: looking at the folder every poll "
                    "instead of waiting for file events (pip install watchdog)", who)
        return None

    base = str(root).rstrip("/\\")

    class Changed(events.FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            path = getattr(event, "dest_path", "") or event.src_path
            path = path if isinstance(path, str) else os.fsdecode(path)
            parts = Path(path[len(base):]).parts[1:] if path.startswith(base) else ()
            if parts and parts[-1].startswith(".~"):  # a writer's temporary file: its
                return  # rename follows
            if ignore is not None and parts and ignore(parts):
                return
            changed.set()

    kinds = [events.FileCreatedEvent, events.DirCreatedEvent, events.FileMovedEvent,
             events.DirMovedEvent, events.FileDeletedEvent, events.DirDeletedEvent,
             events.FileClosedEvent]
    if not sys.platform.startswith("linux"):  # FSEvents, ReadDirectoryChangesW: no "closed"
        kinds.append(events.FileModifiedEvent)
    observer = Observer()
    try:
        # follow_symlink stays False: a link planted in the folder is not walked into.
        observer.schedule(Changed(), str(root), recursive=True, event_filter=kinds)
        observer.start()
    except Exception as exc:  # noqa: BLE001 - e.g. the inotify watch limit
        log.warning("%s: no file events for %s (%s: %s): looking at the folder every poll "
                    "instead", who, root, type(exc).__name__, exc)
        try:
            observer.stop()
        except Exception:  # noqa: BLE001
            pass
        return None
    log.debug("%s: waiting on file events under %s", who, root)
    return observer
