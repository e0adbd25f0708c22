"""Gradient descent's asynchronous central (`GradientDescent` in asynchronous mode): it steps
on each site's score as it comes, with the metric and each site's latest point, then ends
with synchronous rounds (see the `algorithms.glm.gradient` docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import NonFiniteError
from .gradient_messages import GradientQuery, Score

_HOLD_START, _HOLD_MAX = 0.001, 0.01  # seconds: a holding site's back-off
STALL = 3  # asynchronous: epochs without halving the criterion -> synchronous rounds
NOTHING_NEW = 0.05  # asynchronous: hold a site whose point is this close (x criterion)
MAX_INVALID = 30  # asynchronous: consecutive invalid answers before giving up
T_MIN, T_MAX = 1e-10, 1e10  # the step's range; below T_MIN the fit has stalled


@dataclass
class _SiteState:
    """What the asynchronous central keeps of one site."""

    metric: np.ndarray  # M_s: the site's X'W0X
    beta: np.ndarray  # the coefficients of its latest score
    score: np.ndarray
    deviance: float
    model: bool = False  # the score is the first round's linear model, not an answer


class Asynchronous:
    """The asynchronous steps of `GradientDescent` (its state is the algorithm's own)."""

    def central_step(self, a: Any, worker: int, problem: Any) -> GradientQuery:
        self._mode = "async"
        if isinstance(a, list):
            raise TypeError("asynchronous mode needs one site per worker")
        n = self._n_expected()
        staleness = getattr(self, "staleness", None)
        if isinstance(staleness, int) and not a.repeat:
            self.max_staleness = max(self.max_staleness, staleness)
        if not a.repeat:
            self._latest[worker] = a
            if self._phase == "async" and isinstance(a, Score):
                self._async_step(a, worker, n)
            elif self._phase == "rounds" and a.version == self._target:
                self._round_answers[worker] = a
        if self._phase == "gather":
            if len(self._latest) < n:
                return self._hold_query(worker)
            self._gather_done(n)
        if self._phase == "rounds" and len(self._round_answers) == n:
            keys = sorted(self._round_answers)
            q = self._round([self._round_answers[k] for k in keys], keys)
            self._round_answers = {}
            if not self._done:
                self._target, self._target_query = q.version, q
        if self._done:
            return self._hold_query(worker)
        if self._phase == "rounds":
            if self._latest[worker].version == self._target:
                return self._hold_query(worker)
            q = self._target_query
        else:
            if self._latest[worker].version == self._current or self._nothing_new(worker):
                return self._hold_query(worker)
            q = GradientQuery(self._current, self._betas[self._current])
        self._hold.pop(worker, None)
        self._sent[worker] = q.version
        self._prune()
        return q

    def _hold_query(self, worker) -> GradientQuery:
        wait = min(2 * self._hold.get(worker, _HOLD_START / 2), _HOLD_MAX)
        self._hold[worker] = wait
        return GradientQuery(self._latest[worker].version, hold=wait)

    def _nothing_new(self, worker) -> bool:
        """The new coefficients are too close to this site's last point to tell anything
        new, while another site computes: hold it until something changes."""
        site = self._sites[worker]
        if site.model or self.criterion is None:
            return False
        if not any(w != worker and w not in self._hold for w in self._sites):
            return False
        step = site.beta - self._beta_cur
        return self._crit(float(step @ self._metric @ step),
                          self.mixed_deviance) < NOTHING_NEW * self.criterion

    def _gather_done(self, n: int) -> None:
        """Every site sent its first round: the metric, and each site's linear model."""
        workers = sorted(self._latest)
        contribs = [self._latest[w] for w in workers]
        total = self._setup(contribs)
        if self.start is not None:
            base, model = self.start, False
        else:
            base, model = self._minv(total.xtwz), True
        for w, c in zip(workers, contribs):
            # The score at ``base``: exact at the starting coefficients; at R's starting
            # values, the first round's linear model (X'W0z0 - X'W0X beta).
            self._sites[w] = _SiteState(c.xtwx, base, c.xtwz - c.xtwx @ base, c.deviance,
                                        model)
        self._phase = "async"
        self._async_move(n)

    def _async_move(self, n: int) -> None:
        """New coefficients from every site's latest score, brought forward."""
        sites = self._sites.values()
        target = np.sum([s.metric @ s.beta + self._t * s.score for s in sites], axis=0)
        beta = self._minv(target)
        self._beta_cur = beta
        self._current = self._query(beta)
        total_score = np.sum([s.score for s in sites], axis=0)
        self.mixed_deviance = D = float(sum(s.deviance for s in sites))
        spread = max(self._crit(float((s.beta - beta) @ self._metric @ (s.beta - beta)), D)
                     for s in sites)
        self.criterion = max(self._crit(float(total_score @ self._minv(total_score)), D),
                             spread)
        answered = not any(s.model for s in sites)
        if answered and self.criterion < 0.5 * self._best:
            self._best, self._best_epoch = self.criterion, self._epochs
        if answered and self.criterion < self._tol_m:
            self._to_rounds(self._final_query(beta))  # every site at the same coefficients
        elif self._epochs - self._best_epoch > STALL or self._used() >= self._maxit:
            if self._used() >= self._maxit:
                self._to_rounds(self._final_query(beta))
            else:
                self.async_stalled = True
                self._to_rounds(self._score_query(beta))

    def _to_rounds(self, q: GradientQuery) -> None:
        self._phase = "rounds"
        self._x = None
        self._dev_hint = self.mixed_deviance
        self._target, self._target_query = q.version, q
        self._round_answers = {}

    def _async_step(self, a: Score, worker: int, n: int) -> None:
        site = self._sites[worker]
        self.updates += 1
        self.iterations += 1
        if not a.valid:
            self._invalid += 1
            if self._invalid > MAX_INVALID:
                raise NonFiniteError("the asynchronous steps keep giving fitted values "
                                     "outside the family's range; supply start=... or fit "
                                     "synchronously")
            self._t = max(self._t / 4, T_MIN)
        else:
            self._invalid = 0
            if not np.all(np.isfinite(a.score)):
                raise NonFiniteError(f"site {a.site or worker} sent a non-finite score")
            beta = self._betas[a.version]
            if not site.model:  # the curvature this site saw between its two answers
                s = beta - site.beta
                sy = float(s @ (site.score - a.score))
                sms = float(s @ site.metric @ s)
                if sy > 0 and sms > 0:
                    self._num = 0.5 * self._num + sy
                    self._den = 0.5 * self._den + sms
                    self._t = _clip(min(self._den / self._num, 2 * self._t))
            site.beta, site.score, site.deviance, site.model = beta, a.score, a.deviance, False
        self._epoch_seen.add(worker)  # an epoch: every site has answered once more
        if len(self._epoch_seen) == n:
            self._epochs += 1
            self._epoch_seen = set()
        self._async_move(n)


def _clip(t: float) -> float:
    return min(max(t, T_MIN), T_MAX)
