"""`SiteSum`: one secure round of a sum over the sites besides a fit's iterations (the
log-likelihood at the estimate, glm.nb's theta sums, the sandwich's meat), for
`algorithms.glm.secure.SecureAggregation` to wrap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from aia.algorithm import AbstractAlgorithm

from .errors import SiteError
from .secure_codec import Total, Totals


@dataclass(frozen=True)
class SumQuery:
    """`SiteSum`'s query: ``site.method(design, *args)`` at every site; ``beta`` (the first
    argument) identifies the coefficients for the differencing guard."""

    version: int
    beta: Any = None



class SiteSum(AbstractAlgorithm):
    """One round: the sum over the sites of ``site.method(design, *args)`` (a number, or a
    dict with the names ``keys``, each a number or an array of its shape in ``shapes``),
    for `SecureAggregation` to sum securely (the log-likelihood at the estimate, glm.nb's
    theta sums, the sandwich's meat). Stop with ``stopat={"maxit": 1}``; the sum is
    ``value`` (a dict with ``keys``)."""

    def __init__(self, method: str, design: Any, *args, keys: Sequence[str] = (),
                 shapes: Optional[Mapping[str, tuple]] = None):
        self.method, self.design, self.args = method, design, args
        self.keys = tuple(sorted(keys))
        self.shapes = {k: tuple((shapes or {}).get(k, ())) for k in self.keys}
        self._subset = None
        self.value: Any = None

    def initialize(self, problem: Any) -> SumQuery:
        self.value = None
        return SumQuery(0, self.args[0] if self.args else None)

    def answer(self, q: SumQuery, problem: Any):
        value = getattr(problem, self.method)(self.design, *self.args)
        if not self.keys:
            return Total(q.version, True, float(value))
        if sorted(value) != list(self.keys) or \
                any(np.shape(value[k]) != self.shapes[k] for k in self.keys):
            raise SiteError(f"site {problem.name}: {self.method} gave "
                            f"{ {k: np.shape(v) for k, v in value.items()} }, expected "
                            f"{self.shapes}")
        return Totals(q.version, True, np.concatenate(
            [np.ravel(np.asarray(value[k], dtype=float)) for k in self.keys]))

    def sync_central_step(self, answers, workers, problem) -> SumQuery:
        if not self.keys:
            self.value = float(answers[0].value)
            return SumQuery(1)
        values, at, self.value = np.asarray(answers[0].values, float), 0, {}
        for k in self.keys:
            size = int(np.prod(self.shapes[k], dtype=int))
            chunk = values[at:at + size]
            at += size
            self.value[k] = chunk.reshape(self.shapes[k]) if self.shapes[k] else float(chunk[0])
        return SumQuery(1)

    def stopnow(self, stopat: Mapping[str, Any]) -> bool:
        return stopat["maxit"] > 0 and self.value is not None

    def report(self) -> dict:
        return {"value": self.value}
