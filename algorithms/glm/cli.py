"""``aia-glm``: federated GLMs from the command line, over local processes or a synced folder.

Sites that share only a synced folder (Dropbox, Box, a network drive)::

    aia-glm site --folder ~/Dropbox/model --site site1 --data site1.csv      # at each site
    aia-glm central --folder ~/Dropbox/model --sites site1,site2,site3 \\
        --formula "y ~ x1 + x2" --family binomial --output result.json       # the central

Each site waits for the model, answers each query from its own data (its privacy guards
apply, set by its own environment: see `algorithms.glm.guards`), and exits when the model is
finished or cancelled. The central waits for the sites, iterates to convergence, prints the
summary and writes ``--output`` as JSON. Run the same ``central`` command again after a
crash and it resumes from the last complete iteration; ``--cancel`` ends the model.

All sites in local worker processes (the files are read by their own worker)::

    aia-glm fit "admit ~ gre + gpa + C(rank)" a.csv b.csv c.csv --family binomial

(``fit`` may be left out.) ``--method glmnet`` (``--alpha``, ``--nlambda``, ``--lambdas``,
``--penalty-factor``...) fits glmnet's elastic-net path instead, over the folder or local
workers (`algorithms.glm.glmnet`). The folder transport is `aia.FolderCluster`; this module also
registers the GLM's algorithms and messages under the names ``glm.*`` for it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from statsmodels.genmod import families as smf

import aia
from aia.algorithm import AbstractAlgorithm
from aia.cluster import Failed
from aia.errors import RemoteError, WorkerFailedError
from aia.folder import FolderCluster, SitesTimeoutError, register, register_message
from aia.folder.__main__ import add_site_arguments, read_key, run_site, setup_logging

from .design import Design, FormulaError, SiteError
from .families import LINKS, NEGATIVE_BINOMIAL
from .base import DesignMismatchError
from .fisher import FisherScoring
from .glmnet import GlmnetPath, GlmnetRun, _FactorSpec, _check_penalty_factor, _path_result
from .glmnet import _check_options as _glmnet_check_options
from .glmnet import _run as _glmnet_run
from .glmnet_path import Ask, Moments, PathSpec, Sums, path_fit
from .glmnet_site import Folds, GlmnetAnswer, GlmnetQuery, Heldout
from .fit import check_options, fit, fit_steps
from .gradient import MAX_ITER as GRADIENT_MAX_ITER
from .gradient import GradientDescent, GradientQuery, Score
from .guards import Guards, PrivacyError, check_min_sites
from .messages import Contribution, Query
from .results import GLMResults
from . import secure as secure_sums
from .site import Site

log = logging.getLogger("aia.folder")

# -- the GLM on the folder transport: names, parameters, messages ------------------------------
_FAMILIES = {smf.Gaussian: "gaussian", smf.Binomial: "binomial", smf.Poisson: "poisson",
             smf.Gamma: "gamma", smf.InverseGaussian: "inverse_gaussian"}
_LINKS = {cls: name for name, cls in reversed(list(LINKS.items()))}  # the first name of each


def design_params(d: Design) -> dict:
    """A `Design` as plain data (a site rebuilds it with `design_from`)."""
    fam = d.family
    if fam.relative_survival:
        family, link = "relative_survival", None
    elif fam.theta_estimated:  # glm.nb's stage: Poisson (theta None), then theta
        family, link = NEGATIVE_BINOMIAL, _LINKS.get(type(fam.sm.link))
    else:
        family, link = _FAMILIES.get(type(fam.sm)), _LINKS.get(type(fam.sm.link))
        if family is not None and fam.quasi:
            family = fam.quasi
        if family is None or link is None:
            raise TypeError(f"the {fam.name} family with the {fam.link_name} link cannot be "
                            f"named to a site: use a family and a link given by name")
    guards = None if d.guards is None else {
        f.name: sorted(v) if isinstance(v, frozenset) else v
        for f in fields(Guards) if (v := getattr(d.guards, f.name)) is not None}
    return {"formula": d.formula, "family": family, "link": link, "weights": d.weights,
            "offset": d.offset, "exposure": d.exposure, "expected": d.expected,
            "levels": None if d.levels is None else {k: tuple(v) for k, v in d.levels.items()},
            "moments": None if d.moments is None else {k: tuple(v) for k, v in d.moments.items()},
            "guards": guards, "token": d.token, "groups": d.groups,
            **_row_params(d)}


def _row_params(d: Design) -> dict:
    """The fields of issue 13's models, sent only when used (so that every other model's
    description, and its session name, stays as it was): the missing-value rule, the
    frequency weights, glm.nb's current theta."""
    out: dict = {}
    if d.missing != "drop":
        out["missing"] = d.missing
    if d.freq_weights is not None:
        out["freq_weights"] = d.freq_weights
    if d.family.theta_estimated and d.family.theta is not None:
        out["theta"] = float(d.family.theta)
    return out


