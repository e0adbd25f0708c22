"""The seam between the central loop and where workers live.

The central loop (`aia.run`) only ever talks to a `Run`, which a `Cluster` opens:

    run = cluster.open_run(algorithm_bytes, problem_spec, pids, deadline)
    run.send(pid, q)         # a query to one worker
    run.broadcast(pids, q)   # the same query to several (serialized once)
    run.wait(timeout)        # -> [Answer | Failure, ...], [] on timeout
    run.close()

A cluster also builds and queries the objects of `aia.DistributedObject` (``store``,
``apply``, ``free``). `aia.LocalCluster` (worker processes on this machine) is one cluster;
other engines implement the same few methods.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from .errors import Failure, RemoteError


@dataclass
class Answer:
    """An answer of worker ``pid`` to its latest query."""

    pid: int
    value: Any


@dataclass
class Failed:
    """Worker ``pid`` failed: its answer (or constructor) raised, or its process died."""

    pid: int
    cause: str
    traceback: Optional[str] = None
    os_pid: Optional[int] = None
    exitcode: Optional[int] = None
    remote: Optional[tuple] = None  # (type name, message, traceback) of a remote exception

    def remote_error(self) -> Optional[RemoteError]:
        return RemoteError(*self.remote) if self.remote else None

    def failure(self, iteration: int) -> Failure:
        return Failure(self.pid, iteration, self.cause, self.traceback, self.os_pid, self.exitcode)


Event = Union[Answer, Failed]

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
    """Workers that can take part in runs."""

    @property
    @abc.abstractmethod
    def pids(self) -> list:
        """The ids of the workers, 1..n."""

    @abc.abstractmethod
    def open_run(self, algorithm: bytes, problem: tuple, pids: Sequence[int],
                 deadline: Optional[float]) -> tuple:
        """Set up a run on ``pids``: each worker loads the algorithm and builds its problem
        (``problem`` is ``("call", constructor_bytes)`` or ``("object", object_id)``).
        Returns ``(run, failed)``: the `Run` and the `Failed` events of workers whose set-up
        raised or who died."""

    def open_run_tolerating(self, algorithm: bytes, problem: tuple, pids: Sequence[int],
                            deadline: Optional[float], tolerate: Optional[int]) -> tuple:
        """`open_run` for a run that tolerates ``tolerate`` failures: an engine that can may
        give up, as failed, workers whose set-up lags far behind the others' (a frozen
        worker must not spend the run's time). By default, `open_run`."""
        return self.open_run(algorithm, problem, pids, deadline)

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

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every worker; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
