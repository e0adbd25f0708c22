"""The worker's side, written once: what every engine's worker holds and does.

A worker holds, between runs, the objects of the `aia.DistributedObject`s built on it, and
during a run its own copy of the algorithm and its problem. `WorkerState` is that state and
its transitions; the engines add only how messages reach it:

    setup(run, algorithm, problem)   the run's algorithm (cloudpickle bytes) and problem
                                     (`BuildProblem`: built here; `StoredProblem`: an
                                     object held here)
    answer(run, query)               ``algorithm.answer(query, problem)``; `Stale` for a
                                     query of a run that has ended
    end(run)                         drops the run's algorithm and problem
    store(id, make) / apply(id, fn) / set(id, obj) / free(id)
                                     the distributed objects

Local worker processes (`aia._worker`), Ray actors (`aia.ray_actor`), the in-memory
engine (`aia.memory`) and each run of a folder site (`aia.folder.site`, which enters an
algorithm it built itself: `enter`) each wrap one. `remote_error` is how any worker reports
an exception (as text, so that every exception reaches the central) and `limit_blas` how
it caps its BLAS threads.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable

import cloudpickle

from .cluster import BuildProblem, StoredProblem

_BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                   "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


class Stale(Exception):
    """A query of a run that has ended (or another run than the worker's): not answered."""


class WorkerState:
    """One worker's objects, and the algorithm and problem of its current run."""

    def __init__(self, pid: int):
        self.pid = pid
        self.objects: dict[int, Any] = {}
        self.run = 0
        self.algorithm = None
        self.problem = None

    # -- runs -------------------------------------------------------------------------------
    def begin(self, run: int) -> None:
        """A set-up for ``run`` starts: whatever it replaces is dropped first (a set-up that
        fails leaves no algorithm of another run behind)."""
        self.run, self.algorithm, self.problem = run, None, None

    def setup(self, run: int, algorithm: bytes, problem: Any) -> bool:
        """Set up ``run``: load the algorithm and build (or look up) the problem."""
        self.begin(run)
        return self.enter(run, *load_run(self.pid, self.objects, algorithm, problem))

    def enter(self, run: Any, algorithm: Any, problem: Any) -> bool:
        """Set up ``run`` with an algorithm and a problem already built (a folder site
        builds its algorithm from its own registry, by name, and loads its own data)."""
        self.run, self.algorithm, self.problem = run, algorithm, problem
        return True

    def answer(self, run: int, query: Any) -> Any:
        """The answer to ``query`` of ``run``; `Stale` if that run is not this worker's."""
        if run != self.run or self.algorithm is None:
            raise Stale(f"a query of run {run}; this worker's run is {self.run}")
        return self.algorithm.answer(query, self.problem)

    def end(self, run: Any = None) -> None:
        """The end of ``run`` (None: whichever is current)."""
        if run is None or run == self.run:
            self.run, self.algorithm, self.problem = 0, None, None

    # -- distributed objects ----------------------------------------------------------------
    def store(self, obj_id: int, make: Callable[[int], Any]) -> bool:
        self.objects[obj_id] = make(self.pid)
        return True

    def apply(self, obj_id: int, fn: Callable[[Any], Any]) -> Any:
        if obj_id not in self.objects:
            raise LookupError(f"this worker holds no object of DistributedObject {obj_id}")
        return fn(self.objects[obj_id])

    def set(self, obj_id: int, obj: Any) -> None:
        self.objects[obj_id] = obj

    def free(self, obj_id: int) -> None:
        self.objects.pop(obj_id, None)

    def drop_objects(self) -> None:
        """The worker died: its objects with it."""
        self.objects = {}
        self.end()


def load_run(pid: int, objects: dict, algorithm: bytes, problem: Any) -> tuple:
    """A worker's copy of the algorithm and its problem for a run (any engine's worker).

    ``problem`` is a `BuildProblem`: build it here, or a `StoredProblem`: the object of a
    DistributedObject this worker holds.
    """
    if isinstance(problem, StoredProblem):
        if problem.obj_id not in objects:
            raise LookupError(f"this worker holds no object of DistributedObject "
                              f"{problem.obj_id}")
        return cloudpickle.loads(algorithm), objects[problem.obj_id]
    if not isinstance(problem, BuildProblem):
        raise TypeError(f"problem: expected a BuildProblem or a StoredProblem, got "
                        f"{type(problem).__name__}")
    return cloudpickle.loads(algorithm), cloudpickle.loads(problem.constructor)(pid)


def remote_error(exc: BaseException) -> tuple[str, str, str]:
    """An exception as text: (type name, message, traceback). Never raises: an exception
    whose ``__str__`` fails still gets reported."""
    name = type(exc).__module__ + "." + type(exc).__qualname__
    if name.startswith("builtins."):
        name = name[len("builtins."):]
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__} object>"
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        text = "".join(traceback.format_tb(exc.__traceback__)) + f"{name}: {message}\n"
    return name, message, text


def limit_blas(threads: int) -> None:
    """Cap the BLAS and OpenMP threads so that n workers do not oversubscribe the cores."""
    for name in _BLAS_VARIABLES:  # for libraries loaded after this point
        os.environ[name] = str(threads)
    if "numpy" in sys.modules or "scipy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