def design_from(p: dict) -> Design:
    """The `Design` described by ``p``; the formula passes the site's whitelist first."""
    d = Design.make(p["formula"], p["family"], p["link"], weights=p["weights"],
                    offset=p["offset"], exposure=p["exposure"], expected=p["expected"],
                    guards=p["guards"], missing=p.get("missing", "drop"),
                    freq_weights=p.get("freq_weights"))
    family = d.family
    if p.get("theta") is not None:
        if not family.theta_estimated:
            raise ValueError(f"theta: only for the {NEGATIVE_BINOMIAL} family, got "
                             f"{p['family']!r}")
        theta = float(p["theta"])
        if not (math.isfinite(theta) and theta > 0):
            raise ValueError(f"theta: expected a positive number, got {p['theta']!r}")
        family = family.with_theta(theta)
    levels = None if p["levels"] is None else {k: tuple(v) for k, v in p["levels"].items()}
    moments = None if p["moments"] is None else {k: tuple(v) for k, v in p["moments"].items()}
    return replace(d, family=family, levels=levels, moments=moments, token=str(p["token"]),
                   groups=p.get("groups"))


def with_token(d: Design) -> Design:
    """``d`` named by its content, so that a central started again describes it the same."""
    p = design_params(d)
    p.pop("token")
    text = json.dumps(p, sort_keys=True, default=repr)
    token = hashlib.sha256(text.encode()).hexdigest()[:32]
    return replace(d, token=token)


class SiteTasks(AbstractAlgorithm):
    """The passes of a fit besides its iterations, one query each: ``{"op": "describe"}``,
    ``{"op": "build"}``, ``{"op": "loglike", "beta": ..., "scale": ...}``,
    ``{"op": "theta_sums", "beta": ..., "theta": ...}`` (glm.nb's theta; `Site.theta_sums`
    answers only at coefficients whose Fisher scoring round the site has answered). A
    site's refusal comes back as data, so the central can name the site and the guard."""

    def __init__(self, design: Design):
        self.design = design

    def answer(self, q: dict, site: Site) -> dict:
        op = q.get("op") if isinstance(q, dict) else None
        try:
            if op == "describe":
                return {"ok": site.describe(self.design)}
            if op == "build":
                return {"ok": site.build(self.design, q.get("saturated", True) is not False)}
            if op == "loglike":
                return {"ok": site.loglike(self.design, np.asarray(q["beta"], dtype=float),
                                           float(q["scale"]))}
            if op == "theta_sums":
                return {"ok": _theta_sums(site, self.design, q)}
            if op == "meat":
                return {"ok": _meat(site, self.design, q)}
        except PrivacyError as exc:
            return {"error": {"type": "PrivacyError", "guard": exc.guard,
                              "threshold": exc.threshold, "detail": exc.detail}}
        except (FormulaError, SiteError, OSError) as exc:
            return {"error": {"type": type(exc).__name__, "message": str(exc)}}
        raise ValueError(f"unknown operation {op!r}")


def _theta_sums(site: Site, design: Design, q: dict) -> dict:
    """`Site.theta_sums` for a folder query (theta None: the sums at the Poisson fit)."""
    theta = q.get("theta")
    return site.theta_sums(design, np.asarray(q["beta"], dtype=float),
                           None if theta is None else float(theta))


#: The clusters of `Site.meat`: rows (HC0, HC1), the site, the groups column.
_MEAT_CLUSTERS = ("rows", "site", "groups")


