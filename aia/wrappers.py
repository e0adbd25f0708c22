"""Algorithm wrappers: step on the aggregate, or the weighted average, of the workers' answers.

Both wrappers run

    q_j <- query(aggregate(latest answer a_i of every connected worker i))

at the central each time worker j answers (asynchronous mode), or once per round (synchronous
mode), where a worker is *connected* once it has answered at least once (the Julia manual's
definition). The user writes an ``inner`` object with the per-problem pieces; the wrapper is
the `aia.AbstractAlgorithm` given to `aia.start`:

- `AggregationAlgorithm(inner)`: ``inner`` defines ``initialize(problem)``,
  ``answer(q, problem)``, ``aggregate(answers, workers)`` and ``query(aggregated, problem)``.
  The central keeps the latest answer of every connected worker (memory grows with the
  number of workers).
- `AveragingAlgorithm(inner, weights=None)`: ``inner`` defines ``initialize``, ``answer`` and
  ``query(average, problem)``; the aggregate is the weighted mean of the latest answers, and
  the central holds only a running weighted sum (plus its compensation term) whatever the
  number of workers: each worker's copy of the wrapper remembers what it has already told the
  central and sends only the change.

Both forward the six hooks (``stopnow``, ``savenow``, ``savevalues``, ``report``,
``progress``, ``showvalues``) to ``inner`` (the `AbstractAlgorithm` default when ``inner`` has
no such method), and forward ``staleness``: when the engine sets ``wrapper.staleness`` before a
central step, ``inner.staleness`` is set to the same value, so ``inner.aggregate``/``query``
and the hooks can read it.

A worker that fails (and is tolerated, ``resilience``) leaves `AggregationAlgorithm`'s
aggregate: the engine calls ``worker_left(worker)`` and the wrapper drops its stored answer.
It stays in `AveragingAlgorithm`'s average: the central holds only the weighted sum, not the
share of each worker it would take to remove one.

Run state (the stored answers, the running sum, each worker's record of what it sent) is not
pickled: the copy of the wrapper a worker receives starts clean, and ``initialize`` resets it,
so one wrapper object can serve several runs.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import numpy as np

from .algorithm import AbstractAlgorithm, overrides

__all__ = ["AggregationAlgorithm", "AveragingAlgorithm"]

HOOKS = ("stopnow", "savenow", "savevalues", "report", "progress", "showvalues")


def _defines(inner: Any, name: str) -> bool:
    """Whether ``inner`` provides ``name`` itself (not `AbstractAlgorithm`'s raising default)."""
    if not callable(getattr(inner, name, None)):
        return False
    if isinstance(inner, AbstractAlgorithm):
        return overrides(inner, name) or name in getattr(inner, "__dict__", {})
    return True


class _Wrapper(AbstractAlgorithm):
    """What both wrappers share: the inner algorithm, hooks, staleness, pickling."""

    _required: tuple = ()
    _signatures: dict = {}
    _transient: tuple = ("_staleness",)  # run state: not pickled, reset by initialize

    def __init__(self, inner: Any):
        missing = [name for name in self._required if not _defines(inner, name)]
        if missing:
            needed = "; ".join(self._signatures[name] for name in missing)
            raise TypeError(f"{type(self).__name__}: the inner algorithm "
                            f"{type(inner).__name__} must define {needed}")
        self.inner = inner
        self._reset()

    def _reset(self) -> None:
        self._staleness = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    # -- staleness: set by the engine on the wrapper, seen by inner ---------------------
    @property
    def staleness(self) -> Any:
        return self._staleness

    @staleness.setter
    def staleness(self, value: Any) -> None:
        self._staleness = value
        try:
            self.inner.staleness = value
        except (AttributeError, TypeError):  # an inner that takes no attributes (__slots__)
            pass

    # -- pickling: the run state stays behind -------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in self._transient:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- steps shared by both -----------------------------------------------------------
    def initialize(self, problem: Any) -> Any:
        self._reset()
        return self.inner.initialize(problem)

    # -- hooks: forwarded to inner ------------------------------------------------------
    def _forward(self, name: str, *args: Any) -> Any:
        method = getattr(self.inner, name, None)
        if callable(method):
            return method(*args)
        return getattr(AbstractAlgorithm, name)(self, *args)

    def stopnow(self, stopat: Mapping[str, Any]) -> bool:
        return self._forward("stopnow", stopat)

    def savenow(self, saveat: Mapping[str, Any]) -> bool:
        return self._forward("savenow", saveat)

    def savevalues(self) -> None:
        return self._forward("savevalues")

    def report(self) -> dict:
        return self._forward("report")

    def progress(self, stopat: Mapping[str, Any]) -> float:
        return self._forward("progress", stopat)

    def showvalues(self) -> list:
        return self._forward("showvalues")


def _check_round(answers: Sequence[Any], workers: Sequence[int]) -> None:
    if len(answers) != len(workers):
        raise ValueError(f"sync_central_step: got {len(answers)} answers for "
                         f"{len(workers)} workers")


# ======================================================================================
class AggregationAlgorithm(_Wrapper):
    """``q = inner.query(inner.aggregate(latest answers, their workers), problem)``.

    The central keeps the latest answer of every connected worker (one that has answered at
    least once) and steps on their aggregate, in both modes. ``aggregate`` receives the
    answers and the worker ids in increasing worker order. In synchronous mode the round's
    answers replace their workers' stored ones first; with no failure the aggregate is then
    exactly that of the round.
    """

    _required = ("initialize", "answer", "aggregate", "query")
    _signatures = {
        "initialize": "initialize(problem) -> query",
        "answer": "answer(q, problem) -> answer",
        "aggregate": "aggregate(answers, workers) -> aggregated",
        "query": "query(aggregated, problem) -> query",
    }
    _transient = _Wrapper._transient + ("_latest",)

    def _reset(self) -> None:
        super()._reset()
        self._latest: dict = {}  # worker -> its latest answer (central)

    def answer(self, q: Any, problem: Any) -> Any:
        return self.inner.answer(q, problem)

    def central_step(self, a: Any, worker: int, problem: Any) -> Any:
        self._latest[worker] = a
        return self._query(problem)

    def sync_central_step(self, answers: Sequence[Any], workers: Sequence[int],
                          problem: Any) -> Any:
        _check_round(answers, workers)
        for a, w in zip(answers, workers):
            self._latest[w] = a
        return self._query(problem)

    def _query(self, problem: Any) -> Any:
        workers = sorted(self._latest)
        aggregated = self.inner.aggregate([self._latest[w] for w in workers], workers)
        return self.inner.query(aggregated, problem)

    def worker_left(self, worker: int) -> None:
        """Worker ``worker`` failed and left the run: its answer leaves the aggregate."""
        self._latest.pop(worker, None)

    @property
    def latest_answers(self) -> dict:
        """The latest answer of each connected worker, as held by the central."""
        return dict(self._latest)

    def central_memory(self) -> dict:
        """What the central holds: one stored answer per connected worker."""
        return {"arrays": len(self._latest),
                "nbytes": sum(_nbytes(a) for a in self._latest.values()),
                "workers": len(self._latest)}


# ======================================================================================
# Error-free transformations (Knuth's TwoSum, Dekker's TwoProduct). They use only +, -, *,
# so they work element-wise on float64 arrays of any shape and on Python floats alike.

_SPLITTER = 134217729.0  # 2**27 + 1: Veltkamp's split of a float64 into two 26-bit halves


def _two_sum(a, b):
    """``s, e`` with ``s = fl(a + b)`` and ``a + b == s + e`` exactly."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(x):
    c = _SPLITTER * x
    hi = c - (c - x)
    return hi, x - hi


def _two_prod(w: float, x):
    """``p, e`` with ``p = fl(w * x)`` and ``w * x == p + e`` exactly (barring overflow)."""
    p = w * x
    if math.frexp(w)[0] == 0.5:  # a power of two (e.g. the default weight 1): exact
        return p, 0.0
    wh, wl = _split(w)
    xh, xl = _split(x)
    return p, ((wh * xh - p) + wh * xl + wl * xh) + wl * xl


def _as_real(a: Any) -> Any:
    """An answer as a Python float or a fresh float64 array; a TypeError for other values."""
    if isinstance(a, numbers.Real) and not isinstance(a, np.ndarray):
        value = float(a)
    else:
        array = np.asarray(a)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"AveragingAlgorithm: an answer must be a real number or an array "
                            f"of real numbers, got {type(a).__name__} of dtype {array.dtype}")
        value = np.array(array, dtype=np.float64)  # a copy: inner may reuse its array
    if not np.all(np.isfinite(value)):
        raise ValueError("AveragingAlgorithm: an answer holds NaN or infinity; it would stay "
                         "in the central's running sum for the rest of the run")
    return value


def _kind(value: Any) -> Any:
    return ("array", value.shape) if isinstance(value, np.ndarray) else ("scalar",)


def _describe(kind: Any) -> str:
    return f"an array of shape {kind[1]}" if kind[0] == "array" else "a number"


def _nbytes(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    if isinstance(value, float):
        return 8
    return sys.getsizeof(value)


def check_weights(weights: Any) -> Optional[dict]:
    """``weights`` as ``{worker id: float}``, or None for equal weights; raise if invalid."""
    if weights is None:
        return None
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights: expected a mapping worker id -> weight such as "
                        f"{{1: 2.0, 2: 1.0}}, or None for equal weights, "
                        f"got {type(weights).__name__}")
    if not weights:
        raise ValueError("weights: expected a weight for every worker, got an empty mapping")
    checked = {}
    for worker, weight in weights.items():
        if not isinstance(worker, numbers.Integral) or isinstance(worker, bool) or worker < 0:
            raise ValueError(f"weights: keys are worker ids (ints >= 0), got {worker!r}")
        if (not isinstance(weight, numbers.Real) or isinstance(weight, bool)
                or not math.isfinite(weight) or not weight > 0):
            raise ValueError(f"weights[{worker!r}]: expected a finite number > 0, "
                             f"got {weight!r}")
        checked[int(worker)] = float(weight)
    return checked


class AveragingAlgorithm(_Wrapper):
    """``q = inner.query(weighted mean of the latest answers, problem)``, in O(1) central memory.

    ``weights`` maps worker id -> weight (finite, > 0); None weighs every worker 1. Answers
    are real numbers or real arrays of any (fixed) shape; the average is a float or a float64
    array of that shape.

    How: the copy of the wrapper on worker i remembers ``sent_i``, the sum of the changes it
    has sent, and sends ``delta = a_i - sent_i`` (its whole answer the first time). The
    central keeps ``S = sum_i w_i * sent_i`` over the connected workers and their total weight
    ``W``, adds ``w_i * delta`` for each message, and queries with ``S / W``: two
    answer-shaped arrays (``S`` and its compensation term) whatever the number of workers. In
    synchronous mode, with no failure, that is exactly the weighted mean of the round. The
    messages, and so ``history.answers`` with ``save_answers=True``, are the deltas.

    Drift guard (compensated summation on both ends, no periodic resynchronisation):
    a plain running sum of deltas would drift, each step adding a rounding error of order
    eps * |delta| on the worker (``a - previous``) and eps * |S| on the central
    (``S + w * delta``, and the product itself); over n steps that grows like sqrt(n) (or n,
    if the roundings are biased) and never goes away. Here

    - each worker keeps ``sent_i`` as an unevaluated sum ``hi + lo`` (double-double,
      updated with TwoSum) and computes ``delta`` against it, so the central's view of
      worker i is off by the rounding of the latest delta only, never by an accumulation;
    - the central adds ``w_i * delta`` exactly split by TwoProduct (skipped for powers of
      two, such as the default weight 1) into ``S`` with TwoSum, carrying every rounding
      error into a compensation array ``C`` (Kahan-Babuska-Neumaier); ``S + C`` is the exact
      sum up to O(n * eps**2) relative, which stays below 1e-20 for any feasible run;
    - ``W`` is an exact ``math.fsum`` of the connected workers' weights, recomputed when a
      worker connects.

    So the average is the exact weighted mean of the latest answers to a few ulps (relative
    to the size of the answers), however long the run. TwoProduct needs ``|w * delta|``
    below about 1e300.

    Weights are checked at construction (a non-positive or non-finite weight) and at the
    central when a worker first answers (a worker with no weight: a ``ValueError`` naming
    it, before any state changes). ``check_workers(pids)`` checks a whole list at once, for
    a caller that knows the run's workers in advance.
    """

    _required = ("initialize", "answer", "query")
    _signatures = {
        "initialize": "initialize(problem) -> query",
        "answer": "answer(q, problem) -> answer",
        "query": "query(average, problem) -> query",
    }
    _transient = _Wrapper._transient + (
        "_sum", "_comp", "_total", "_connected", "_answer_kind",  # central
        "_sent_hi", "_sent_lo", "_sent_kind")  # worker

    def __init__(self, inner: Any, weights: Optional[Mapping[int, float]] = None):
        self.weights = check_weights(weights)
        super().__init__(inner)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r}, weights={self.weights!r})"

    def _reset(self) -> None:
        super()._reset()
        # Central: the running weighted sum S (+ compensation C) and total weight W.
        self._sum = None
        self._comp = None
        self._total = 0.0
        self._connected: set = set()
        self._answer_kind = None
        # Worker: what this worker has told the central so far, as hi + lo.
        self._sent_hi = None
        self._sent_lo = None
        self._sent_kind = None

    # -- weights ------------------------------------------------------------------------
    def weight(self, worker: int) -> float:
        """The weight of ``worker``; a ValueError if ``weights`` has none for it."""
        if self.weights is None:
            return 1.0
        try:
            return self.weights[worker]
        except KeyError:
            raise ValueError(f"weights: no weight for worker {worker}, which takes part in the "
                             f"run (weights are given for workers "
                             f"{sorted(self.weights)})") from None

    def check_workers(self, workers: Sequence[int]) -> None:
        """Raise ValueError unless every worker of ``workers`` has a weight."""
        if self.weights is None:
            return
        missing = [w for w in workers if w not in self.weights]
        if missing:
            raise ValueError(f"weights: no weight for worker(s) {missing}, which take part in "
                             f"the run (weights are given for workers {sorted(self.weights)})")

    # -- worker -------------------------------------------------------------------------
    def answer(self, q: Any, problem: Any) -> Any:
        a = _as_real(self.inner.answer(q, problem))
        kind = _kind(a)
        if self._sent_kind is None:
            self._sent_kind = kind
            self._sent_hi, self._sent_lo = a, 0.0 * a
            return a
        if kind != self._sent_kind:
            raise ValueError(f"AveragingAlgorithm: this worker answered {_describe(kind)} "
                             f"after {_describe(self._sent_kind)}; every answer must have "
                             f"the same shape")
        delta = (a - self._sent_hi) - self._sent_lo
        self._sent_hi, error = _two_sum(self._sent_hi, delta)
        self._sent_lo = self._sent_lo + error
        # (numpy turns 0-d arrays into scalars: keep sending an array for an array answer)
        return np.asarray(delta) if kind[0] == "array" else delta

    # -- central ------------------------------------------------------------------------
    def central_step(self, delta: Any, worker: int, problem: Any) -> Any:
        self._add(delta, worker)
        return self.inner.query(self.average(), problem)

    def sync_central_step(self, deltas: Sequence[Any], workers: Sequence[int],
                          problem: Any) -> Any:
        _check_round(deltas, workers)
        for delta, worker in zip(deltas, workers):
            self._add(delta, worker)
        return self.inner.query(self.average(), problem)

    def _add(self, delta: Any, worker: int) -> None:
        """Take one message: checks first, so a ValueError leaves the state as it was."""
        w = self.weight(worker)
        kind = _kind(delta)
        if self._answer_kind is None:
            self._answer_kind = kind
            zero = np.zeros(kind[1]) if kind[0] == "array" else 0.0
            self._sum, self._comp = zero, zero
        elif kind != self._answer_kind:
            raise ValueError(f"AveragingAlgorithm: worker {worker} answered "
                             f"{_describe(kind)}, earlier answers were "
                             f"{_describe(self._answer_kind)}")
        if worker not in self._connected:
            self._connected.add(worker)
            self._total = math.fsum(self.weight(v) for v in self._connected)
        product, product_error = _two_prod(w, delta)
        self._sum, sum_error = _two_sum(self._sum, product)
        self._comp = self._comp + (sum_error + product_error)

    def average(self) -> Any:
        """The weighted mean of the connected workers' latest answers (None before any)."""
        if self._sum is None:
            return None
        average = (self._sum + self._comp) / self._total
        return np.asarray(average) if self._answer_kind[0] == "array" else float(average)

    def central_memory(self) -> dict:
        """What the central holds for the average: ``arrays`` answer-shaped accumulators (the
        running sum and its compensation: 2, whatever the number of workers), their
        ``nbytes``, and the number of connected ``workers`` (kept as a set of ids)."""
        held = [x for x in (self._sum, self._comp) if x is not None]
        return {"arrays": len(held), "nbytes": sum(_nbytes(x) for x in held),
                "workers": len(self._connected)}
