"""`glmnet` and `cv_glmnet`: glmnet's elastic-net path and its cross-validation over sites
that keep their rows.

    >>> from algorithms import glm
    >>> path = glm.glmnet("y ~ x1 + x2 + C(g)", sites=[...], family="binomial", alpha=0.5)
    >>> path.lambdas, path.coef(0.01), path.coefs, path.df, path.dev_ratio   # doctest: +SKIP
    >>> cv = glm.cv_glmnet("y ~ ...", sites=[...], family="binomial", folds=10)  # doctest: +SKIP
    >>> cv.lambda_min, cv.lambda_1se, cv.coef("1se")                              # doctest: +SKIP

The steps, each a pass over the sites (sums only come back)::

    1. describe, build   as `glm.fit`: merged levels and moments, the same design everywhere
    2. moments           prior-weighted sums of every site (and of every fold), for glmnet's
                         standardisation with the pooled weighted moments
    3. the path          each round sends coefficients and reads back X'WX, X'Wz (of the
                         strong set's columns), every column's score and the deviance, and
                         the deviance at the last solution (`algorithms.glm.glmnet_path`);
                         none for gaussian
    4. cv (cv_glmnet)    the K training fits in lock-step (rows outside each fold), then one
                         round for the held-out folds' deviance at every lambda

Each outer (IRLS) round is one round of the sites; the central solves the penalised weighted
least squares by coordinate descent on the summed Gram (`algorithms.glm.coordinate_descent`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
from formulaic import Formula
from statsmodels.genmod import families as smf

from aia.algorithm import AbstractAlgorithm

from .base import _HOLD_MAX, _HOLD_START, DesignMismatchError
from .design import Design, merge_levels, merge_moments
from .glmnet_path import PathResult, PathSpec, Sums, interpolate, path_fit
from .glmnet_site import Folds, GlmnetAnswer, GlmnetQuery, Heldout, fold_ids, glmnet_answer
from .guards import check_min_sites
from .site import SiteGroup

log = logging.getLogger(__name__)

FAMILIES = {"gaussian": smf.Gaussian, "binomial": smf.Binomial, "poisson": smf.Poisson}
CANONICAL = {"gaussian": smf.links.Identity, "binomial": smf.links.Logit,
             "poisson": smf.links.Log}
MEASURES = ("deviance", "mse", "class")
#: The most rounds a run may take (a safety net; a path takes a few per lambda).
MAX_ROUNDS = 100_000


# -- the aia algorithm ------------------------------------------------------------------------
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


# -- results ----------------------------------------------------------------------------------
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


# -- checks -----------------------------------------------------------------------------------
def _check_options(family: str, alpha: Any, lambdas: Any, nlambda: Any,
                   lambda_min_ratio: Any, tol: Any, max_iter: Any) -> Optional[tuple]:
    if family not in FAMILIES:
        raise ValueError(f"family: glmnet fits 'gaussian', 'binomial' or 'poisson', "
                         f"got {family!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a number in [0, 1] (1 lasso, 0 ridge), "
                         f"got {alpha!r}")
    if not (isinstance(nlambda, int) and not isinstance(nlambda, bool) and nlambda >= 1):
        raise ValueError(f"nlambda: expected a positive integer, got {nlambda!r}")
    if lambda_min_ratio is not None and not (
            isinstance(lambda_min_ratio, (int, float)) and 0 < lambda_min_ratio < 1):
        raise ValueError(f"lambda_min_ratio: expected a number in (0, 1), "
                         f"got {lambda_min_ratio!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    if lambdas is None:
        return None
    values = np.atleast_1d(np.asarray(lambdas, dtype=float))
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"lambdas: expected a non-empty sequence of finite numbers, "
                         f"got {lambdas!r}")
    if np.any(values < 0):
        raise ValueError(f"lambdas: expected non-negative values, got {values.tolist()}")
    if values.size > 1 and not np.all(np.diff(values) < 0):
        raise ValueError(f"lambdas: expected a decreasing path (largest first, each smaller "
                         f"than the one before), got {values.tolist()}")
    return tuple(values.tolist())


def formula_terms(formula: str) -> list:
    """The names of the formula's right-hand terms (no data needed)."""
    return [str(t) for t in Formula(formula).rhs]


