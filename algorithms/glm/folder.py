"""The GLM over sites that share only a synced folder: `fit_folder` and `glmnet_folder`.

The steps are `glm.fit`'s and `glm.glmnet`'s own (`algorithms.glm.fit.fit_steps`,
`algorithms.glm.glmnet._run`), over `_FolderSites`: the folder's sites behind the same
"sites" interface as local workers (``call`` a site pass, ``prepare`` the design, ``run`` an
algorithm, ``without`` failed sites). The names the sites know are `folder_protocol`'s;
the transport is `aia.FolderCluster`; ``aia-glm central`` (`algorithms.glm.cli`) parses
arguments and prints.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from typing import Any, Optional, Sequence

import numpy as np

import aia
from aia.cluster import Failed
from aia.folder import FolderCluster

from . import secure as secure_sums
from .design import Design
from .fit import check_options, check_resilience, fit_steps
from .folder_protocol import SiteTasks, with_token
from .glmnet import GlmnetPath, GlmnetRun, _FactorSpec, _check_penalty_factor, _path_result
from .glmnet import _check_options as _glmnet_check_options
from .glmnet import _run as _glmnet_run
from .glmnet_path import PathSpec, path_fit
from .gradient import MAX_ITER as GRADIENT_MAX_ITER
from .guards import check_min_sites
from .results import GLMResults
from .site_errors import site_error

__all__ = ["SiteFailedError", "fit_folder", "glmnet_folder", "session_name"]


def _no_problem(pid: int) -> None:
    return None  # the central needs no data of its own; each site reads its file


def session_name(**description) -> str:
    """The default session of a model: named by its description, so that running the same
    command again resumes it."""
    text = json.dumps(description, sort_keys=True, default=str)
    return "glm-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def fit_folder(formula: str, folder: Any, sites: Sequence[str], family: Any = "gaussian",
               link: Any = None, *, weights: Optional[str] = None, offset: Optional[str] = None,
               exposure: Optional[str] = None, expected: Optional[str] = None,
               method: str = "fisher", tol: float = 1e-8, max_iter: Optional[int] = None,
               min_sites: int = 3, timeout: Optional[float] = None, poll: float = 0.5,
               session: Optional[str] = None, key: Optional[bytes] = None,
               guards: Any = None, verbose: int = 0, watch: bool = True,
               missing: str = "drop", freq_weights: Optional[str] = None,
               scale: Optional[float] = None, cov_type: str = "nonrobust",
               groups: Optional[str] = None, secure: bool = False,
               resilience: int = 0) -> GLMResults:
    """`glm.fit` over sites that share only ``folder``: the same steps and the same result.

    ``sites`` are the sites' names (each runs ``aia-glm site``). ``timeout``: seconds after
    which the fit fails with `aia.folder.SitesTimeoutError` naming the sites that owe an
    answer. ``session`` defaults to a name derived from the model, so a central started again
    resumes. The session is marked finished on success (the sites exit). After a site's
    error or refusal, a timeout or an interruption it stays open: fix the site, call again
    with the same arguments, and the fit resumes (the site's error is not replayed: it is
    asked again); `aia.FolderCluster.cancel` (``aia-glm central --cancel``) ends it.
    ``method``, ``tol`` and ``max_iter`` are as in `glm.fit` (synchronous). ``watch`` and
    ``poll``: file events, and the seconds between looks anyway (`aia.FolderCluster`).
    ``missing``, ``freq_weights``, ``scale``, ``cov_type`` and ``groups`` are as in
    `glm.fit`; so is ``family="negative_binomial"`` (each site sends glm.nb's theta sums
    through the folder, and a robust covariance's p x p meat).
    ``secure`` too (`algorithms.glm.secure`: the answer files hold only masked sums), and
    with it ``resilience``: up to that many sites may fail (answer with an error: their
    data, their guards, their code) and the fit goes on among the others, as `glm.fit`'s.
    A silent site is not a failed one (it may be restarted and answer): it is waited for,
    up to ``timeout``.
    """
    if method not in ("fisher", "gradient"):
        raise ValueError(f"method: expected 'fisher' or 'gradient' (glmnet: glmnet_folder), "
                         f"got {method!r}")
    if max_iter is None:
        max_iter = 25 if method == "fisher" else GRADIENT_MAX_ITER
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    sites = list(sites)
    check_min_sites(len(sites), min_sites)
    options = check_options(scale=scale, cov_type=cov_type, groups=groups,
                            freq_weights=freq_weights)
    if secure:  # before the formula is parsed, as in glm.fit
        secure_sums.check_secure(len(sites), True, None, 0, options["cov_type"])
    design = with_token(Design.make(formula, family, link, weights=weights, offset=offset,
                                    exposure=exposure, expected=expected, guards=guards,
                                    missing=missing, freq_weights=freq_weights,
                                    groups=groups))
    _fisher_only(design, method)
    check_resilience(resilience, secure, design)
    if secure:
        secure_sums.check_secure(len(sites), True, None, resilience, options["cov_type"])
    if session is None:  # a robust covariance or a fixed scale is another model's result
        extra = {} if options == check_options() else {"options": options}
        session = session_name(design=design.token, sites=sites, method=method, tol=tol,
                               max_iter=max_iter, **extra,
                               **({"secure": True} if secure else {}),
                               **({"resilience": resilience} if resilience else {}))
    cluster = FolderCluster(folder, sites, session=session, poll=poll, timeout=timeout, key=key,
                            watch=watch)
    secured = {"secure": True, "resilience": resilience} if secure else {}
    return _on_folder(cluster, lambda sites_: fit_steps(
        sites_, design, cluster.sites, method, tol, max_iter, True, verbose, **options,
        **secured))


def _on_folder(cluster: FolderCluster, steps):
    """``steps(sites)`` over the folder's sites; the session is marked finished when they
    return. A site's error, a timeout or an interruption leaves it open (no cancel): the
    site can be fixed and the same call resumes; the error carries the session's name."""
    try:
        result = steps(_FolderSites(cluster))
        cluster.finish()
    except BaseException as exc:
        exc.folder_session = cluster.session  # open: the command line says how to go on
        raise
    finally:
        cluster.close()
    return result


def _fisher_only(design: Design, method: str) -> None:
    """`glm.fit`'s rule: frequency weights and glm.nb's theta are fitted by Fisher scoring."""
    if method == "fisher":
        return
    if design.freq_weights is not None:
        raise ValueError(f"freq_weights: Fisher scoring only (method='fisher'), got "
                         f"method={method!r}")
    if design.family.theta_estimated:
        raise ValueError("family='negative_binomial' (theta estimated as MASS::glm.nb) is "
                         f"fitted by method='fisher'; got method={method!r}")


class _FolderSites:
    """The sites of a synced folder, as `algorithms.glm.fit.fit_steps` reaches them (the
    ``sites`` it is given: ``call``, ``prepare``, ``run``, ``without``)."""

    def __init__(self, cluster: FolderCluster, pids: Optional[list] = None):
        self.cluster = cluster
        self.pids = list(cluster.pids if pids is None else pids)

    def call(self, method: str, design: Design, *args) -> list:
        query = {"op": method}
        if method == "loglike":
            query.update(beta=args[0], scale=args[1])
        elif method == "theta_sums":
            query.update(beta=args[0], theta=args[1])
        elif method == "meat":
            query.update(beta=args[0], clusters=args[1], salt=args[2], version=args[3])
            if len(args) > 4:  # HC2, HC3: the bread and the power of (1 - h)
                query.update(bread=np.asarray(args[4]).tolist(), hat_power=int(args[5]))
        elif method == "build":
            if args:
                query.update(saturated=bool(args[0]))
        elif method != "describe":
            raise TypeError(f"{method}: not among a folder site's operations")
        return _ask(self.cluster, self.pids, design, query)

    @staticmethod
    def prepare(design: Design) -> Design:
        return with_token(design)  # named by content: a central started again resumes

    def run(self, algorithm, stopat: dict, synchronous: bool, verbose: int,
            resilience: int = 0):
        return aia.start(algorithm, _no_problem, stopat, cluster=self.cluster, pids=self.pids,
                         synchronous=True, verbose=verbose, resilience=resilience)

    def without(self, failed) -> "_FolderSites":
        """These sites but the ``failed`` workers (which are asked nothing more)."""
        return _FolderSites(self.cluster, [p for p in self.pids if p not in failed])


class SiteFailedError(RuntimeError):
    """A site raised while answering one of the passes."""


def _ask(cluster: FolderCluster, pids: list, design: Design, query: dict) -> list:
    """One query to the sites ``pids``, through one run; the answers in site order."""
    run, _ = cluster.open_run(b"", None, pids, None, algorithm_object=SiteTasks(design))
    got: dict = {}
    try:
        run.broadcast(pids, query)
        while len(got) < len(pids):
            for event in run.wait(None):
                if isinstance(event, Failed):
                    raise SiteFailedError(event.cause) from event.remote_error()
                got[event.worker] = event.value
    finally:
        run.close()
    out = []
    for pid in pids:
        value, site = got[pid], cluster.site_of(pid)
        error = value.get("error") if isinstance(value, dict) else None
        if error is not None:
            raise site_error(error, site)
        out.append(value["ok"])
    return out


def glmnet_folder(formula: str, folder: Any, sites: Sequence[str], family: str = "gaussian",
                  *, alpha: float = 1.0, weights: Optional[str] = None,
                  offset: Optional[str] = None,
                  penalty_factor: Optional[dict] = None, lambdas: Optional[Sequence] = None,
                  nlambda: int = 100, lambda_min_ratio: Optional[float] = None,
                  standardize: bool = True, intercept: bool = True, tol: float = 1e-7,
                  max_iter: int = 100_000, min_sites: int = 3,
                  timeout: Optional[float] = None, poll: float = 0.5,
                  session: Optional[str] = None, key: Optional[bytes] = None,
                  guards: Any = None, verbose: int = 0, watch: bool = True) -> GlmnetPath:
    """`glm.glmnet` over sites that share only ``folder``: the same path (lambdas, coefs,
    df, dev_ratio). The folder's arguments are `fit_folder`'s (the session is resumable as
    there); the model's are `glm.glmnet`'s. ``coef(lam)`` at a lambda off the path needs
    the sites again: pass it in ``lambdas`` (gaussian refits from the sums it has)."""
    if not isinstance(family, str):
        raise TypeError(f"family: expected a name, got {type(family).__name__}")
    family = family.strip().lower()
    user = _glmnet_check_options(family, alpha, lambdas, nlambda, lambda_min_ratio, tol,
                                 max_iter)
    factors = _check_penalty_factor(penalty_factor, formula)
    sites = list(sites)
    check_min_sites(len(sites), min_sites)
    design = with_token(Design.make(formula, family, None, weights=weights, offset=offset,
                                    guards=guards))
    fspec = _FactorSpec(PathSpec(family, (), alpha=float(alpha), penalty_factor=None,
                                 lambdas=user, nlambda=nlambda,
                                 lambda_min_ratio=lambda_min_ratio,
                                 standardize=bool(standardize), intercept=bool(intercept),
                                 tol=float(tol), max_iter=max_iter), factors)
    if session is None:
        session = session_name(design=design.token, sites=sites, method="glmnet",
                               spec=repr(fspec.spec), factors=factors)
    cluster = FolderCluster(folder, sites, session=session, poll=poll, timeout=timeout, key=key,
                            watch=watch)
    started = time.perf_counter()
    run = _on_folder(cluster, lambda sites_: _glmnet_run(sites_, design, sites, fspec, None,
                                                         None, True, verbose))
    return _path_result(run, family, float(alpha), time.perf_counter() - started,
                        _folder_refit(run))


def _folder_refit(run: GlmnetRun):
    """glmnet's ``exact = TRUE`` from the sums at hand (gaussian), else a clear error."""
    moments = run._moments[None]
    columns = run.column_names
    order = (["Intercept"] if "Intercept" in columns else []) + \
        [c for c in columns if c != "Intercept"]
    index = [columns.index(c) for c in order]

    def refit(lam: float, start_in_order: np.ndarray) -> np.ndarray:
        one = replace(run.spec, lambdas=(float(lam),))
        if one.family != "gaussian":
            raise ValueError(f"coef({lam:g}): a lambda off the path needs the sites again; "
                             f"fit over the folder with lambdas=[..., {lam:g}, ...]")
        start = np.zeros(len(columns))
        start[index] = start_in_order
        gen = path_fit(one, moments, start)
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value.betas[0][index]
        raise RuntimeError("the gaussian refit asked for sums")  # pragma: no cover

    return refit
