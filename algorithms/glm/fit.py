"""`fit`: a GLM over sites whose rows never leave them.

The steps, each one a pass over the sites (only sums come back to the central)::

    1. describe   every site checks the formula and its guards, and sends its categorical
                  levels and the moments of the columns inside center()/scale()
    2. build      with the merged levels and global moments, every site builds its design
                  matrices; the central checks that the columns agree
    3. fit        FisherScoring or GradientDescent through aia.start (synchronous or
                  asynchronous); family="negative_binomial": MASS::glm.nb's alternation of
                  Fisher scoring fits and theta.ml passes (`algorithms.glm.negbin`)
    4. null       with an offset (or relative survival), R's null deviance is the deviance
                  of the intercept-only model: a second FisherScoring run
    5. loglike    every site sends its share of the log-likelihood at the estimate (binomial
                  and Poisson need no pass: the saturated log-likelihood, sent with step 2,
                  minus half the deviance)

Each site lives on its own worker (one worker per site). ``cluster=None`` starts a temporary
`aia.LocalCluster`; ``cluster="inprocess"`` keeps every site in this process (synchronous
only; for small data and tests).
"""

from __future__ import annotations

import logging
import secrets
import warnings
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from .design import Design, freq_problem, merge_levels, merge_moments
from .fisher import FisherScoring
from .fit_record import FitRecord
from .gradient import MAX_ITER as GRADIENT_MAX_ITER
from .gradient import GradientDescent
from .guards import check_min_sites
from .negbin import fit_theta
from .fit_result import _llf_scale, _results, _scale
from .placement import _placed, _same_columns, _site_list
from .results import GLMResults
from .secure import SecureAggregation, SiteSum, check_secure
from .site import site_label

log = logging.getLogger(__name__)


