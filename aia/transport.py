"""Messages between the central and a local worker, over one stream socket per worker.

Data flow (one worker shown; the central holds one `Channel` per worker)::

    central                                   worker process
    -------                                   --------------
    Channel.send(QUERY, q)  ---------------->  Channel.recv() -> answer(q, problem)
    Channel.recv() -> (ANSWER, a)  <---------  Channel.send(ANSWER, a)
                                   <---------  (ERROR, RemoteError text) when answer raises

A frame is a fixed header (kind, run id, number of out-of-band buffers, lengths), the pickle
stream (protocol 5) and the raw bytes of each out-of-band buffer. Large numpy arrays are
therefore never copied into the pickle stream: ``sendmsg`` gathers them straight from the
array's memory, and the receiver reads each into its own ``bytearray`` (so the arrays it gets
are writable, unlike arrays built on ``bytes``).

Small frames are joined into a single ``sendmsg``; that and plain ``pickle`` (not
``ForkingPickler``) keep a 10-float round trip at or below a raw ``multiprocessing`` pipe.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

import cloudpickle

# Message kinds.
QUERY = 1  # central -> worker: a query of the current run
ANSWER = 2  # worker -> central: an answer
ERROR = 3  # worker -> central: an exception (as RemoteError text)
CONTROL = 4  # central -> worker: a command (setup, store, apply, free, end, stop)
REPLY = 5  # worker -> central: the reply to a command

_HEADER = struct.Struct("!BIIQ15x")  # kind, run id, out-of-band buffers, payload length; 32 B
_LENGTH = struct.Struct("!Q")
_ALIGN = 16  # out-of-band buffers start on this boundary, so arrays built on them are aligned
# Every frame is at least this long (small ones are padded), so the receiver reads the header
# and a small payload in one recv without ever reading into the next frame.
_MIN_FRAME = 256
# Buffers below this size travel in the pickle stream: out of band costs more than it saves.
_IN_BAND = 4096


class ChannelClosed(EOFError):
    """The other end of the channel is gone."""


class Undecodable(Exception):
    """A whole message arrived but could not be unpickled (the channel stays usable)."""

    def __init__(self, kind: int, run: int, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.kind, self.run, self.cause = kind, run, cause


def pipe() -> tuple["Channel", "Channel"]:
    """Two connected channels (the central's end, the worker's end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(a), Channel(b)


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


class Channel:
    """One end of a message stream between two processes."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._first = bytearray(_MIN_FRAME)  # the head of every frame is read into this

    def fileno(self) -> int:
        """So that `multiprocessing.connection.wait` can wait on the channel."""
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # -- sending --------------------------------------------------------------------------
    def send(self, kind: int, obj: Any, run: int = 0) -> None:
        """Send one message; raises TypeError if ``obj`` cannot be pickled."""
        data, buffers = dumps(obj)
        self.send_frame(kind, run, data, buffers)

    def send_frame(self, kind: int, run: int, data: bytes, buffers: list[memoryview]) -> None:
        """Send an already-pickled message (so one query can be pickled once for all)."""
        if not buffers:  # no out-of-band buffer: one contiguous frame
            table = _LENGTH.pack(len(data))
            frame = _HEADER.pack(kind, run, 0, len(table) + len(data)) + table + data
            if len(frame) < _MIN_FRAME:
                frame += bytes(_MIN_FRAME - len(frame))
            self._sendall([frame])
            return
        # The table of lengths holds the pickle stream's length, then each buffer's.
        lengths = _LENGTH.pack(len(data)) + b"".join(_LENGTH.pack(b.nbytes) for b in buffers)
        parts: list = [lengths, data]
        offset = len(lengths) + len(data)
        for b in buffers:
            pad = -offset % _ALIGN
            if pad:
                parts.append(bytes(pad))
            parts.append(b)
            offset += pad + b.nbytes
        parts[0] = _HEADER.pack(kind, run, len(buffers), offset) + lengths
        if _HEADER.size + offset < _MIN_FRAME:
            parts.append(bytes(_MIN_FRAME - _HEADER.size - offset))
        self._sendall(parts)

    def _sendall(self, parts: list) -> None:
        try:
            sent = self.sock.sendmsg(parts)
            total = sent if len(parts) == 1 and sent == len(parts[0]) else \
                sum(memoryview(p).nbytes for p in parts)
            while sent < total:  # a partial send: resend what is left
                parts, total = _drop_prefix(parts, sent), total - sent
                sent = self.sock.sendmsg(parts)
        except OSError as exc:  # BrokenPipeError, ConnectionResetError, ...
            raise ChannelClosed(str(exc)) from exc

    # -- receiving ------------------------------------------------------------------------
    def recv(self) -> tuple[int, int, Any]:
        """Receive one message: ``(kind, run, obj)``. Blocks; raises ChannelClosed on EOF."""
        first = self._recv_into(self._first)  # reused: small frames are unpickled by copy
        kind, run, nbuffers, size = _HEADER.unpack_from(first)
        # One buffer for the whole payload: out-of-band arrays become writable views of it.
        if _HEADER.size + size <= _MIN_FRAME:
            payload = memoryview(first)[_HEADER.size:]
            if nbuffers:  # arrays will live on this memory: give them memory of their own
                payload = memoryview(bytearray(payload))
        else:
            whole = bytearray(size)
            head = _MIN_FRAME - _HEADER.size
            whole[:head] = memoryview(first)[_HEADER.size:]
            self._recv_into(whole, head)
            payload = memoryview(whole)
        table = [_LENGTH.unpack_from(payload, i * _LENGTH.size)[0] for i in range(nbuffers + 1)]
        offset = (nbuffers + 1) * _LENGTH.size
        data = payload[offset : offset + table[0]]
        offset += table[0]
        buffers = []
        for n in table[1:]:
            offset += -offset % _ALIGN
            buffers.append(payload[offset : offset + n])
            offset += n
        try:
            return kind, run, pickle.loads(data, buffers=buffers)
        except Exception as exc:  # e.g. a class that exists only on the sender's side
            raise Undecodable(kind, run, exc) from exc

    def _recv_into(self, buf: bytearray, got: int = 0) -> bytearray:
        """Fill ``buf`` from byte ``got`` on."""
        view = memoryview(buf)
        n = len(buf)
        try:
            while got < n:
                k = self.sock.recv_into(view[got:], n - got)
                if k == 0:
                    raise ChannelClosed("the other end closed the channel")
                got += k
        except ChannelClosed:
            raise
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        return buf


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

