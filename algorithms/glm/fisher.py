"""`FisherScoring`: R's ``glm.fit`` as an `aia` algorithm over sites that keep their rows.

Each site answers a query (coefficients) with its sums X'WX, X'Wz, deviance and Pearson
chi-square at those coefficients; the central adds them up and solves for the next
coefficients. Version 0 asks for R's starting values (``family$initialize``), so the
central's k-th solve is R's k-th iteration, and the deviance that comes back with the
answers to it is the deviance R's convergence rule compares:

    |dev - dev_old| / (|dev| + 0.1) < tol        (R: tol = 1e-8, at most 25 iterations)

The stopping rule reads two custom keys of ``stopat``: ``"tol"`` and ``"maxit"`` (R's
``epsilon`` and ``maxit``). As in R, the estimate is the last coefficients whose deviance
was computed, and its unscaled covariance the inverse of the X'WX that produced them. A
non-finite deviance or fitted values outside the family's range halve the step (R's
step-halving); a singular X'WX names its aliased columns.

Asynchronous mode: the central keeps the latest contribution of each site and re-solves
with them whenever one arrives, sending the new coefficients to that site. Sites with
nothing new to compute are told to hold (wait briefly and resend). Once the summed deviance
stops moving (R's rule, for as many consecutive answers as there are sites), the fit ends
with consistent rounds, where every site evaluates the same coefficients, until R's rule
holds between two of them. The asynchronous phase is a warm start; the estimate is the
one of synchronous mode, to ``tol`` (the covariance is X'WX at the estimate itself).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .linalg import solve
from .base import _HOLD_MAX, _HOLD_START, INTERCEPT, NonFiniteError, SiteAlgorithm
from .messages import Contribution, Query, combine
from .site import SiteGroup

class FisherScoring(SiteAlgorithm):
    """Fisher scoring (IRLS) for a GLM over sites; see the module docstring.

    ``design``: a `Design`, or a formula with the arguments of `Design.make` (``family``,
    ``link``, ``weights``, ``offset``, ``exposure``, ``expected``, ``guards``).
    ``null_model=True`` fits the intercept-only model (R's null model with an offset).
    ``n_sites``: the number of sites, needed in asynchronous mode to know when every site
    has answered. ``start``: starting coefficients instead of R's starting values.

    The problem of every worker is a `Site` (or a `SiteGroup` in one process). Stop with
    ``stopat={"tol": 1e-8, "maxit": 25}``. After the run, the fit is on the instance and in
    ``report()``: ``params``, ``cov_unscaled``, ``deviance``, ``pearson_chi2``,
    ``null_deviance`` (None when it needs a separate intercept-only fit), ``nobs``,
    ``fisher_iterations``, ``converged``, ``column_names``.
    """

    #: Ask for the sites' saturated log-likelihood with the first round (`glm.fit` sets it
    #: for secure fits, where the build sends none in clear).
    ask_saturated = False

    def _reset(self) -> None:
        """The central's state, fresh for each run."""
        super()._reset()
        #: the pooled saturated log-likelihood, with ``ask_saturated`` (None: not asked, or
        #: the sites changed since)
        self.saturated_loglike: Optional[float] = None
        self.halvings = 0
        self._ybar: Optional[float] = None  # the weighted mean of y (the intercept-only fit)
        #: the first step was halved towards the intercept-only coefficients (R gives up)
        self.rescued = False
        self._dev_old: Optional[float] = None
        self._coefold: Optional[np.ndarray] = None  # R's coefold: the last valid coefficients
        self._inv_prev: Optional[np.ndarray] = None
        # asynchronous mode
        self._mixed_dev: Optional[float] = None
        self._consistent: Optional[float] = None  # the deviance of the last consistent
        # round (every site at the same coefficients)
        self._quiet = 0
        self._async_solves = 0
        self._consistent_rounds = 0

    def answer(self, q: Query, problem: Any):
        if q.hold:
            return self._resend(q)
        sites = self._local_sites(problem)
        out = [s.contribution(self.design, q, self._subset) for s in sites]
        self._last = out if isinstance(problem, SiteGroup) else out[0]
        return self._last

    # -- central: shared ------------------------------------------------------------------
    def initialize(self, problem: Any) -> Query:
        self._reset()
        if self.start is None:
            return Query(0, saturated=self.ask_saturated)
        self._betas[0] = self._coefold = self.start
        return Query(0, self.start, saturated=self.ask_saturated)

    def _solve(self, total: Contribution):
        return solve(total.xtwx, total.xtwz, self.column_names,
                     when=f" at iteration {self.iterations}")

    def _accept(self, version: int, total: Contribution, cov: np.ndarray) -> None:
        self.beta = self._betas[version]
        self.accepted_version = version if self._mode == "sync" else None
        self.deviance, self.pearson_chi2 = total.deviance, total.pearson_chi2
        # R's dispersion (working weights of the last iteration): synchronous rounds only,
        # where every site's previous contribution is that iteration's
        self.working_chi2 = total.working_chi2 if self._mode == "sync" else float("nan")
        self.cov_unscaled = cov
        self.n_boundary = total.n_boundary
        self._coefold = self.beta

    def _halve(self, version: int, reference: Optional[np.ndarray]) -> int:
        """R's step-halving towards the last valid coefficients. Where R has none (the
        first step from R's starting values is invalid, and R stops with "no valid set of
        coefficients has been found"), towards the intercept-only coefficients
        ``(g(ybar), 0, ..., 0)``, whose fitted values are all the mean of y, inside the
        family's range: the fit then goes on from a valid step, as statsmodels' does; R's
        error stays where no halving gives a valid step (or that model has an offset, or
        no intercept)."""
        fallback = reference is None
        if fallback:
            reference = self._intercept_only()
        if reference is None or (fallback and self.halvings >= self._maxit):
            raise NonFiniteError(
                "no valid set of coefficients has been found: the first step gives a "
                "non-finite deviance or fitted values outside the range of the "
                f"{self.design.family.name} family with the {self.design.family.link_name} "
                "link" + (f", and so does every step halved {self._maxit} times towards the "
                          "intercept-only coefficients" if fallback and reference is not None
                          else "") + "; supply starting values (start=...)"
            )
        self.halvings += 1
        if self.halvings > self._maxit:
            raise NonFiniteError("inner loop: cannot correct the step size")
        self.boundary = True
        self.rescued = self.rescued or fallback
        return self._query((self._betas[version] + reference) / 2)

    def _intercept_only(self) -> Optional[np.ndarray]:
        """The intercept-only coefficients ``(g(ybar), 0, ...)`` of a model with an
        intercept and no offset (None otherwise: they would not be valid for certain)."""
        fam = self.design.family
        if (self._ybar is None or self.column_names is None or INTERCEPT not in self.column_names
                or self.design.has_offset or fam.relative_survival):
            return None
        with np.errstate(all="ignore"):
            eta = float(np.asarray(fam.linkfun(np.array([self._ybar])))[0])
        if not np.isfinite(eta):
            return None
        beta = np.zeros(len(self.column_names))
        beta[self.column_names.index(INTERCEPT)] = eta
        return beta

    def _first_round(self, contribs: Sequence[Contribution]) -> None:
        super()._first_round(contribs)
        total = combine(contribs)
        self._ybar = total.sum_wy / total.sum_w if total.sum_w > 0 else None

    # -- central: synchronous -------------------------------------------------------------
    def sync_central_step(self, answers: Sequence[Any], workers: Sequence[int], problem: Any):
        self._mode = "sync"
        contribs = [c for a in answers for c in (a if isinstance(a, list) else [a])]
        version = contribs[0].version
        if version == 0:
            self._first_round(contribs)
            self.saturated_loglike = combine(contribs).saturated_loglike
        if self._stop_withheld(contribs):
            return Query(version, self.beta)  # not sent: the run stops
        total = combine(contribs)
        if not total.valid:
            if version == 0:
                raise NonFiniteError("the starting coefficients give a non-finite deviance or "
                                     "fitted values outside the family's range")
            v = self._halve(version, self._coefold)
            return Query(v, self._betas[v], self._null_for(0))
        self._check(contribs)
        for i, c in enumerate(contribs):
            self._take_null(i, c, len(contribs))
        if version > 0:
            self.halvings = 0
            self.iterations += 1
            self._accept(version, total, self._inv_prev)
            self.criterion = abs(total.deviance - self._dev_old) / (abs(total.deviance) + 0.1)
        self._dev_old = total.deviance
        beta, self._inv_prev = self._solve(total)
        v = self._query(beta)
        return Query(v, beta, self._null_for(0))

    # -- central: asynchronous ------------------------------------------------------------
    def central_step(self, a: Contribution, worker: int, problem: Any) -> Query:
        self._mode = "async"
        if isinstance(a, list):
            raise TypeError("asynchronous mode needs one site per worker")
        n = self._n_expected()
        if self._stop_withheld([a]):
            return self._hold_query(worker)  # not sent: the run stops
        if not a.repeat:
            if not a.valid:
                return self._async_invalid(a, worker)
            self._latest[worker] = a
            if a.version > 0:
                self._check([a])
                self._take_null(worker, a, n)
                if self._phase == "async":
                    self._async_solve(n)
        if self._phase == "gather":
            if len(self._latest) < n:
                return self._hold_query(worker)
            self._gather_done(n)
        if self._phase == "confirm" and all(
                c.version == self._target for c in self._latest.values()):
            self._confirm()
        target = self._target if self._phase == "confirm" else self._version
        if self._done or self._latest[worker].version == target:
            return self._hold_query(worker)
        self._hold.pop(worker, None)
        self._sent[worker] = target
        return Query(target, self._betas[target], self._null_for(worker))

    def _stop_withheld(self, contribs: Sequence[Contribution]) -> bool:
        """A site withheld its sums: the fit ends at the last accepted estimate (not
        converged), as R's would diverge in a separation."""
        sites = self._withheld(contribs)
        if sites:
            self.withheld = sites
            self._done = True
            self.converged = False
        return bool(sites)

    def _hold_query(self, worker) -> Query:
        wait = min(2 * self._hold.get(worker, _HOLD_START / 2), _HOLD_MAX)
        self._hold[worker] = wait
        return Query(self._latest[worker].version, hold=wait)

    def _gather_done(self, n: int) -> None:
        contribs = list(self._latest.values())
        self._first_round(contribs)
        total = combine(contribs)
        self._check(contribs)
        self._mixed_dev = total.deviance
        beta, _ = self._solve(total)
        self._query(beta)
        self.iterations += 1
        self._phase = "async"

    def _async_solve(self, n: int) -> None:
        """Re-solve with the latest contribution of every site."""
        total = combine(list(self._latest.values()))
        beta, _ = self._solve(total)
        self._query(beta)
        self.iterations += 1
        self._async_solves += 1
        self.criterion = abs(total.deviance - self._mixed_dev) / (abs(total.deviance) + 0.1)
        self._mixed_dev = total.deviance
        self._quiet = self._quiet + 1 if self.criterion < self._tol else 0
        # Once the summed deviance has settled, or the asynchronous budget (maxit solves per
        # site) is spent, every site evaluates the same coefficients.
        if self._quiet >= n or self._async_solves >= self._maxit * n:
            self._phase, self._target = "confirm", self._version
        self._prune()

    def _confirm(self) -> None:
        """Every site answered at the same coefficients: a consistent round, as in
        synchronous mode. R's rule compares the deviances of two consecutive consistent
        rounds, so the first one only takes a Newton step."""
        total = combine(list(self._latest.values()))
        self.iterations += 1
        self._consistent_rounds += 1
        beta_next, inv = self._solve(total)
        # The covariance is X'WX at the accepted coefficients themselves: the asynchronous
        # path has no "previous iteration" of R's to take it from.
        self._accept(self._target, total, inv)
        if self._consistent is not None:
            self.criterion = abs(total.deviance - self._consistent) / (abs(total.deviance) + 0.1)
            if self.criterion < self._tol:
                self._done = self.converged = True
                return
        self._consistent = total.deviance
        self._target = self._query(beta_next)
        self.halvings = 0

    def _async_invalid(self, a: Contribution, worker) -> Query:
        """Halve the step between this site's last valid coefficients and the invalid ones,
        and have every site evaluate the result."""
        if worker not in self._latest:
            raise NonFiniteError("the starting coefficients give a non-finite deviance or "
                                 "fitted values outside the family's range")
        reference = self._betas.get(self._latest[worker].version)
        self._phase = "confirm"
        self._target = self._sent[worker] = self._halve(a.version, reference)
        return Query(self._target, self._betas[self._target], self._null_for(worker))

    def _prune(self) -> None:
        keep = {c.version for c in self._latest.values()} | set(self._sent.values())
        keep |= {self._version, self._target}
        for v in [v for v in self._betas if v not in keep]:
            del self._betas[v]

    # -- hooks ----------------------------------------------------------------------------
    def stopnow(self, stopat: Mapping[str, Any]) -> bool:
        tol = stopat["tol"] if "tol" in stopat else None
        maxit = stopat["maxit"] if "maxit" in stopat else None
        if tol is not None:
            self._tol = float(tol)
        if maxit is not None:
            self._maxit = int(maxit)
        if self._done:
            return True
        if (self._mode == "sync" and tol is not None and self.criterion is not None
                and self.criterion < tol):
            self._done = self.converged = True
            return True
        if maxit is not None:
            if self._mode == "sync":
                return self.iterations >= maxit
            return self._consistent_rounds >= maxit  # after at most maxit * n_sites solves
        return False

    def progress(self, stopat: Mapping[str, Any]) -> float:
        done = 0.0
        if "maxit" in stopat and stopat["maxit"]:
            done = (self.iterations if self._mode == "sync"
                    else self._consistent_rounds) / stopat["maxit"]
        if "tol" in stopat and self.criterion is not None:
            crit, tol = max(self.criterion, 1e-300), float(stopat["tol"])
            done = max(done, min(1.0, math.log(crit) / math.log(tol)) if crit < 1 else 0.0)
        return min(max(done, 0.0), 1.0)

    def showvalues(self) -> list:
        dev = self.deviance if self.deviance is not None else self._mixed_dev
        return [("deviance", dev), ("criterion", self.criterion)]

    def report(self) -> dict:
        return {**super().report(), "fisher_iterations": self.iterations,
                "rescued": self.rescued, "saturated_loglike": self.saturated_loglike}