def _check_penalty_factor(penalty_factor: Any, formula: str) -> Optional[dict]:
    """``{term: factor}``; every term must be one of the formula's."""
    if penalty_factor is None:
        return None
    if not isinstance(penalty_factor, Mapping):
        raise TypeError(f"penalty_factor: expected a mapping {{term: factor}}, got "
                        f"{type(penalty_factor).__name__}")
    terms = formula_terms(formula)
    unknown = [t for t in penalty_factor if t not in terms]
    if unknown:
        raise ValueError(f"penalty_factor: unknown term(s) {unknown}; the formula's terms "
                         f"are {[t for t in terms if t != '1']}")
    for t, v in penalty_factor.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise ValueError(f"penalty_factor[{t!r}]: expected a finite number >= 0, got {v!r}")
    return dict(penalty_factor)


def _column_factors(columns: Sequence[str], factors: Optional[dict]) -> Optional[tuple]:
    """One penalty factor per design column, from the factors of the formula's terms (a
    column belongs to the term its name gives once its levels are dropped)."""
    if factors is None:
        return None
    out = []
    for c in columns:
        term = re.sub(r"\[[^\]]*\]", "", c)
        out.append(float(factors.get(term, 1.0)))
    return tuple(out)


def _check_sites_rows(sources: Sequence, names: Sequence[str], k: int) -> None:
    """A site given as a DataFrame with fewer rows than folds is refused before any
    process starts (a file's rows are counted by its own site)."""
    for src, name in zip(sources, names):
        if isinstance(src, pd.DataFrame) and len(src) < k:
            raise ValueError(f"folds: site {name} has {len(src)} rows, fewer than the {k} "
                             "folds asked for: ask for fewer folds")


# -- the public functions ---------------------------------------------------------------------
@dataclass(frozen=True)
class PathOptions:
    """The options `glmnet` and `cv_glmnet` share (keyword arguments of both).

    Parameters
    ----------
    weights, offset, cluster, synchronous, min_sites, guards, verbose :
        As `algorithms.glm.fit` (prior weights and offset columns, one worker per site, ...).
    alpha : float
        The elastic-net mixing in [0, 1]: 1 the lasso, 0 ridge.
    penalty_factor : mapping
        ``{term: factor}`` for terms of the formula (every column of ``C(g)`` takes the
        factor of ``C(g)``); 0 leaves a term unpenalised; default 1. glmnet rescales the
        factors to sum to the number of columns.
    lambdas : sequence
        A user path (non-negative, decreasing); default glmnet's: ``nlambda`` values from
        lambda_max down to ``lambda_min_ratio`` times it (1e-4 if there are more rows than
        columns, else 0.01), stopped early as glmnet stops it.
    standardize : bool
        Penalise the columns scaled by their pooled weighted standard deviation (reported
        on the original scale).
    intercept : bool
        An unpenalised intercept (the formula's ``Intercept`` column).
    tol, max_iter :
        glmnet's ``thresh`` and ``maxit``: convergence of coordinate descent and of the
        IRLS rounds; the most passes of coordinate descent.
    """

    alpha: float = 1.0
    weights: Optional[str] = None
    offset: Optional[str] = None
    penalty_factor: Optional[Mapping[str, float]] = None
    lambdas: Optional[Sequence[float]] = None
    nlambda: int = 100
    lambda_min_ratio: Optional[float] = None
    standardize: bool = True
    intercept: bool = True
    tol: float = 1e-7
    max_iter: int = 100_000
    cluster: Any = None
    synchronous: bool = True
    min_sites: int = 1
    guards: Any = None
    verbose: int = 0
    #: secure aggregation (`algorithms.glm.secure`): the moments and every round's sums
    #: sent masked; at least 3 sites, synchronous (glmnet only, not cv_glmnet)
    secure: bool = False


