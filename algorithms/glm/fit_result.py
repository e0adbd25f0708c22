"""`glm.fit`'s result from a run's `FitRecord`: R's dispersion, statsmodels' scale of the
log-likelihood, the notes of a fit that did not converge cleanly, the `GLMResults`."""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import pandas as pd
from statsmodels.genmod import families as smf
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from .design import Design
from .fit_record import FitRecord
from .results import GLMResults


def _df_resid(main: FitRecord) -> int:
    return main.n_ok - len(main.column_names)


def _scale(main: FitRecord, design: Design, fixed: Optional[float] = None) -> float:
    """The dispersion as R's ``summary.glm``: ``fixed`` when given (``dispersion=``); 1 for
    the binomial and Poisson families; else ``sum(w_work r_work^2) / df_resid``, with the
    working weights of the last IRLS iteration and the working residuals at the estimate
    (the Pearson chi-square at the estimate where that iteration is not known: asynchronous
    rounds, gradient descent)."""
    if fixed is not None:
        return float(fixed)
    if not design.family.scale_estimated:
        return 1.0
    df = _df_resid(main)
    chi2 = main.working_chi2 if np.isfinite(main.working_chi2) else main.pearson_chi2
    return chi2 / df if df > 0 else float("nan")


def _llf_scale(main: FitRecord, design: Design) -> float:
    """R's dispersion in the log-likelihood (``family$aic``): deviance / nobs for the
    Gaussian (every link), deviance / sum of the prior weights for Gamma and the inverse
    Gaussian (statsmodels takes the Pearson chi-square / df_resid for all but the Gaussian
    identity), 1 for the binomial, Poisson and negative binomial; else the Pearson
    chi-square at the estimate / df_resid, as statsmodels."""
    sm = design.family.sm
    if isinstance(sm, smf.Gaussian):  # the rows of weight > 0 (see `Family.loglike`)
        return main.deviance / main.n_ok
    if isinstance(sm, (smf.Gamma, smf.InverseGaussian)):
        total = main.sum_w if np.isfinite(main.sum_w) and main.sum_w > 0 else main.nobs
        return main.deviance / total
    if not design.family.scale_estimated or isinstance(sm, smf.NegativeBinomial):
        return 1.0  # statsmodels' and R's negative binomial likelihood has no dispersion
    df = _df_resid(main)
    return main.pearson_chi2 / df if df > 0 else float("nan")


def dispersion_parameters(design: Design) -> int:
    """The parameters R's AIC counts besides the coefficients: 1 for the Gaussian, Gamma
    and inverse Gaussian (their dispersion), 0 otherwise (glm.nb's theta is added by the
    negative binomial fit)."""
    sm = design.family.sm
    has = design.family.has_likelihood
    return int(has and isinstance(sm, (smf.Gaussian, smf.Gamma, smf.InverseGaussian)))


def _results(main: FitRecord, design: Design, scale: float, null_deviance: float,
             llf: float, names: list, synchronous: bool,
             scale_fixed: bool = False) -> GLMResults:
    cols = main.column_names
    converged, notes = main.converged, []
    if main.n_boundary:
        what = ("fitted probabilities numerically 0 or 1 occurred"
                if isinstance(design.family.sm, smf.Binomial)
                else "fitted rates numerically 0 occurred")
        notes.append(f"{what}: (quasi-)complete separation; the maximum likelihood estimate "
                     "does not exist and some coefficients diverge")
        warnings.warn(f"glm.fit: {notes[-1]}", PerfectSeparationWarning, stacklevel=4)
        converged = False
    if main.withheld:
        notes.append(
            f"the fit stopped after {main.iterations} iterations: site(s) {main.withheld} "
            "withheld their sums at the next coefficients, whose weights would single out a "
            "row or pin most rows at the family's edge (GLM_MAX_LEVERAGE): the fit "
            "diverges, as in a (quasi-)complete separation, and the estimate is the last one "
            "before")
        kind = PerfectSeparationWarning if isinstance(
            design.family.sm, (smf.Binomial, smf.Poisson)) else ConvergenceWarning
        warnings.warn(f"glm.fit: {notes[-1]}", kind, stacklevel=4)
        converged = False
    elif not converged and not main.n_boundary:
        notes.append("the algorithm did not converge")
        warnings.warn(f"glm.fit: algorithm did not converge in {main.iterations} iterations",
                      ConvergenceWarning, stacklevel=4)
    if main.stalled:
        notes.append("gradient descent stalled: the line search found no step that "
                     "decreases the deviance")
    if main.rescued:
        notes.append("R's glm.fit gives up here (no valid set of coefficients has been found: "
                     "its first step leaves the family's range); the step was halved towards "
                     "the intercept-only coefficients instead")
    elif main.boundary:
        notes.append("the step was halved to keep the fit valid (R: algorithm stopped at "
                     "boundary value)")
    has_intercept = "Intercept" in cols
    return GLMResults(
        params=pd.Series(main.beta, index=cols),
        cov_unscaled=pd.DataFrame(main.cov_unscaled, index=cols, columns=cols),
        scale=scale,
        scale_estimated=design.family.scale_estimated and not scale_fixed,
        deviance=main.deviance,
        null_deviance=null_deviance,
        pearson_chi2=main.pearson_chi2,
        llf=llf,
        nobs=main.nobs,
        df_resid=_df_resid(main),
        df_null=main.n_ok - int(has_intercept),
        iterations=main.iterations,
        converged=converged,
        family=design.family.name,
        link=design.family.link_name,
        formula=design.formula,
        sites=list(names),
        synchronous=synchronous,
        notes=notes,
        method=main.method,
        extra_params=dispersion_parameters(design),
    )
