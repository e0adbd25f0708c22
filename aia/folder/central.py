"""`FolderCluster`: sites reached through a synced folder, as an `aia` cluster.

The central writes each query as a file in the site's folder of the run and polls for the
answer file; `aia.start` runs unchanged (see `aia.folder` for the files and the site's side,
`aia.folder.folder_run` for a run's queries and answers).

Starting again. A central that starts again with the same session name and the same calls
opens the same runs (a run is named by its number and the digest of its description). Each
query it would send is compared with the file already in the folder: if it is the same, the
recorded answer is used without asking the site again, in the order the first central
consumed them (each query records how many answers the central had consumed when it was
written). A deterministic central thus replays to the last complete iteration and goes on
from there; a query that differs replaces the recorded one, and its site answers it anew.

Errors are not replayed. A recorded answer that is an error (the site raised, or the
algorithm's registered ``failed`` says the answer is a refusal, as a GLM site's guard) is
asked again: the query is written anew with this central's attempt in its envelope, so its
digest differs and the site (fixed, or not) answers it anew; the run goes on live from
there. Each central draws an attempt token and writes it to ``central.json``; a site's
``status.json`` says which attempt it answers (and which site process wrote it), and a failed
status of an earlier attempt is stale: ignored, while the site sets the run up again for
this attempt. So after a site's error, fixing the site and running the same central again
resumes the session.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cloudpickle

from ..cluster import Cluster
from . import codec, registry
from .layout import Reader, Session, check_name
from .folder_run import FolderRun
from .watch import Waiter

log = logging.getLogger("aia.folder")


def as_key(key: Union[None, str, bytes]) -> Optional[bytes]:
    if key is None or isinstance(key, bytes):
        return key or None
    if isinstance(key, str):
        return key.encode("utf-8") or None
    raise TypeError(f"key: expected bytes, a string or None, got {type(key).__name__}")


class FolderCluster(Cluster):
    """Sites that share only a folder (Dropbox, Box, a network drive), as `aia` workers.

    ``sites`` are the sites' names (worker ``i`` is ``sites[i - 1]``); each site runs
    ``python -m aia.folder site --folder F --site NAME --data FILE`` (or `aia.folder.serve`)
    and builds its problem from its own data file: the ``make_problem`` given to `aia.start`
    is called for the central (pid 0) only. The algorithm must be registered by name
    (`aia.folder.register`) here and at the sites; its queries and answers must be plain data
    (numbers, strings, numeric arrays, lists, dicts, registered dataclasses).

    ``session`` names the session (default: a fresh random name); a central that starts
    again with the same name resumes (see the module docstring). ``watch``: wait on file
    events (watchdog), so that an answer is seen within milliseconds; ``poll``: seconds
    between looks at the folder anyway (the fallback for folders that send no events, such
    as network shares; the only way with ``watch=False``). ``timeout``: seconds from now
    after which waiting for a site raises `SitesTimeoutError` naming the sites that owe
    answers. ``key``: a secret shared with the sites out of band; files without its
    signature are ignored. ``report_every``: seconds between log lines naming the sites
    waited for.

    Used as a context manager, the session is marked finished on a normal exit (the sites
    exit) and left open after an error (so that a new central can resume it); `cancel`
    ends it for good.
    """

    #: Why `aia.DistributedObject` is not available here (a FolderCluster is no ObjectStore).
    no_objects_reason = (
        "a site runs no function sent to it (nothing read from the folder is unpickled or "
        "executed); each site builds its problem from its own data file")

    def __init__(self, folder: Union[str, Path], sites: Sequence[str], *,
                 session: Optional[str] = None, poll: float = 0.5,
                 timeout: Optional[float] = None, key: Union[None, str, bytes] = None,
                 max_bytes: int = codec.MAX_BYTES, report_every: float = 10.0,
                 watch: bool = True):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"folder: {folder} is not a directory (the synced folder "
                                    f"must exist)")
        if isinstance(sites, str) or not sites:
            raise ValueError(f"sites: expected a list of site names, got {sites!r}")
        self.sites = [check_name("sites", s) for s in sites]
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"sites: each site may appear once, got {self.sites}")
        for name, value in (("poll", poll), ("timeout", timeout), ("report_every", report_every)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
        self.session = check_name("session", session) if session else \
            f"aia-{secrets.token_hex(6)}"
        self.attempt = secrets.token_hex(8)  # this central's: a site's status names it
        self.layout = Session(folder, self.session)
        self.poll = float(poll)
        self.timeout = timeout
        self.key = as_key(key)
        self.report_every = report_every
        self.reader = Reader("central", self.key, max_bytes, root=folder)
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.heard: set = set()  # sites that answered at least once
        self._opened = 0
        self._closed = False
        self._state: Optional[str] = None
        self._open_session()
        # Its own queries wake nobody (runs/<run>/<site>/q-*).
        self.waiter = Waiter(self.layout.dir, "central", watch,
                             ignore=lambda p: len(p) == 4 and p[3].startswith("q-"))

    # -- the session -------------------------------------------------------------------------
    def _where(self, **kw) -> dict:
        return {"session": self.session, **kw}

    def _open_session(self) -> None:
        lay = self.layout
        got = self.reader.read(lay.description, {"kind": "session", "session": self.session},
                               body=dict)
        if got is None:
            if lay.exists(lay.description):
                raise ValueError(f"session {self.session!r}: {lay.description} exists but is "
                                 f"not a valid session file for this central; choose another "
                                 f"session name")
            lay.write(lay.description, "session", self._where(), {"sites": self.sites}, self.key)
        elif got[1].get("sites") != self.sites:
            raise ValueError(f"session {self.session!r} exists in {lay.folder} with the sites "
                             f"{got[1].get('sites')}, not {self.sites}; choose another session "
                             f"name")
        end = self._end()
        if end == "cancelled":
            raise RuntimeError(f"session {self.session!r} was cancelled; choose another session "
                               f"name to start afresh")
        if end == "finished":
            log.info("session %s is finished: its recorded answers are replayed", self.session)
        # A new attempt: sites set up again the runs that failed for an earlier one.
        lay.write(lay.central, "central", self._where(), {"attempt": self.attempt}, self.key)
        log.info("session %s in %s, sites %s", self.session, lay.folder, ", ".join(self.sites))

    def _end(self) -> Optional[str]:
        got = self.reader.read(self.layout.end, {"kind": "end", "session": self.session,
                                                  "run": None}, body=dict)
        return got[1].get("state") if got else None

    def _write_end(self, state: str, reason: Optional[str] = None) -> None:
        if self._state is None:
            self._state = state
            self.layout.write(self.layout.end, "end", self._where(), {"state": state, "reason": reason},
                  self.key)
            log.info("session %s %s", self.session, state)

    def reopen(self) -> None:
        """A finished session gets a new query: let its sites serve it again."""
        if self._end() == "finished":
            log.warning("session %s was finished; reopening it for a query that differs from "
                        "the recorded one", self.session)
            self.layout.unlink(self.layout.end)

    def finish(self) -> None:
        """Mark the session finished: its sites exit."""
        self._write_end("finished")
        self.waiter.close()  # nothing to wait for (a new run starts watching again)

    def cancel(self, reason: str = "cancelled by the central") -> None:
        """Mark the session cancelled: its sites exit, and it cannot be resumed."""
        self._write_end("cancelled", reason)
        self.waiter.close()

    def joined(self) -> list:
        """The sites that have joined the session."""
        return [s for s in self.sites if self.reader.read(
            self.layout.joined(s), {"kind": "joined", "session": self.session, "site": s})]

    # -- the Cluster seam ------------------------------------------------------------------
    @property
    def pids(self) -> list:
        return list(range(1, len(self.sites) + 1))

    def site_of(self, pid: int) -> str:
        return self.sites[pid - 1]

    def open_run(self, algorithm: bytes, problem: Any, pids: Sequence[int],
                 deadline: Optional[float], *, algorithm_object: Any = None) -> tuple:
        """Write the run's description (the algorithm by name, its parameters, its sites).

        The site's problems come from their data files: ``problem`` is not used. The
        algorithm is described from ``algorithm_object`` if given, else from a copy loaded
        from ``algorithm`` (the bytes `aia.start` made in this process: nothing from the
        folder is unpickled)."""
        if self._closed:
            raise RuntimeError("this FolderCluster is closed")
        obj = algorithm_object if algorithm_object is not None else cloudpickle.loads(algorithm)
        entry = registry.entry_for(obj)
        body = {"algorithm": entry.name, "params": entry.describe(obj),
                "sites": [[pid, self.site_of(pid)] for pid in pids]}
        tree, _ = codec.encode(body, inline=True)
        digest = hashlib.sha256(codec.canonical({"run": tree})).hexdigest()[:12]
        self._opened += 1
        run = f"r{self._opened:04d}-{digest}"
        lay = self.layout
        where = self._where(run=run)
        resumed = self.reader.read(lay.run_dir(run) / "run.json",
                                   {"kind": "run", **where, "iteration": None}) is not None
        if not resumed:
            self._supersede(run)
            self.reopen()
            lay.write(lay.run_dir(run) / "run.json", "run", where, body, self.key)
        else:  # e.g. closed by a central that timed out: its sites may owe an answer
            lay.unlink(lay.run_dir(run) / "end.json")
        log.info("run %s: %s on %s%s", run, entry.name, ", ".join(s for _, s in body["sites"]),
                 " (resumed)" if resumed else "")
        return FolderRun(self, run, list(pids), resumed, entry), []

    def _supersede(self, run: str) -> None:
        """A new run: end the runs of an earlier central from its number on (they belong to
        a history that this central no longer follows)."""
        number = int(run[1:run.index("-")])
        for other in self.layout.runs():
            if other != run and int(other[1:other.index("-")]) >= number \
                    and not self.layout.exists(self.layout.run_dir(other) / "end.json"):
                self.layout.write(self.layout.run_dir(other) / "end.json", "end",
                      self._where(run=other), {"state": "superseded"}, self.key)

    def close(self) -> None:
        self._closed = True
        self.waiter.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._closed:
            self.finish()
        self.close()

    def __repr__(self) -> str:
        return (f"FolderCluster({str(self.layout.folder)!r}, sites={self.sites}, "
                f"session={self.session!r})")