def _options(function: str, options: Mapping[str, Any]) -> PathOptions:
    unknown = sorted(set(options) - set(PathOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"{function}() got unexpected keyword argument(s) {unknown}; its "
                        f"options are {sorted(PathOptions.__dataclass_fields__)}")
    return PathOptions(**options)


def glmnet(formula: str, sites: Any, family: str = "gaussian", **options) -> GlmnetPath:
    """glmnet's elastic-net path across sites (R's ``glmnet``, held to its numbers).

    ``formula`` and ``sites`` as `algorithms.glm.fit`; ``family``: ``"gaussian"``,
    ``"binomial"`` or ``"poisson"`` (canonical links, as glmnet's); ``options``: the
    keywords of `PathOptions` (``alpha``, ``weights``, ``offset``, ``penalty_factor``,
    ``lambdas``, ``nlambda``, ``lambda_min_ratio``, ``standardize``, ``intercept``,
    ``tol``, ``max_iter``, ``cluster``, ``synchronous``, ``min_sites``, ``guards``,
    ``verbose``).
    """
    return _fit(formula, sites, family, _options("glmnet", options), None)[0]


def cv_glmnet(formula: str, sites: Any, family: str = "gaussian", *,
              folds: Union[int, str] = 10, seed: int = 0, type_measure: str = "deviance",
              **options) -> CVGlmnet:
    """glmnet's ``cv.glmnet`` across sites.

    ``folds=K`` splits every site's rows into K folds by a seeded hash of the row position
    (`algorithms.glm.glmnet_site.fold_ids` with ``seed``; fold k is the union of every
    site's fold k); ``folds="sites"`` holds out one site at a time. Each fold's training
    fit is the total sums minus the fold's; every fold passes the guards of a site's rows.
    ``type_measure``: ``"deviance"`` (default), ``"mse"`` or ``"class"`` (binomial). The
    ``options`` are `glmnet`'s (`PathOptions`). As R's, the training fits take their own
    default paths (the user's ``lambdas`` if given) and are interpolated at the whole
    data's lambdas.
    """
    if type_measure not in MEASURES:
        raise ValueError(f"type_measure: expected one of {list(MEASURES)}, got {type_measure!r}")
    if type_measure == "class" and family != "binomial":
        raise ValueError("type_measure='class' is for the binomial family")
    opts = _options("cv_glmnet", options)

    def split(names, sources) -> Folds:
        if folds == "sites":
            if len(names) < 3:
                raise ValueError(f"folds='sites': cross-validation needs at least 3 sites, "
                                 f"got {len(names)}")
            return Folds(len(names), seed, tuple(names))
        if isinstance(folds, int) and not isinstance(folds, bool) and folds >= 3:
            _check_sites_rows(sources, names, folds)
            return Folds(folds, int(seed))
        raise ValueError(f"folds: expected an integer >= 3 or 'sites', got {folds!r}")

    path, run = _fit(formula, sites, family, opts, split)
    cvm, cvsd = cv_statistics(run.heldout, type_measure, run.folds.k)
    idmin, id1se = one_se_rule(path.lambdas, cvm, cvsd)
    return CVGlmnet(path.lambdas, cvm, cvsd, path.df, float(path.lambdas[idmin]),
                    float(path.lambdas[id1se]), idmin, id1se, type_measure, path, run.rounds)


def _with_options(function) -> None:
    """Show the `PathOptions` as keyword parameters in ``help(function)`` and
    ``inspect.signature`` (the function takes them as ``**options``)."""
    signature = inspect.signature(function)
    params = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    hints = {f.name: f.type for f in dataclasses.fields(PathOptions)}
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                 annotation=hints[f.name])
               for f in dataclasses.fields(PathOptions)]
    function.__signature__ = signature.replace(parameters=params)


_with_options(glmnet)
_with_options(cv_glmnet)


def _fit(formula: str, sites: Any, family: Any, opts: PathOptions, split) -> tuple:
    """Every check that needs no process, then the run: ``(GlmnetPath, GlmnetRun)``.
    ``split(names, sources)`` gives cross-validation's `Folds` (None: no folds)."""
    from .fit import _placed, _site_list
    if not isinstance(family, str):
        raise TypeError(f"family: expected a name, got {type(family).__name__}")
    family = family.strip().lower()
    o = opts
    user = _check_options(family, o.alpha, o.lambdas, o.nlambda, o.lambda_min_ratio, o.tol,
                          o.max_iter)
    factors = _check_penalty_factor(o.penalty_factor, formula)
    design = Design.make(formula, family, None, weights=o.weights, offset=o.offset,
                         guards=o.guards)
    names, sources = _site_list(sites)
    check_min_sites(len(sources), o.min_sites)
    if o.cluster == "inprocess" and not o.synchronous:
        raise ValueError("cluster='inprocess' runs synchronously: pass synchronous=True")
    if not isinstance(o.secure, bool):
        raise TypeError(f"secure: expected True or False, got {o.secure!r}")
    folds = None if split is None else split(names, sources)
    if o.secure:
        if folds is not None and folds.sites is not None:
            raise ValueError("secure=True: expected folds=<an integer>, got folds='sites': "
                             "its training fits are the total minus one site's sums, which "
                             "would give the central that site's sums")
        from .secure import check_secure
        check_secure(len(sources), o.synchronous, o.cluster, 0)
    spec = _FactorSpec(PathSpec(family, (), alpha=float(o.alpha), penalty_factor=None,
                                lambdas=user, nlambda=o.nlambda,
                                lambda_min_ratio=o.lambda_min_ratio,
                                standardize=bool(o.standardize), intercept=bool(o.intercept),
                                tol=float(o.tol), max_iter=o.max_iter), factors)
    started = time.perf_counter()
    with _placed(sources, names, o.cluster) as placed:
        run = _run(placed, design, names, spec, folds, None, o.synchronous, o.verbose,
                   o.secure)
    refit = _refitter(run, sources, names, o.cluster, design, o.synchronous, o.secure)
    return _path_result(run, family, o.alpha, time.perf_counter() - started, refit), run


