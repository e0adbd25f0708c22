"""Where each file lives in the synced folder, and how a reader finds the valid ones.

::

    <folder>/<session>/session.json                  central: the sites of the session
    <folder>/<session>/end.json                      central: finished | cancelled
    <folder>/<session>/central.json                  central: its attempt (a token that
                                                     each central process draws anew)
    <folder>/<session>/sites/<site>.json             site: joined (what it allows)
    <folder>/<session>/runs/<run>/run.json           central: the algorithm, by name, and
                                                     its parameters; the sites of the run
    <folder>/<session>/runs/<run>/end.json           central: the run is over
    <folder>/<session>/runs/<run>/<site>/status.json site: ready | failed (why), for
                                                     which attempt, by which process
    <folder>/<session>/runs/<run>/<site>/q-000007.npz central: the 7th query to this site
    <folder>/<session>/runs/<run>/<site>/a-000007.npz site: its answer (or its error)

A session is one model (or one `FolderCluster`); each `aia.start` on it opens a run
``r0001-<digest>``, numbered in order and named by the digest of its description, so a
central that starts again with the same calls finds its runs again. Each file has a single
writer. Names are matched exactly: temporary files (``.~...tmp``), sync-client copies
(``a-000007 (conflicted copy ...).npz``, ``a-000007 (1).npz``) and anything else are
ignored.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

from . import codec, safefs

log = logging.getLogger("aia.folder")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RUN = re.compile(r"r(\d{4,})-([0-9a-f]{12})")
QUERY = re.compile(r"q-(\d{6,})\.npz")
ANSWER = re.compile(r"a-(\d{6,})\.npz")
#: Names of the layout's own files and folders (and their stems): a site or session named
#: so would collide with them, on case-insensitive file systems too.
RESERVED = {"runs", "sites", "session", "end", "run", "status", "session.json", "end.json",
            "run.json", "status.json"}
#: Device names Windows reserves in every folder.
_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
            *(f"lpt{i}" for i in range(10))}


def check_name(what: str, name: Any) -> str:
    """A site or session name: a safe path component on every platform, none of the
    layout's own names (in any case)."""
    folded = name.casefold() if isinstance(name, str) else ""
    if not isinstance(name, str) or not NAME.fullmatch(name) or folded in RESERVED \
            or folded.split(".")[0] in _DEVICES or name.endswith(".") \
            or RUN.fullmatch(folded) or QUERY.fullmatch(folded) or ANSWER.fullmatch(folded):
        raise ValueError(f"{what}: expected a name of letters, digits, '_', '-' and '.' "
                         f"(at most 64, not starting with '.' or '-', none of the folder's "
                         f"own names {sorted(RESERVED)}), got {name!r}")
    return name


class Session:
    """The paths of one session."""

    def __init__(self, folder: Path, name: str):
        self.folder = Path(folder)
        self.name = name
        self.dir = self.folder / name

    @property
    def description(self) -> Path:
        return self.dir / "session.json"

    @property
    def end(self) -> Path:
        return self.dir / "end.json"

    @property
    def central(self) -> Path:
        return self.dir / "central.json"

    def joined(self, site: str) -> Path:
        return self.dir / "sites" / f"{site}.json"

    def run_dir(self, run: str) -> Path:
        return self.dir / "runs" / run

    def site_dir(self, run: str, site: str) -> Path:
        return self.dir / "runs" / run / site

    def query(self, run: str, site: str, seq: int) -> Path:
        return self.site_dir(run, site) / f"q-{seq:06d}.npz"

    def answer(self, run: str, site: str, seq: int) -> Path:
        return self.site_dir(run, site) / f"a-{seq:06d}.npz"

    def status(self, run: str, site: str) -> Path:
        return self.site_dir(run, site) / "status.json"

    # -- files, through safefs (never through a link planted in the folder) -------------
    def write(self, path: Path, kind: str, where: dict, body: Any, key: Optional[bytes],
              extra: Optional[dict] = None, durable: bool = True) -> str:
        """`write` under this session's folder."""
        return write(path, kind, where, body, key, extra, root=self.folder, durable=durable)

    def exists(self, path: Path) -> bool:
        return safefs.exists(self.folder, path)

    def unlink(self, path: Path) -> None:
        safefs.unlink(self.folder, path)

    def runs(self) -> list:
        """The run ids present, in the order they were opened."""
        names = safefs.listdir(self.folder, self.dir / "runs")
        found = [(int(m.group(1)), n) for n in names if (m := RUN.fullmatch(n))]
        return [n for _, n in sorted(found)]

    def numbered(self, run: str, site: str, pattern: re.Pattern) -> list:
        """The sequence numbers of the query (or answer) files of a site, highest first."""
        names = safefs.listdir(self.folder, self.site_dir(run, site))
        return sorted((int(m.group(1)) for n in names if (m := pattern.fullmatch(n))),
                      reverse=True)


