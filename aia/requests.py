"""One request to several workers (a run's set-up, a distributed object's build or apply),
with the same rules on every engine that has worker handles (`LocalCluster`, `RayCluster`).

`request` sends the request to each worker and collects ``{pid: ("ok", value) | Failed}``:

- a worker found dead fails at once;
- with ``tolerate`` (a run that goes on without some workers: `aia.start`'s
  ``resilience``), once no more than that many are still working, those get their patience
  (`SETUP_PATIENCE` at least, twice the time taken so far) and then fail as frozen, and are
  marked abandoned: one frozen worker does not spend the run's time;
- a worker still busy with an answer of an ended run (abandoned) gets its own patience
  (`aia.cluster.WorkerClock`), at most half the time to ``deadline``, and is then replaced
  by a fresh worker that takes the request; so is one that dies finishing such an answer,
  when a fresh worker can take its request (``rebuildable``: not a request on the object of
  a `DistributedObject`, which dies with its worker);
- past ``deadline`` the workers still working fail ("did not reply before the time limit").

An engine describes itself to the loop through a `Requester`.
"""

from __future__ import annotations

import abc
import time
from typing import Any, Optional, Sequence

from .cluster import Failed

#: Seconds (at least) a worker's set-up may outlast the others' before it counts as failed,
#: when the run tolerates failures (`aia.start`'s ``resilience``).
SETUP_PATIENCE = 1.0


class Requester(abc.ABC):
    """One request on one engine: how the loop reaches that engine's workers. A handle is
    the engine's view of a worker: a `WorkerClock` with ``pid`` and ``os_pid``."""

    #: Whether a fresh worker can take a failed one's request (see the module docstring).
    rebuildable = False

    @abc.abstractmethod
    def prepare(self, pid: int) -> Any:
        """The handle of worker ``pid``, ready to take the request (an engine may replace a
        worker it knows to be unusable here)."""

    @abc.abstractmethod
    def dead(self, handle: Any) -> Optional[Failed]:
        """The failure of a worker known to be dead (None: it may take the request)."""

    @abc.abstractmethod
    def post(self, handle: Any) -> Optional[Failed]:
        """Send the request to one worker; its failure if it could not be sent."""

    @abc.abstractmethod
    def token(self, handle: Any) -> Any:
        """What marks this request at the worker (``handle.abandoned[0]`` when the worker
        is given up during it)."""

    @abc.abstractmethod
    def collect(self, handles: list, limit: Optional[float]) -> list:
        """``[(handle, event)]`` of the workers among ``handles`` heard from by ``limit``
        (a `time.monotonic` value; None: wait for one): the result ``("ok", value)`` or a
        `Failed`, or None for something that is not this request's result (a late answer of
        an ended run): keep waiting."""

    @abc.abstractmethod
    def replace(self, handle: Any, why: Optional[str] = None) -> Any:
        """A fresh worker in ``handle``'s slot; its handle (``why``: for the log; None: the
        engine's reason for a worker stuck in an ended run)."""

    def refresh(self, handle: Any) -> None:
        """Learn, where the engine can only ask, whether an abandoned worker is back."""


def request(requester: Requester, pids: Sequence[int], deadline: Optional[float] = None,
            tolerate: Optional[int] = None, patience: float = SETUP_PATIENCE) -> dict:
    """``{pid: ("ok", value) | Failed}``: the request on each of ``pids`` (see the module
    docstring)."""
    return _Request(requester, deadline, tolerate, patience).run(pids)


