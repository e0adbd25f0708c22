"""`RayRun`: the workers of one run on a `aia.RayCluster`, one outstanding call per busy
worker, waited on with ``ray.wait``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .cluster import Failed, Run
from .ray_actor import _nbytes, _pack

if TYPE_CHECKING:
    from .ray_cluster import RayCluster

BROADCAST_PUT = 64 * 1024  # a broadcast query at least this large goes to the object store once


class RayRun(Run):
    """The workers of one run on a `RayCluster`: one outstanding call per busy worker."""

    def __init__(self, cluster: RayCluster, run: int, pids: Sequence[int]):
        self.cluster = cluster
        self.ray = cluster._ray
        self.run = run
        self.live = {pid: cluster._actors[pid] for pid in pids}
        self.pending: dict = {}  # ObjectRef of an answer -> its actor

    def send(self, pid: int, query: Any) -> None:
        self._submit(pid, _pack(query))

    def broadcast(self, pids: Sequence[int], query: Any) -> None:
        packed = _pack(query)  # serialized once for every worker
        if len(pids) > 1 and _nbytes(packed) >= BROADCAST_PUT:
            packed = self.ray.put(packed)  # and stored once in the object store
        for pid in pids:
            self._submit(pid, packed)

    def _submit(self, pid: int, packed) -> None:
        actor = self.live.get(pid)
        if actor is not None:
            self.pending[actor.handle.answer.remote(self.run, packed)] = actor
            actor.sent_at = time.monotonic()

    def wait(self, timeout: Optional[float]) -> list:
        ray = self.ray
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self.pending:  # nothing can arrive: wait out the timeout
                if timeout is not None and timeout > 0:
                    time.sleep(timeout)
                return []
            # One ready answer at a time: a second ray.wait for the others costs more than
            # it saves (the central loop comes back at once for the next).
            # Dict order puts the worker served last at the end: no worker is starved.
            ready, _ = ray.wait(list(self.pending), num_returns=1,
                                timeout=None if timeout is None else max(0.0, timeout))
            events = []
            for ref in ready:
                actor = self.pending.pop(ref)
                actor.answer_time = time.monotonic() - actor.sent_at
                event = self.cluster._event(actor, ref)
                if event is None:
                    continue
                if isinstance(event, Failed):
                    self.live.pop(actor.pid, None)
                events.append(event)
            if events or not ready:
                return events
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    return []

    def replace(self, pid: int, algorithm: bytes, problem, deadline: Optional[float]):
        """A fresh actor in the slot of worker ``pid``, which failed in this run, set up for
        the run (its problem rebuilt from ``problem``). None once it takes part, or the
        `Failed` of its set-up."""
        cluster = self.cluster
        self.live.pop(pid, None)
        cluster._replace(cluster._actors[pid], "failed; a fresh actor takes its slot")
        run = self.run
        result = cluster._request([pid], lambda h: h.setup.remote(run, algorithm, problem),
                                  deadline)[pid]
        if isinstance(result, Failed):
            return result
        self.live[pid] = cluster._actors[pid]
        return None

    def close(self) -> None:
        """End the run on every live actor: a late answer of this run is dropped, and an
        answer still queued returns at once. An answer still running finishes first: its
        actor is replaced if the next request finds it busy with it beyond its patience."""
        now = time.monotonic()
        for ref, actor in self.pending.items():
            if actor.pid in self.live:
                actor.abandoned = (ref, now)
        self.pending.clear()
        if self.cluster._closed or not self.ray.is_initialized():
            return
        for actor in self.live.values():
            try:
                actor.handle.end.remote(self.run)
            except Exception:  # noqa: BLE001 - the actor may be gone
                pass
        self.live.clear()
