"""`AveragingAlgorithm`: step on the weighted average of the workers' latest answers, with
O(1) memory at the central (see `aia.wrappers` for both wrappers).

The central holds a running weighted sum and its compensation term, updated by error-free
transformations (Knuth's TwoSum, Dekker's TwoProduct), so that the average after many
changes is as accurate as one summed afresh.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import numpy as np

from .wrapper_base import _check_round, _nbytes, _Wrapper


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
