"""Shared memory for the large buffers of a channel's messages (Linux): *arenas*, memfds
mapped in both processes, reused one message at a time (see `aia.transport`)."""

from __future__ import annotations

import mmap
import os
import weakref
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .transport import Channel

_ALIGN = 16  # out-of-band buffers start on this boundary, so arrays built on them are aligned


def _layout(lengths) -> tuple[list[int], int]:
    """Offsets of consecutive buffers, each aligned, and the total size."""
    offsets, end = [], 0
    for n in lengths:
        end += -end % _ALIGN
        offsets.append(end)
        end += n
    return offsets, end


class Arena:
    """A shared-memory region of the sending process (a memfd, mapped for good), reused for
    the large buffers of one message at a time. ``pending`` maps each channel the current
    message went to, to that frame's number on it: the arena is free again once every such
    peer has acknowledged the frame (or is gone)."""

    def __init__(self, ident: int, size: int):
        self.ident = ident
        self.size = size
        self.fd = os.memfd_create(f"aia-arena-{ident}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            # Reserve the pages now: without memory, an OSError here (and the message goes
            # in the frame) rather than a SIGBUS at the first write.
            os.posix_fallocate(self.fd, 0, size)
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self.pending: dict[Channel, int] = {}
        self.known_by: set[Channel] = set()  # channels whose peer has the descriptor
        self.closed = False

    def free(self) -> bool:
        pending = self.pending
        for channel, frame in list(pending.items()):
            if channel.closed or channel.peer_received > frame:
                del pending[channel]
        return not pending

    def write(self, buffers: list) -> None:
        offsets, _ = _layout(b.nbytes for b in buffers)
        view = memoryview(self.map)
        try:
            for offset, b in zip(offsets, buffers):
                view[offset : offset + b.nbytes] = b.cast("B")
        finally:
            view.release()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _unmap(self.map)
        os.close(self.fd)


class _ArenaPool:
    """The arenas of this process. Messages of similar sizes reuse the same few arenas; one
    too small for a new message is replaced by a larger one when it is free."""

    def __init__(self) -> None:
        self.arenas: list[Arena] = []
        self.next_id = 0

    def acquire(self, nbytes: int) -> Arena:
        small = None
        for arena in self.arenas:
            if arena.free():
                if arena.size >= nbytes:
                    return arena
                small = small or arena
        if small is not None:  # grow: retire a free arena that is too small
            self.retire(small)
        self.next_id += 1
        size = 1 << max(20, (nbytes - 1).bit_length())  # powers of two, 1 MiB at least
        arena = Arena(self.next_id, size)
        self.arenas.append(arena)
        return arena

    def retire(self, arena: Arena) -> None:
        self.arenas.remove(arena)
        for channel in arena.known_by:  # told with the next shared frame on each channel
            channel.retired.append(arena.ident)
        arena.close()

    def forget(self, channel: "Channel") -> None:
        """A channel closed: arenas no open channel uses any more are closed (their memory
        goes back to the system with the cluster)."""
        for arena in list(self.arenas):
            arena.pending.pop(channel, None)
            arena.known_by.discard(channel)
            if not arena.known_by and arena.free():
                self.arenas.remove(arena)
                arena.close()


_pool = _ArenaPool()
_channels: "weakref.WeakSet[Channel]" = weakref.WeakSet()  # for a forked child to clean up


def _new_pool_in_child() -> None:
    """A forked child drops the shared memory it inherited: its parent's arenas are not its
    own to write, and holding them (or the parent's mappings of other processes' arenas)
    would keep their memory alive as long as the child lives. (The pool is emptied in
    place: `aia.transport` holds it by name.)"""
    inherited, _pool.arenas = _pool.arenas, []
    _pool.next_id = 0
    for arena in inherited:
        arena.close()
    for channel in list(_channels):
        channel.unmap_peer_arenas()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_pool_in_child)


def _unmap(mapped: Optional[mmap.mmap]) -> None:
    if mapped is not None:
        try:
            mapped.close()
        except BufferError:
            pass
