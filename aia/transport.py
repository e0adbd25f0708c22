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

The arenas are `aia.arena`'s; the Ctrl-C guard of channel operations is `aia.interrupts`'s.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import socket
import struct
import time
from collections import deque
from typing import Any, Optional

import cloudpickle
import numpy as np

from .arena import _ALIGN, Arena, _channels, _layout, _pool, _unmap  # noqa: F401 (Arena)
from .interrupts import _whole, interrupts  # noqa: F401 (interrupts: aia.transport's)

# Message kinds.
QUERY = 1  # central -> worker: a query of the current run
ANSWER = 2  # worker -> central: an answer
ERROR = 3  # worker -> central: an exception (as RemoteError text)
CONTROL = 4  # central -> worker: a command (setup, store, apply, free, end, stop)
REPLY = 5  # worker -> central: the reply to a command

# kind, flags, run id, out-of-band buffers, payload length, frames received from the peer
_HEADER = struct.Struct("!BBIIQQ6x")  # 32 bytes
_LENGTH = struct.Struct("!Q")
_HEAD_AND_LENGTH = struct.Struct("!BBIIQQ6xQ")  # a frame without buffers: header, stream length
_ARENA = struct.Struct("!QQBQ")  # arena id, arena size, descriptor follows, retired ids
_SHARED = 1  # flag: the out-of-band buffers are in the sender's arena
# Every frame is at least this long (small ones are padded), so the receiver reads the header
# and a small payload in one recv without ever reading into the next frame.
_MIN_FRAME = 256
# Buffers below this size travel in the pickle stream: out of band costs more than it saves.
_IN_BAND = 4096
#: Out-of-band bytes of one message from which they go through shared memory (None: never).
SHARED_MIN: Optional[int] = 128 * 1024  # measured: the socket wins below 64 KiB, loses at 256
if not (hasattr(os, "memfd_create") and hasattr(socket, "send_fds")) \
        or os.environ.get("AIA_SHARED_MEMORY", "1") == "0":
    SHARED_MIN = None


class ChannelClosed(EOFError):
    """The other end of the channel is gone."""


class Undecodable(Exception):
    """A whole message arrived but could not be unpickled (the channel stays usable)."""

    def __init__(self, kind: int, run: int, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.kind, self.run, self.cause = kind, run, cause


def pipe(nonblocking: bool = False) -> tuple["Channel", "Channel"]:
    """Two connected channels (the central's end, the worker's end); ``nonblocking``: the
    central's end queues what it cannot send at once (see the module's docstring)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(a, nonblocking=nonblocking), Channel(b)


def dumps(obj: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj`` with protocol 5, keeping large contiguous buffers out of band."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < _IN_BAND:
            return True  # a true value keeps the buffer in the pickle stream
        buffers.append(raw)
        return False

    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    except Exception:  # pickle raises TypeError, PicklingError, AttributeError, ...
        # Plain pickle is fastest; cloudpickle also takes lambdas and classes from scripts.
        buffers.clear()
        try:
            data = cloudpickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
        except Exception as exc:
            raise _unpicklable(obj, exc) from exc
    return data, buffers


def _unpicklable(obj: Any, exc: Exception) -> TypeError:
    return TypeError(
        f"cannot send an object of type {type(obj).__name__!r} to another process: {exc}. "
        "What crosses between processes must be picklable (numbers, arrays, lists, dicts, "
        "classes; not open files, locks, sockets or generators)."
    )


class Message:
    """An object pickled once, ready to be sent on one channel or several (a broadcast
    writes its large buffers to shared memory once, at the first send)."""

    __slots__ = ("data", "buffers", "nbytes", "arena")

    def __init__(self, data: bytes, buffers: list):
        self.data, self.buffers = data, buffers
        self.nbytes = sum(b.nbytes for b in buffers) if buffers else 0
        self.arena: Optional[Arena] = None

    def shared(self) -> bool:
        return SHARED_MIN is not None and self.nbytes >= SHARED_MIN


def encode(obj: Any) -> Message:
    """``obj`` pickled for sending; raises TypeError if it cannot be pickled."""
    return Message(*dumps(obj))


def _length_table(data: bytes, buffers: list) -> bytes:
    """The table of lengths: the pickle stream's, then each out-of-band buffer's."""
    return _LENGTH.pack(len(data)) + b"".join(_LENGTH.pack(b.nbytes) for b in buffers)


# -- channels ----------------------------------------------------------------------------
class Channel:
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
        if message.shared():
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
        lengths = _length_table(data, buffers)
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
        table = (_length_table(data, buffers)
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

    # -- receiving ------------------------------------------------------------------------
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
                    return header[0], header[2], _loads(header[0], header[2],
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
            return kind, run, _loads(kind, run, payload[offset : offset + lengths[0]], buffers)
        data = payload[offset : offset + lengths[0]]
        offset += lengths[0]
        buffers = []
        for n in lengths[1:]:
            offset += -offset % _ALIGN
            buffers.append(payload[offset : offset + n])
            offset += n
        return kind, run, _loads(kind, run, data, buffers)

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


def _loads(kind: int, run: int, data: memoryview, buffers: list) -> Any:
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as exc:  # e.g. a class that exists only on the sender's side
        raise Undecodable(kind, run, exc) from exc


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
