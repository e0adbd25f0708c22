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
The algorithm is `glmnet_run`'s, the results `glmnet_results`'.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
from formulaic import Formula
from statsmodels.genmod import families as smf

from .base import DesignMismatchError
from .design import Design, merge_levels, merge_moments
from .glmnet_path import PathSpec, path_fit
from .glmnet_site import Folds, fold_ids
from .glmnet_results import CVGlmnet, GlmnetPath, cv_statistics, one_se_rule  # noqa: F401
from .glmnet_run import MAX_ROUNDS, GlmnetRun  # noqa: F401
from .guards import check_min_sites

log = logging.getLogger(__name__)

FAMILIES = {"gaussian": smf.Gaussian, "binomial": smf.Binomial, "poisson": smf.Poisson}
CANONICAL = {"gaussian": smf.links.Identity, "binomial": smf.links.Logit,
             "poisson": smf.links.Log}
MEASURES = ("deviance", "mse", "class")


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
