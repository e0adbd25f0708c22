"""Messages between the central and a local worker, over one stream socket per worker.

Data flow (one worker shown; the central holds one `Channel` per worker)::

    central                                   worker process
    -------                                   --------------
    Channel.send(QUERY, q)  ---------------->  Channel.recv() -> answer(q, problem)
    Channel.recv() -> (ANSWER, a)  <---------  Channel.send(ANSWER, a)
                                   <---------  (ERROR, RemoteError text) when answer raises

A frame is a fixed header (kind, flags, run id, number of out-of-band buffers, payload length,
acknowledgement), a table of lengths, the pickle stream (protocol 5) and the out-of-band
buffers. Numpy arrays are never copied into the pickle stream; where their bytes go depends
on their size:

- small (under ``_IN_BAND``, 4 KiB): in the pickle stream, and a small frame is padded to
  ``_MIN_FRAME`` bytes so that the receiver reads header and payload in one ``recv``;
- medium: in the frame, gathered by ``sendmsg`` straight from the array's memory;
- large (``SHARED_MIN``, 128 KiB, in all): in shared memory (Linux). The sender copies them
  once into an *arena*, a ``memfd`` mapped in both processes, and the frame only says where
  they are. A query sent to several workers (`Message` is encoded once) is written once for
  all of them. The receiver copies them out into memory of its own as it receives the frame,
  so the arrays it gets are writable and private, and the arena is free again for the
  sender once the receiver has sent anything back (every frame acknowledges how many
  frames its sender has received on that channel). An arena's descriptor crosses once per
  channel (``SCM_RIGHTS``, in a one-byte message that follows the frame), and its pages stay
  mapped: on a virtual machine, fresh shared pages cost ten times their copy.

Without ``memfd_create`` (macOS, Windows) or with ``AIA_SHARED_MEMORY=0``, large buffers go in
the frame too.

The central's end of a channel is *non-blocking* (``pipe(nonblocking=True)``): a send never
waits for the worker. What the socket does not take at once waits, copied, in the channel's
``outbox``, and the central's waits write it (``flush``) whenever the socket is writable, while
they read. A central that blocked in a send to a worker that is itself blocked sending (a large
answer of a run that just ended) would deadlock; a frozen worker would hold up the others.
A receive waits for the rest of a frame at most until the channel's ``deadline``. A channel
whose send or receive was cut in the middle of a frame (Ctrl-C, a stalled peer) is ``torn``:
its stream is out of step for good, every later use raises `ChannelClosed`, and the cluster
replaces its worker.

The frame and the pickling are `aia.frames`', the receiving half of a channel is
`aia.receive`'s, the arenas are `aia.arena`'s, and the Ctrl-C guard of channel operations
is `aia.interrupts`'s.
"""

from __future__ import annotations

import mmap
import os
import socket
from collections import deque
from typing import Any, Optional

from .arena import _ALIGN, _channels, _pool, _unmap
from .frames import (_ARENA, _HEADER, _HEAD_AND_LENGTH, _LENGTH, _MIN_FRAME, _SHARED,
                     ChannelClosed, Message, dumps, length_table)
from .interrupts import _whole
from .receive import Receiving, _Incoming

# What the engines and tests name as ``transport.X``: a channel's kinds, errors and helpers.
from .arena import Arena  # noqa: E402,F401
from .frames import ANSWER, CONTROL, ERROR, QUERY, REPLY, Undecodable, encode  # noqa: E402,F401
from .interrupts import interrupts  # noqa: E402,F401

#: Out-of-band bytes of one message from which they go through shared memory (None: never).
SHARED_MIN: Optional[int] = 128 * 1024  # measured: the socket wins below 64 KiB, loses at 256
if not (hasattr(os, "memfd_create") and hasattr(socket, "send_fds")) \
        or os.environ.get("AIA_SHARED_MEMORY", "1") == "0":
    SHARED_MIN = None


