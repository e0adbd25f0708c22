"""`InMemoryCluster`: workers as objects in the central's own process.

The fast way to test an algorithm, and the reference implementation of the seam
(`aia.cluster.Cluster` and `aia.cluster.ObjectStore`): no process, no pipe, no thread.
Each worker still gets its own copy of the algorithm, of its problem and of every query
(everything crosses a cloudpickle round trip, as it would cross a pipe), so an algorithm that
passes here does not rely on sharing memory with the central.

An answer is computed when the central waits for it: ``wait`` hands back one answer at a
time, that of the worker queried longest ago (deterministic), or of a worker drawn from
the outstanding ones with ``random.Random(seed)`` when a seed is given (a seeded
asynchronous order). Failures are injected with `InMemoryCluster.fail` (the worker's answer
raises) and `InMemoryCluster.kill` (the worker dies, its objects with it).
"""

from __future__ import annotations

import random
import time
from typing import Any, Optional, Sequence

import cloudpickle

from .cluster import Answer, Cluster, Failed, ObjectStore, Run, raise_failures
from .worker_state import WorkerState, remote_error


class InjectedFailure(RuntimeError):
    """The exception an answer raises by default after `InMemoryCluster.fail`."""


class _Fault:
    """A failure due after ``after`` more answers of its worker: ``error`` raised, or (None)
    the worker's death."""

    def __init__(self, after: int, error: Optional[BaseException]):
        self.after = after
        self.error = error


class InMemoryCluster(Cluster, ObjectStore):
    """``n`` workers living in this process, answering in a deterministic (or, with
    ``seed``, a seeded random) order.

    >>> cluster = aia.InMemoryCluster(3, seed=0)
    >>> cluster.fail(2, after=5)           # worker 2's sixth answer raises
    >>> cluster.kill(3, after=2)           # worker 3 dies instead of its third answer
    >>> aia.start(alg, make_problem, {"iteration": 100}, cluster=cluster, resilience=2)
    """

    def __init__(self, n: int, seed: Optional[int] = None):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TypeError(f"n: expected a positive int (the number of workers), got {n!r}")
        self._pids = list(range(1, n + 1))
        self._rng = None if seed is None else random.Random(seed)
        self._workers = {pid: WorkerState(pid) for pid in self._pids}
        self._runs = 0
        self._dead: set = set()
        self._faults: dict = {}
        self._run: Optional[InMemoryRun] = None
        self._closed = False

    @property
    def pids(self) -> list:
        return list(self._pids)

    # -- failures ---------------------------------------------------------------------------

    def fail(self, pid: int, after: int = 0, error: Optional[BaseException] = None) -> None:
        """Make worker ``pid``'s answer raise ``error`` (default an `InjectedFailure`) once it
        has given ``after`` more answers."""
        self._check_pid(pid)
        self._faults[pid] = _Fault(after, error or InjectedFailure(f"injected failure of "
                                                                   f"worker {pid}"))

    def kill(self, pid: int, after: int = 0) -> None:
        """Worker ``pid`` dies once it has given ``after`` more answers (at once if 0 and no
        query of it is outstanding); its objects die with it."""
        self._check_pid(pid)
        if after == 0 and (self._run is None or pid not in self._run.pending):
            self._die(pid)
        else:
            self._faults[pid] = _Fault(after, None)

    def _die(self, pid: int) -> None:
        self._dead.add(pid)
        self._workers[pid].drop_objects()

    def _check_pid(self, pid: int) -> None:
        if pid not in self._pids:
            raise ValueError(f"pid: the cluster has no worker {pid} (its workers are "
                             f"{self._pids})")

    def _answer(self, pid: int, compute) -> Any:
        """``compute()`` on worker ``pid``, or its injected failure (raised, or a death:
        then a `Failed`)."""
        fault = self._faults.get(pid)
        if fault is not None:
            if fault.after > 0:
                fault.after -= 1
            else:
                del self._faults[pid]
                if fault.error is None:
                    self._die(pid)
                    return Failed(pid, "worker died (injected)")
                raise fault.error
        return compute()

    # -- runs -------------------------------------------------------------------------------

    def open_run(self, algorithm: bytes, problem, pids: Sequence[int],
                 deadline: Optional[float]) -> tuple:
        if self._closed:
            raise RuntimeError("this InMemoryCluster is closed")
        if self._run is not None:
            self._run.close()
        self._runs += 1
        run = InMemoryRun(self, self._runs, self._rng)
        failed = []
        for pid in pids:
            if pid in self._dead:
                failed.append(Failed(pid, "worker is dead"))
                continue
            try:
                self._workers[pid].setup(run.id, algorithm, problem)
                run.workers.add(pid)
            except BaseException as exc:  # noqa: BLE001 - as a worker process reports it
                failed.append(Failed.raised(pid, remote_error(exc)))
        self._run = run
        return run, failed

    # -- objects ----------------------------------------------------------------------------

    def _request(self, pids: Sequence[int], compute) -> dict:
        results = {}
        for pid in pids:
            if pid in self._dead:
                results[pid] = Failed(pid, "worker is dead")
                continue
            try:
                results[pid] = ("ok", compute(pid))
            except BaseException as exc:  # noqa: BLE001
                results[pid] = Failed.raised(pid, remote_error(exc))
        return results

    def store(self, obj_id: int, make: bytes, pids: Sequence[int]) -> None:
        def build(pid):
            self._workers[pid].store(obj_id, cloudpickle.loads(make))
        raise_failures(self._request(pids, build), "building the object")

    def apply(self, obj_id: int, pid: int, fn: bytes) -> Any:
        return self.apply_all(obj_id, [pid], fn)[pid]

    def apply_all(self, obj_id: int, pids: Sequence[int], fn: bytes) -> dict:
        def call(pid):
            result = self._workers[pid].apply(obj_id, cloudpickle.loads(fn))
            return cloudpickle.loads(cloudpickle.dumps(result))
        results = self._request(pids, call)
        raise_failures(results, "applying the function")
        return {pid: value for pid, (_, value) in results.items()}

    def free(self, obj_id: int, pids: Sequence[int]) -> None:
        for pid in pids:
            if pid in self._workers:
                self._workers[pid].free(obj_id)

    def alive(self) -> list:
        return [] if self._closed else [p for p in self._pids if p not in self._dead]

    def close(self, grace: float = 0.0) -> None:
        """Drop every worker; idempotent (``grace`` is accepted as `aia.LocalCluster` does)."""
        if self._run is not None:
            self._run.close()
        self._closed = True
        for worker in self._workers.values():
            worker.drop_objects()

    def __repr__(self) -> str:
        return f"InMemoryCluster({len(self._pids)}, {len(self.alive())} alive)"


