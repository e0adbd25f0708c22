"""Stopping local worker processes: a stop message, then terminate, then kill, each step
bounded and the whole carried through a Ctrl-C (`aia.shield.SHIELD`)."""

from __future__ import annotations

import os
import selectors
import signal
import time

from . import transport
from .shield import SHIELD as _SHIELD
from .transport import CONTROL, ChannelClosed

STOP_GRACE = 1.0  # seconds for a worker to exit on a stop message before it is terminated


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
