"""Negative binomial regression with theta estimated, as ``MASS::glm.nb`` computes it.

``family="negative_binomial"``. glm.nb alternates two estimates:

1. a Poisson fit (R's ``glm.fitter`` with ``poisson(link)``), then theta by
   ``MASS::theta.ml`` at its fitted values;
2. while ``|Lm0 - Lm| / d1 + |del| / d2 > epsilon`` (``d1 = sqrt(2 max(1, df.residual))``,
   ``d2 = 1``, ``del`` the change of theta, ``Lm`` the log-likelihood), at most ``maxit``
   times: a fit with ``negative.binomial(theta)`` started at the previous fitted values,
   then theta by ``theta.ml`` at the fitted values *before* that fit (glm.nb's order,
   kept here so that theta and the coefficients are R's to the last digit).

Each fit is `FisherScoring` over the sites. ``theta.ml`` is Newton's method on the score of
theta, started at ``n / sum w (y / mu - 1)^2`` and stopped when the step is below
``.Machine$double.eps^0.25`` or after ``limit = maxit`` steps; each of its steps is one pass
where every site sends four numbers (`Site.theta_sums`: the weights' sum, that Pearson sum,
the score and the information at the current theta), so the rows enter only through sums
such as ``sum w digamma(y + theta)``. ``SE.theta`` is ``1 / sqrt(info)`` of the last step.

The result is glm.nb's: the coefficients and covariance of the last fit (dispersion 1),
``theta`` and ``theta_se``, the log-likelihood ``Lm`` at the last theta and fitted values
(``twologlik = 2 llf``) and ``aic = -2 llf + 2 (rank + 1)``: theta counts as a parameter.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from .base import NonFiniteError
from .design import Design
from .fisher import FisherScoring
from .fit_record import FitRecord

log = logging.getLogger(__name__)

#: ``theta.ml``'s step tolerance (R: ``.Machine$double.eps^0.25``).
THETA_EPS = np.finfo(float).eps ** 0.25


@dataclass
class ThetaFit:
    """What `fit_theta` leaves: the last fit (``main``, its ``design`` with the theta it
    used), the newest ``theta`` (and its design ``theta_design``, R's null model with an
    offset uses it), ``theta_se``, the log-likelihood ``loglik``, ``alternations`` and the
    warnings of theta.ml and of the alternation."""

    main: FitRecord
    design: Design
    theta_design: Design
    theta: float
    theta_se: float
    loglik: float
    alternations: int
    notes: list = field(default_factory=list)


def theta_ml(sums: Callable[[Optional[float]], dict], start: dict, limit: int) -> tuple:
    """``MASS::theta.ml``: ``(theta, SE, warning or None)``. ``start`` holds the sums at
    the fitted values (``n``, ``pearson``); ``sums(theta)`` the sums at a theta."""
    t0 = start["n"] / start["pearson"]
    it, step, info = 0, 1.0, float("nan")
    while True:
        it += 1
        if not (it < limit and abs(step) > THETA_EPS):
            break
        t0 = abs(t0)
        s = sums(t0)
        info = s["info"]
        if not info > 0 and not info < 0:  # R would go on with Inf and NaN
            raise NonFiniteError(
                f"theta.ml: the information of theta is {info!r} at theta = {t0:.6g}: the "
                "counts show no overdispersion for theta to estimate (theta diverges); "
                "fit family='poisson'")
        step = s["score"] / info
        t0 = t0 + step
    warn = None
    if t0 < 0:
        t0, warn = 0.0, "estimate truncated at zero"
    if it == limit:
        warn = "iteration limit reached"
    return t0, math.sqrt(1 / info) if info > 0 else float("nan"), warn


def fit_theta(sites: Any, design: Design, n_sites: int, stopat: dict, synchronous: bool,
              verbose: int, start: Any = None, runner: Optional[Callable] = None,
              summer: Optional[Callable] = None) -> ThetaFit:
    """glm.nb's alternation (see the module docstring) over ``sites`` (`fit_steps`'s).
    ``runner(algorithm)`` runs a fit and ``summer(beta, theta)`` gives the theta sums over
    the sites (a dict) instead of the plain ones: secure aggregation's
    (`algorithms.glm.secure`), where no site's own sums reach the central."""
    family = design.family
    maxit, eps = int(stopat["maxit"]), float(stopat["tol"])

    stages: list = []  # the design of each fit (the last one's is the result's)

    def run(theta: Optional[float], beta) -> FitRecord:
        stage = replace(design, family=family.with_theta(theta))  # same token: built once
        stages.append(stage)
        alg = FisherScoring(stage, n_sites=n_sites, start=beta)
        if runner is not None:
            history = runner(alg)
        else:
            history = sites.run(alg, stopat, synchronous, verbose)
        return FitRecord.from_history(history)

    def sums(beta: np.ndarray, theta: Optional[float]) -> dict:
        if summer is not None:
            return summer(beta, theta)
        parts = sites.call("theta_sums", design, beta, theta)
        return {k: float(sum(p[k] for p in parts)) for k in parts[0]}

    log.info("glm.nb: the Poisson fit")
    fit = run(None, start)
    # theta.ml at the fitted values of fit j, computed when first needed; its start (the
    # Pearson sum) comes with the log-likelihood pass at those fitted values
    betas, starts, ml = {0: fit.beta}, {0: sums(fit.beta, None)}, {}

    def theta_of(j: int) -> tuple:
        if j not in ml:
            ml[j] = theta_ml(lambda t: sums(betas[j], t), starts[j], maxit)
        return ml[j]

    theta, se, warn = theta_of(0)
    d1 = math.sqrt(2 * max(1, fit.n_ok - len(fit.column_names)))
    d2 = step = 1.0
    loglik = sums(fit.beta, theta)["loglik"]
    loglik_old = loglik + 2 * d1
    alternation = 0
    while True:
        alternation += 1
        if not (alternation <= maxit and abs(loglik_old - loglik) / d1 + abs(step) / d2 > eps):
            break
        previous = fit
        fit = run(theta, previous.beta)
        old = theta
        theta, se, warn = theta_of(alternation - 1)  # glm.nb: at the previous fit's mu
        step = old - theta
        loglik_old = loglik
        betas[alternation] = fit.beta
        starts[alternation] = now = sums(fit.beta, theta)
        loglik = now["loglik"]
        log.info("glm.nb: theta(%d) = %g, loglik = %.10g", alternation, theta, loglik)
    notes = []
    if warn:
        notes.append(f"theta.ml: {warn}")
    if alternation > maxit:
        notes.append("glm.nb: alternation limit reached")
    for note in notes:
        warnings.warn(note, ConvergenceWarning, stacklevel=3)
    return ThetaFit(fit, stages[-1], replace(design, family=family.with_theta(theta)), theta,
                    se, loglik, alternation - 1, notes)
