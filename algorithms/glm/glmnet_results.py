"""What `glm.glmnet` and `glm.cv_glmnet` return: `GlmnetPath` and `CVGlmnet`, with
cv.glmnet's statistics (``cvm``, ``cvsd``, the one-standard-error rule)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pandas as pd

from .glmnet_site import Heldout

log = logging.getLogger("algorithms.glm.glmnet")


@dataclass
class GlmnetPath:
    """A fitted path (glmnet's ``glmnet`` object).

    ``lambdas`` (largest first), ``coefs`` (a DataFrame, one row per lambda, one column per
    term, Intercept first), ``df`` (nonzero coefficients besides the intercept),
    ``dev_ratio`` (fraction of the null deviance explained), ``null_deviance``,
    ``rounds_per_lambda`` (rounds of site sums at each lambda; 0 for gaussian) and
    ``rounds`` (every round of the run, the moments included); ``seconds``: the whole run,
    placing the rows and building the design included, ``path_seconds``: its rounds of
    sums alone."""

    lambdas: np.ndarray
    coefs: pd.DataFrame
    dev_ratio: np.ndarray
    null_deviance: float
    rounds_per_lambda: np.ndarray
    rounds: int
    family: str
    alpha: float
    seconds: float = 0.0
    path_seconds: float = 0.0
    _refit: Any = field(default=None, repr=False)

    @property
    def df(self) -> np.ndarray:
        terms = [c for c in self.coefs.columns if c != "Intercept"]
        return (self.coefs[terms] != 0).sum(axis=1).to_numpy()

    def coef(self, lam: float) -> pd.Series:
        """The coefficients at exactly ``lam`` (glmnet's ``exact = TRUE``): the path's own
        when ``lam`` is on it, else a new fit at ``lam`` (warm-started from the path's
        nearest point; binomial and Poisson ask the sites again)."""
        lam = float(lam)
        if not lam >= 0:
            raise ValueError(f"lam: expected a non-negative number, got {lam!r}")
        hit = np.flatnonzero(np.isclose(self.lambdas, lam, rtol=1e-12, atol=0))
        if hit.size:
            return self.coefs.iloc[int(hit[0])].rename(None)
        if self._refit is None:
            raise ValueError(f"lambda {lam:g} is not on the path, and this path cannot refit")
        nearest = int(np.argmin(np.abs(np.log(self.lambdas) - np.log(max(lam, 1e-300)))))
        beta = self._refit(lam, self.coefs.iloc[nearest].to_numpy())
        return pd.Series(beta, index=self.coefs.columns)

    def plot(self, ax=None, xvar: str = "lambda"):
        """The coefficient paths against log(lambda) (matplotlib needed)."""
        plt = _pyplot("path.plot()")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        terms = [c for c in self.coefs.columns if c != "Intercept"]
        x = np.log(self.lambdas)
        for t in terms:
            ax.plot(x, self.coefs[t].to_numpy(), label=t)
        ax.set_xlabel("log(lambda)")
        ax.set_ylabel("coefficient")
        top = ax.secondary_xaxis("top")
        top.set_xticks(x[:: max(1, len(x) // 6)])
        top.set_xticklabels(self.df[:: max(1, len(x) // 6)])
        top.set_xlabel("nonzero coefficients", fontsize="small")
        # above the top axis (its ticks and label), inside the figure
        ax.set_title(f"glmnet {self.family}, alpha = {self.alpha:g}", pad=34)
        ax.figure.tight_layout()
        if len(terms) <= 12:
            ax.legend(fontsize="small")
        return ax


@dataclass
class CVGlmnet:
    """A cross-validated path (glmnet's ``cv.glmnet`` object): ``lambdas``, ``cvm`` (the
    mean held-out measure), ``cvsd`` (its standard error), ``cvup``/``cvlo``, ``nzero``,
    ``lambda_min``, ``lambda_1se``, ``index_min``/``index_1se`` and ``glmnet_fit`` (the
    path on every row)."""

    lambdas: np.ndarray
    cvm: np.ndarray
    cvsd: np.ndarray
    nzero: np.ndarray
    lambda_min: float
    lambda_1se: float
    index_min: int
    index_1se: int
    type_measure: str
    glmnet_fit: GlmnetPath
    rounds: int

    @property
    def cvup(self) -> np.ndarray:
        return self.cvm + self.cvsd

    @property
    def cvlo(self) -> np.ndarray:
        return self.cvm - self.cvsd

    def coef(self, s: Union[str, float] = "1se") -> pd.Series:
        """The coefficients at ``lambda_1se`` (``"1se"``), ``lambda_min`` (``"min"``) or a
        lambda."""
        lam = {"1se": self.lambda_1se, "min": self.lambda_min}.get(s, s) \
            if isinstance(s, str) else s
        if isinstance(lam, str):
            raise ValueError(f"s: expected '1se', 'min' or a lambda, got {s!r}")
        return self.glmnet_fit.coef(lam)

    def plot(self, ax=None):
        """The cross-validated measure against log(lambda), with its error bars."""
        plt = _pyplot("cv.plot()")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        x = np.log(self.lambdas)
        ax.errorbar(x, self.cvm, yerr=self.cvsd, fmt="o", color="red", ms=3, ecolor="grey")
        for lam in (self.lambda_min, self.lambda_1se):
            ax.axvline(np.log(lam), ls=":", color="k")
        ax.set_xlabel("log(lambda)")
        ax.set_ylabel(self.type_measure)
        return ax


def _pyplot(what: str):
    """matplotlib.pyplot, or a clear ImportError: matplotlib is the optional ``plot``
    extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"{what} needs matplotlib, an optional dependency: "
                          "pip install 'aia[plot]' (or pip install matplotlib)") from None
    return plt


def cv_statistics(heldout: Mapping[int, Sequence[Heldout]], measure: str, n_folds: int):
    """glmnet's ``cvcompute`` and ``cvstats`` from the held-out sums: per fold the weighted
    mean of the measure; ``cvm`` their mean weighted by the folds' weights; ``cvsd`` the
    weighted standard deviation over ``sqrt(n_folds - 1)``."""
    key = {"deviance": "deviance", "mse": "mse", "class": "misclassified"}[measure]
    per_fold, weights = [], []
    for k in range(n_folds):
        parts = heldout[k]
        total = sum(getattr(h, key) for h in parts)
        w = sum(h.sum_w for h in parts)
        per_fold.append(total / w)
        weights.append(w)
    per_fold, weights = np.array(per_fold), np.array(weights)
    cvm = weights @ per_fold / weights.sum()
    cvsd = np.sqrt(weights @ (per_fold - cvm) ** 2 / weights.sum() / (n_folds - 1))
    return cvm, cvsd


def one_se_rule(lambdas: np.ndarray, cvm: np.ndarray, cvsd: np.ndarray) -> tuple:
    """glmnet's ``getOptcv.glmnet``: lambda_min is the largest lambda of smallest cvm;
    lambda_1se the largest lambda whose cvm is within one standard error of it."""
    idmin = int(np.flatnonzero(cvm <= np.nanmin(cvm))[0])
    semin = cvm[idmin] + cvsd[idmin]
    id1se = int(np.flatnonzero(cvm <= semin)[0])
    return idmin, id1se