class _FactorSpec:
    """A `PathSpec` waiting for the design's columns to place the terms' penalty factors."""

    def __init__(self, spec: PathSpec, factors: Optional[dict]):
        self.spec, self.factors = spec, factors

    def for_columns(self, columns: Sequence[str]) -> PathSpec:
        return replace(self.spec, columns=tuple(columns),
                       penalty_factor=_column_factors(columns, self.factors))


def _run(placed, design: Design, names: list, fspec: _FactorSpec, folds: Optional[Folds],
         start, synchronous: bool, verbose: int, secure: bool = False) -> GlmnetRun:
    """describe, build, then the path (and the folds) as in `fit_steps`."""
    log.info("describing the sites (levels and moments)")
    described = placed.call("describe", design)
    design = placed.prepare(design.with_shared(
        merge_levels([d["levels"] for d in described]),
        merge_moments([d["moments"] for d in described])))
    built = placed.call("build", design)
    columns = [b["columns"] for b in built]
    if any(c != columns[0] for c in columns):
        detail = "; ".join(f"{n}: {list(c)}" for n, c in zip(names, columns))
        raise DesignMismatchError(f"the sites built different design columns ({detail})")
    spec = fspec.for_columns(columns[0])
    if spec.intercept and "Intercept" not in spec.columns:
        raise ValueError("intercept=True needs the formula's intercept (drop '0 +' or "
                         "'- 1'), or pass intercept=False")
    run = GlmnetRun(design, spec, len(names), folds, start)
    if secure:  # the same run, its sums masked (algorithms.glm.secure)
        from .secure import SecureAggregation
        placed.run(SecureAggregation(run), {"rounds": MAX_ROUNDS}, synchronous, verbose)
    else:
        placed.run(run, {"rounds": MAX_ROUNDS}, synchronous, verbose)
    return run


def _path_result(run: GlmnetRun, family: str, alpha: float, seconds: float,
                 refit) -> GlmnetPath:
    res = run.result
    coefs = pd.DataFrame(res.betas, index=pd.Index(res.lambdas, name="lambda"),
                         columns=run.column_names)
    order = (["Intercept"] if "Intercept" in coefs else []) + \
        [c for c in coefs.columns if c != "Intercept"]
    return GlmnetPath(res.lambdas, coefs[order], res.dev_ratio, res.null_deviance,
                      res.rounds, run.rounds, family, float(alpha), seconds, run.path_seconds,
                      refit)


def _refitter(run: GlmnetRun, sources, names, cluster, design, synchronous,
              secure: bool = False):
    """glmnet's ``exact = TRUE``: a fit at one lambda, warm-started. Gaussian needs no
    site: its sums are the moments already summed."""
    moments = run._moments[None]
    columns = run.column_names
    order = (["Intercept"] if "Intercept" in columns else []) + \
        [c for c in columns if c != "Intercept"]
    index = [columns.index(c) for c in order]
    full_spec = run.spec

    def refit(lam: float, start_in_order: np.ndarray) -> np.ndarray:
        start = np.zeros(len(columns))
        start[index] = start_in_order
        one = replace(full_spec, lambdas=(lam,))
        if one.family == "gaussian":
            gen = path_fit(one, moments, start)
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value.betas[0][index]
        from .fit import _placed
        with _placed(sources, names, cluster) as placed:
            again = _run(placed, design, names, _FixedSpec(one), None, start, synchronous, 0,
                         secure)
        return again.result.betas[0][index]

    return refit


class _FixedSpec(_FactorSpec):
    def __init__(self, spec: PathSpec):
        self.spec = spec

    def for_columns(self, columns):
        return self.spec


__all__ = ["CVGlmnet", "GlmnetPath", "GlmnetRun", "PathOptions", "cv_glmnet", "fold_ids",
           "glmnet"]