class _Request:
    def __init__(self, requester: Requester, deadline: Optional[float],
                 tolerate: Optional[int], patience: float):
        self.engine = requester
        self.deadline = deadline
        self.tolerate = tolerate
        self.patience = patience
        self.results: dict[int, Any] = {}
        self.waiting: dict[int, Any] = {}
        self.started: dict[int, float] = {}  # when each worker was sent the request
        self.began = time.monotonic()
        self.bound: Optional[float] = None  # when the last workers of a tolerant request fail
        # A worker stuck in an earlier run is replaced after its patience, and at the latest
        # halfway to the time limit, so that its replacement still has time to set up.
        self.halfway = None if deadline is None else self.began + (deadline - self.began) / 2

    # -- the rules --------------------------------------------------------------------------
    def give_up_at(self, h) -> float:  # a fresh replacement gets its patience too
        return max(self.bound, self.started.get(h.pid, self.began) + self.patience)

    def boundable(self, h) -> bool:  # stuck in an earlier run: replaced, not failed
        return h.abandoned is None or h.abandoned[0] == self.engine.token(h)

    def replace_at(self, h) -> float:
        at = h.give_up_at()
        return at if self.halfway is None else min(at, self.halfway)

    def from_ended_run(self, h) -> bool:
        """Whether ``h`` failing is its ended run's failure, a fresh worker taking over."""
        return (self.engine.rebuildable and h.abandoned is not None
                and h.abandoned[0] != self.engine.token(h))

    # -- the loop ---------------------------------------------------------------------------
    def send(self, h) -> None:
        self.started[h.pid] = time.monotonic()
        failed = self.engine.post(h)
        if failed is None:
            self.waiting[h.pid] = h
        elif self.from_ended_run(h):  # died in an ended run's answer: a fresh worker
            self.waiting.pop(h.pid, None)
            self.replace(h, "died in an answer of an ended run")
        else:
            self.waiting.pop(h.pid, None)
            self.results[h.pid] = failed

    def replace(self, h, why: Optional[str] = None) -> None:
        try:
            fresh = self.engine.replace(h, why)
        except Exception as exc:  # noqa: BLE001 - a failure of that worker
            self.waiting.pop(h.pid, None)
            self.results[h.pid] = Failed(h.pid, f"could not be restarted: {exc}", None,
                                         h.os_pid)
            return
        self.send(fresh)

    def run(self, pids: Sequence[int]) -> dict:
        for pid in pids:
            h = self.engine.prepare(pid)
            failed = self.engine.dead(h)
            if failed is not None:
                self.results[pid] = failed
            else:
                self.send(h)
        while self.waiting:
            if not self.step():
                break
        return self.results

    def limit(self) -> Optional[float]:
        """Until when to wait for the next event."""
        waiting = self.waiting.values()
        if self.bound is None and self.tolerate is not None:
            failed = sum(isinstance(r, Failed) for r in self.results.values())
            if len(self.waiting) <= self.tolerate - failed:  # the run can go on without them
                now = time.monotonic()
                self.bound = now + max(self.patience, 2 * (now - self.began))
        limits = [self.deadline] if self.deadline is not None else []
        if self.bound is not None:
            limits += [self.give_up_at(h) for h in waiting if self.boundable(h)]
        limits += [self.replace_at(h) for h in waiting if h.abandoned]
        return min(limits) if limits else None

    def step(self) -> bool:
        """Wait for the next events and apply the rules; False once nothing is left to do."""
        for h in self.waiting.values():
            self.engine.refresh(h)
        ready = self.engine.collect(list(self.waiting.values()), self.limit())
        for h, event in ready:
            if isinstance(event, Failed) and self.from_ended_run(h):
                # It died finishing the answer of an ended run: that run's failure, not this
                # one's. A fresh worker takes the request in its place.
                self.waiting.pop(h.pid, None)
                self.replace(h, "died in an answer of an ended run")
                continue
            if event is not None:
                self.results[h.pid] = event
                self.waiting.pop(h.pid, None)
        if ready:
            return True
        now = time.monotonic()
        for h in [h for h in self.waiting.values()
                  if self.bound is not None and self.boundable(h) and now >= self.give_up_at(h)]:
            h.abandoned = (self.engine.token(h), now)  # replaced at the next request if stuck
            self.waiting.pop(h.pid)
            self.results[h.pid] = Failed(
                h.pid, f"did not finish its set-up within {now - self.started[h.pid]:.1f} s, "
                "while the other workers were ready (frozen, or far slower than they)",
                None, h.os_pid)
        if not self.waiting:
            return False
        for h in [h for h in self.waiting.values() if h.abandoned and now >= self.replace_at(h)]:
            self.waiting.pop(h.pid)
            self.replace(h)  # stuck in an ended run's answer: a new worker
        if self.deadline is not None and now >= self.deadline:
            for pid, h in list(self.waiting.items()):
                h.abandoned = (self.engine.token(h), now)  # replaced next time if still stuck
                self.results[pid] = Failed(pid, "did not reply before the time limit", None,
                                           h.os_pid)
            self.waiting.clear()
            return False
        return True
