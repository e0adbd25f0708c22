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

`AveragingAlgorithm` and its compensated running sum are in `aia.averaging`; what both
share (forwarding, pickling) in `aia.wrapper_base`.
"""

from __future__ import annotations

from typing import Any, Sequence

from .averaging import AveragingAlgorithm
from .wrapper_base import _check_round, _nbytes, _Wrapper

__all__ = ["AggregationAlgorithm", "AveragingAlgorithm"]


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