def _meat(site: Site, design: Design, q: dict) -> dict:
    """`Site.meat` for a folder query: the site's p x p share of a robust covariance."""
    clusters = q.get("clusters")
    if clusters not in _MEAT_CLUSTERS:
        raise ValueError(f"clusters: expected one of {_MEAT_CLUSTERS}, got {clusters!r}")
    version = q.get("version")
    return site.meat(design, np.asarray(q["beta"], dtype=float), clusters, str(q["salt"]),
                     None if version is None else int(version))


def load_site(path: Optional[str], name: str, audit_log: Optional[str] = None) -> Site:
    """A site's problem: its own table (CSV or Parquet), read where it lives, with its audit
    log (`algorithms.glm.audit`)."""
    if path is None:
        raise ValueError(f"site {name} was started without --data")
    if not Path(path).is_file():
        raise FileNotFoundError(f"site {name}: no data file {path}")
    return Site(path, name, audit_log=audit_log)


def site_files(args) -> dict:
    """Check ``aia-glm site``'s files before it starts: the data file exists, and neither
    it nor the audit log (default: beside the data file) lies inside the shared folder,
    which others read. Returns the loader's options."""
    if not args.data:
        raise SystemExit("aia-glm site: --data is required (the site's own CSV or Parquet)")
    data = Path(args.data).expanduser()
    if not data.is_file():
        raise SystemExit(f"aia-glm site: no data file {data}")
    audit = Path(args.audit_log).expanduser() if args.audit_log else \
        data.with_name(data.name + ".audit.jsonl")
    folder = Path(args.folder).expanduser().resolve()
    for what, path in (("--data", data), ("--audit-log", audit)):
        if path.resolve().is_relative_to(folder):
            raise SystemExit(f"aia-glm site: {what} {path} is inside the shared folder "
                             f"{folder}: everyone with the folder would read it")
    return {"audit_log": str(audit)}


def _params(alg: FisherScoring) -> dict:
    return {"design": design_params(alg.design), "null_model": alg.null_model,
            "n_sites": alg.n_sites, "start": alg.start}


def _builder(cls: type):
    def build(p: dict) -> FisherScoring:
        start = None if p.get("start") is None else np.asarray(p["start"], dtype=float)
        return cls(design_from(p["design"]), null_model=bool(p["null_model"]),
                   n_sites=p.get("n_sites"), start=start)

    return build


for _name, _cls in (("glm.Query", Query), ("glm.Contribution", Contribution),
                    ("glm.GradientQuery", GradientQuery), ("glm.Score", Score)):
    register_message(_name, _cls)
def refused(answer: Any) -> bool:
    """Whether a `SiteTasks` answer is a site's refusal or error (a central that starts
    again asks the site again instead of replaying it)."""
    return isinstance(answer, dict) and "error" in answer


register("glm.site", SiteTasks, params=lambda a: {"design": design_params(a.design)},
         build=lambda p: SiteTasks(design_from(p["design"])), problem=load_site,
         failed=refused)
register("glm.fisher", FisherScoring, params=_params, build=_builder(FisherScoring),
         problem=load_site)
register("glm.gradient", GradientDescent, params=_params, build=_builder(GradientDescent),
         problem=load_site)


def _secure_params(alg: secure_sums.SecureAggregation) -> dict:
    inner = alg.inner
    if isinstance(inner, secure_sums.SiteSum):
        if inner.method not in ("loglike", "theta_sums", "meat"):
            raise TypeError(f"a secure sum of {inner.method!r} cannot be named to a site")
        theta = inner.args[1]  # loglike's scale, glm.nb's theta (None: theta.ml's start)
        out = {"inner": f"glm.{inner.method}", "design": design_params(inner.design),
               "beta": np.asarray(inner.args[0], dtype=float), "keys": list(inner.keys)}
        if inner.method == "meat":  # clusters, salt, the coefficients' version
            clusters, salt, version = inner.args[1:]
            return {**out, "clusters": str(clusters), "salt": str(salt),
                    "version": None if version is None else int(version),
                    "p": int(inner.shapes["meat"][0])}
        return {**out, "scale": None if theta is None else float(theta)}
    name = {FisherScoring: "glm.fisher", GradientDescent: "glm.gradient"}[type(inner)]
    return {"inner": name, "params": _params(inner)}