def fit(formula: str, sites: Any, family: Any = "gaussian", link: Any = None, *,
        weights: Optional[str] = None, offset: Optional[str] = None,
        exposure: Optional[str] = None, expected: Optional[str] = None,
        method: str = "fisher", tol: float = 1e-8, max_iter: Optional[int] = None,
        cluster: Any = None, synchronous: bool = True, min_sites: int = 1,
        guards: Any = None, start: Any = None, verbose: int = 0,
        scale: Optional[float] = None, cov_type: str = "nonrobust",
        groups: Optional[str] = None, missing: str = "drop",
        freq_weights: Optional[str] = None, secure: bool = False,
        resilience: int = 0) -> GLMResults:
    """Fit a GLM across sites, by Fisher scoring (exact to R's ``glm`` and statsmodels) or by
    gradient descent.

    Parameters
    ----------
    formula : str
        ``"y ~ x1 + C(group) + I(x2 ** 2)"`` (formulaic syntax, whitelisted transforms; see
        `algorithms.glm.design`).
    sites : list or dict
        One entry per site: a path (CSV, or Parquet for ``.parquet``/``.pq``), read by the
        worker that holds the site, or a pandas DataFrame. A dict names the sites.
    family, link :
        A family name (``gaussian``, ``binomial``, ``poisson``, ``gamma``,
        ``inverse_gaussian``, ``quasipoisson``, ``quasibinomial``, ``relative_survival``,
        ``negative_binomial``: theta estimated as ``MASS::glm.nb``, ``result.theta`` and
        ``result.theta_se``) or a statsmodels family object; a link
        name (``logit``, ``probit``, ``cloglog``, ``log``, ``identity``, ``inverse``,
        ``sqrt``, ...) or a statsmodels link; None for the canonical link.
    weights, offset, exposure, expected :
        Column names: prior weights, an offset on the linear predictor, an exposure
        (``log(exposure)`` is added to the offset), the expected deaths ``d*`` of
        ``family="relative_survival"`` (``mu = d* + exp(eta)``).
    method : str
        ``"fisher"``: Fisher scoring (IRLS), each site sends X'WX and X'Wz every iteration.
        ``"gradient"``: preconditioned gradient descent (`algorithms.glm.gradient`), each
        site sends its score (p numbers) every iteration, and X'WX only in the first and
        the last round; no step size to choose.
    tol, max_iter :
        Fisher scoring: R's convergence rule ``|dev - dev_old| / (|dev| + 0.1) < tol``, at
        most ``max_iter`` iterations (default 25). Gradient descent: R's rule and the
        score, in standard errors, below ``tol``; at most ``max_iter`` gradient rounds
        (default 1000; ``max_iter * n_sites`` steps in asynchronous mode).
    cluster :
        None (a temporary local cluster, one worker per site), an int (a temporary local
        cluster of that many workers), an `aia` cluster with at least one worker per site
        (its first workers are used), or ``"inprocess"``.
    synchronous : bool
        Wait for every site at each step (R's iterations exactly), or step as each site's
        answer arrives.
    min_sites : int
        The fewest sites the analyst accepts.
    guards :
        Stricter privacy thresholds than the sites' (a mapping of `Guards` fields); a site
        ignores any request looser than its own.
    start :
        Starting coefficients (one per design column), instead of R's starting values.
    verbose : int
        0 nothing, 1 a progress bar, 2 also the deviance and the convergence criterion.
    scale : float, optional
        A fixed dispersion (R's ``summary(fit, dispersion=)``, statsmodels' ``scale``):
        standard errors, z tests and intervals use it. By default it is estimated as R's
        ``summary.glm`` does, for every family but binomial and Poisson.
    cov_type : str
        ``"nonrobust"`` (R's ``vcov``), or a sandwich covariance with statsmodels' meaning
        and small-sample corrections, as R's ``sandwich`` computes it: ``"HC0"``
        (``vcovHC(type = "HC0")``), ``"HC1"`` (``n / (n - k)``), ``"HC2"``, ``"HC3"``
        (each row's score over ``(1 - h_i)^(1/2)``, ``(1 - h_i)``: the sites get the
        unscaled covariance for their hat values ``h_i``), ``"cluster"``
        (``vcovCL(type = "HC1")``: ``G / (G - 1) (n - 1) / (n - k)``). Each site sends a
        p x p sum. Robust standard errors come with z tests (statsmodels, ``lmtest``).
    groups : str, optional
        With ``cov_type="cluster"``: the column of cluster ids (clusters within sites; an
        id seen at two sites is an error). None: each site is a cluster.
    freq_weights : str, optional
        A column of frequency weights (statsmodels' ``freq_weights``): a row counts as that
        many rows, as R's fit of the rows repeated; ``nobs``, ``df_resid`` and the BIC come
        from their sum. Non-negative whole numbers; ``weights`` stay R's prior weights.
        Fisher scoring only.
    missing : str
        ``"drop"`` (R's ``na.omit``): a row with a missing value (NaN, None) in a column the
        model uses is left out at its site, before the guards count rows, and counted
        (``result.n_missing``, the summary's "observations deleted due to missingness");
        a site left with no rows is an error naming it. ``"raise"``: such rows are an error.
    secure : bool
        Secure aggregation (`algorithms.glm.secure`): every sum of the iterations is sent
        masked, the central learns only the pooled sums. At least 3 sites, synchronous.
    resilience : int
        With ``secure=True``: how many sites may fail mid-fit; a round a site fails in is
        redone among the others (gradient descent starts again among them), and the fit
        is theirs.
    """
    if method not in ("fisher", "gradient"):
        raise ValueError(f"method: expected 'fisher' or 'gradient', got {method!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    if max_iter is None:
        max_iter = 25 if method == "fisher" else GRADIENT_MAX_ITER
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    options = check_options(scale=scale, cov_type=cov_type, groups=groups,
                            freq_weights=freq_weights)
    design = Design.make(formula, family, link, weights=weights, offset=offset,
                         exposure=exposure, expected=expected, guards=guards, groups=groups,
                         missing=missing, freq_weights=freq_weights)
    if freq_weights is not None and method != "fisher":
        raise ValueError(f"freq_weights: Fisher scoring only (method='fisher'), got "
                         f"method={method!r}")
    names, sources = _site_list(sites)
    _check_frames(sources, names, freq_weights)
    check_min_sites(len(sources), min_sites)
    if design.family.theta_estimated and method != "fisher":
        raise ValueError("family='negative_binomial' (theta estimated as MASS::glm.nb) is "
                         f"fitted by method='fisher'; got method={method!r}")
    if not isinstance(secure, bool):
        raise TypeError(f"secure: expected True or False, got {secure!r}")
    check_resilience(resilience, secure, design)
    if secure:
        check_secure(len(sources), synchronous, cluster, resilience, options["cov_type"],
                     design.groups)
        options["secure"], options["resilience"] = True, resilience
    if cluster == "inprocess" and not synchronous:
        raise ValueError("cluster='inprocess' runs synchronously: pass synchronous=True")
    with _placed(sources, names, cluster) as placed:
        return fit_steps(placed, design, names, method, tol, max_iter, synchronous, verbose,
                         start, **options)


#: ``cov_type=`` values.
COV_TYPES = ("nonrobust", "HC0", "HC1", "HC2", "HC3", "cluster")


def check_options(scale: Optional[float] = None, cov_type: str = "nonrobust",
                  groups: Optional[str] = None, freq_weights: Optional[str] = None) -> dict:
    """The result's options of `fit`, checked before any process starts."""
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not (np.isfinite(scale) and scale > 0)):
        raise ValueError(f"scale: expected a positive number (a fixed dispersion) or None, "
                         f"got {scale!r}")
    if cov_type not in COV_TYPES:
        raise ValueError(f"cov_type: expected one of {', '.join(map(repr, COV_TYPES))}, "
                         f"got {cov_type!r}")
    if groups is not None:
        if not isinstance(groups, str):
            raise TypeError(f"groups: expected a column name, got {type(groups).__name__}")
        if cov_type != "cluster":
            raise ValueError(f"groups: only with cov_type='cluster', got cov_type={cov_type!r}")
    if cov_type in ("HC2", "HC3") and freq_weights is not None:
        raise ValueError(f"cov_type={cov_type!r}: the hat values are per row, and a row of "
                         f"frequency weight f is f observations; expected cov_type 'HC0' or "
                         f"'HC1' with freq_weights={freq_weights!r}")
    return {"scale": None if scale is None else float(scale), "cov_type": cov_type}


