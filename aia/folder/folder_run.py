"""A run of a `aia.folder.FolderCluster`: queries written as files in each site's folder of
the run, answers polled for (`FolderRun`, the `aia.cluster.Run` of the folder).

A query already recorded with the same contents is not written again: its recorded answer
is used (see `aia.folder.central` on starting again); a recorded error is asked again with
this central's attempt in its envelope.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ..cluster import Answer, Failed, Run
from . import codec, registry

if TYPE_CHECKING:
    from .central import FolderCluster

log = logging.getLogger("aia.folder")


class SitesTimeoutError(TimeoutError):
    """The deadline passed while sites still owed answers. ``sites``: their names."""

    def __init__(self, sites: list, message: str):
        super().__init__(message)
        self.sites = sites


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
