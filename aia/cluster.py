"""The seam between the central loop and where workers live.

The central loop (`aia.run`) only ever talks to a `Run`, which a `Cluster` opens:

    run, failed = cluster.open_run(algorithm_bytes, spec, pids, deadline)
    run.send(pid, q)         # a query to one worker
    run.broadcast(pids, q)   # the same query to several (serialized once)
    run.wait(timeout)        # -> [Answer | Failed, ...], [] on timeout
    run.close()

``spec`` is a typed problem spec: `BuildProblem` (each worker calls ``make_problem(pid)``)
or `StoredProblem` (each worker uses its object of an `aia.DistributedObject`).

Building and querying the objects of `aia.DistributedObject` (``store``, ``apply``,
``free``, ``alive``, ``generation``) is a separate capability, `ObjectStore`, that an engine
may lack (`aia.FolderCluster` does: its sites run no function sent to them).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from .errors import Failure, RemoteError


@dataclass
class Answer:
    """An answer of ``worker`` (its id) to its latest query."""

    worker: int
    value: Any


@dataclass
class Failed:
    """``worker`` (its id; ``os_pid`` is its process's) failed: its answer (or constructor)
    raised, or its process died. As in `aia.Failure`, ``worker`` is an id and a ``pid`` an
    operating-system process id."""

    worker: int
    cause: str
    traceback: Optional[str] = None
    os_pid: Optional[int] = None
    exitcode: Optional[int] = None
    remote: Optional[tuple] = None  # (type name, message, traceback) of a remote exception

    @classmethod
    def raised(cls, worker: int, remote: tuple, os_pid: Optional[int] = None) -> "Failed":
        """``worker`` raised ``remote`` = (type name, message, traceback): the one place
        that words such a failure ("raised X: msg"), whatever the engine."""
        type_name, message, tb = remote
        return cls(worker, f"raised {type_name}: {message}", tb, os_pid, remote=tuple(remote))

    def remote_error(self) -> Optional[RemoteError]:
        return RemoteError(*self.remote) if self.remote else None

    def failure(self, iteration: int) -> Failure:
        return Failure(self.worker, iteration, self.cause, self.traceback, self.os_pid,
                       self.exitcode)


Event = Union[Answer, Failed]


@dataclass(frozen=True)
class BuildProblem:
    """Each worker builds its problem: ``cloudpickle.loads(constructor)(pid)``."""

    constructor: bytes


@dataclass(frozen=True)
class StoredProblem:
    """Each worker uses the object it holds of `aia.DistributedObject` ``obj_id``."""

    obj_id: int


ProblemSpec = Union[BuildProblem, StoredProblem]

#: The least time a worker still busy with an ended run's answer gets before it is replaced.
ABANDON_GRACE = 1.0


class WorkerClock:
    """What the central times of one worker, whatever the engine: when its outstanding query
    was sent, how long its latest answer took, and whether it was left answering a run that
    ended (``abandoned``: the engine's token of that answer, and when)."""

    def __init__(self) -> None:
        self.sent_at = 0.0
        self.answer_time = 0.0
        self.abandoned: Optional[tuple] = None

    def patience(self) -> float:
        """How long a worker busy with an ended run's answer gets before it is replaced:
        three of its own answers, at least ``ABANDON_GRACE``."""
        return max(ABANDON_GRACE, 3 * self.answer_time)

    def give_up_at(self) -> Optional[float]:
        """When to stop waiting for it to come back from an ended run (None: not abandoned)."""
        return None if self.abandoned is None else self.abandoned[1] + self.patience()


def raise_failures(results: dict, doing: str) -> None:
    """Raise for the first `Failed` of ``results`` (``{pid: result}``) of an object-store
    request, the worker's exception as the cause."""
    for pid, result in sorted(results.items()):
        if isinstance(result, Failed):
            raise RuntimeError(f"worker {pid} failed {doing}: {result.cause}") \
                from result.remote_error()


class Run(abc.ABC):
    """The workers of one `aia.start` call, as the central loop sees them."""

    @abc.abstractmethod
    def send(self, pid: int, query: Any) -> None:
        """Send ``query`` to worker ``pid``; a worker found dead is reported by ``wait``."""

    def broadcast(self, pids: Sequence[int], query: Any) -> None:
        """Send the same query to every worker of ``pids``."""
        for pid in pids:
            self.send(pid, query)

    @abc.abstractmethod
    def wait(self, timeout: Optional[float]) -> list:
        """The events ready within ``timeout`` seconds (None: until one is): answers and
        failures of the workers that have a query outstanding or are alive."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the run on every worker (a late answer of this run is then dropped)."""


class Cluster(abc.ABC):
    """Workers that can take part in runs: the seam `aia.start` relies on.

    The contract, which every engine meets (``tests/aia/test_contract.py`` checks it):

    - ``pids``: the worker ids, 1..n, fixed for the cluster's life.
    - ``open_run(algorithm, spec, pids, deadline)`` sets the run up on ``pids`` (each loads
      the algorithm and builds its problem from the `ProblemSpec`) and returns ``(run,
      failed)``: a `Run` over the workers whose set-up succeeded and the `Failed` events of
      the others (a constructor that raised, a worker that died). It may raise past
      ``deadline`` (a `time.monotonic` value, None: none).
    - ``run.send(pid, q)``: one query to one worker; ``run.broadcast(pids, q)``: the same to
      several. A worker has at most one query outstanding: the central sends the next after
      its answer. Sending to a dead worker does not raise: ``wait`` reports it.
    - ``run.wait(timeout)`` returns the events ready within ``timeout`` seconds, ``[]`` on a
      timeout; ``wait(None)`` blocks until at least one event is ready. An event is an
      `Answer` (``worker``, ``value``) or a `Failed` (the worker's answer raised: ``remote``
      holds the exception as text; or it died). Each worker fails at most once per run and
      then gets no query of it anymore.
    - ``run.close()`` ends the run on every worker; an answer of an ended run is dropped,
      never delivered to a later run; a worker still busy with it is waited for (or, on an
      engine that can, replaced) before the next set-up.
    - ``close()`` stops every worker; idempotent.

    An engine that can keep objects on its workers also implements `ObjectStore`.
    """

    #: Whether its runs can start a fresh worker in a failed one's slot (``Run.replace``,
    #: used by ``aia.start(..., replace_failed=True)``).
    replaces_workers = False

    @property
    @abc.abstractmethod
    def pids(self) -> list:
        """The ids of the workers, 1..n."""

    @abc.abstractmethod
    def open_run(self, algorithm: bytes, problem: "ProblemSpec", pids: Sequence[int],
                 deadline: Optional[float]) -> tuple:
        """Set up a run on ``pids``: each worker loads the algorithm and builds its problem
        from ``problem`` (a `BuildProblem` or a `StoredProblem`). Returns ``(run, failed)``:
        the `Run` and the `Failed` events of workers whose set-up raised or who died."""

    def open_run_tolerating(self, algorithm: bytes, problem: "ProblemSpec", pids: Sequence[int],
                            deadline: Optional[float], tolerate: Optional[int]) -> tuple:
        """`open_run` for a run that tolerates ``tolerate`` failures: an engine that can may
        give up, as failed, workers whose set-up lags far behind the others' (a frozen
        worker must not spend the run's time). By default, `open_run`."""
        return self.open_run(algorithm, problem, pids, deadline)

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every worker; idempotent."""

    @property
    def closed(self) -> bool:
        """Whether `close` has stopped this cluster's workers (its engines set ``_closed``)."""
        return bool(getattr(self, "_closed", False))

    def check_open(self) -> None:
        """Raise if the cluster is closed: nothing can run on it any more."""
        if self.closed:
            raise RuntimeError(f"this {type(self).__name__} is closed: its workers are "
                               "stopped (make a new cluster)")

    def __enter__(self):
        self.check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ObjectStore(abc.ABC):
    """The capability `aia.DistributedObject` needs: objects built and kept on the workers.

    A `Cluster` that can keep objects also derives from this class (`aia.LocalCluster`,
    `aia.RayCluster`, `aia.InMemoryCluster`); one that cannot (`aia.FolderCluster`) does
    not, and a `DistributedObject` on it raises a TypeError saying so.
    """

    @abc.abstractmethod
    def store(self, obj_id: int, make: bytes, pids: Sequence[int]) -> None:
        """Build ``make(pid)`` on each worker of ``pids`` and keep it there."""

    @abc.abstractmethod
    def apply(self, obj_id: int, pid: int, fn: bytes) -> Any:
        """``fn(object)`` run on worker ``pid``; its result."""

    def apply_all(self, obj_id: int, pids: Sequence[int], fn: bytes) -> dict:
        """``{pid: fn(object on pid)}``."""
        return {pid: self.apply(obj_id, pid, fn) for pid in pids}

    @abc.abstractmethod
    def free(self, obj_id: int, pids: Sequence[int]) -> None:
        """Drop the object on each worker of ``pids`` that is still alive."""

    def generation(self, pid: int) -> int:
        """How many times worker ``pid`` was replaced; its objects die with each replacement."""
        return 0

    @abc.abstractmethod
    def alive(self) -> list:
        """The pids of the workers still alive."""