def _secure_build(p: dict) -> secure_sums.SecureAggregation:
    """A site's copy of a secure run: only the GLM's own algorithms inside."""
    if p.get("inner") == "glm.meat":
        inner = secure_sums.SiteSum("meat", design_from(p["design"]),
                                    np.asarray(p["beta"], dtype=float), p["clusters"],
                                    p["salt"], p["version"], keys=tuple(p["keys"]),
                                    shapes={"meat": (int(p["p"]),) * 2})
    elif p.get("inner") in ("glm.loglike", "glm.theta_sums"):
        scale = None if p["scale"] is None else float(p["scale"])
        inner = secure_sums.SiteSum(p["inner"][4:], design_from(p["design"]),
                                    np.asarray(p["beta"], dtype=float), scale,
                                    keys=tuple(p.get("keys") or ()))
    else:
        cls = {"glm.fisher": FisherScoring, "glm.gradient": GradientDescent}[p.get("inner")]
        inner = _builder(cls)(p["params"])
    return secure_sums.SecureAggregation(inner)


for _name, _cls in (("glm.SecureQuery", secure_sums.SecureQuery),
                    ("glm.KeyAnswer", secure_sums.KeyAnswer),
                    ("glm.MaskedAnswer", secure_sums.MaskedAnswer),
                    ("glm.Unmask", secure_sums.Unmask), ("glm.SumQuery", secure_sums.SumQuery),
                    ("glm.Total", secure_sums.Total), ("glm.Totals", secure_sums.Totals)):
    register_message(_name, _cls)
register("glm.secure", secure_sums.SecureAggregation, params=_secure_params,
         build=_secure_build, problem=load_site)
#: What ``aia-glm site`` runs.
SITE_ALGORITHMS = ["glm.fisher", "glm.gradient", "glm.glmnet", "glm.site", "glm.secure"]
#: The algorithm of each method (glmnet: `glmnet_folder`, `glm.glmnet`).
METHODS = {"fisher": FisherScoring, "gradient": GradientDescent, "glmnet": GlmnetRun}


# -- the central over a folder -----------------------------------------------------------------
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
               groups: Optional[str] = None, secure: bool = False) -> GLMResults:
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
    ``secure`` too (`algorithms.glm.secure`: the answer files hold only masked sums).
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
    options = check_options(scale=scale, cov_type=cov_type, groups=groups)
    if secure:
        secure_sums.check_secure(len(sites), True, None, 0, options["cov_type"])
    design = with_token(Design.make(formula, family, link, weights=weights, offset=offset,
                                    exposure=exposure, expected=expected, guards=guards,
                                    missing=missing, freq_weights=freq_weights,
                                    groups=groups))
    _fisher_only(design, method)
    if session is None:  # a robust covariance or a fixed scale is another model's result
        extra = {} if options == check_options() else {"options": options}
        session = session_name(design=design.token, sites=sites, method=method, tol=tol,
                               max_iter=max_iter, **extra,
                               **({"secure": True} if secure else {}))
    cluster = FolderCluster(folder, sites, session=session, poll=poll, timeout=timeout, key=key,
                            watch=watch)
    secured = {"secure": True, "resilience": 0} if secure else {}
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
    """The sites of a synced folder, as `algorithms.glm.fit.fit_steps` reaches them."""

    def __init__(self, cluster: FolderCluster):
        self.cluster = cluster

    def call(self, method: str, design: Design, *args) -> list:
        query = {"op": method}
        if method == "loglike":
            query.update(beta=args[0], scale=args[1])
        elif method == "theta_sums":
            query.update(beta=args[0], theta=args[1])
        elif method == "meat":
            query.update(beta=args[0], clusters=args[1], salt=args[2], version=args[3])
        elif method == "build":
            if args:
                query.update(saturated=bool(args[0]))
        elif method != "describe":
            raise TypeError(f"{method}: not among a folder site's operations")
        return _ask(self.cluster, design, query)

    @staticmethod
    def prepare(design: Design) -> Design:
        return with_token(design)  # named by content: a central started again resumes

    def run(self, algorithm, stopat: dict, synchronous: bool, verbose: int) -> None:
        aia.start(algorithm, _no_problem, stopat, cluster=self.cluster, synchronous=True,
                  verbose=verbose)