def check_resilience(resilience: Any, secure: bool, design: Design) -> None:
    """``resilience``'s rules (`fit`, `fit_folder`): sites may fail only in a secure fit
    (its rounds are redone among the others), and not in glm.nb's several passes."""
    if isinstance(resilience, bool) or not isinstance(resilience, int) or resilience < 0:
        raise ValueError(f"resilience: expected an int >= 0, got {resilience!r}")
    if resilience and not secure:
        raise ValueError("resilience: only with secure=True (a plain fit needs every site)")
    if secure and resilience and design.family.theta_estimated:
        raise ValueError("secure=True: family='negative_binomial' runs several fits and "
                         "theta passes over the same sites: expected resilience=0")


def fit_steps(sites: Any, design: Design, names: list, method: str = "fisher",
              tol: float = 1e-8, max_iter: int = 25, synchronous: bool = True,
              verbose: int = 0, start: Any = None, **options) -> GLMResults:
    """The steps of a fit (see the module docstring) over ``sites``, wherever they live.

    ``sites`` offers ``call(method, design, *args)``: ``site.method(design, *args)`` at every
    site, the results in site order; ``run(algorithm, stopat, synchronous, verbose)``:
    `aia.start` of the algorithm over the sites; and ``prepare(design)``: the design with the
    merged levels and moments, as the sites are to see it. `fit` places sites on workers or
    in this process; ``aia-glm central`` reaches them through a synced folder. With
    ``resilience`` (secure), ``without(failed)``: the sites but the failed workers.

    ``options``: the result's options of `fit` (``scale``), checked by `check_options`.
    """
    stopat = {"tol": tol, "maxit": max_iter}
    log.info("describing the sites (levels and moments)")
    described = sites.call("describe", design)
    n_missing = sum(int(d.get("missing", 0)) for d in described)
    design = sites.prepare(design.with_shared(merge_levels([d["levels"] for d in described]),
                                              merge_moments([d["moments"] for d in described])))
    log.info("building the design at every site")
    # secure: no saturated log-likelihood in clear (a site's own sum): it comes masked with
    # Fisher scoring's first round (`FisherScoring.ask_saturated`)
    built = sites.call("build", design, *((False,) if options.get("secure") else ()))
    _same_columns([b["columns"] for b in built], names)
    log.info("fitting (%s)", "Fisher scoring" if method == "fisher" else "gradient descent")
    algorithm = FisherScoring if method == "fisher" else GradientDescent
    nb = null_design = None
    if design.family.theta_estimated:  # MASS::glm.nb's alternation
        secure = {} if not options.get("secure") else dict(
            runner=lambda alg: _run(sites, alg, stopat, synchronous, verbose, options),
            summer=lambda beta, theta: _theta_sums(sites, design, beta, theta, options))
        nb = fit_theta(sites, design, len(names), stopat, synchronous, verbose, start,
                       **secure)
        main, design, null_design = nb.main, nb.design, nb.theta_design
    else:
        alg = algorithm(design, n_sites=len(names), start=start)
        if options.get("secure") and method == "fisher":
            alg.ask_saturated = True
        history = _run(sites, alg, stopat, synchronous, verbose, options)
        main = FitRecord.from_history(history)
        if history.failures:  # secure, resilience: the fit of the others
            sites, names, built = _without(sites, names, built, history.failures)
    null_deviance = main.null_deviance
    if null_deviance is None:  # an offset: R fits the intercept-only model
        # (one coefficient: Fisher scoring sends no more than a gradient would)
        log.info("Fisher scoring of the intercept-only model (the null deviance)")
        null = FitRecord.from_history(_run(
            sites, FisherScoring(null_design or design, null_model=True, n_sites=len(names)),
            stopat if method == "fisher" else {"tol": tol, "maxit": 25}, synchronous, 0,
            options))
        if not null.converged:
            warnings.warn("the intercept-only fit behind the null deviance did not "
                          "converge", ConvergenceWarning, stacklevel=3)
        null_deviance = null.deviance
    scale = _scale(main, design, options.get("scale"))
    llf_scale = _llf_scale(main, design)
    saturated = [b.get("saturated_loglike") for b in built]
    saturated = sum(saturated) if None not in saturated else None
    if options.get("secure"):
        saturated = main.saturated_loglike
    if nb is not None:  # glm.nb's loglik at the newest theta
        llf = nb.loglik
    elif not design.family.has_likelihood:  # quasi families: R's logLik is NA
        llf = float("nan")
    elif method == "fisher" and llf_scale == 1.0 and saturated is not None:
        # Binomial, Poisson: llf = saturated llf - deviance / 2, the deviance being at the
        # estimate itself; no pass over the rows.
        llf = saturated - main.deviance / 2
    else:
        log.info("the log-likelihood")
        llf = _loglike(sites, design, main.beta, llf_scale, options)
    result = _results(main, design, scale, null_deviance, llf, names, synchronous,
                      scale_fixed=options.get("scale") is not None)
    result.n_missing = n_missing
    if nb is not None:
        result.family = f"Negative Binomial({nb.theta:.4g})"  # R's family(fit)$family
        result.theta, result.theta_se, result.extra_params = nb.theta, nb.theta_se, 1
        result.notes.extend(nb.notes)
    cov_type = options.get("cov_type", "nonrobust")
    if cov_type != "nonrobust":
        log.info("the sandwich covariance (%s)", cov_type)
        result.cov_type = cov_type
        result.cov_robust = _robust_cov(sites, design, main, names, cov_type, options)
    return result


