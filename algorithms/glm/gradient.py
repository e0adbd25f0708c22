"""`GradientDescent`: a GLM by gradient descent across sites (distribglm's algorithm),
synchronous and asynchronous, with no step size to tune.

Each round, a site answers the coefficients it is sent with its *score* (the gradient of its
log-likelihood, p numbers) and its deviance; the central adds them up and moves the
coefficients. Only two rounds carry a p x p matrix: the first (the metric, below) and the
last (X'WX at the estimate, for the standard errors), so the fit returns the same results
object as Fisher scoring, with the full coefficient table.

Its messages are `gradient_messages`', its synchronous step's metric and line search
`gradient_linesearch`' and its asynchronous central `gradient_async`'.

The method
----------
*Metric.* Plain gradient steps depend on the units of the predictors: with ``gre`` in the
hundreds next to ``gpa`` near 3, the curvature of the admissions logit differs by a factor
4e7 between directions, and a step short enough for the steepest one barely moves the
others. A diagonal preconditioner (each column scaled to unit norm) is not enough either,
since ``gre``, ``gpa`` and the intercept are nearly collinear until centred: with the safe
step of the logistic curvature bound (1/4), it still takes 13,000 iterations to come
within 1e-6 standard errors. So the first round asks every site for X'W0X at R's starting
values (``family$initialize``), a matrix M that is sent once, and every step is a gradient
step preconditioned by it::

    beta  <-  beta + t * M^-1 U(beta)        U = sum over sites of X'W g'(mu) (y - mu)

M is fixed for the whole fit: this is gradient descent in the coordinates where the
curvature at the start is the identity, not Fisher scoring (which sends a new X'WX every
round). The steps are invariant to any rescaling or linear recombination of the columns
(``gre`` in hundreds or in thousands gives the same iterations), and M^-1 U is in units of
the coefficients. The first iterate is R's first one, M^-1 X'W0 z0, computed from the same
sums (or, with ``start=``, the metric is taken at the starting coefficients).

*Step size* (synchronous). The step t is Barzilai and Borwein's two-point step measured in
the metric, ``t = s'Ms / s'y`` for the last move s and the change of the score y (the
inverse of the curvature along the last move), safeguarded by a non-monotone line search
on the summed deviance (Raydan 1997; Grippo, Lampariello and Lucidi 1986): a trial point is
accepted when its deviance is below the largest of the last 10 accepted deviances minus
the Armijo decrease; otherwise t shrinks (quadratic interpolation, within [t/10, t/2]) and
the sites evaluate the shorter step. Near the estimate, where the deviance decrease drops
below its rounding error, a step is accepted on the score instead (Hager and Zhang's
approximate Armijo test: the score along the step has not reversed by more than 80%).
Coefficients outside the family's range (a site answers "invalid") shrink t by 4.

*Asynchronous mode.* The central keeps the latest score of every site, with the
coefficients it was computed at (SAG-style), and takes a step each time a site answers,
sending the new coefficients to that site. A stale score is not damped but brought forward:
site s's score at its own coefficients b_s is extrapolated with its share M_s of the
metric, ``U_s(beta) ~ U_s(b_s) - M_s (beta - b_s) / t``, and the step lands where that
model of the summed score vanishes::

    beta  <-  M^-1 sum_s (M_s b_s + t U_s(b_s))

With every site at the same coefficients this is exactly the synchronous step; a stale
site weighs in at the coefficients it actually saw. The step t follows the curvature each
site saw between two of its answers (the sites' secants s'M_s s / s'y_s, averaged with
weights halving at each answer; t at most doubles per step); an invalid answer divides t
by 4. The engine's
``staleness`` of each answer is recorded (``max_staleness``) but not used to damp the step:
the compensation uses the exact coefficients each score was computed at, and damping by
staleness slowed the fits down in our simulations. A site whose last coefficients are
within 5% of the current criterion of the new ones is held (it would learn nothing new)
while another site computes: with one slow site, the fast ones wait for it instead of
spinning. When the summed latest scores and the spread of the sites' coefficients around
the new ones, in standard errors, are both below the tolerance, every site evaluates the
same coefficients (the final round below); if the criterion has not halved in 3 epochs
(every site answering once), the fit goes on in synchronous rounds as above. Either way
the estimate is the synchronous one, to ``tol``. The asynchronous steps cannot beat the
slowest site: the estimate needs its score at the estimate, and each of its answers gains
a factor that depends on how well M_s / t describes its curvature (see
benchmarks/glm_gradient.py).

*Convergence and the final round.* The gradient criterion is the length of the
preconditioned score in standard errors, ``sqrt(U'M^-1 U / phi)`` (phi: deviance / df
when the family estimates a dispersion, else 1): the largest move, in standard errors, that
any linear combination of the coefficients would still make. When it and R's deviance
criterion ``|dev - dev_old| / (|dev| + 0.1)`` are both below ``tol``, every site sends X'WX at
the estimate: its inverse is the covariance (at the estimate itself; R and statsmodels take
the X'WX of their last iteration, the same to the tolerance), and the criterion is computed
again with it in place of M, ``sqrt(U'(X'WX)^-1 U / phi)``: the distance to the
maximum-likelihood estimate in standard errors, to first order. ``converged`` is true only
if that exact criterion is below ``tol`` too; otherwise the descent goes on with a stricter
threshold on the M criterion. At most ``maxit`` gradient rounds (synchronous) or
``maxit * n_sites`` asynchronous steps are taken; then the final round reports the last
coefficients with ``converged`` false.

`stopat` keys, as for `FisherScoring`: ``"tol"`` (default 1e-8) and ``"maxit"``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .base import NonFiniteError, SiteAlgorithm
from .gradient_async import MAX_INVALID, T_MIN, Asynchronous
from .gradient_linesearch import MEMORY, LineSearch
from .gradient_messages import GradientQuery, Score, site_score
from .linalg import factor, solve
from .guards import ENVIRONMENT, PrivacyError
from .messages import Contribution, Query, combine
from .site import SiteGroup

MAX_ITER = 1000  # the default budget of gradient rounds


class GradientDescent(Asynchronous, LineSearch, SiteAlgorithm):
    """A GLM by preconditioned gradient descent, as an `aia` algorithm (see the module
    docstring). The arguments are `FisherScoring`'s: a `Design` (or a formula, family and
    link), ``n_sites`` (needed in asynchronous mode) and ``start``.

    It shares `SiteAlgorithm`'s bookkeeping with `FisherScoring` (the check that every
    site built the same columns, the set-up of the null deviance, the numbering of
    coefficients) and its results: ``params`` (``beta``), ``cov_unscaled``, ``deviance``,
    ``converged``...
    """

    def _reset(self) -> None:
        super()._reset()
        self._stage = "metric"  # metric -> descent -> final (also the asynchronous rounds)
        self._metric: Optional[np.ndarray] = None
        self._factor = None
        self._t = 1.0
        self._x: Optional[np.ndarray] = None  # the accepted coefficients...
        self._U: Optional[np.ndarray] = None  # ...their score, deviance, direction M^-1 U
        self._D = float("nan")
        self._d: Optional[np.ndarray] = None
        self._g2 = float("nan")
        self._recent: deque = deque(maxlen=MEMORY)
        self._dev_hint: Optional[float] = None  # the deviance before the first accepted point
        self._tol_m: Optional[float] = None  # the threshold on the M criterion
        self.criterion_dev: Optional[float] = None
        self.criterion_exact: Optional[float] = None
        self.stalled = False
        self._maxit = MAX_ITER
        self.score_rounds = 0
        self.matrix_rounds = 0
        self.rejections = 0
        # asynchronous
        self._sites: dict = {}
        self._num = self._den = 0.0
        self._beta_cur: Optional[np.ndarray] = None
        self._current = 0
        self._round_answers: dict = {}
        self._target_query: Optional[GradientQuery] = None
        self._best = math.inf
        self._epochs = self._best_epoch = 0
        self._epoch_seen: set = set()
        self._invalid = self._retreats = 0
        self.updates = 0
        self.async_stalled = False
        self.max_staleness = 0
        self.mixed_deviance: Optional[float] = None

    # -- worker -----------------------------------------------------------------------------
    def answer(self, q: GradientQuery, problem: Any):
        if q.hold:
            return self._resend(q)
        sites = self._local_sites(problem)
        if q.full:
            query = Query(q.version, q.beta, q.null)
            out = [s.contribution(self.design, query, self._subset) for s in sites]
        else:
            out = [site_score(s, self.design, q, self._subset) for s in sites]
        self._last = out if isinstance(problem, SiteGroup) else out[0]
        return self._last

    # -- central: shared --------------------------------------------------------------------
    def initialize(self, problem: Any) -> GradientQuery:
        self._reset()
        return GradientQuery(0, self.start, full=True)

    def _setup(self, contribs: Sequence[Contribution]) -> Contribution:
        """The first round: columns, counts, null model, and the metric M = X'W0X."""
        self._first_round(contribs)
        self._withheld(contribs)
        total = combine(contribs)
        if not total.valid:
            raise NonFiniteError("the starting values give a non-finite deviance or fitted "
                                 "values outside the family's range; supply start=...")
        self._check(contribs)
        self._metric = total.xtwx
        self._factor = factor(total.xtwx, self.column_names, " at the starting values")
        self.matrix_rounds += 1
        self._tol_m = self._tol
        return total

    def _used(self) -> float:
        """The budget spent, in rounds (an asynchronous step is 1/n_sites of a round)."""
        return self.score_rounds + self.updates / max(self.n_sites or 1, 1)

    def _score_query(self, beta: np.ndarray) -> GradientQuery:
        self._stage = "descent"
        return GradientQuery(self._query(beta), beta)

    def _final_query(self, beta: np.ndarray) -> GradientQuery:
        self._stage = "final"
        null = (self._null_value if self._null_mode in ("mean", "offset")
                and self.null_deviance is None else None)
        return GradientQuery(self._query(beta), beta, full=True, null=null)

    # -- the synchronous iteration (also the asynchronous rounds) ---------------------------
    def _round(self, answers: Sequence[Any], keys: Sequence[Any]) -> GradientQuery:
        """One round: every site answered the same query; return the next query."""
        if self._stage == "metric":
            total = self._setup(answers)
            if self.start is None:  # R's first iterate
                return self._score_query(self._minv(total.xtwz))
            self._accept(self.start, total.xtwz - total.xtwx @ self.start, total.deviance)
            return self._next()
        if self._stage == "final":
            return self._after_final(answers, keys)
        if self._stage == "restart":
            return self._after_restart(answers)
        return self._after_scores(answers, keys)

    def _after_scores(self, scores: Sequence[Score], keys: Sequence[Any]) -> GradientQuery:
        beta = self._betas[scores[0].version]
        self.iterations += 1
        self.score_rounds += 1
        held = [s.site or "?" for s in scores if getattr(s, "withheld", False)]
        if held:  # the line search steps back from coefficients that single out rows
            self._withheld(scores)  # (a PrivacyError with no estimate to stop at)
            self.withheld.extend(name for name in held if name not in self.withheld)
        if not all(s.valid for s in scores):
            if self._x is None:
                return self._retreat(beta, scores, keys)
            self._shrink(None)
            return self._next()
        U = np.sum([s.score for s in scores], axis=0)
        D = float(sum(s.deviance for s in scores))
        if not np.all(np.isfinite(U)):
            bad = [s.site or "?" for s in scores if not np.all(np.isfinite(s.score))]
            raise NonFiniteError(f"site(s) {bad} sent a non-finite score at iteration "
                                 f"{self.iterations}")
        if self._x is None or self._acceptable(U, D):
            self._accept(beta, U, D)
        else:
            self._shrink(D)
        return self._next()

    def _retreat(self, beta: np.ndarray, answers: Sequence[Any], keys: Sequence[Any]):
        """No accepted point yet, and these coefficients are invalid at some site. After
        asynchronous steps, halve the way to that site's last valid coefficients (R's
        step-halving); at R's first iterate, stop as R does."""
        bad = [k for k, a in zip(keys, answers) if not a.valid]
        site = self._sites.get(bad[0]) if self._sites else None
        if site is None or self._retreats >= MAX_INVALID:
            raise NonFiniteError(
                "no valid set of coefficients has been found: the coefficients give a "
                "non-finite deviance or fitted values outside the range of the "
                f"{self.design.family.name} family with the {self.design.family.link_name} "
                "link; supply starting values (start=...)")
        self._retreats += 1
        return self._score_query((beta + site.beta) / 2)

    def _next(self) -> GradientQuery:
        crit_dev = self.criterion_dev
        if self.criterion < self._tol_m and crit_dev is not None and crit_dev < self._tol:
            return self._final_query(self._x)
        if self._t < T_MIN:
            self.stalled = True
            return self._final_query(self._x)
        if self._used() >= self._maxit:
            return self._final_query(self._x)
        return self._score_query(self._x + self._t * self._d)

    # -- a site left (secure aggregation with resilience) -----------------------------------
    def sites_left(self, q: GradientQuery) -> GradientQuery:
        """The query to ask the sites left after one failed answering ``q``.

        The metric, the accepted point and the deviances of the line search are sums over
        the old sites, so the descent starts again among the others: a full round (their
        X'WX, X'Wz, deviance and counts) at coefficients the old sites' sums were never
        decoded at (secure aggregation's differencing guard refuses any other): those of
        ``q`` itself, or after a failed final round (at the accepted point), the next trial
        point. In the first round nothing was summed yet, and a restart's full round was
        never decoded: ``q`` again."""
        if self._stage in ("metric", "restart"):
            return q
        beta = q.beta if self._stage == "descent" else self._x + self._t * self._d
        self._stage = "restart"
        return GradientQuery(self._query(beta), beta, full=True)

    def _after_restart(self, contribs: Sequence[Contribution]) -> GradientQuery:
        """The sites left answered a full round: their metric and first accepted point."""
        beta = self._betas[contribs[0].version]
        total = combine(contribs)
        self.matrix_rounds += 1
        if not total.valid or self._withheld(contribs):  # a shorter step from the old point
            self._t /= 4
            if self._x is None or self._t < T_MIN:
                raise NonFiniteError("no valid coefficients to go on from after a site left")
            beta = self._x + self._t * self._d
            return GradientQuery(self._query(beta), beta, full=True)
        self._check(contribs)
        self.nobs, self.n_ok, self.sum_w = total.nobs, total.n_ok, total.sum_w
        self._metric = total.xtwx
        self._factor = factor(total.xtwx, self.column_names, " after a site left")
        self._x, self._t, self.criterion_dev, self._dev_hint = None, 1.0, None, None
        self._recent.clear()
        self._accept(beta, total.xtwz - total.xtwx @ beta, total.deviance)
        return self._next()

    def _after_final(self, contribs: Sequence[Contribution], keys: Sequence[Any]) -> GradientQuery:
        """X'WX at the estimate: the covariance, and the exact criterion."""
        version = contribs[0].version
        beta = self._betas[version]
        if self._withheld(contribs):
            raise PrivacyError(ENVIRONMENT["max_leverage"], "the site's",
                               "the sites withheld X'WX at the estimate: its weights single "
                               "out a row", site=", ".join(self._withheld(contribs)))
        total = combine(contribs)
        self.matrix_rounds += 1
        if not total.valid:  # only after asynchronous steps: the accepted ones are valid
            return self._retreat(beta, contribs, keys)
        self._check(contribs)
        for key, c in zip(keys, contribs):
            self._take_null(key, c, len(contribs))
        _, cov = solve(total.xtwx, total.xtwz, self.column_names,
                       when=" at the final coefficients")
        U = total.xtwz - total.xtwx @ beta
        D = total.deviance
        if self._x is None or self._x is not beta:  # asynchronous: not yet a descent point
            self._x = None
            self._accept(beta, U, D)
        self.beta, self.deviance = beta, D
        self.pearson_chi2, self.n_boundary = total.pearson_chi2, total.n_boundary
        self.cov_unscaled = cov
        exact = self._crit(float(U @ cov @ U), D)
        self.criterion_exact = exact
        crit_dev = self.criterion_dev
        if exact < self._tol and crit_dev is not None and crit_dev < self._tol:
            self._done = self.converged = True
        elif self.stalled or self._used() >= self._maxit:
            self._done = True
        else:  # go on, asking the M criterion for as much as the exact one lacked
            if exact >= self._tol:
                self._tol_m = min(self._tol_m, 0.5 * self._tol * self.criterion / exact)
            self._stage = "descent"
            return self._score_query(self._x + self._t * self._d)
        return GradientQuery(version, beta, full=True)  # not sent: the run stops

    # -- central: synchronous ---------------------------------------------------------------
    def sync_central_step(self, answers: Sequence[Any], workers: Sequence[int], problem: Any):
        self._mode = "sync"
        contribs = [c for a in answers for c in (a if isinstance(a, list) else [a])]
        q = self._round(contribs, list(range(len(contribs))))
        self._prune()
        return q

    def _prune(self) -> None:
        keep = set(self._sent.values()) | {self._version, self._current, self._target}
        keep |= {c.version for c in self._latest.values()}
        for v in [v for v in self._betas if v not in keep]:
            del self._betas[v]

    # -- hooks ------------------------------------------------------------------------------
    def stopnow(self, stopat: Mapping[str, Any]) -> bool:
        if "tol" in stopat and stopat["tol"] is not None:
            self._tol = float(stopat["tol"])
        if "maxit" in stopat and stopat["maxit"] is not None:
            self._maxit = int(stopat["maxit"])
        return self._done

    def progress(self, stopat: Mapping[str, Any]) -> float:
        done = self._used() / self._maxit if self._maxit else 0.0
        if self.criterion is not None and self.criterion > 0:
            crit, tol = self.criterion, self._tol
            if crit < 1:
                done = max(done, min(1.0, math.log(crit) / math.log(tol)))
        return min(max(done, 0.0), 1.0)

    def showvalues(self) -> list:
        dev = self.deviance if self.deviance is not None else self.mixed_deviance
        return [("deviance", dev), ("criterion", self.criterion), ("step", self._t)]

    def report(self) -> dict:
        out = super().report()
        out.update({
            "gradient_iterations": self.iterations,
            "score_rounds": self.score_rounds,
            "matrix_rounds": self.matrix_rounds,
            "asynchronous_steps": self.updates,
            "rejections": self.rejections,
            "criterion": self.criterion,
            "criterion_exact": self.criterion_exact,
            "step": self._t,
            "max_staleness": self.max_staleness,
            "stalled": self.stalled,
            "asynchronous_stalled": self.async_stalled,
        })
        return out