class _SiteFailed(RuntimeError):
    """A site raised while answering one of the passes."""


def _ask(cluster: FolderCluster, design: Design, query: dict) -> list:
    """One query to every site, through one run; the answers in site order."""
    pids = cluster.pids
    run, _ = cluster.open_run(b"", None, pids, None, algorithm_object=SiteTasks(design))
    got: dict = {}
    try:
        run.broadcast(pids, query)
        while len(got) < len(pids):
            for event in run.wait(None):
                if isinstance(event, Failed):
                    raise _SiteFailed(event.cause) from event.remote_error()
                got[event.worker] = event.value
    finally:
        run.close()
    out = []
    for pid in pids:
        value, site = got[pid], cluster.site_of(pid)
        error = value.get("error") if isinstance(value, dict) else None
        if error is not None:
            if error.get("type") == "PrivacyError":
                raise PrivacyError(error["guard"], error["threshold"], error["detail"], site=site)
            kind = {"FormulaError": FormulaError, "SiteError": SiteError}.get(error.get("type"),
                                                                              _SiteFailed)
            raise kind(f"site {site}: {error.get('message')}")
        out.append(value["ok"])
    return out


# -- glmnet over a folder ---------------------------------------------------------------------
# glm.glmnet's steps (`algorithms.glm.glmnet._run`) over the same `_FolderSites`: describe and
# build through `SiteTasks`, then the path as the algorithm "glm.glmnet", its queries and the
# sites' sums as registered messages.
for _name, _cls in (("glm.GlmnetQuery", GlmnetQuery), ("glm.GlmnetAnswer", GlmnetAnswer),
                    ("glm.Folds", Folds), ("glm.PathSpec", PathSpec), ("glm.Moments", Moments),
                    ("glm.Sums", Sums), ("glm.Heldout", Heldout), ("glm.Ask", Ask)):
    register_message(_name, _cls)


def _glmnet_params(run: GlmnetRun) -> dict:
    return {"design": design_params(run.design), "spec": run.spec, "n_sites": run.n_sites,
            "folds": run.folds, "start": run.start}


def _glmnet_build(p: dict) -> GlmnetRun:
    spec, folds = p["spec"], p.get("folds")
    if not isinstance(spec, PathSpec) or not (folds is None or isinstance(folds, Folds)):
        raise TypeError("glm.glmnet: malformed parameters")
    start = None if p.get("start") is None else np.asarray(p["start"], dtype=float)
    return GlmnetRun(design_from(p["design"]), spec, p.get("n_sites"), folds, start)


register("glm.glmnet", GlmnetRun, params=_glmnet_params, build=_glmnet_build,
         problem=load_site)


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


def path_dict(path: GlmnetPath, **extra) -> dict:
    """A glmnet path as JSON-able data."""
    return {"method": "glmnet", "family": path.family, "alpha": path.alpha,
            "lambdas": [_number(v) for v in path.lambdas],
            "df": [int(v) for v in path.df],
            "dev_ratio": [_number(v) for v in path.dev_ratio],
            "null_deviance": _number(path.null_deviance),
            "coefs": {str(c): [_number(v) for v in path.coefs[c]] for c in path.coefs.columns},
            "rounds": int(path.rounds), **extra}


def _print_path(path: GlmnetPath, csv: bool) -> None:
    table = path.coefs.copy()
    table.insert(0, "dev_ratio", path.dev_ratio)
    table.insert(0, "df", path.df)
    if csv:
        table.to_csv(sys.stdout)
    else:
        print(f"glmnet path: {path.family}, alpha {path.alpha:g}, {len(path.lambdas)} lambdas, "
              f"{path.rounds} rounds of the sites")
        print(table.to_string(float_format=lambda v: f"{v:.6g}"))


# -- the output --------------------------------------------------------------------------------
def _number(x: Any) -> Any:
    x = float(x)
    return x if math.isfinite(x) else None