def _run(sites: Any, algorithm: Any, stopat: dict, synchronous: bool, verbose: int,
         options: Mapping) -> Any:
    """``sites.run`` of the algorithm, wrapped in `SecureAggregation` with ``secure``."""
    if not options.get("secure"):
        return sites.run(algorithm, stopat, synchronous, verbose)
    extra = {"resilience": options["resilience"]} if options.get("resilience") else {}
    return sites.run(SecureAggregation(algorithm), stopat, synchronous, verbose, **extra)


def _loglike(sites: Any, design: Design, beta: np.ndarray, scale: float,
             options: Mapping) -> float:
    """The sum of the sites' log-likelihoods at ``beta`` (securely with ``secure``)."""
    if not options.get("secure"):
        return sum(sites.call("loglike", design, beta, scale))
    total = SiteSum("loglike", design, beta, scale)
    _run(sites, total, {"maxit": 1}, True, 0, options)
    return total.value


def _theta_sums(sites: Any, design: Design, beta: np.ndarray, theta: Optional[float],
                options: Mapping) -> dict:
    """glm.nb's theta sums over the sites, summed securely (`SiteSum` of a dict)."""
    keys = ("n", "pearson") + (() if theta is None else ("info", "loglik", "score"))
    total = SiteSum("theta_sums", design, beta, theta, keys=keys)
    _run(sites, total, {"maxit": 1}, True, 0, options)
    return total.value


