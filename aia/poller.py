"""`Poller`: the central's wait on its workers' descriptors (epoll where there is one)."""

from __future__ import annotations

import select
import selectors
import time
from typing import Any, Optional

from .transport import Channel, ChannelClosed


#: Seconds a fast loop polls before it sleeps (see `Poller.poll`).
SPIN = 50e-6


class Poller:
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
        epoll = self._epoll
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