def result_dict(res: GLMResults, **extra) -> dict:
    """The fit as JSON-able data (non-finite numbers as null)."""
    series = {name: {str(k): _number(v) for k, v in getattr(res, name).items()}
              for name in ("params", "bse", "tvalues", "pvalues")}
    ci = res.conf_int()
    return {
        "formula": res.formula, "family": res.family, "link": res.link, "sites": res.sites,
        **series,
        "conf_int": {str(k): [_number(ci.loc[k, 0]), _number(ci.loc[k, 1])] for k in ci.index},
        "cov_params": [[_number(v) for v in row] for row in res.cov_params().to_numpy()],
        "deviance": _number(res.deviance), "null_deviance": _number(res.null_deviance),
        "pearson_chi2": _number(res.pearson_chi2), "scale": _number(res.scale),
        "llf": _number(res.llf), "aic": _number(res.aic), "bic": _number(res.bic),
        "nobs": int(res.nobs), "df_resid": int(res.df_resid), "df_null": int(res.df_null),
        "df_model": int(res.df_model), "iterations": int(res.iterations),
        "converged": bool(res.converged), "method": getattr(res, "method", "fisher"),
        "notes": list(res.notes), **_model_extras(res), **extra,
    }


def _model_extras(res: GLMResults) -> dict:
    """What issue 13's models add to the JSON: the rows left out for a missing value, and
    glm.nb's theta and its standard error (only for family='negative_binomial')."""
    out = {"n_missing": int(getattr(res, "n_missing", 0) or 0),
           "cov_type": getattr(res, "cov_type", "nonrobust")}
    if getattr(res, "theta", None) is not None:
        out.update(theta=_number(res.theta), theta_se=_number(res.theta_se))
    return out


# -- the command line --------------------------------------------------------------------------
COMMANDS = ("site", "central", "fit")


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default="gaussian",
                   help="gaussian (default), binomial, poisson, gamma, inverse_gaussian, "
                        "quasipoisson, quasibinomial, relative_survival, "
                        "negative_binomial (theta estimated, as MASS::glm.nb)")
    p.add_argument("--link", default=None, help="default: the family's canonical link")
    p.add_argument("--method", default="fisher", choices=tuple(METHODS),
                   help="Fisher scoring (default), gradient descent, or glmnet's "
                        "elastic-net path")
    for column in ("weights", "offset", "exposure", "expected"):
        p.add_argument(f"--{column}", default=None, metavar="COLUMN")
    p.add_argument("--tol", type=float, default=None,
                   help="default 1e-8 (1e-7 for glmnet, its thresh)")
    p.add_argument("--max-iter", type=int, default=None,
                   help="default 25 (Fisher scoring), 1000 (gradient descent)")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--csv", action="store_true", help="print the coefficient table as CSV")
    _glmnet_arguments(p)


def _glmnet_arguments(p: argparse.ArgumentParser) -> None:
    """``--method glmnet``'s options (glm.glmnet's arguments)."""
    g = p.add_argument_group("glmnet (--method glmnet)")
    g.add_argument("--alpha", type=float, default=1.0,
                   help="elastic-net mixing in [0, 1]: 1 lasso (default), 0 ridge")
    g.add_argument("--nlambda", type=int, default=100)
    g.add_argument("--lambda-min-ratio", type=float, default=None)
    g.add_argument("--lambdas", default=None, metavar="L1,L2,...",
                   help="a user path, decreasing (default: glmnet's)")
    g.add_argument("--penalty-factor", default=None, metavar="TERM=F,...",
                   help="per-term penalty factors (0: unpenalised)")
    g.add_argument("--no-standardize", dest="standardize", action="store_false")