def _without(sites: Any, names: list, built: list, failures: Sequence) -> tuple:
    """The sites, names and build answers of the sites that did not fail."""
    failed = {f.worker for f in failures}
    keep = [i for i, pid in enumerate(sites.pids) if pid not in failed]
    return sites.without(failed), [names[i] for i in keep], [built[i] for i in keep]


def _robust_cov(sites: Any, design: Design, main: Any, names: list,
                cov_type: str, options: Mapping = {}) -> pd.DataFrame:
    """``C M C`` (C the unscaled covariance, M the sum of the sites' meats, summed securely
    with ``secure``) with statsmodels' (and sandwich's) small-sample corrections."""
    clusters = "rows" if cov_type != "cluster" else "groups" if design.groups else "site"
    args = (design, main.beta, clusters, secrets.token_hex(16), main.accepted_version)
    if cov_type in ("HC2", "HC3"):  # the sites' hat values need the fit's (X'WX)^{-1}
        args += (np.asarray(main.cov_unscaled, dtype=float), 1 if cov_type == "HC2" else 2)
    if options.get("secure"):  # clusters "rows" or "site" (check_secure)
        p = len(main.column_names)
        total = SiteSum("meat", *args, keys=("meat", "clusters"), shapes={"meat": (p, p)})
        _run(sites, total, {"maxit": 1}, True, 0, options)
        parts = [total.value]
    else:
        parts = sites.call("meat", *args)
    if clusters == "groups":
        seen: dict = {}
        for name, part in zip(names, parts):
            for digest in part["digests"]:
                other = seen.setdefault(digest, name)
                if other != name:
                    raise ValueError(
                        f"groups: a cluster id of column {design.groups!r} is at two sites "
                        f"({other} and {name}); clusters must lie within one site")
    C = np.asarray(main.cov_unscaled)
    cov = C @ sum(p["meat"] for p in parts) @ C
    n, k = main.nobs, len(main.column_names)
    if cov_type == "HC1":
        cov = cov * n / (n - k)
    elif cov_type == "cluster":
        g = sum(p["clusters"] for p in parts)
        if g < 2:
            raise ValueError("cov_type='cluster' needs at least two clusters")
        cov = cov * g / (g - 1) * (n - 1) / (n - k)
    cols = main.column_names
    return pd.DataFrame((cov + cov.T) / 2, index=cols, columns=cols)


def _check_frames(sources: list, names: list, freq_weights: Optional[str]) -> None:
    """The frequency weights of the sites given as DataFrames, before any process starts
    (a site read from a file checks its own)."""
    if freq_weights is None:
        return
    for name, src in zip(names, sources):
        if isinstance(src, pd.DataFrame) and freq_weights in src:
            column = src[freq_weights]
            if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
                raise ValueError(f"freq_weights: expected a numeric column of counts, got "
                                 f"column {freq_weights!r} of type {column.dtype} at {site_label(name)}")
            problem = freq_problem(column.dropna().to_numpy(dtype=float))
            if problem:
                raise ValueError(f"freq_weights: column {freq_weights!r} at {site_label(name)}: "
                                 f"{problem}")