class InMemoryRun(Run):
    """A run of an `InMemoryCluster`: queries wait in ``pending`` until the central waits."""

    def __init__(self, cluster: InMemoryCluster, run: int, rng: Optional[random.Random]):
        self.cluster = cluster
        self.id = run
        self.rng = rng
        self.workers: set = set()  # the workers set up for this run (each `WorkerState`
        # holds its own copies of the algorithm and problem)
        self.pending: dict = {}   # pid -> the pickled query, in the order sent
        self.failed: list = []    # failures found while sending, reported by wait
        self.closed = False

    def send(self, pid: int, query: Any) -> None:
        self.broadcast([pid], query)

    def broadcast(self, pids: Sequence[int], query: Any) -> None:
        if self.closed:
            raise RuntimeError("this run is closed")
        data = cloudpickle.dumps(query)  # serialized once, as the process engines do
        for pid in pids:
            if pid not in self.workers:
                continue  # failed before: gets no query of this run anymore
            if pid in self.cluster._dead:
                self.workers.discard(pid)
                self.failed.append(Failed(pid, "worker is dead"))
                continue
            self.pending.pop(pid, None)
            self.pending[pid] = data

    def wait(self, timeout: Optional[float]) -> list:
        if self.failed:
            failed, self.failed = self.failed, []
            return failed
        if not self.pending:
            if timeout is None:
                raise RuntimeError("wait(None) on an InMemoryRun with no query outstanding "
                                   "would never return")
            time.sleep(max(0.0, timeout))
            return []
        order = list(self.pending)
        pid = order[0] if self.rng is None else self.rng.choice(order)
        return [self._answer(pid, self.pending.pop(pid))]

    def _answer(self, pid: int, data: bytes):
        worker = self.cluster._workers[pid]
        try:
            event = self.cluster._answer(pid, lambda: worker.answer(self.id,
                                                                    cloudpickle.loads(data)))
            if isinstance(event, Failed):  # an injected death
                self.workers.discard(pid)
                return event
            return Answer(pid, cloudpickle.loads(cloudpickle.dumps(event)))
        except BaseException as exc:  # noqa: BLE001 - a worker's exception is its failure
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.workers.discard(pid)
            return Failed.raised(pid, remote_error(exc))

    def close(self) -> None:
        """End the run: outstanding queries are dropped, never answered."""
        self.closed = True
        self.pending.clear()
        for pid in self.workers:
            self.cluster._workers[pid].end(self.id)
        self.workers.clear()