def pipe(nonblocking: bool = False) -> tuple["Channel", "Channel"]:
    """Two connected channels (the central's end, the worker's end); ``nonblocking``: the
    central's end queues what it cannot send at once (see the module's docstring)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(a, nonblocking=nonblocking), Channel(b)


# -- channels ----------------------------------------------------------------------------
class Channel(Receiving):
    """One end of a message stream between two processes.

    ``nonblocking``: sends never wait (the rest goes to ``outbox``, written by ``flush``), and
    a receive waits for the rest of a frame until ``deadline`` (a `time.monotonic` value, None:
    no limit). ``torn``: an operation was cut in the middle of a frame; the channel is unusable.
    """

    def __init__(self, sock: socket.socket, nonblocking: bool = False):
        self.sock = sock
        self.closed = False
        self.nonblocking = nonblocking
        if nonblocking:
            sock.setblocking(False)
        self.outbox: deque = deque()  # bytes (or ("fd", descriptor)) the socket did not take yet
        self.deadline: Optional[float] = None
        self.torn = False
        self._first = bytearray(_MIN_FRAME)  # the head of every frame is read into this
        self._rx: Optional[_Incoming] = None  # a frame partly received
        self.sent = 0  # frames sent
        self.received = 0  # frames received (each sent frame acknowledges this count)
        self.peer_received = 0  # the peer's count, from its latest frame
        self.retired: list[int] = []  # our arenas the peer should unmap
        self._arenas: dict[int, mmap.mmap] = {}  # the peer's arenas, mapped here
        _channels.add(self)

    def fileno(self) -> int:
        """So that `multiprocessing.connection.wait` can wait on the channel."""
        return self.sock.fileno()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _pool.forget(self)
            self.unmap_peer_arenas()
            for item in self.outbox:
                if type(item) is tuple:
                    os.close(item[1])
            self.outbox.clear()
        self.sock.close()

    def release_shared(self) -> None:
        """The peer is dead: unmap its arenas here and stop holding ours for it (their memory
        goes back to the system now, not when the cluster closes)."""
        _pool.forget(self)
        self.unmap_peer_arenas()

    def unmap_peer_arenas(self) -> None:
        for mapped in self._arenas.values():
            _unmap(mapped)
        self._arenas.clear()

    # -- sending --------------------------------------------------------------------------
    def send(self, kind: int, obj: Any, run: int = 0) -> None:
        """Send one message; raises TypeError if ``obj`` cannot be pickled."""
        self.send_pickled(kind, run, *dumps(obj))

    def send_pickled(self, kind: int, run: int, data: bytes, buffers: list) -> None:
        """Send what `dumps` made of an object."""
        if buffers:
            self.send_message(kind, run, Message(data, buffers))
        else:  # the loop's common case, kept short
            self._send_small(kind, run, data)

    @_whole
    def send_message(self, kind: int, run: int, message: Message) -> None:
        """Send an encoded message (so one query is pickled, and written, once for all)."""
        if not message.buffers:
            self._send_small(kind, run, message.data)
            return
        self._check_intact()
        self.torn = True  # until the frame is sent or queued whole
        if _shared(message):
            self._send_shared(kind, run, message)
        else:
            self._send_inline(kind, run, message)
        self.sent += 1
        self.torn = False

    @_whole
    def _send_small(self, kind: int, run: int, data: bytes) -> None:
        """A message without out-of-band buffers: one frame, one send."""
        if self.torn:
            self._check_intact()
        self.torn = True
        frame = _HEAD_AND_LENGTH.pack(kind, 0, run, 0, _LENGTH.size + len(data),
                                      self.received, len(data))
        self._send_one((frame + data).ljust(_MIN_FRAME, b"\0"))
        self.sent += 1
        self.torn = False

    def _check_intact(self) -> None:
        if self.torn:
            raise ChannelClosed("this channel was cut in the middle of a message (an "
                                "interrupt, or a peer that stalled): its stream is out of step")

    def _send_inline(self, kind: int, run: int, message: Message) -> None:
        data, buffers = message.data, message.buffers
        lengths = length_table(data, buffers)
        parts: list = [lengths, data]
        offset = len(lengths) + len(data)
        for b in buffers:
            pad = -offset % _ALIGN
            if pad:
                parts.append(bytes(pad))
            parts.append(b)
            offset += pad + b.nbytes
        parts[0] = _HEADER.pack(kind, 0, run, len(buffers), offset, self.received) + lengths
        if _HEADER.size + offset < _MIN_FRAME:
            parts.append(bytes(_MIN_FRAME - _HEADER.size - offset))
        self._sendall(parts)

    def _send_shared(self, kind: int, run: int, message: Message) -> None:
        arena = message.arena
        if arena is None or arena.closed:  # the first send of this message: write it once
            try:
                arena = message.arena = _pool.acquire(message.nbytes)
            except OSError:  # no memfd to be had (descriptors or memory exhausted)
                self._send_inline(kind, run, message)
                return
            arena.write(message.buffers)
        new = self not in arena.known_by
        retired, self.retired = self.retired, []
        data, buffers = message.data, message.buffers
        table = (length_table(data, buffers)
                 + _ARENA.pack(arena.ident, arena.size, new, len(retired))
                 + b"".join(_LENGTH.pack(r) for r in retired))
        size = len(table) + len(data)
        frame = _HEADER.pack(kind, _SHARED, run, len(buffers), size, self.received)
        self._send_one((frame + table + data).ljust(_MIN_FRAME, b"\0"))
        arena.pending[self] = self.sent
        if new:  # its descriptor, in a message of its own right after the frame
            arena.known_by.add(self)
            if self.outbox:  # behind the frame: a copy of the descriptor, closed once sent
                self.outbox.append(("fd", os.dup(arena.fd)))
                return
            try:
                socket.send_fds(self.sock, [b"\0"], [arena.fd])
            except BlockingIOError:
                self.outbox.append(("fd", os.dup(arena.fd)))
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc

    def _send_one(self, frame: bytes) -> None:
        # send, not sendmsg: for one buffer it skips building an iovec (1.5 us a message).
        if self.outbox:  # behind what waits already
            self.outbox.append(frame)
            self._write_outbox()
            return
        try:
            sent = self.sock.send(frame)
            if sent < len(frame):
                if self.nonblocking:
                    self.outbox.append(memoryview(frame)[sent:])
                else:
                    self.sock.sendall(memoryview(frame)[sent:])
        except BlockingIOError:
            self.outbox.append(frame)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc

    def _sendall(self, parts: list) -> None:
        if self.outbox:
            self._queue(parts)
            self._write_outbox()
            return
        try:
            try:
                sent = self.sock.sendmsg(parts)
            except BlockingIOError:
                sent = 0
            total = sum(memoryview(p).nbytes for p in parts)
            while sent < total:  # a partial send: resend what is left
                parts, total = _drop_prefix(parts, sent), total - sent
                if self.nonblocking:
                    # A copy: the arrays may change once send returns (the central's step).
                    self._queue(parts)
                    return
                sent = self.sock.sendmsg(parts)
        except OSError as exc:  # BrokenPipeError, ConnectionResetError, ...
            raise ChannelClosed(str(exc)) from exc

    def _queue(self, parts: list) -> None:
        self.outbox.append(b"".join(memoryview(p).cast("B") for p in parts))

    @_whole
    def flush(self) -> bool:
        """Write what waits in ``outbox``, as far as the socket takes it now (never blocks);
        True once nothing waits. Raises ChannelClosed if the peer is gone."""
        if not self.outbox:
            return True
        self._check_intact()
        self.torn = True
        self._write_outbox()
        self.torn = False
        return not self.outbox

    def _write_outbox(self) -> None:
        box = self.outbox
        try:
            while box:
                item = box[0]
                if type(item) is tuple:  # an arena's descriptor
                    socket.send_fds(self.sock, [b"\0"], [item[1]], socket.MSG_DONTWAIT)
                    box.popleft()
                    os.close(item[1])
                    continue
                sent = self.sock.send(item)
                if sent < len(item):
                    box[0] = memoryview(item)[sent:]
                    return
                box.popleft()
        except BlockingIOError:
            pass
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc


def _shared(message: Message) -> bool:
    """Whether a message's buffers go through shared memory (``SHARED_MIN`` is read at each
    send: the benchmarks and tests turn it off)."""
    return SHARED_MIN is not None and message.nbytes >= SHARED_MIN


def _drop_prefix(parts: list, n: int) -> list:
    """The parts left once the first ``n`` bytes are sent."""
    out = []
    for p in parts:
        view = memoryview(p).cast("B")
        if n >= view.nbytes:
            n -= view.nbytes
            continue
        out.append(view[n:])
        n = 0
    return out