def glmnet_options(args) -> dict:
    """The keyword arguments of glm.glmnet from the command line (tol and max_iter keep
    glmnet's defaults unless given)."""
    def number(text: str, what: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise SystemExit(f"aia-glm: {what}: expected a number, got {text!r}") from None

    lambdas = None if args.lambdas is None else \
        [number(v, "--lambdas") for v in args.lambdas.split(",") if v.strip()]
    factors = None
    if args.penalty_factor is not None:
        factors = {}
        for item in (x for x in args.penalty_factor.split(",") if x.strip()):
            term, eq, value = item.rpartition("=")
            if not eq or not term.strip():
                raise SystemExit(f"aia-glm: --penalty-factor: expected TERM=FACTOR, got "
                                 f"{item!r}")
            factors[term.strip()] = number(value, f"--penalty-factor {term.strip()}")
    out = {"alpha": args.alpha, "nlambda": args.nlambda,
           "lambda_min_ratio": args.lambda_min_ratio, "lambdas": lambdas,
           "penalty_factor": factors, "standardize": args.standardize,
           "weights": args.weights, "offset": args.offset}
    for option in ("link", "exposure", "expected"):
        if getattr(args, option) is not None:
            raise SystemExit(f"aia-glm: --{option} is not an option of --method glmnet "
                             f"(canonical links; --offset for exposures)")
    if args.tol is not None:
        out["tol"] = args.tol
    if args.max_iter is not None:
        out["max_iter"] = args.max_iter
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aia-glm", description="Federated GLMs: over sites that share a synced folder "
        "(site, central), or over local worker processes (fit).")
    sub = p.add_subparsers(dest="command", required=True)
    site = sub.add_parser("site", help="serve as a site of a synced folder")
    add_site_arguments(site, min_sites=3)
    site.add_argument("--audit-log", default=None, metavar="FILE",
                      help="append every model answered to this file (default: beside the "
                           "data file, DATA.audit.jsonl; never inside the shared folder)")
    central = sub.add_parser("central", help="fit a model over sites of a synced folder")
    central.add_argument("--folder", required=True, help="the synced folder")
    central.add_argument("--sites", required=True, help="the sites' names, comma-separated")
    central.add_argument("--formula", help="e.g. 'y ~ x1 + C(group)'")
    _model_arguments(central)
    central.add_argument("--min-sites", type=int, default=3)
    central.add_argument("--timeout", type=float, default=None,
                         help="seconds after which the fit fails, naming the sites that owe "
                              "an answer")
    central.add_argument("--poll", type=float, default=0.5,
                         help="seconds between looks at the folder besides file events "
                              "(default 0.5; the fallback for folders that send no events)")
    central.add_argument("--no-watch", dest="watch", action="store_false",
                         help="do not wait on file events: look every --poll seconds only")
    central.add_argument("--session", "--model", dest="session", default=None,
                         help="the model's name in the folder (default: derived from the "
                              "model, so the same command resumes)")
    central.add_argument("--key-file", default=None,
                         help="a file holding a secret shared with the sites (optional)")
    central.add_argument("--output", default=None, help="write the result here as JSON")
    central.add_argument("--secure", action="store_true",
                         help="secure aggregation: the central learns only the pooled sums "
                              "(at least 3 sites)")
    central.add_argument("--cancel", action="store_true",
                         help="cancel the model (its sites exit) instead of fitting it")
    _row_arguments(central)
    local = sub.add_parser("fit", help="fit over sites on local worker processes")
    local.add_argument("formula", help="e.g. 'y ~ x1 + C(group)'")
    local.add_argument("sites", nargs="+", help="one CSV or Parquet file per site")
    _model_arguments(local)
    local.add_argument("--min-sites", type=int, default=1)
    local.add_argument("--asynchronous", action="store_true")
    _row_arguments(local)
    local.add_argument("--secure", action="store_true",
                       help="secure aggregation: the central learns only the pooled sums")
    return p


def _result_options(args) -> dict:
    return {"scale": args.scale, "cov_type": args.cov_type, "groups": args.groups}


def _check_row_options(args) -> None:
    """``--freq-weights`` and ``--missing raise`` are options of the GLM's fits, not of
    glmnet's path: refused rather than ignored."""
    if getattr(args, "method", None) == "glmnet" and (
            args.freq_weights is not None or args.missing != "drop"
            or args.scale is not None or args.cov_type != "nonrobust" or args.groups):
        raise SystemExit("aia-glm: --freq-weights, --missing raise, --scale, --cov-type and "
                         "--groups are not options of --method glmnet (fisher or gradient)")


def _row_arguments(p: argparse.ArgumentParser) -> None:
    """Issue 13's row and covariance options, for ``fit`` and ``central`` alike."""
    p.add_argument("--scale", type=float, default=None,
                   help="a fixed dispersion (R's summary(dispersion=)); default: estimated")
    p.add_argument("--cov-type", default="nonrobust", choices=("nonrobust", "HC0", "HC1",
                                                               "cluster"),
                   help="the covariance: R's (default), or sandwich's HC0, HC1, cluster")
    p.add_argument("--groups", default=None, metavar="COLUMN",
                   help="with --cov-type cluster: the cluster ids (default: each site)")
    p.add_argument("--freq-weights", default=None, metavar="COLUMN",
                   help="frequency weights: a row counts as that many rows")
    p.add_argument("--missing", default="drop", choices=("drop", "raise"),
                   help="rows with a missing value in a used column: left out and "
                        "counted (drop, R's na.omit; default) or an error (raise)")


