"""The result of a federated GLM fit, shaped like statsmodels' ``GLMResults``.

Conventions where statsmodels and R differ:

- p-values and confidence intervals follow R's ``summary.glm``: Student's t with
  ``df_resid`` degrees of freedom when the dispersion is estimated (Gaussian, Gamma,
  inverse Gaussian), the normal distribution otherwise (statsmodels uses the normal always).
- ``llf``, ``aic`` and ``bic`` are R's ``logLik``, ``AIC`` and ``BIC``: ``aic = -2 llf +
  2 k`` with k the coefficients plus one for the dispersion of the Gaussian, Gamma and
  inverse Gaussian (and glm.nb's theta); the likelihood takes R's dispersion, deviance /
  nobs for the Gaussian and deviance / sum of the prior weights for Gamma and the inverse
  Gaussian, and multiplies each row's log-density by its prior weight (statsmodels takes
  the Pearson chi-square / df_resid as the dispersion and counts no dispersion parameter).
  With a zero prior weight R's Gaussian log-likelihood is -Inf (``sum(log(wt))``); here
  the rows of zero weight are left out of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats


@dataclass
class GLMResults:
    """A fitted GLM. Build it with `algorithms.glm.fit`.

    ``iterations`` counts R's Fisher scoring iterations in synchronous mode, and the
    central's solves in asynchronous mode (``method="gradient"``: the gradient rounds, and
    the central's steps in asynchronous mode). ``notes`` says what R would have warned about.
    """

    params: pd.Series
    cov_unscaled: pd.DataFrame
    scale: float
    scale_estimated: bool
    deviance: float
    null_deviance: float
    pearson_chi2: float
    llf: float
    nobs: int
    df_resid: int
    df_null: int
    iterations: int
    converged: bool
    family: str
    link: str
    formula: str
    sites: list = field(default_factory=list)
    synchronous: bool = True
    notes: list = field(default_factory=list)
    method: str = "fisher"  # or "gradient"
    #: ``"nonrobust"``, or the sandwich covariance ``cov_robust`` holds (``"HC0"``...)
    cov_type: str = "nonrobust"
    cov_robust: Optional[pd.DataFrame] = None
    #: ``family="negative_binomial"``: glm.nb's ``theta`` and ``SE.theta``
    theta: Optional[float] = None
    theta_se: Optional[float] = None
    #: rows left out at the sites for a missing value (R's ``na.omit``)
    n_missing: int = 0
    #: parameters estimated besides ``params`` that the AIC and BIC count (glm.nb's theta)
    extra_params: int = 0

    # -- statsmodels' attributes ----------------------------------------------------------
    @property
    def df_model(self) -> int:
        """Number of parameters minus one (statsmodels' definition)."""
        return len(self.params) - 1

    @property
    def use_t(self) -> bool:
        """Whether tests use Student's t (the dispersion is estimated and the covariance is
        not robust: robust ones use the normal, as statsmodels and ``lmtest``)."""
        return self.scale_estimated and self.cov_type == "nonrobust"

    def cov_params(self) -> pd.DataFrame:
        """Covariance of the estimates: ``scale * (X'WX)^-1``, or the robust one
        (``cov_type``)."""
        if self.cov_robust is not None:
            return self.cov_robust
        return self.cov_unscaled * self.scale

    @property
    def bse(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.cov_params().to_numpy())), index=self.params.index)

    @property
    def tvalues(self) -> pd.Series:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.params / self.bse

    @property
    def pvalues(self) -> pd.Series:
        t = np.abs(self.tvalues.to_numpy())
        if self.use_t:
            p = 2 * stats.t.sf(t, self.df_resid) if self.df_resid > 0 else np.full_like(t, np.nan)
        else:
            p = 2 * stats.norm.sf(t)
        return pd.Series(p, index=self.params.index)

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Wald confidence intervals (columns 0 and 1), with the p-values' distribution."""
        if self.use_t and self.df_resid > 0:
            q = stats.t.ppf(1 - alpha / 2, self.df_resid)
        else:
            q = stats.norm.ppf(1 - alpha / 2)
        return pd.DataFrame({0: self.params - q * self.bse, 1: self.params + q * self.bse})

    @property
    def aic(self) -> float:
        """R's ``AIC``: ``-2 llf + 2 k``, k the coefficients, the dispersion of the families
        that have one and glm.nb's theta (``extra_params``)."""
        return -2 * self.llf + 2 * (self.df_model + 1 + self.extra_params)

    @property
    def bic(self) -> float:
        """R's ``BIC``: ``-2 llf + k log(nobs)``, k as in `aic`."""
        return -2 * self.llf + (self.df_model + 1 + self.extra_params) * np.log(self.nobs)

    @property
    def twologlik(self) -> float:
        """``2 llf`` (glm.nb's ``twologlik``)."""
        return 2 * self.llf

    # -- views ----------------------------------------------------------------------------
    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        """The coefficient table as a DataFrame (one row per term)."""
        ci = self.conf_int(alpha)
        stat = "t" if self.use_t else "z"
        return pd.DataFrame({
            "coef": self.params,
            "std err": self.bse,
            stat: self.tvalues,
            f"P>|{stat}|": self.pvalues,
            f"[{alpha / 2:g}": ci[0],
            f"{1 - alpha / 2:g}]": ci[1],
        })

    to_frame = summary_frame

    def summary(self, alpha: float = 0.05) -> "Summary":
        """A printable summary: the fit's description and the coefficient table."""
        return Summary(self, alpha)

    def __repr__(self) -> str:
        state = "converged" if self.converged else "NOT converged"
        return (f"<GLMResults {self.formula!r}, {self.family}/{self.link}, "
                f"{len(self.sites)} sites, nobs={self.nobs}, {state}>")


