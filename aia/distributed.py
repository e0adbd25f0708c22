"""`DistributedObject`: one object per worker, built where it lives and kept there."""

from __future__ import annotations

import itertools
import weakref
from typing import Any, Callable, Optional, Sequence

import cloudpickle

from .checks import serialize
from .cluster import Cluster, ObjectStore, StoredProblem

_ids = itertools.count(1)


class DistributedObject:
    """``make(pid)`` built on each worker of ``cluster`` (or of ``pids``) and kept there.

    The objects stay on their workers across any number of `aia.start` calls on that cluster;
    passing the `DistributedObject` as the problem of `start` uses them where they live, so no
    data crosses the pipes. ``local`` is the object in this process (pid 0): None until set.

    >>> problems = aia.DistributedObject(make_problem, cluster)
    >>> problems.map(lambda p: p.m)          # {1: 120, 2: 80, ...}, computed on the workers
    >>> problems.local = make_problem(0)      # the central's own problem
    """

    def __init__(self, make: Callable[[int], Any], cluster: Cluster,
                 pids: Optional[Sequence[int]] = None):
        if not isinstance(cluster, Cluster):
            raise TypeError(f"cluster: expected a cluster object such as aia.LocalCluster, "
                            f"got {type(cluster).__name__}")
        if not isinstance(cluster, ObjectStore):
            why = getattr(cluster, "no_objects_reason", "")
            raise TypeError(f"cluster: a {type(cluster).__name__} cannot build objects on its "
                            f"workers{': ' + why if why else ''}. A DistributedObject needs "
                            f"an engine that keeps objects (an aia.ObjectStore such as "
                            f"aia.LocalCluster, aia.RayCluster or aia.InMemoryCluster)")
        if not callable(make):
            raise TypeError(f"make: expected a callable make(pid), got {type(make).__name__}")
        cluster.check_open()
        pids = list(cluster.pids if pids is None else pids)
        missing = [p for p in pids if p not in cluster.pids]
        if missing:
            raise ValueError(f"pids: the cluster has no worker {missing} (its workers are "
                             f"{cluster.pids})")
        self.id = next(_ids)
        self.cluster = cluster
        self.pids = pids
        self.local: Any = None
        cluster.store(self.id, serialize(make, "make"), pids)
        self._generations = {pid: cluster.generation(pid) for pid in pids}
        # Free the remote objects when this handle is garbage collected.
        self._finalizer = weakref.finalize(self, cluster.free, self.id, list(pids))

    def _holds(self, pid: int, alive) -> bool:
        return pid in alive and self.cluster.generation(pid) == self._generations[pid]

    def where(self) -> list:
        """The pids that hold an object: 0 if ``local`` is set, then every live worker."""
        return self._where(set(self.cluster.alive()))

    def _where(self, alive) -> list:
        held = [p for p in self.pids if self._holds(p, alive)]
        return ([0] if self.local is not None else []) + held

    def _check_held(self, pid: int, alive=None) -> None:
        """Raise unless worker ``pid`` still holds its object; ``alive``: the live pids, if
        the caller has them (asking a Ray cluster pings every actor)."""
        if pid not in self.pids:
            raise ValueError(f"this DistributedObject has no object on worker {pid} (it has "
                             f"objects on {self.pids})")
        alive = self.cluster.alive() if alive is None else alive
        if pid not in alive:
            raise RuntimeError(f"worker {pid} is dead: its object of this DistributedObject "
                               f"died with it")
        if not self._holds(pid, alive):
            raise RuntimeError(f"worker {pid} was restarted (it was stuck): its object of "
                               f"this DistributedObject died with the old process")

    def apply(self, pid: int, fn: Callable[[Any], Any]) -> Any:
        """``fn(object on pid)``, run where the object lives; its result."""
        if pid == 0:
            return fn(self.local)
        self.cluster.check_open()
        self._check_held(pid)
        return self.cluster.apply(self.id, pid, cloudpickle.dumps(fn))

    def map(self, fn: Callable[[Any], Any], pids: Optional[Sequence[int]] = None) -> dict:
        """``{pid: fn(object on pid)}`` for every pid of ``where()`` (or of ``pids``), the
        workers in parallel."""
        self.cluster.check_open()  # (a closed cluster has no live worker: not an empty map)
        alive = set(self.cluster.alive())  # once: on Ray it pings every actor
        pids = self._where(alive) if pids is None else list(pids)
        out = {0: fn(self.local)} if 0 in pids else {}
        remote = [p for p in pids if p != 0]
        for pid in remote:
            self._check_held(pid, alive)
        out.update(self.cluster.apply_all(self.id, remote, cloudpickle.dumps(fn)))
        return out

    def problem_spec(self, pids: Sequence[int]) -> StoredProblem:
        """What `start` sends so that workers use their objects; checks they still hold one."""
        alive = set(self.cluster.alive())
        for pid in pids:
            self._check_held(pid, alive)
        return StoredProblem(self.id)

    def free(self) -> None:
        """Drop the objects on the workers now (they are freed with the cluster anyway)."""
        self._finalizer()

    def __repr__(self) -> str:
        return f"DistributedObject(id={self.id}, where={self.where()})"