def _print(result: GLMResults, csv: bool) -> None:
    if csv:
        result.summary_frame().to_csv(sys.stdout)
    else:
        print(result.summary())


def _central(args) -> int:
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    key = read_key(args.key_file)
    if args.cancel:
        if args.session is None:
            raise SystemExit("aia-glm central --cancel: give the model's --session")
        FolderCluster(args.folder, sites, session=args.session, key=key).cancel(
            "cancelled from the command line")
        return 0
    if not args.formula:
        raise SystemExit("aia-glm central: --formula is required")
    if args.method == "glmnet":
        path = glmnet_folder(args.formula, args.folder, sites, args.family,
                             min_sites=args.min_sites, timeout=args.timeout, poll=args.poll,
                             session=args.session, key=key, verbose=args.verbose,
                             watch=args.watch, **glmnet_options(args))
        _print_path(path, args.csv)
        _write_output(args, path_dict(path))
        return 0
    result = fit_folder(args.formula, args.folder, sites, args.family, args.link,
                        weights=args.weights, offset=args.offset, exposure=args.exposure,
                        expected=args.expected, method=args.method, tol=_tol(args),
                        max_iter=args.max_iter, min_sites=args.min_sites, timeout=args.timeout,
                        poll=args.poll, session=args.session, key=key, verbose=args.verbose,
                        watch=args.watch, missing=args.missing,
                        freq_weights=args.freq_weights, secure=args.secure,
                        **_result_options(args))
    _print(result, args.csv)
    _write_output(args, result_dict(result))
    return 0


def _tol(args) -> float:
    return 1e-8 if args.tol is None else args.tol


def _write_output(args, data: dict) -> None:
    if args.output:
        out = Path(args.output).expanduser()
        out.write_text(json.dumps(data, indent=2) + "\n")
        log.info("wrote %s", out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "fit")  # the original form: aia-glm FORMULA SITE...
    args = parser().parse_args(argv)
    if args.command == "site":
        return run_site(args, allow=SITE_ALGORITHMS, loader_options=site_files(args))
    _check_row_options(args)
    if args.command == "fit" and args.method == "glmnet":
        from .glmnet import glmnet  # noqa: PLC0415

        _print_path(glmnet(args.formula, args.sites, family=args.family,
                           min_sites=args.min_sites, synchronous=not args.asynchronous,
                           verbose=args.verbose, **glmnet_options(args)), args.csv)
        return 0
    if args.command == "fit":
        result = fit(args.formula, args.sites, family=args.family, link=args.link,
                     weights=args.weights, offset=args.offset, exposure=args.exposure,
                     expected=args.expected, method=args.method, tol=_tol(args),
                     max_iter=args.max_iter,
                     min_sites=args.min_sites, synchronous=not args.asynchronous,
                     verbose=args.verbose, freq_weights=args.freq_weights,
                     missing=args.missing, secure=args.secure, **_result_options(args))
        _print(result, args.csv)
        return 0
    setup_logging(1 if args.verbose else 0)
    try:
        return _central(args)
    except (SitesTimeoutError, PrivacyError, FormulaError, SiteError, DesignMismatchError,
            _SiteFailed, WorkerFailedError, ValueError, RuntimeError, OSError) as exc:
        cause = exc.__cause__
        detail = f"\n{cause.message}" if isinstance(cause, RemoteError) and \
            cause.message not in str(exc) else ""
        print(f"aia-glm central: error: {exc}{detail}", file=sys.stderr)
        session = getattr(exc, "folder_session", None)
        if session is not None:
            print(f"aia-glm central: the model (session {session}) stays open: fix the site "
                  f"and run the same command again to resume, or end it with --cancel "
                  f"--session {session}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aia-glm central: interrupted; run the same command again to resume, or with "
              "--cancel to end the model", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
