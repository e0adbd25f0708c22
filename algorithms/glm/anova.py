"""`anova`: R's analysis of deviance (``anova(m0, m1, ..., test=)``) of nested fits.

Every fit already holds its deviance and residual degrees of freedom, so the table needs no
pass over the sites. As R's ``anova.glmlist``: the dispersion of the test is the one of the
largest model (``summary.glm``'s, or the fixed ``dispersion``), with ``min(Resid. Df)``
degrees of freedom when it is estimated and infinitely many when it is 1.

Fits of ``family="negative_binomial"`` (theta estimated) get ``MASS::anova.negbin``'s
likelihood-ratio table instead (`anova_negbin`): each fit has its own theta, so the test
compares twice the log-likelihoods rather than deviances.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats

from .results import GLMResults

#: ``test=`` values: R's names (``"LRT"`` is R's other name for ``"Chisq"``).
TESTS = ("Chisq", "LRT", "F")


def anova(*fits: GLMResults, test: Optional[str] = None,
          dispersion: Optional[float] = None) -> pd.DataFrame:
    """The analysis of deviance table of nested fits on the same rows, as R's
    ``anova(m0, m1, ..., test=test)``.

    Columns ``Resid. Df``, ``Resid. Dev``, ``Df``, ``Deviance``, and with ``test="Chisq"``
    (or ``"LRT"``) ``Pr(>Chi)``, with ``test="F"`` ``F`` and ``Pr(>F)``; one row per fit,
    in the order given (rows 1, 2, ...). ``dispersion`` fixes the dispersion of the tests
    (R's ``dispersion=``).

    >>> glm.anova(small, big, test="Chisq")                          # doctest: +SKIP

    Fits of ``family="negative_binomial"``: `anova_negbin` (MASS's table).
    """
    if any(_negbin(f) for f in fits):
        return anova_negbin(*fits, test="Chisq" if test is None else test,
                            dispersion=dispersion)
    _check(fits, test, dispersion)
    resdf = np.array([f.df_resid for f in fits], dtype=float)
    resdev = np.array([f.deviance for f in fits], dtype=float)
    table = pd.DataFrame({
        "Resid. Df": resdf,
        "Resid. Dev": resdev,
        "Df": np.r_[np.nan, -np.diff(resdf)],
        "Deviance": np.r_[np.nan, -np.diff(resdev)],
    }, index=pd.RangeIndex(1, len(fits) + 1))
    table.attrs["heading"] = ["Analysis of Deviance Table"] + [
        f"Model {i}: {f.formula}" for i, f in enumerate(fits, 1)]
    if test is None:
        return table
    big = fits[int(np.argmin(resdf))]  # R: order(resdf)[1]
    scale = big.scale if dispersion is None else float(dispersion)
    df_scale = np.inf if scale == 1 else resdf.min()
    dfs = table["Df"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        if test in ("Chisq", "LRT"):
            values = table["Deviance"].to_numpy() / scale * np.sign(dfs)
            values[(dfs == 0) | (values < 0)] = np.nan  # R: NA rather than p = 0
            table["Pr(>Chi)"] = stats.chi2.sf(values, np.abs(dfs))
        else:
            if np.isinf(df_scale):
                what = (f"a '{big.family.lower()}' family" if big.family in ("Binomial", "Poisson")
                        else "a fixed dispersion")
                warnings.warn(f"using F test with {what} is inappropriate", stacklevel=2)
            values = table["Deviance"].to_numpy() / dfs / scale
            values[(dfs == 0) | (values < 0)] = np.nan
            table["F"] = values
            table["Pr(>F)"] = (stats.chi2.sf(values * np.abs(dfs), np.abs(dfs))
                               if np.isinf(df_scale)  # F(df, Inf) is chi2(df) / df
                               else stats.f.sf(values, np.abs(dfs), df_scale))
    return table


def anova_negbin(*fits: GLMResults, test: str = "Chisq",
                 dispersion: Optional[float] = None) -> pd.DataFrame:
    """``MASS::anova.negbin(m0, m1, ...)``: likelihood-ratio tests of nested negative
    binomial fits (``family="negative_binomial"``), each with its own theta.

    The fits sorted by decreasing residual df, as MASS sorts them; columns as R's:
    ``Model`` (the right-hand side), ``theta``, ``Resid. df``, ``   2 x log-lik.``,
    ``Test`` (``"1 vs 2"``...), ``   df``, ``LR stat.`` (the change of twice the
    log-likelihood) and ``Pr(Chi)`` (``1 - pchisq``). Only the chi-squared test exists
    (R warns for another and computes it; here any other test is an error)."""
    if test not in ("Chisq", "LRT"):
        raise ValueError(f"test: negative binomial fits have only MASS's likelihood-ratio "
                         f"test ('Chisq'), got {test!r}")
    if dispersion is not None:
        raise ValueError("dispersion: negative binomial fits have none to fix (theta is "
                         f"estimated), got {dispersion!r}")
    plain = [type(f).__name__ if not isinstance(f, GLMResults) else f.family
             for f in fits if not _negbin(f)]
    if plain:
        raise ValueError(f"anova: not all fits are family='negative_binomial' with theta "
                         f"estimated (MASS: not all objects are of class \"negbin\"); "
                         f"got {plain[0]!r}")
    _check(fits, None, None)
    order = sorted(range(len(fits)), key=lambda i: -fits[i].df_resid)  # stable, as R's
    fits = [fits[i] for i in order]
    dfs = np.array([f.df_resid for f in fits], dtype=float)
    lls = np.array([f.twologlik for f in fits], dtype=float)
    df, x2 = np.r_[np.nan, -np.diff(dfs)], np.r_[np.nan, np.diff(lls)]
    with np.errstate(invalid="ignore"):
        pr = np.r_[np.nan, 1 - stats.chi2.cdf(x2[1:], df[1:])]  # R: 1 - pchisq(x2, df)
    table = pd.DataFrame({
        "Model": [" ".join(f.formula.split("~", 1)[1].split()) for f in fits],
        "theta": [f.theta for f in fits],
        "Resid. df": dfs,
        "   2 x log-lik.": lls,
        "Test": [""] + [f"{i} vs {i + 1}" for i in range(1, len(fits))],
        "   df": df,
        "LR stat.": x2,
        "Pr(Chi)": pr,
    }, index=pd.RangeIndex(1, len(fits) + 1))
    table.attrs["heading"] = ["Likelihood ratio tests of Negative Binomial Models",
                              f"Response: {fits[0].formula.split('~', 1)[0].strip()}"]
    return table


def _negbin(fit) -> bool:
    """A fit of ``family="negative_binomial"`` (theta estimated, as glm.nb)."""
    return isinstance(fit, GLMResults) and getattr(fit, "theta", None) is not None


def _check(fits, test, dispersion) -> None:
    """Nested fits of one response, family and set of rows; R's error when the numbers of
    rows differ."""
    if len(fits) < 2:
        raise ValueError(f"anova: expected two or more nested fits, got {len(fits)}")
    bad = [type(f).__name__ for f in fits if not isinstance(f, GLMResults)]
    if bad:
        raise TypeError(f"anova: expected fits of glm.fit (GLMResults), got {bad[0]}")
    if test is not None and test not in TESTS:
        raise ValueError(f"test: expected None, 'Chisq', 'LRT' or 'F', got {test!r}")
    if dispersion is not None and (isinstance(dispersion, bool) or not isinstance(
            dispersion, (int, float)) or not (np.isfinite(dispersion) and dispersion > 0)):
        raise ValueError(f"dispersion: expected a positive number or None, got {dispersion!r}")
    first = fits[0]
    responses = [f.formula.split("~", 1)[0].strip() for f in fits]
    if len(set(responses)) > 1:
        raise ValueError(f"anova: the fits have different responses: {responses}")
    kinds = [("negative_binomial" if _negbin(f) else f.family, f.link) for f in fits]
    if len(set(kinds)) > 1:
        raise ValueError(f"anova: the fits have different families or links: {kinds}")
    if any(f.nobs != first.nobs for f in fits):
        raise ValueError("anova: models were not all fitted to the same size of dataset "
                         f"(numbers of rows {[f.nobs for f in fits]})")
    if any(list(f.sites) != list(first.sites) for f in fits):
        raise ValueError("anova: the fits are not on the same sites "
                         f"({[list(f.sites) for f in fits]})")
    for a, b in zip(fits, fits[1:]):
        small, large = (a, b) if a.df_resid >= b.df_resid else (b, a)
        extra = set(small.params.index) - set(large.params.index)
        if extra:
            raise ValueError(
                f"anova: the fits are not nested: {small.formula!r} has the column(s) "
                f"{sorted(map(str, extra))} that {large.formula!r} has not")
