"""Files of a folder that others can write to, opened so that they cannot redirect or block
the reader.

Every path below the folder's root is walked one component at a time from a descriptor of
the root, each directory opened with ``O_NOFOLLOW | O_DIRECTORY``: a symbolic link planted
anywhere under the root (``runs/<run>/<site>`` pointing at ``/etc``) is refused, never
followed, so nothing is read or written outside the folder. A file is opened with
``O_NOFOLLOW | O_NONBLOCK`` and used only if it is a regular file (a FIFO named
``session.json`` would otherwise block the reader forever), and its size is checked before
a byte of it is read. Writes go to a fresh temporary name (``O_EXCL``) in the same
directory, then ``os.replace``, all relative to the directory's descriptor.

The root itself (the user's synced folder, which may well be a link) is opened normally.
Where the platform lacks ``dir_fd`` (Windows), the same checks are made on paths with
``lstat``, one component at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Iterator, Optional

# os.replace takes dir_fd wherever os.rename does (both are renameat), but CPython lists
# only os.rename in supports_dir_fd: testing os.replace there turned the descriptor walk
# off on Linux, leaving the path-based checks (and their race with a planted link).
_DIR_FD = os.open in os.supports_dir_fd and os.rename in os.supports_dir_fd \
    and hasattr(os, "O_NOFOLLOW")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class UnsafePath(OSError):
    """A path of the folder that is not what it must be: a link, a FIFO, a device, a
    directory where a file belongs, or too large."""


def _parts(root: Path, path: Path) -> tuple:
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        raise UnsafePath(f"{path} is not inside the folder {root}") from None
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"{path}: a relative component")
    return parts


@contextlib.contextmanager
def _directory(root: Path, parts: tuple, create: bool) -> Iterator[Optional[int]]:
    """A descriptor of the directory ``root/parts...`` (None if absent and not created)."""
    fd = os.open(root, os.O_RDONLY | _DIRECTORY)
    try:
        for part in parts:
            try:
                child = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    yield None
                    return
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                child = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise UnsafePath(f"{part!r} under {root} is not a plain directory "
                                     "(a link, or a file)") from None
                raise
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _check_plain(root: Path, parts: tuple) -> bool:
    """Path-based fallback: every component an existing non-link (False if one is absent)."""
    here = Path(root)
    for part in parts:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"{here} is a link")
    return True


def read(root: Path, path: Path, max_bytes: int) -> Optional[bytes]:
    """The bytes of the regular file ``path`` (None if absent); `UnsafePath` if it is not a
    regular file, lies behind a link, or is larger than ``max_bytes``."""
    parts = _parts(root, path)
    if not _DIR_FD:
        if not _check_plain(root, parts):
            return None
        return _read_fd(lambda: os.open(path, os.O_RDONLY | _NONBLOCK), path, max_bytes)
    with _directory(root, parts[:-1], create=False) as fd:
        if fd is None:
            return None
        return _read_fd(lambda: os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK,
                                        dir_fd=fd), path, max_bytes)


def _read_fd(opener, path: Path, max_bytes: int) -> Optional[bytes]:
    try:
        fd = opener()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):
            raise UnsafePath(f"{path} is a link or a special file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise UnsafePath(f"{path} is larger than {max_bytes} bytes")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # it grew while we read
            raise UnsafePath(f"{path} is larger than {max_bytes} bytes")
        return data
    finally:
        os.close(fd)


def signature(root: Path, path: Path) -> Optional[tuple]:
    """What identifies one version of ``path`` on this machine (None if absent), without
    following a link."""
    try:
        parts = _parts(root, path)
        if not _DIR_FD:
            if not _check_plain(root, parts[:-1]):
                return None
            st = os.lstat(path)
        else:
            with _directory(root, parts[:-1], create=False) as fd:
                if fd is None:
                    return None
                st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError, UnsafePath):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, stat.S_IFMT(st.st_mode))


def exists(root: Path, path: Path) -> bool:
    return signature(root, path) is not None


def is_dir(root: Path, path: Path) -> bool:
    sig = signature(root, path)
    return sig is not None and sig[3] == stat.S_IFDIR


def listdir(root: Path, path: Path) -> list:
    """The names in the directory ``path`` ([] if absent, a link or not a directory)."""
    try:
        parts = _parts(root, path)
        if not _DIR_FD:
            if not _check_plain(root, parts) or not os.path.isdir(path):
                return []
            return os.listdir(path)
        with _directory(root, parts, create=False) as fd:
            return [] if fd is None else os.listdir(fd)
    except (FileNotFoundError, NotADirectoryError, UnsafePath):
        return []


def write_atomic(root: Path, path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` as ``path``: a temporary name (``.~`` prefix: Dropbox skips it) in the
    same directory, fsync (if ``durable``), then ``os.replace``; directories created as
    needed, never through a link.

    Readers see the whole file or none either way (the rename does that); ``durable`` only
    adds that the content is on disk before the name is, should the machine lose power."""
    parts = _parts(root, path)
    name = parts[-1]
    tmp = f".~{name}.{secrets.token_hex(4)}.tmp"
    if not _DIR_FD:
        here = Path(root).joinpath(*parts[:-1])
        here.mkdir(parents=True, exist_ok=True)
        _check_plain(root, parts[:-1])
        _write_then_replace(data, lambda flags: os.open(here / tmp, flags, 0o644),
                            lambda: os.replace(here / tmp, here / name),
                            lambda: os.unlink(here / tmp), durable)
        return
    with _directory(root, parts[:-1], create=True) as fd:
        _write_then_replace(
            data, lambda flags: os.open(tmp, flags | _NOFOLLOW, 0o644, dir_fd=fd),
            lambda: os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd),
            lambda: os.unlink(tmp, dir_fd=fd), durable)


def _write_then_replace(data: bytes, opener, replace, remove, durable: bool = True) -> None:
    fd = opener(os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    done = False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        for attempt in range(100):
            try:
                replace()
                done = True
                return
            except PermissionError:  # Windows: a reader or the sync client holds the target
                if attempt == 99:
                    raise
                time.sleep(0.05)
    finally:
        if not done:
            with contextlib.suppress(OSError):
                remove()


def unlink(root: Path, path: Path) -> None:
    """Remove the file ``path`` if it is there (never through a link)."""
    parts = _parts(root, path)
    if not _DIR_FD:
        if _check_plain(root, parts):
            os.unlink(path)
        return
    with _directory(root, parts[:-1], create=False) as fd:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(parts[-1], dir_fd=fd)
