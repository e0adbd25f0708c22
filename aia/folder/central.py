"""`FolderCluster`: sites reached through a synced folder, as an `aia` cluster.

The central writes each query as a file in the site's folder of the run and polls for the
answer file; `aia.start` runs unchanged (see `aia.folder` for the files and the site's side).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cloudpickle

from ..cluster import Answer, Cluster, Failed, Run
from . import codec, registry
from .layout import Reader, Session, check_name
from .watch import Waiter

log = logging.getLogger("aia.folder")


class SitesTimeoutError(TimeoutError):
    """The deadline passed while sites still owed answers. ``sites``: their names."""

    def __init__(self, sites: list, message: str):
        super().__init__(message)
        self.sites = sites


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


@dataclass
class _Peer:
    """One site of a run, as the central sees it."""

    pid: int
    site: str
    seq: int = 0  # the number of the latest query
    digest: Optional[str] = None  # of the latest query's file
    outstanding: bool = False
    status_sig: Optional[tuple] = None
    since: float = 0.0


class FolderRun(Run):
    """One run: queries written to, answers read from, the sites' folders of the run."""

    def __init__(self, cluster: FolderCluster, run: str, pids: list, resumed: bool,
                 entry: Optional[registry.Entry] = None):
        self.cluster = cluster
        self.entry = entry
        self.run = run
        self.layout = cluster.layout
        self.peers = {pid: _Peer(pid, cluster.site_of(pid)) for pid in pids}
        self.resumed = resumed
        self.step = 0  # answers handed to the central loop
        self.closed = False
        self._reported = time.monotonic()
        self._recorded: dict = {}  # (site, seq) -> the step recorded in its next query

    def _where(self, peer: _Peer) -> dict:
        return {"session": self.cluster.session, "run": self.run, "site": peer.site,
                "iteration": peer.seq}

    # -- sending ---------------------------------------------------------------------------
    def send(self, pid: int, query: Any) -> None:
        self._send(pid, codec.encode(query))

    def broadcast(self, pids: Sequence[int], query: Any) -> None:
        encoded = codec.encode(query)  # once for every site
        for pid in pids:
            self._send(pid, encoded)

    def _send(self, pid: int, encoded: tuple) -> None:
        peer = self.peers.get(pid)
        if peer is None:
            return
        peer.seq += 1
        data, digest = codec.dumps("query", self._where(peer), fmt="npz", key=self.cluster.key,
                                   extra={"step": self.step}, encoded=encoded)
        path = self.layout.query(self.run, peer.site, peer.seq)
        recorded = self._recorded_bytes(path) if self.resumed else None
        if recorded == data and self._recorded_failure(peer, digest):
            # An error is not replayed: the same query under this attempt, answered anew.
            data, digest = codec.dumps("query", self._where(peer), fmt="npz",
                                       key=self.cluster.key, encoded=encoded,
                                       extra={"step": self.step,
                                              "retry": self.cluster.attempt})
            log.info("run %s: %s's recorded answer to query %d is an error: asking again",
                     self.run, peer.site, peer.seq)
        if recorded != data:
            if self.resumed:  # past the record (or off it): from here on the run is live
                self.resumed = False
                self.cluster.reopen()
            # No fsync: a query lost to a power cut is written again by a central that
            # starts again (it compares), and a torn one fails its digest. The fsync is
            # most of an exchange's time (7 ms of 8 on the project's machine).
            codec.write_atomic(path, data, self.layout.folder, durable=False)
        peer.digest, peer.outstanding, peer.since = digest, True, time.monotonic()

    def _recorded_bytes(self, path: Path) -> Optional[bytes]:
        try:
            return codec.read_bytes(path, self.cluster.reader.max_bytes, self.layout.folder)
        except codec.Rejected:
            return None  # not a plain file: replaced by the query written now

    def _recorded_failure(self, peer: _Peer, digest: str) -> bool:
        """Whether the recorded answer to ``peer``'s latest query (``digest``) is an error:
        the site raised, or the algorithm's ``failed`` calls the answer a refusal."""
        got = self.cluster.reader.read(
            self.layout.answer(self.run, peer.site, peer.seq),
            {"kind": "answer", **self._where(peer)},
            check=lambda envelope: _answers(envelope, digest))
        if got is None:
            return False  # none yet: the site answers it (nothing to replay)
        body = got[1]
        if not (isinstance(body, dict) and "answer" in body):
            return True
        failed = self.entry.failed if self.entry is not None else None
        return bool(failed(body["answer"])) if failed is not None else False

    def _recorded_from(self, peer: _Peer) -> Optional[int]:
        """The step recorded in the query after ``peer``'s latest: how many answers the
        first central had consumed when it wrote it (None if there is none)."""
        key = (peer.site, peer.seq)
        if key not in self._recorded:
            nxt = self.layout.query(self.run, peer.site, peer.seq + 1)
            got = self.cluster.reader.read(nxt, {"kind": "query", **self._where(peer),
                                                 "iteration": peer.seq + 1})
            step = got[0].get("step") if got else None
            self._recorded[key] = step if isinstance(step, int) else None
        return self._recorded[key]

    # -- waiting ---------------------------------------------------------------------------
    def wait(self, timeout: Optional[float]) -> list:
        cluster = self.cluster
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            cluster.waiter.arm()  # a change from here on ends the wait below at once
            events = self._poll()
            if events:
                return events
            now = time.monotonic()
            if cluster.deadline is not None and now >= cluster.deadline:
                raise self._timeout_error()
            if end is not None and now >= end:
                return []
            if now - self._reported >= cluster.report_every:
                self._reported = now
                log.info("run %s: waiting for %s", self.run, self._pending_text())
            nap = cluster.poll
            for limit in (end, cluster.deadline):
                if limit is not None:
                    nap = min(nap, max(0.0, limit - now))
            cluster.waiter.wait(nap)

    def _poll(self) -> list:
        found = []  # (recorded step or None, pid, event)
        for peer in self.peers.values():
            if not peer.outstanding:
                continue
            event = self._answer(peer) or self._setup_failure(peer)
            if event is not None:
                step = self._recorded_from(peer) if self.resumed else None
                found.append((step, peer.pid, event))
        if not found:
            return []
        recorded = [f for f in found if f[0] is not None]
        if recorded:  # replaying: the answers in the order the first central took them
            chosen = [min(recorded)]
        else:
            chosen = sorted(found, key=lambda f: f[1])
        events = []
        for _, pid, event in chosen:
            peer = self.peers[pid]
            peer.outstanding = False
            if isinstance(event, Failed):
                del self.peers[pid]
            else:
                self.step += 1
                self.cluster.heard.add(peer.site)
            events.append(event)
        return events

    def _answer(self, peer: _Peer):
        path = self.layout.answer(self.run, peer.site, peer.seq)
        got = self.cluster.reader.read(path, {"kind": "answer", **self._where(peer)},
                                       check=lambda envelope: _answers(envelope, peer.digest))
        if got is None:
            return None
        body = got[1]
        if isinstance(body, dict) and "answer" in body:
            return Answer(peer.pid, body["answer"])
        return _failed(peer, body, f"its answer to query {peer.seq}")

    def _setup_failure(self, peer: _Peer):
        path = self.layout.status(self.run, peer.site)
        sig = self.cluster.reader.signature(path)
        if sig is None or sig == peer.status_sig:
            return None
        peer.status_sig = sig
        got = self.cluster.reader.read(path, {"kind": "status", **self._where(peer),
                                              "iteration": None}, body=dict)
        if got is None or got[1].get("state") != "failed":
            return None
        if got[1].get("attempt") != self.cluster.attempt:
            # Written for an earlier central: the site sets the run up again for this one
            # (if it is fixed, or restarted, its new status says so).
            log.info("run %s: %s's failed status is from an earlier attempt: waiting for its "
                     "status for this one", self.run, peer.site)
            return None
        return _failed(peer, got[1], "setting up the run")

    def _pending(self) -> list:
        return [p for p in self.peers.values() if p.outstanding]

    def _pending_text(self) -> str:
        joined = set(self.cluster.joined())
        parts = []
        for p in self._pending():
            if p.site not in joined:
                parts.append(f"{p.site} (never joined the session: is its site process "
                             f"running on this folder?)")
            elif p.site not in self.cluster.heard:
                parts.append(f"{p.site} (joined, never answered)")
            else:
                parts.append(f"{p.site} (no answer to query {p.seq} of run {self.run})")
        return "; ".join(parts)

    def _timeout_error(self) -> SitesTimeoutError:
        sites = [p.site for p in self._pending()]
        return SitesTimeoutError(
            sites, f"no answer within the timeout of {self.cluster.timeout:g} s from: "
                   f"{self._pending_text()}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        path = self.layout.run_dir(self.run) / "end.json"
        if not self.layout.exists(path):
            self.layout.write(path, "end", {"session": self.cluster.session, "run": self.run},
                  {"state": "closed"}, self.cluster.key)


def _answers(envelope: dict, digest: Optional[str]) -> None:
    """Reject an answer to another version of the query than ``digest``."""
    if envelope.get("query") != digest:
        raise codec.Rejected("it answers an earlier version of the query")


def _failed(peer: _Peer, body: Any, doing: str) -> Failed:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return Failed(peer.pid, f"site {peer.site} sent a malformed reply ({doing})")
    type_name = str(error.get("type", "Exception"))
    message = str(error.get("message", ""))
    tb = error.get("traceback")
    tb = tb if isinstance(tb, str) else ""
    return Failed(peer.pid, f"site {peer.site} raised {type_name} ({doing}): {message}",
                  tb or None, remote=(type_name, message, tb))
