"""Checks of `aia.start`'s arguments, all made before any process starts.

Each error says what was expected and what came instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import cloudpickle

from . import sources
from .algorithm import AbstractAlgorithm, check_algorithm, overrides
from .recording import BUILTIN_SAVE, BUILTIN_STOP


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _ReadTracker(Mapping):
    """A mapping that remembers which keys were looked at."""

    def __init__(self, data: Mapping):
        self.data = dict(data)
        self.read: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return self.data[key]

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return key in self.data

    def __iter__(self):
        self.read.update(self.data)
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def check_stopat(stopat: Any, algorithm: AbstractAlgorithm) -> dict:
    if not isinstance(stopat, Mapping):
        raise TypeError(f"stopat: expected a mapping such as {{'iteration': 100}}, "
                        f"got {type(stopat).__name__}")
    if not stopat:
        raise ValueError("stopat: expected at least one criterion ('iteration', 'epoch', "
                         "'time', or a custom key read by stopnow), got an empty mapping: "
                         "the run could never end")
    for key in ("iteration", "epoch"):
        if key in stopat:
            value = stopat[key]
            if not _is_int(value) or value < 0:
                raise ValueError(f"stopat[{key!r}]: expected a non-negative int, got {value!r}")
    if "time" in stopat:
        value = stopat["time"]
        if not _is_real(value) or not value >= 0 or math.isinf(value):
            raise ValueError(f"stopat['time']: expected a finite number of seconds >= 0, "
                             f"got {value!r}")
    _check_custom_keys("stopat", stopat, BUILTIN_STOP, algorithm, ("stopnow", "progress"))
    return dict(stopat)


def check_saveat(saveat: Any, algorithm: AbstractAlgorithm) -> dict:
    if saveat is None:
        return {}
    if not isinstance(saveat, Mapping):
        raise TypeError(f"saveat: expected a mapping such as {{'epoch': 10}} or None, "
                        f"got {type(saveat).__name__}")
    for key in BUILTIN_SAVE:
        if key in saveat:
            value = saveat[key]
            if not _is_int(value) or value < 1:
                raise ValueError(f"saveat[{key!r}]: expected a positive int, got {value!r}")
    _check_custom_keys("saveat", saveat, BUILTIN_SAVE, algorithm, ("savenow",))
    return dict(saveat)


def _check_custom_keys(name: str, criteria: Mapping, builtin: Sequence[str],
                       algorithm: AbstractAlgorithm, hooks: Sequence[str]) -> None:
    """A custom key must be read by one of the algorithm's ``hooks``.

    If no hook is overridden nothing can read it. If one is, we call it once on a copy of the
    algorithm with a mapping that records what it reads; a hook that fails before
    ``initialize`` (its state is not set yet) gets the benefit of the doubt.
    """
    custom = [k for k in criteria if k not in builtin]
    if not custom:
        return
    readers = [h for h in hooks if overrides(algorithm, h)]
    expected = ", ".join(repr(k) for k in builtin)
    if not readers:
        raise ValueError(
            f"{name}: key(s) {custom} are read by nothing: the built-in keys are {expected}, "
            f"and {type(algorithm).__name__} does not define {hooks[0]}({name}) to read "
            f"custom ones")
    try:
        probe = cloudpickle.loads(cloudpickle.dumps(algorithm))
        tracker = _ReadTracker(criteria)
        for hook in readers:
            getattr(probe, hook)(tracker)
    except Exception:
        return
    unread = [k for k in custom if k not in tracker.read]
    if unread:
        raise ValueError(
            f"{name}: key(s) {unread} are read by nothing: the built-in keys are {expected}, "
            f"and {type(algorithm).__name__}.{'/'.join(readers)} did not look them up "
            f"(a typo?)")


def check_workers(pids: Any, cluster: Any) -> Optional[list]:
    """Normalize ``pids``; the cluster's own workers are checked once it exists."""
    if pids is None:
        return None
    if isinstance(pids, (str, bytes)) or not hasattr(pids, "__iter__"):
        raise TypeError(f"pids: expected a list of worker ids such as [1, 2], got {pids!r}")
    pids = list(pids)
    if not pids:
        raise ValueError("pids: expected at least one worker id, got an empty list")
    if not all(_is_int(p) for p in pids):
        raise TypeError(f"pids: expected ints, got {pids!r}")
    pids = [int(p) for p in pids]
    if len(set(pids)) != len(pids):
        raise ValueError(f"pids: each worker may appear once, got {pids!r}")
    if 0 in pids and pids != [0]:
        raise ValueError(f"pids: 0 is the central; use pids=[0] alone for a non-distributed "
                         f"run, or worker ids >= 1, got {pids!r}")
    return pids


def check_cluster(cluster: Any) -> None:
    from .cluster import Cluster  # noqa: PLC0415 - avoid an import cycle at module load

    if cluster is None or isinstance(cluster, Cluster):
        return
    if _is_int(cluster) and cluster >= 1:
        return
    raise TypeError(f"cluster: expected None, a positive int (workers of a temporary local "
                    f"cluster) or a cluster object such as aia.LocalCluster, got {cluster!r}")


def check_pids_in(pids: Sequence[int], available: Sequence[int]) -> None:
    missing = [p for p in pids if p not in available]
    if missing:
        raise ValueError(f"pids: the cluster has no worker {missing} (its workers are "
                         f"{list(available)})")


def check_options(save_answers: Any, synchronous: Any, resilience: Any, verbose: Any) -> None:
    for name, value in (("save_answers", save_answers), ("synchronous", synchronous)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected True or False, got {value!r}")
    if not _is_int(resilience) or resilience < 0:
        raise ValueError(f"resilience: expected an int >= 0, got {resilience!r}")
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"verbose: expected 0 (silent), 1 (progress bar) or 2 (bar and "
                         f"values), got {verbose!r}")


def check_resilience(resilience: int, n_active: int) -> None:
    if resilience >= n_active:
        raise ValueError(f"resilience: must be below the number of active workers "
                         f"({n_active}), got {resilience}: a run needs at least one worker left")


def check_problem(problem: Any) -> None:
    from .distributed import DistributedObject  # noqa: PLC0415

    if isinstance(problem, DistributedObject) or callable(problem):
        return
    raise TypeError(f"problem: expected a callable make_problem(pid) or an "
                    f"aia.DistributedObject, got {type(problem).__name__}")


def serialize(obj: Any, what: str) -> bytes:
    """cloudpickle ``obj``, or a TypeError that names its type and how to fix it."""
    try:
        return sources.dumps(obj)  # cloudpickle, keeping the user's file names for tracebacks
    except Exception as exc:
        raise TypeError(
            f"{what} of type {type(obj).__name__!r} cannot be sent to the workers: {exc}. "
            f"It is serialized with cloudpickle: hold no open files, locks, sockets, threads "
            f"or generators on it; create such things inside the worker instead "
            f"(in make_problem(pid), or lazily in answer)."
        ) from exc


def check_all(algorithm, problem, stopat, saveat, save_answers, pids, cluster, synchronous,
              resilience, verbose) -> tuple:
    """Every check that needs no process; returns (stopat, saveat, pids)."""
    check_options(save_answers, synchronous, resilience, verbose)
    pids = check_workers(pids, cluster)
    check_algorithm(algorithm, synchronous or pids == [0])
    check_problem(problem)
    check_cluster(cluster)
    stopat = check_stopat(stopat, algorithm)
    saveat = check_saveat(saveat, algorithm)
    return stopat, saveat, pids
