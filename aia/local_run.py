"""`LocalRun`: the workers of one run on a `aia.LocalCluster`, as the central loop sees them."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from . import transport
from .cluster import Failed, Run
from .local_handle import _Handle
from .poller import Poller
from .shield import SHIELD
from .transport import CONTROL, QUERY, ChannelClosed

if TYPE_CHECKING:
    from .local import LocalCluster


#: A busy worker whose process stays stopped (SIGSTOP) this long, while nothing else
#: arrives in a wait without a time limit, has failed (`LocalRun._frozen`); checked every
#: `FROZEN_CHECK` seconds.
FROZEN_AFTER = 10.0
FROZEN_CHECK = 1.0


def _stopped(os_pid: int) -> bool:
    """Whether the process is stopped by a signal (state T in /proc; not traced, t)."""
    try:
        with open(f"/proc/{os_pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] == b"T"


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
        self.poller = Poller()
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
        h.stopped_since = None
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
        h.stopped_since = None  # it answered: a later stop is seen afresh
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
            ready = self.poller.poll(FROZEN_CHECK if timeout is None and self.busy
                                     else timeout)
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
            if timeout is None:  # (with a time limit, the limit ends the wait)
                events = self._frozen()
                if events:
                    return events
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return events

    def _frozen(self) -> list:
        """Failures of the workers with a query outstanding whose process has been stopped
        (SIGSTOP, state T) for `FROZEN_AFTER` seconds while nothing else arrived: a
        stopped process answers nothing until someone continues it, and a synchronous
        round would wait for it forever. Each is killed (a stopped process takes SIGKILL)."""
        now, failed = time.monotonic(), []
        for pid in list(self.busy):
            h = self.live.get(pid)
            if h is None or h.os_pid is None:
                continue
            if not _stopped(h.os_pid):
                h.stopped_since = None
                continue
            if h.stopped_since is None:
                h.stopped_since = now
            elif now - h.stopped_since >= FROZEN_AFTER:
                try:
                    os.kill(h.os_pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                failure = h.exit_failure()
                failure = dataclasses.replace(failure, cause=(
                    f"its process was stopped (SIGSTOP: frozen) for {FROZEN_AFTER:.0f} s "
                    "with a query outstanding; it was killed"))
                self._take(h, failure, failed)
        return failed

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
        with SHIELD:  # every worker hears of the end, even through a Ctrl-C
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
