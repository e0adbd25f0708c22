"""Where each file lives in the synced folder, and how a reader finds the valid ones.

::

    <folder>/<session>/session.json                  central: the sites of the session
    <folder>/<session>/end.json                      central: finished | cancelled
    <folder>/<session>/sites/<site>.json             site: joined (what it allows)
    <folder>/<session>/runs/<run>/run.json           central: the algorithm, by name, and
                                                     its parameters; the sites of the run
    <folder>/<session>/runs/<run>/end.json           central: the run is over
    <folder>/<session>/runs/<run>/<site>/status.json site: ready | failed (why)
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

from . import codec

log = logging.getLogger("aia.folder")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RUN = re.compile(r"r(\d{4,})-([0-9a-f]{12})")
QUERY = re.compile(r"q-(\d{6,})\.npz")
ANSWER = re.compile(r"a-(\d{6,})\.npz")
RESERVED = {"runs", "sites", "session.json", "end.json"}


def check_name(what: str, name: Any) -> str:
    """A site or session name: a safe path component on every platform."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in RESERVED \
            or name.endswith("."):
        raise ValueError(f"{what}: expected a name of letters, digits, '_', '-' and '.' "
                         f"(at most 64, not starting with '.' or '-'), got {name!r}")
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

    def runs(self) -> list:
        """The run ids present, in the order they were opened."""
        try:
            names = os.listdir(self.dir / "runs")
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = [(int(m.group(1)), n) for n in names if (m := RUN.fullmatch(n))]
        return [n for _, n in sorted(found)]

    def numbered(self, run: str, site: str, pattern: re.Pattern) -> list:
        """The sequence numbers of the query (or answer) files of a site, highest first."""
        try:
            names = os.listdir(self.site_dir(run, site))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted((int(m.group(1)) for n in names if (m := pattern.fullmatch(n))),
                      reverse=True)


def sessions(folder: Path) -> list:
    """The session names of ``folder``, sorted."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if NAME.fullmatch(n) and (Path(folder) / n).is_dir())


class Reader:
    """Reads checked files, remembering those it rejected (by their local signature), so a
    bad file is reported once and read again only once it changes."""

    def __init__(self, who: str, key: Optional[bytes], max_bytes: int = codec.MAX_BYTES):
        self.who = who
        self.key = key
        self.max_bytes = max_bytes
        self.rejected: dict = {}  # path -> (signature, reason)

    def read(self, path: Path, expect: dict, check=None,
             undecodable: bool = False) -> Optional[tuple]:
        """``(envelope, body)`` of a valid file at ``path``; None if absent or rejected.

        ``check(envelope)`` may raise `codec.Rejected` for a further condition. With
        ``undecodable=True``, `codec.Undecodable` (an authentic file whose body cannot be
        decoded here) is raised for the caller to answer, instead of being ignored."""
        sig = codec.signature(path)
        if sig is None:
            return None
        seen = self.rejected.get(path)
        if seen is not None and seen[0] == sig:
            return None
        fmt = "json" if path.suffix == ".json" else "npz"
        try:
            data = codec.read_bytes(path, self.max_bytes)
            if data is None:
                return None
            result = codec.loads(data, expect, fmt=fmt, key=self.key, max_bytes=self.max_bytes)
            if check is not None:
                check(result[0])
        except codec.Rejected as exc:
            if undecodable and isinstance(exc, codec.Undecodable):
                raise
            self.rejected[path] = (sig, str(exc))
            log.warning("%s: ignoring %s: %s", self.who, path, exc)
            return None
        self.rejected.pop(path, None)
        return result


def write(path: Path, kind: str, where: dict, body: Any, key: Optional[bytes],
          extra: Optional[dict] = None) -> str:
    """Write a checked file atomically (creating its folder); returns its digest."""
    fmt = "json" if path.suffix == ".json" else "npz"
    data, digest = codec.dumps(kind, where, body, fmt=fmt, key=key, extra=extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec.write_atomic(path, data)
    return digest
