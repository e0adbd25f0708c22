"""What a message is on the wire: its kinds, its frame, and how an object is pickled for it.

A frame is a fixed header (kind, flags, run id, number of out-of-band buffers, payload length,
acknowledgement), a table of lengths, the pickle stream (protocol 5) and the out-of-band
buffers (or, with the ``_SHARED`` flag, where they are in the sender's shared-memory arena).
`aia.transport` sends frames and `aia.receive` reads them; see `aia.transport` for where the
bytes of an array go.
"""

from __future__ import annotations

import pickle
import struct
from typing import TYPE_CHECKING, Any, Optional

import cloudpickle

if TYPE_CHECKING:
    from .arena import Arena

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


class ChannelClosed(EOFError):
    """The other end of the channel is gone."""


class Undecodable(Exception):
    """A whole message arrived but could not be unpickled (the channel stays usable)."""

    def __init__(self, kind: int, run: int, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.kind, self.run, self.cause = kind, run, cause


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
        self.arena: Optional["Arena"] = None  # an `aia.arena.Arena`, once sent shared


def encode(obj: Any) -> Message:
    """``obj`` pickled for sending; raises TypeError if it cannot be pickled."""
    return Message(*dumps(obj))


def length_table(data: bytes, buffers: list) -> bytes:
    """The table of lengths: the pickle stream's, then each out-of-band buffer's."""
    return _LENGTH.pack(len(data)) + b"".join(_LENGTH.pack(b.nbytes) for b in buffers)


def loads(kind: int, run: int, data: memoryview, buffers: list) -> Any:
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as exc:  # e.g. a class that exists only on the sender's side
        raise Undecodable(kind, run, exc) from exc