def sessions(folder: Path) -> list:
    """The session names of ``folder``, sorted."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if NAME.fullmatch(n)
                  and safefs.is_dir(Path(folder), Path(folder) / n))


class Reader:
    """Reads checked files, remembering those it rejected (by their local signature), so a
    bad file is reported once and read again only once it changes.

    It never raises for what it finds in the folder: a file that is absent, a link, not a
    regular file, too large, malformed in any way, forged, or of an unexpected shape reads as
    None (logged once). ``root``: the folder, under which nothing is read through a link
    (default: each file's own directory)."""

    def __init__(self, who: str, key: Optional[bytes], max_bytes: int = codec.MAX_BYTES,
                 root: Optional[Path] = None):
        self.who = who
        self.key = key
        self.max_bytes = max_bytes
        self.root = None if root is None else Path(root)
        self.rejected: dict = {}  # path -> (signature, reason)

    def signature(self, path: Path) -> Optional[tuple]:
        return codec.signature(path, self.root)

    def read(self, path: Path, expect: dict, check=None, undecodable: bool = False,
             body: Optional[type] = None) -> Optional[tuple]:
        """``(envelope, body)`` of a valid file at ``path``; None if absent or rejected.

        ``check(envelope)`` may raise `codec.Rejected` for a further condition; ``body``, a
        type the body must have (e.g. dict). With ``undecodable=True``,
        `codec.Undecodable` (an authentic file whose body cannot be decoded here) is raised
        for the caller to answer, instead of being ignored."""
        sig = self.signature(path)
        if sig is None:
            return None
        seen = self.rejected.get(path)
        if seen is not None and seen[0] == sig:
            return None
        fmt = "json" if path.suffix == ".json" else "npz"
        limit = min(self.max_bytes, codec.MAX_CONTROL_BYTES) if fmt == "json" else \
            self.max_bytes
        try:
            data = codec.read_bytes(path, limit, self.root)
            if data is None:
                return None
            result = codec.loads(data, expect, fmt=fmt, key=self.key, max_bytes=self.max_bytes)
            if body is not None and not isinstance(result[1], body):
                raise codec.Rejected(f"its body is a {type(result[1]).__name__}, expected a "
                                     f"{body.__name__}")
            if check is not None:
                check(result[0])
        except codec.Undecodable:
            if undecodable:
                raise
            return self._reject(path, sig, "its body cannot be decoded here")
        except codec.Rejected as exc:
            return self._reject(path, sig, str(exc))
        except Exception as exc:  # noqa: BLE001 - nothing in the folder may stop a reader
            return self._reject(path, sig, f"{type(exc).__name__}: {str(exc)[:200]}")
        self.rejected.pop(path, None)
        return result

    def _reject(self, path: Path, sig: tuple, reason: str) -> None:
        self.rejected[path] = (sig, reason)
        log.warning("%s: ignoring %s: %s", self.who, path, reason)
        return None


def write(path: Path, kind: str, where: dict, body: Any, key: Optional[bytes],
          extra: Optional[dict] = None, root: Optional[Path] = None,
          durable: bool = True) -> str:
    """Write a checked file atomically (creating its folders, never through a link under
    ``root``); returns its digest. ``durable=False``: no fsync (see
    `aia.folder.safefs.write_atomic`)."""
    fmt = "json" if path.suffix == ".json" else "npz"
    data, digest = codec.dumps(kind, where, body, fmt=fmt, key=key, extra=extra)
    codec.write_atomic(path, data, root, durable)
    return digest
