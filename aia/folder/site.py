"""A site's side of a folder session: `serve`.

A site polls the folder; it finds a session that names it, joins it, and for each run of
that session that names it: reads the run's description, builds the algorithm only if its
name is registered here and allowed by the site's operator, loads its problem from its own
data file, then answers the latest query of the run, each query once, from its own data.
It returns when the central marks the session finished or cancelled.

A site that starts again finds its runs again: a query whose answer is already in the folder
(an answer records the digest of the query it answers) is not answered twice.

A run whose set-up failed here (a data file of the wrong kind, an algorithm not allowed) is
set up again when a new central starts (``central.json`` holds the central's attempt); each
``status.json`` names the attempt it answers and this site process, so that the central
ignores a failure of an earlier attempt. An error answer is answered anew when the central
asks again (its new query has a new digest).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from ..worker_state import WorkerState
from . import codec, registry
from .central import as_key
from .layout import Reader, Session, check_name, sessions
from .site_answers import Answering, error_body
from .watch import Waiter

log = logging.getLogger("aia.folder")


def serve(folder: Union[str, Path], site: str, data: Union[None, str, Path] = None, *,
          session: Optional[str] = None, poll: float = 0.5, key: Union[None, str, bytes] = None,
          allow: Optional[Iterable[str]] = None, min_sites: int = 1,
          timeout: Optional[float] = None, max_bytes: int = codec.MAX_BYTES,
          stop=None, peers: Optional[Iterable[str]] = None, loader_options=None,
          watch: bool = True) -> str:
    """Serve as ``site`` until the session ends; returns ``"finished"`` or ``"cancelled"``
    (``"timeout"`` after ``timeout`` seconds, ``"stopped"`` once the event ``stop`` is set).

    ``data``: the site's own data file, from which each algorithm's registered loader builds
    the problem (it never leaves the site). ``session``: serve this session only (default:
    the first open session, by name, that names this site). ``allow``: the algorithm names
    this site runs (default: every registered one). ``min_sites``: take part only in runs
    with at least this many sites, counting only sites this site can verify: with ``peers``
    (the names of the other sites, from the site's own operator), only those; with ``key``,
    only sites whose own join file carries the key's signature (so a central cannot satisfy
    ``min_sites`` with invented names); a run waits until enough of them have joined.
    ``key``: the secret shared with the central, if the session uses one.
    ``loader_options``: keyword arguments for the problem loaders that take them (e.g. the
    GLM site's audit log). ``watch``: wait on file events (watchdog), answering within
    milliseconds; ``poll``: seconds between looks at the folder anyway (the fallback for
    folders that send no events; the only way with ``watch=False``).
    """
    return _Server(folder, site, data, session, poll, key, allow, min_sites, timeout,
                   max_bytes, stop, peers, loader_options, watch).loop()


@dataclass
class _RunState:
    """What a site knows of one run; ``worker`` holds the run's algorithm and problem (the
    worker's side, as every engine's worker holds it), None until set up here."""
    worker: Optional[WorkerState] = None
    mine: bool = True  # False: the run does not name this site
    ended: bool = False  # its end.json exists (a central that starts again may remove it)
    failed: bool = False
    answered: Optional[tuple] = None  # (seq, digest of the query)
    answered_sig: Optional[tuple] = None
    end_sig: Optional[tuple] = None  # the signature of an end.json found not valid
    count: int = 0
    logged: float = field(default=0.0)


class _Server(Answering):
    def __init__(self, folder, site, data, session, poll, key, allow, min_sites, timeout,
                 max_bytes, stop, peers=None, loader_options=None, watch=True):
        self.folder = Path(folder).expanduser()
        self.site = check_name("site", site)
        self.data = None if data is None else str(Path(data).expanduser())
        if self.data is not None and not Path(self.data).is_file():
            raise FileNotFoundError(f"site {site}: no data file {self.data} (--data: this "
                                    f"site's own data file)")
        self.session = None if session is None else check_name("session", session)
        if not (isinstance(poll, (int, float)) and poll > 0):
            raise ValueError(f"poll: expected a positive number of seconds, got {poll!r}")
        self.poll = float(poll)
        self.key = as_key(key)
        self.allow = None if allow is None else sorted(set(allow))
        self.min_sites = int(min_sites)
        self.timeout = timeout
        self.stop = stop
        self.reader = Reader(f"site {self.site}", self.key, max_bytes, root=self.folder)
        self.peers = None if peers is None else sorted(
            {check_name("peers", p) for p in peers} - {self.site})
        self.loader_options = dict(loader_options or {})
        self.waiting_logged: set = set()
        self.joined = False
        self.field = codec.digest_field(self.key)
        self.layout: Optional[Session] = None
        self.runs: dict = {}
        self.problems: dict = {}  # loader -> the problem it built (shared between runs)
        self.waiter = Waiter(self.folder, f"site {self.site}", watch, ignore=self._not_mine)
        self.process = secrets.token_hex(6)  # this site process, named in its statuses
        self.attempt: Optional[str] = None  # the central's, from central.json
        self.attempt_sig: Optional[tuple] = None

    def _not_mine(self, parts: tuple) -> bool:
        """A change that needs no look: a file of another site's folder of a run, or this
        site's own answers and status (``<session>/runs/<run>/<site>/<file>``)."""
        return len(parts) == 5 and parts[1] == "runs" and (
            parts[3] != self.site or not parts[4].startswith("q-"))

    def where(self, **kw) -> dict:
        return {"session": self.layout.name, **kw}

    # -- the loop ----------------------------------------------------------------------------
    def loop(self) -> str:
        try:
            return self._loop()
        finally:
            self.waiter.close()

    def _loop(self) -> str:
        started = time.monotonic()
        log.info("site %s: waiting for a model in %s", self.site, self.folder)
        while True:
            if self.stop is not None and self.stop.is_set():
                return "stopped"
            self.waiter.arm()  # a change from here on ends the wait below at once
            state = self.poll_once()
            if state is not None:
                log.info("site %s: model %s %s; exiting", self.site, self.layout.name, state)
                return state
            if self.timeout is not None and time.monotonic() - started >= self.timeout:
                log.warning("site %s: no end of the model after %g s; exiting", self.site,
                            self.timeout)
                return "timeout"
            nap = self.poll
            if self.timeout is not None:
                nap = min(nap, max(0.0, started + self.timeout - time.monotonic()))
            self.waiter.wait(nap)

    def poll_once(self) -> Optional[str]:
        """One look at the folder: join a session, serve its runs; its end state once it
        ends. Nothing the folder holds stops the site: an error is logged (once) and the
        next poll looks again."""
        try:
            if self.layout is None:
                found = self.find_session()
                if found is not None:
                    self.layout = found
                    self.joined = False
            if self.layout is not None:
                if not self.joined:
                    self.join()
                    self.joined = True
                state = self.ended()
                if state is not None:
                    return state
                self.follow_attempt()
                for run in self.layout.runs():
                    self.serve_run_safely(run)
        except Exception as exc:  # noqa: BLE001 - the folder is not trusted
            key = ("poll", type(exc).__name__, str(exc))
            if key not in self.waiting_logged:
                self.waiting_logged.add(key)
                log.error("site %s: %s: %s (looking again at the next poll)", self.site,
                          type(exc).__name__, exc)
        return None

    def find_session(self) -> Optional[Session]:
        names = [self.session] if self.session else sessions(self.folder)
        for name in names:
            lay = Session(self.folder, name)
            if self.session is None and self._end_state(lay) is not None:
                continue  # an old model
            got = self.reader.read(lay.description, {"kind": "session", "session": name},
                                   body=dict)
            if got is None:
                continue
            sites = got[1].get("sites")
            if not isinstance(sites, list) or self.site not in sites:
                continue
            log.info("site %s: joined model %s (sites %s)", self.site, name,
                     ", ".join(map(str, sites)))
            return lay
        return None

    def join(self) -> None:
        path = self.layout.joined(self.site)
        body = {"state": "joined", "allow": self.allow, "min_sites": self.min_sites}
        where = self.where(site=self.site)
        got = self.reader.read(path, {"kind": "joined", **where, "run": None})
        if got is None or got[1] != body:
            self.layout.write(path, "joined", where, body, self.key)

    def follow_attempt(self) -> None:
        """Read the central's attempt (when central.json changes); a new one sets up again
        the runs whose set-up failed here."""
        path = self.layout.central
        sig = self.reader.signature(path)
        if sig == self.attempt_sig:
            return
        self.attempt_sig = sig
        got = self.reader.read(path, {"kind": "central", "session": self.layout.name,
                                      "run": None, "site": None, "iteration": None},
                               body=dict)
        attempt = got[1].get("attempt") if got else None
        attempt = attempt if isinstance(attempt, str) else None
        if attempt is None or attempt == self.attempt:
            return
        self.attempt = attempt
        failed = [run for run, st in self.runs.items() if st.failed]
        for run in failed:
            del self.runs[run]
        if failed:
            log.info("site %s: a new central: setting up again %s", self.site,
                     ", ".join(failed))

    def ended(self) -> Optional[str]:
        return self._end_state(self.layout)

    def _end_state(self, lay: Session) -> Optional[str]:
        """The state of a session's end.json, if it is a valid one (signed with the key when
        there is one): its mere existence ends nothing."""
        got = self.reader.read(lay.end, {"kind": "end", "session": lay.name, "run": None},
                               body=dict)
        return None if got is None else str(got[1].get("state"))

    def _run_ended(self, run: str, st: Optional[_RunState]) -> bool:
        """Whether the run's end.json is there and valid (re-read only when it changes)."""
        path = self.layout.run_dir(run) / "end.json"
        sig = self.reader.signature(path)
        if sig is None:
            return False
        if st is not None and st.end_sig == sig:
            return st.ended
        got = self.reader.read(path, {"kind": "end", **self.where(run=run), "site": None,
                                      "iteration": None}, body=dict)
        if st is not None:
            st.end_sig = sig
        return got is not None

    # -- one run -----------------------------------------------------------------------------
    def serve_run_safely(self, run: str) -> None:
        """`serve_run`, whatever the folder holds: a run this site cannot serve (a link
        planted where its files go, a disk error) is logged, once, and looked at again at
        the next poll; the site goes on serving the others."""
        try:
            self.serve_run(run)
        except Exception as exc:  # noqa: BLE001 - the folder is not trusted
            key = (run, type(exc).__name__, str(exc))
            if key not in self.waiting_logged:
                self.waiting_logged.add(key)
                log.error("site %s: cannot serve run %s: %s: %s", self.site, run,
                          type(exc).__name__, exc)

    def serve_run(self, run: str) -> None:
        st = self.runs.get(run)
        if st is not None and not st.mine:
            return
        if self._run_ended(run, st):
            if st is None:
                self.runs[run] = _RunState(ended=True)
            elif not st.ended:
                log.debug("site %s: run %s ended", self.site, run)
                st.ended = True
            return
        if st is not None and st.ended:  # reopened by a central that started again
            if st.worker is None:
                st = None  # never set up here (or its set-up failed): try now
            else:
                st.ended = False  # go on with this site's copy of the algorithm
        if st is None:
            st = self.setup(run)
            if st is None:
                return  # not readable yet: look again at the next poll
            self.runs[run] = st
        if st.mine and not st.failed:
            self.answer_latest(run, st)

    def setup(self, run: str) -> Optional[_RunState]:
        lay = self.layout
        got = self.reader.read(lay.run_dir(run) / "run.json",
                               {"kind": "run", **self.where(run=run), "site": None,
                                "iteration": None}, body=dict)
        if got is None:
            return None
        body = got[1]
        try:
            name, params = body["algorithm"], body["params"]
            sites = [s for _, s in body["sites"]]
            if not isinstance(name, str) or not all(isinstance(x, str) for x in sites):
                raise TypeError("names must be strings")
        except (KeyError, TypeError, ValueError):
            log.warning("site %s: ignoring run %s: malformed description", self.site, run)
            return _RunState(mine=False)
        if self.site not in sites:
            return _RunState(mine=False)
        counted = self.counted_sites(sites)
        if len(counted) < self.min_sites and self.waiting_for(sites, counted):
            if run not in self.waiting_logged:
                self.waiting_logged.add(run)
                log.info("site %s: run %s waits for sites to join (%d of the %d this site "
                         "needs have)", self.site, run, len(counted), self.min_sites)
            return None  # look again at the next poll
        status = {"state": "ready", "attempt": self.attempt, "process": self.process}
        st = _RunState()
        try:
            if len(counted) < self.min_sites:
                raise PermissionError(
                    f"site {self.site} takes part only in runs with at least "
                    f"{self.min_sites} sites it can verify; this run has {len(counted)}"
                    + ("" if len(counted) == len(sites) else f" of the {len(sites)} it names"))
            if self.allow is not None and name not in self.allow:
                raise PermissionError(f"algorithm {name!r} is not allowed at site {self.site} "
                                      f"(allowed: {', '.join(self.allow)})")
            try:
                entry = registry.lookup(name)
            except KeyError:
                raise LookupError(f"algorithm {name!r} is not installed at site "
                                  f"{self.site}") from None
            worker = WorkerState(self.site)
            worker.enter(run, entry.make(params), self.problem(entry))
            self.enter_run(worker.problem, run)
            st.worker = worker
        except Exception as exc:
            log.error("site %s: cannot take part in run %s (%s): %s", self.site, run, name, exc)
            status = {"state": "failed", "error": error_body(exc), "attempt": self.attempt,
                      "process": self.process}
            st = _RunState(failed=True)
        path = lay.status(run, self.site)
        where = self.where(run=run, site=self.site)
        old = self.reader.read(path, {"kind": "status", **where, "iteration": None})
        if old is None or old[1] != status:
            lay.write(path, "status", where, status, self.key)
        if not st.failed:
            log.info("site %s: run %s (%s) ready", self.site, run, name)
        return st

    def counted_sites(self, sites: list) -> list:
        """The sites of a run this site counts toward ``min_sites``: itself, and the others
        it can verify (see `serve`)."""
        others = [s for s in dict.fromkeys(sites) if s != self.site]
        if self.peers is not None:
            others = [s for s in others if s in self.peers]
        if self.key is not None or self.peers is not None:
            others = [s for s in others if self.has_joined(s)]
        return [self.site, *others]

    def waiting_for(self, sites: list, counted: list) -> bool:
        """Whether sites that would count have yet to join (so the run may still qualify)."""
        others = [s for s in sites if s != self.site and s not in counted]
        if self.peers is not None:
            others = [s for s in others if s in self.peers]
        return bool(others) and (self.key is not None or self.peers is not None)

    def has_joined(self, site: str) -> bool:
        got = self.reader.read(self.layout.joined(site),
                               {"kind": "joined", **self.where(site=site), "run": None},
                               body=dict)
        return got is not None

    def problem(self, entry: registry.Entry) -> Any:
        loader = entry.problem
        if loader not in self.problems:
            self.problems[loader] = entry.load_problem(self.data, self.site,
                                                       **self.loader_options)
        return self.problems[loader]

    def enter_run(self, problem: Any, run: str) -> None:
        """Tell a problem that keeps a record (a GLM site's audit log) which run it serves."""
        hook = getattr(problem, "enter_run", None)
        if callable(hook):
            hook(self.layout.name, run)
