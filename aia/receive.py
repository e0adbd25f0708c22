"""The receiving half of a channel (`aia.transport.Channel` is a `Receiving`).

A frame is read as it comes: `Receiving.poll` takes what the socket holds and keeps a frame
partly read (`_Incoming`) for the next call, so a non-blocking end never waits on one peer
that stalls in the middle of a frame; `Receiving.recv` waits for the rest, at most until the
channel's ``deadline``. The buffers of a shared frame are copied out of the peer's arena into
memory of the receiver's own, so the arrays it gets are writable and private.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import time
from typing import Any, Optional

import numpy as np

from .arena import _ALIGN, _layout, _unmap
from .frames import (_ARENA, _HEADER, _LENGTH, _MIN_FRAME, _SHARED, ChannelClosed,
                     loads)
from .interrupts import _whole


class Receiving:
    """How a channel receives; the state it reads (``sock``, ``torn``, ``received``,
    ``peer_received``, the peer's arenas, ``deadline``) is set up by `aia.transport.Channel`."""

    def recv(self) -> tuple[int, int, Any]:
        """Receive one message: ``(kind, run, obj)``. Blocks (a non-blocking end: until the
        channel's ``deadline``, then ChannelClosed); raises ChannelClosed on EOF,
        Undecodable if the whole message arrived but could not be unpickled."""
        while True:
            message = self.poll()
            if message is not None:
                return message
            self._await_readable()

    @_whole
    def poll(self) -> Optional[tuple[int, int, Any]]:
        """The next message, ``(kind, run, obj)``, if its last byte is in; else None, and what
        came of it is kept for the next call (a non-blocking end never waits: one peer that
        stalls in the middle of a frame holds up no one). Raises as `recv`.

        An interrupt (Ctrl-C) between two reads leaves the channel in step: the next call goes
        on with the same frame. Only one that lands in the few bytecodes that account for
        what a read returned tears the channel (``torn``)."""
        rx = self._rx
        if rx is None:
            first = self._first  # reused: small frames are unpickled by copy
            if self.torn:
                self._check_intact()
            self.torn = True
            try:
                got = self.sock.recv_into(first, _MIN_FRAME)
            except BlockingIOError:
                self.torn = False
                return None
            except OSError as exc:
                self.torn = False
                raise ChannelClosed(str(exc)) from exc
            if got == 0:
                self.torn = False
                raise ChannelClosed("the other end closed the channel")
            if got == _MIN_FRAME:
                header = _HEADER.unpack_from(first)
                if header[3] == 0 and header[4] <= _MIN_FRAME - _HEADER.size:
                    # The loop's common case: a small message, whole in one read.
                    self.peer_received = header[5]
                    self.received += 1
                    self.torn = False
                    n = _LENGTH.unpack_from(first, _HEADER.size)[0]
                    start = _HEADER.size + _LENGTH.size
                    return header[0], header[2], loads(header[0], header[2],
                                                        memoryview(first)[start : start + n], [])
            self._rx = rx = _Incoming(first, got)
            self.torn = False
        elif self.torn:
            self._check_intact()
        if not self._fill(rx):
            return None
        return self._decode(rx)

    def _fill(self, rx: "_Incoming") -> bool:
        """Read more of the frame ``rx`` (and the arena descriptor after it); whether it is all
        in. ``torn`` is set only while a read's result is not yet accounted for."""
        sock = self.sock
        while True:
            if rx.got < len(rx.buf):
                self.torn = True
                try:
                    k = sock.recv_into(memoryview(rx.buf)[rx.got:], len(rx.buf) - rx.got)
                except BlockingIOError:
                    self.torn = False
                    return False
                except OSError as exc:
                    self.torn = False
                    raise ChannelClosed(str(exc)) from exc
                if k == 0:
                    self.torn = False
                    raise ChannelClosed("the other end closed the channel")
                rx.got += k
                self.torn = False
                continue
            if rx.header is None:  # the head is in: how long is the frame?
                self.torn = True
                rx.start_body(_HEADER.unpack_from(rx.buf))
                self.torn = False
                continue
            if rx.wants_fd is None:  # the whole frame is in: does a descriptor follow?
                rx.wants_fd = rx.new_arena()
                continue
            if rx.wants_fd:  # a new arena's descriptor follows the frame
                self.torn = True
                try:
                    _, fds, _, _ = socket.recv_fds(sock, 1, 1)
                except BlockingIOError:
                    self.torn = False
                    return False
                except OSError as exc:
                    self.torn = False
                    raise ChannelClosed(str(exc)) from exc
                rx.fds, rx.wants_fd = fds, False
                self.torn = False
                continue
            return True

    def _decode(self, rx: "_Incoming") -> tuple[int, int, Any]:
        """The message of a frame all read: the stream is at the next frame already, so an
        interrupt from here on loses this message only, not the channel's step."""
        self.torn = True
        self._rx = None
        self.received += 1
        self.torn = False
        kind, flags, run, nbuffers, size, self.peer_received = rx.header
        payload = rx.payload
        lengths = [_LENGTH.unpack_from(payload, i * _LENGTH.size)[0] for i in range(nbuffers + 1)]
        offset = (nbuffers + 1) * _LENGTH.size
        if flags & _SHARED:
            offset, buffers = self._recv_shared(payload, offset, lengths[1:], rx.fds)
            return kind, run, loads(kind, run, payload[offset : offset + lengths[0]], buffers)
        data = payload[offset : offset + lengths[0]]
        offset += lengths[0]
        buffers = []
        for n in lengths[1:]:
            offset += -offset % _ALIGN
            buffers.append(payload[offset : offset + n])
            offset += n
        return kind, run, loads(kind, run, data, buffers)

    def _recv_shared(self, payload: memoryview, offset: int, lengths: list,
                     fds: Optional[list]) -> tuple:
        """Copy the buffers of a shared frame out of the peer's arena; the stream's offset
        and the buffers. ``fds``: the descriptor of a new arena, received after the frame."""
        ident, size, new, n_retired = _ARENA.unpack_from(payload, offset)
        offset += _ARENA.size
        for i in range(n_retired):
            _unmap(self._arenas.pop(_LENGTH.unpack_from(payload, offset)[0], None))
            offset += _LENGTH.size
        if new:
            self._map_arena(ident, size, fds or [])
        arena = self._arenas.get(ident)
        if arena is None:
            raise ChannelClosed(f"the peer referred to a shared-memory arena ({ident}) it "
                                "never sent: the stream is out of step")
        offsets, total = _layout(lengths)
        # Memory of our own: the arena is the sender's again once we acknowledge the frame.
        # np.empty: not zeroed first (bytearray is), and large ones get huge pages.
        own = memoryview(np.empty(total, dtype=np.uint8))
        source = memoryview(arena)
        try:
            buffers = []
            for start, n in zip(offsets, lengths):
                own[start : start + n] = source[start : start + n]
                buffers.append(own[start : start + n])
        finally:
            source.release()
        return offset, buffers

    def _map_arena(self, ident: int, size: int, fds: list) -> None:
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ChannelClosed("a shared-memory arena's descriptor did not arrive")
        try:
            self._arenas[ident] = mmap.mmap(fds[0], size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fds[0])

    def _await_readable(self) -> None:
        """Wait for more of a frame (non-blocking end), at most until ``deadline``; past it
        ChannelClosed is raised (what came of the frame is kept: the channel stays in step)."""
        timeout = None if self.deadline is None else self.deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise ChannelClosed("the peer stalled in the middle of a message past the "
                                "time limit")
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(self.sock.fileno(), select.POLLIN)
            poller.poll(None if timeout is None else max(1, int(timeout * 1000)))
        else:
            select.select([self.sock], [], [], timeout)


class _Incoming:
    """A frame being received: its bytes so far (``buf`` up to ``got``), its header once the
    head is in, and whether a new arena's descriptor is still to come after it."""

    __slots__ = ("buf", "got", "header", "payload", "wants_fd", "fds")

    def __init__(self, first: bytearray, got: int):
        self.buf, self.got = first, got
        self.header: Optional[tuple] = None
        self.payload: Optional[memoryview] = None
        self.wants_fd: Optional[bool] = None  # None: not known until the frame is all in
        self.fds: Optional[list] = None

    def start_body(self, header: tuple) -> None:
        """The head (``_MIN_FRAME`` bytes) is in: make room for the rest of the frame."""
        _, flags, _, nbuffers, size, _ = header
        first = self.buf
        if _HEADER.size + size <= _MIN_FRAME:
            payload = memoryview(first)[_HEADER.size:]
            if nbuffers and not flags & _SHARED:  # arrays will live on this memory
                payload = memoryview(bytearray(payload))
            self.payload = payload
        else:
            whole = bytearray(size)
            head = _MIN_FRAME - _HEADER.size
            whole[:head] = memoryview(first)[_HEADER.size:]
            self.payload = memoryview(whole)
            self.buf, self.got = whole, head
        self.header = header

    def new_arena(self) -> bool:
        """Whether the frame (all in) brings a new arena, whose descriptor follows it."""
        _, flags, _, nbuffers, _, _ = self.header
        if not flags & _SHARED:
            return False
        return bool(_ARENA.unpack_from(self.payload, (nbuffers + 1) * _LENGTH.size)[2])
