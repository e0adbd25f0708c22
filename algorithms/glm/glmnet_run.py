"""`GlmnetRun`: glmnet's path (and cv_glmnet's fits) as an `aia` algorithm over the sites
(see `algorithms.glm.glmnet` for the steps, `glmnet_path` for the central's solver)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from aia.algorithm import AbstractAlgorithm

from .base import _HOLD_MAX, _HOLD_START, DesignMismatchError
from .design import Design
from .glmnet_messages import PathResult, PathSpec, Sums
from .glmnet_path import interpolate, path_fit
from .glmnet_site import Folds, GlmnetAnswer, GlmnetQuery, glmnet_answer
from .site import SiteGroup

#: The most rounds a run may take (a safety net; a path takes a few per lambda).
MAX_ROUNDS = 100_000


class GlmnetRun(AbstractAlgorithm):
    """The path (and the cross-validation fits) as an `aia` algorithm over `Site` workers.

    ``spec`` is the `PathSpec` without its columns (filled from the sites' design);
    ``folds`` a `Folds` for cross-validation; ``start``: warm-start coefficients (an exact
    refit). After the run: ``result`` (the `PathResult` of every row), ``fold_results``,
    ``heldout`` (fold -> summed `Heldout`), ``rounds`` and ``column_names``.
    """

    def __init__(self, design: Design, spec: PathSpec, n_sites: int,
                 folds: Optional[Folds] = None, start: Optional[np.ndarray] = None):
        self.design, self.spec, self.n_sites, self.folds = design, spec, n_sites, folds
        self.start = start
        self._reset()

    def _reset(self) -> None:
        self.result: Optional[PathResult] = None
        self.fold_results: dict = {}
        self.heldout: dict = {}
        self.rounds = 0
        self.column_names: Optional[list] = None
        self.nobs = 0
        self._fits: dict = {}  # fit -> its path generator
        self._pending: dict = {}  # fit -> the coefficients it waits for
        self._moments: dict = {}
        self._phase = "moments"
        self._done = False
        self._version = 0
        self._query: Optional[GlmnetQuery] = None
        self._gathered: dict = {}
        self._hold: dict = {}
        self._last = None
        self._clock = [0.0, 0.0]  # when the run began (after the design), the last answer

    # -- worker ---------------------------------------------------------------------------
    def answer(self, q: GlmnetQuery, problem: Any):
        if q.hold:
            time.sleep(min(float(q.hold), _HOLD_MAX))
            return [a.again() for a in self._last] if isinstance(self._last, list) \
                else self._last.again()
        if problem is None:
            raise RuntimeError("this worker holds no site")
        sites = problem.sites if isinstance(problem, SiteGroup) else [problem]
        out = [glmnet_answer(s, self.design, q) for s in sites]
        self._last = out if isinstance(problem, SiteGroup) else out[0]
        return self._last

    # -- central --------------------------------------------------------------------------
    def initialize(self, problem: Any) -> GlmnetQuery:
        self._reset()
        self._clock = [time.perf_counter()] * 2
        self._query = GlmnetQuery(0, "moments", folds=self.folds)
        return self._query

    def sync_central_step(self, answers, workers, problem) -> GlmnetQuery:
        parts = [a for x in answers for a in (x if isinstance(x, list) else [x])]
        self.rounds += 1
        self._clock[1] = time.perf_counter()
        if self._phase == "moments":
            self._take_moments(parts)
        elif self._phase == "heldout":
            self._take_heldout(parts)
        else:
            self._take_sums(parts)
        self._query = self._next_query()
        return self._query

    def central_step(self, a, worker, problem) -> GlmnetQuery:
        """Asynchronous mode: gather every site's answer to the current query, then step as
        in synchronous mode; a site that answered waits (holds) for the next query."""
        if isinstance(a, list):
            raise TypeError("asynchronous mode needs one site per worker")
        if a.version == self._version and not a.repeat and worker not in self._gathered:
            self._gathered[worker] = a
            if len(self._gathered) == self.n_sites:
                ordered = [self._gathered[w] for w in sorted(self._gathered)]
                self._gathered = {}
                self._hold = {}
                return self.sync_central_step(ordered, sorted(self._gathered), problem)
        if a.version < self._version:  # it has not seen the current query yet
            self._hold.pop(worker, None)
            return self._query
        wait = min(2 * self._hold.get(worker, _HOLD_START / 2), _HOLD_MAX)
        self._hold[worker] = wait
        return GlmnetQuery(a.version, hold=wait)

    def _take_moments(self, answers: Sequence[GlmnetAnswer]) -> None:
        columns = [a.columns for a in answers]
        if any(c != columns[0] for c in columns):
            detail = "; ".join(f"{a.site}: {list(a.columns)}" for a in answers)
            raise DesignMismatchError(f"the sites built different design columns ({detail})")
        self.column_names = list(columns[0])
        self.spec = replace(self.spec, columns=tuple(self.column_names))
        total = _sum(dict(p)[None] for p in (a.parts for a in answers))
        self.nobs = total.nobs
        self._moments[None] = total
        if self.folds is not None:
            for k in range(self._n_folds()):
                if self.folds.sites is not None:  # fold k is site k: the others train
                    self._moments[k] = _sum(dict(a.parts)[None] for i, a in enumerate(answers)
                                            if a.site != self.folds.sites[k])
                else:
                    self._moments[k] = total - _sum(dict(a.parts)[k] for a in answers)
        self._phase = "path"
        self._open(None, self.spec, self.start)

    def _n_folds(self) -> int:
        return len(self.folds.sites) if self.folds.sites is not None else self.folds.k

    def _open(self, fit, spec: PathSpec, start=None) -> None:
        self._fits[fit] = path_fit(spec, self._moments[fit], start)
        self._advance(fit, None)

    def _advance(self, fit, sums: Optional[Sums]) -> None:
        gen = self._fits[fit]
        try:
            self._pending[fit] = next(gen) if sums is None else gen.send(sums)
        except StopIteration as stop:
            self._pending.pop(fit, None)
            del self._fits[fit]
            if fit is None:
                self.result = stop.value
            else:
                self.fold_results[fit] = stop.value

    def _take_sums(self, answers: Sequence[GlmnetAnswer]) -> None:
        for fit in list(self._pending):
            parts = [dict(a.parts)[fit] for a in answers if fit in dict(a.parts)]
            self._advance(fit, _sum(parts))

    def _take_heldout(self, answers: Sequence[GlmnetAnswer]) -> None:
        for a in answers:
            for fit, h in a.parts:
                self.heldout.setdefault(fit, []).append(h)
        self._done = True

    def _next_query(self) -> GlmnetQuery:
        if not self._pending and self._phase == "path" and self.folds is not None:
            # The training fits: the whole data's lambdas if the user gave them, else each
            # its own default path, as cv.glmnet does.
            self._phase = "folds"
            for k in range(self._n_folds()):
                self._open(k, self.spec)
        if not self._pending:
            if self._phase == "folds":
                self._phase = "heldout"
                lambdas = self.result.lambdas
                betas = tuple((k, interpolate(self.fold_results[k], lambdas))
                              for k in range(self._n_folds()))
                self._version += 1
                return GlmnetQuery(self._version, "heldout", betas, self.folds)
            self._done = True
            return self._query
        self._version += 1
        betas = tuple((fit, beta) for fit, beta in self._pending.items())
        return GlmnetQuery(self._version, "sums", betas, self.folds)

    @property
    def path_seconds(self) -> float:
        """Seconds from the first query (the moments) to the last answer: every round of the
        run, without placing the rows and building the design."""
        return self._clock[1] - self._clock[0]

    def stopnow(self, stopat: Mapping[str, Any]) -> bool:
        return self._done or self.rounds >= stopat.get("rounds", MAX_ROUNDS)

    def progress(self, stopat: Mapping[str, Any]) -> float:
        if self.result is None or self.folds is None:
            return 0.0 if not self._done else 1.0
        return 0.5 + 0.5 * len(self.fold_results) / max(self._n_folds(), 1)

    def showvalues(self) -> list:
        return [("rounds", self.rounds), ("open fits", len(self._pending))]

    def report(self) -> dict:
        return {"rounds": self.rounds, "column_names": self.column_names}


def _sum(parts):
    parts = list(parts)
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total