_METHODS = {"fisher": "Fisher scoring", "gradient": "gradient descent"}
_COVARIANCES = {"HC0": "robust HC0 (sandwich, no correction)",
                "HC1": "robust HC1 (sandwich, n / (n - k))",
                "HC2": "robust HC2 (sandwich, u_i / (1 - h_i)^(1/2))",
                "HC3": "robust HC3 (sandwich, u_i / (1 - h_i))",
                "cluster": "cluster-robust (G / (G - 1) (n - 1) / (n - k))"}


def _stars(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else ""


def _num(x: float, width: int = 10) -> str:
    if x is None or not np.isfinite(x):
        return f"{x!s:>{width}}"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-2):
        return f"{x:>{width}.3e}"
    return f"{x:>{width}.4f}"


def _pvalue(p: float) -> str:
    if not np.isfinite(p):
        return f"{'nan':>9}"
    if p < 2e-16:
        return f"{'<2e-16':>9}"
    return f"{p:>9.4f}" if p >= 1e-4 else f"{p:>9.2e}"


class Summary:
    """The text of `GLMResults.summary`; ``str()`` or ``print()`` it. ``tables[0]`` holds
    the coefficient table as a DataFrame."""

    def __init__(self, res: GLMResults, alpha: float = 0.05):
        self.res = res
        self.alpha = alpha
        self.tables = [res.summary_frame(alpha)]

    def as_text(self) -> str:
        r = self.res
        names = [str(n) for n in r.params.index]
        namew = max(12, max(len(n) for n in names) + 2)
        w = max(80, namew + 70)
        scale = f"{r.scale:.6g}" + ("" if r.scale_estimated else " (fixed)")
        its = f"{r.iterations} iteration{'s' if r.iterations != 1 else ''}"
        mode = "synchronous" if r.synchronous else "asynchronous"
        method = f"{_METHODS.get(r.method, r.method)}, {mode}"
        if len(method) > 29:  # the width of the column
            method = f"{_METHODS.get(r.method, r.method)}, {mode[:-7]}"  # "(a)sync"
        left = [
            ("Family:", r.family),
            ("Link:", r.link),
            ("Sites:", f"{len(r.sites)}"),
            ("Method:", method),
            ("Converged:", ("yes, " if r.converged else "NO, ") + its),
            ("Scale:", scale),
        ]
        right = [
            ("No. observations:", f"{r.nobs}"),
            ("Df residuals:", f"{r.df_resid}"),
            ("Df model:", f"{r.df_model}"),
            ("Log-likelihood:", f"{r.llf:.6g}"),
            ("AIC:", f"{r.aic:.6g}"),
            ("BIC:", f"{r.bic:.6g}"),
        ]
        half, hw = 41, 80  # the description keeps its width; the table widens with names
        lines = ["Generalized linear model (federated)".center(w), "=" * w,
                 f"Formula:   {r.formula}"]
        for (lk, lv), (rk, rv) in zip(left, right):
            lines.append(f"{lk:<11}{lv:<{half - 11}}{rk:<20}{rv:>{hw - half - 20}}")
        lines.append(f"Deviance:      {r.deviance:>12.6g} on {r.df_resid} degrees of freedom")
        lines.append(f"Null deviance: {r.null_deviance:>12.6g} on {r.df_null} degrees of freedom")
        if r.n_missing:
            lines.append(f"  ({r.n_missing} observation{'s' if r.n_missing != 1 else ''} "
                         "deleted due to missingness)")
        if r.theta is not None:
            lines.append(f"Theta:         {r.theta:>12.6g} (std. err. {r.theta_se:.6g}); "
                         f"2 x log-likelihood: {r.twologlik:.6g}")
        if r.cov_type != "nonrobust":
            lines.append(f"Covariance:    {_COVARIANCES.get(r.cov_type, r.cov_type)}")
        lines.append("=" * w)
        stat = "t" if r.use_t else "z"
        lo, hi = f"[{self.alpha / 2:g}", f"{1 - self.alpha / 2:g}]"
        lines.append(f"{'':<{namew}}{'coef':>10} {'std err':>10} {stat:>8} {'P>|' + stat + '|':>9}"
                     f" {lo:>10} {hi:>10}")
        lines.append("-" * w)
        ci = r.conf_int(self.alpha)
        for key, label in zip(r.params.index, names):
            p = r.pvalues[key]
            lines.append(
                f"{label:<{namew}}{_num(r.params[key])} {_num(r.bse[key])} "
                f"{_tval(r.tvalues[key])} {_pvalue(p)} {_num(ci.loc[key, 0])} "
                f"{_num(ci.loc[key, 1])} {_stars(p)}".rstrip()
            )
        lines.append("=" * w)
        lines.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
        lines.extend(f"Note: {note}" for note in r.notes)
        return "\n".join(lines)

    __str__ = as_text

    def __repr__(self) -> str:
        return self.as_text()


def _tval(t: float) -> str:
    return f"{t:>8.3f}" if np.isfinite(t) and abs(t) < 1e5 else f"{t:>8.2g}"
