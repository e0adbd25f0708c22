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

(``fit`` may be left out.) The folder transport is `aia.FolderCluster`; this module also
registers the GLM's algorithms and messages under the names ``glm.*`` for it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from dataclasses import fields
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
from .families import LINKS
from .base import DesignMismatchError
from .fisher import FisherScoring
from .fit import fit, fit_steps
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
    else:
        family, link = _FAMILIES.get(type(fam.sm)), _LINKS.get(type(fam.sm.link))
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
            "guards": guards, "token": d.token, "groups": d.groups}


def design_from(p: dict) -> Design:
    """The `Design` described by ``p``; the formula passes the site's whitelist first."""
    d = Design.make(p["formula"], p["family"], p["link"], weights=p["weights"],
                    offset=p["offset"], exposure=p["exposure"], expected=p["expected"],
                    guards=p["guards"])
    levels = None if p["levels"] is None else {k: tuple(v) for k, v in p["levels"].items()}
    moments = None if p["moments"] is None else {k: tuple(v) for k, v in p["moments"].items()}
    return Design(d.formula, d.family, d.weights, d.offset, d.exposure, d.expected, levels,
                  moments, d.guards, str(p["token"]), p.get("groups"))


def with_token(d: Design) -> Design:
    """``d`` named by its content, so that a central started again describes it the same."""
    p = design_params(d)
    p.pop("token")
    text = json.dumps(p, sort_keys=True, default=repr)
    token = hashlib.sha256(text.encode()).hexdigest()[:32]
    return Design(d.formula, d.family, d.weights, d.offset, d.exposure, d.expected, d.levels,
                  d.moments, d.guards, token, d.groups)


class SiteTasks(AbstractAlgorithm):
    """The passes of a fit besides its iterations, one query each: ``{"op": "describe"}``,
    ``{"op": "build"}``, ``{"op": "loglike", "beta": ..., "scale": ...}``. A site's refusal
    comes back as data, so the central can name the site and the guard."""

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
        except PrivacyError as exc:
            return {"error": {"type": "PrivacyError", "guard": exc.guard,
                              "threshold": exc.threshold, "detail": exc.detail}}
        except (FormulaError, SiteError, OSError) as exc:
            return {"error": {"type": type(exc).__name__, "message": str(exc)}}
        raise ValueError(f"unknown operation {op!r}")


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
register("glm.site", SiteTasks, params=lambda a: {"design": design_params(a.design)},
         build=lambda p: SiteTasks(design_from(p["design"])), problem=load_site)
register("glm.fisher", FisherScoring, params=_params, build=_builder(FisherScoring),
         problem=load_site)
register("glm.gradient", GradientDescent, params=_params, build=_builder(GradientDescent),
         problem=load_site)


def _secure_params(alg: secure_sums.SecureAggregation) -> dict:
    inner = alg.inner
    if isinstance(inner, secure_sums.SiteSum):
        if inner.method != "loglike":
            raise TypeError(f"a secure sum of {inner.method!r} cannot be named to a site")
        return {"inner": "glm.loglike", "design": design_params(inner.design),
                "beta": np.asarray(inner.args[0], dtype=float), "scale": float(inner.args[1])}
    name = {FisherScoring: "glm.fisher", GradientDescent: "glm.gradient"}[type(inner)]
    return {"inner": name, "params": _params(inner)}


def _secure_build(p: dict) -> secure_sums.SecureAggregation:
    """A site's copy of a secure run: only the GLM's own algorithms inside."""
    if p.get("inner") == "glm.loglike":
        inner = secure_sums.SiteSum("loglike", design_from(p["design"]),
                                    np.asarray(p["beta"], dtype=float), float(p["scale"]))
    else:
        cls = {"glm.fisher": FisherScoring, "glm.gradient": GradientDescent}[p.get("inner")]
        inner = _builder(cls)(p["params"])
    return secure_sums.SecureAggregation(inner)


for _name, _cls in (("glm.SecureQuery", secure_sums.SecureQuery),
                    ("glm.KeyAnswer", secure_sums.KeyAnswer),
                    ("glm.MaskedAnswer", secure_sums.MaskedAnswer),
                    ("glm.Unmask", secure_sums.Unmask), ("glm.SumQuery", secure_sums.SumQuery),
                    ("glm.Total", secure_sums.Total)):
    register_message(_name, _cls)
register("glm.secure", secure_sums.SecureAggregation, params=_secure_params,
         build=_secure_build, problem=load_site)
#: What ``aia-glm site`` runs.
SITE_ALGORITHMS = ["glm.fisher", "glm.gradient", "glm.site", "glm.secure"]
#: The algorithm of each method.
METHODS = {"fisher": FisherScoring, "gradient": GradientDescent}


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
               guards: Any = None, verbose: int = 0, secure: bool = False) -> GLMResults:
    """`glm.fit` over sites that share only ``folder``: the same steps and the same result.

    ``sites`` are the sites' names (each runs ``aia-glm site``). ``timeout``: seconds after
    which the fit fails with `aia.folder.SitesTimeoutError` naming the sites that owe an
    answer. ``session`` defaults to a name derived from the model, so a central started again
    resumes. The session is marked finished on success and cancelled when a site refuses
    (the sites exit); after a timeout or an interruption it stays open for a new central.
    ``method``, ``tol`` and ``max_iter`` are as in `glm.fit` (synchronous); ``secure``
    too (`algorithms.glm.secure`: the answer files hold only masked sums).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected 'fisher' or 'gradient', got {method!r}")
    if max_iter is None:
        max_iter = 25 if method == "fisher" else GRADIENT_MAX_ITER
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    sites = list(sites)
    check_min_sites(len(sites), min_sites)
    if secure:
        secure_sums.check_secure(len(sites), True, None, 0)
    design = with_token(Design.make(formula, family, link, weights=weights, offset=offset,
                                    exposure=exposure, expected=expected, guards=guards))
    if session is None:
        session = session_name(design=design.token, sites=sites, method=method, tol=tol,
                               max_iter=max_iter, **({"secure": True} if secure else {}))
    cluster = FolderCluster(folder, sites, session=session, poll=poll, timeout=timeout, key=key)
    try:
        result = fit_steps(_FolderSites(cluster), design, cluster.sites, method, tol,
                           max_iter, True, verbose, secure=secure, resilience=0)
    except (PrivacyError, FormulaError, SiteError, DesignMismatchError, WorkerFailedError,
            _SiteFailed) as exc:  # the same again would fail the same way
        cluster.cancel(f"{type(exc).__name__}: {exc}")
        raise
    else:
        cluster.finish()
    finally:
        cluster.close()
    return result


class _FolderSites:
    """The sites of a synced folder, as `algorithms.glm.fit.fit_steps` reaches them."""

    def __init__(self, cluster: FolderCluster):
        self.cluster = cluster

    def call(self, method: str, design: Design, *args) -> list:
        query = {"op": method}
        if method == "loglike":
            query.update(beta=args[0], scale=args[1])
        if method == "build" and args:
            query.update(saturated=bool(args[0]))
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
                got[event.pid] = event.value
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
        "notes": list(res.notes), **extra,
    }


# -- the command line --------------------------------------------------------------------------
COMMANDS = ("site", "central", "fit")


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default="gaussian",
                   help="gaussian (default), binomial, poisson, gamma, inverse_gaussian, "
                        "relative_survival")
    p.add_argument("--link", default=None, help="default: the family's canonical link")
    p.add_argument("--method", default="fisher", choices=tuple(METHODS),
                   help="Fisher scoring (default) or gradient descent")
    for column in ("weights", "offset", "exposure", "expected"):
        p.add_argument(f"--{column}", default=None, metavar="COLUMN")
    p.add_argument("--tol", type=float, default=1e-8)
    p.add_argument("--max-iter", type=int, default=None,
                   help="default 25 (Fisher scoring), 1000 (gradient descent)")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--csv", action="store_true", help="print the coefficient table as CSV")


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
                         help="seconds between looks at the folder")
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
    local = sub.add_parser("fit", help="fit over sites on local worker processes")
    local.add_argument("formula", help="e.g. 'y ~ x1 + C(group)'")
    local.add_argument("sites", nargs="+", help="one CSV or Parquet file per site")
    _model_arguments(local)
    local.add_argument("--min-sites", type=int, default=1)
    local.add_argument("--asynchronous", action="store_true")
    local.add_argument("--secure", action="store_true",
                       help="secure aggregation: the central learns only the pooled sums")
    return p


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
    result = fit_folder(args.formula, args.folder, sites, args.family, args.link,
                        weights=args.weights, offset=args.offset, exposure=args.exposure,
                        expected=args.expected, method=args.method, tol=args.tol,
                        max_iter=args.max_iter, min_sites=args.min_sites, timeout=args.timeout,
                        poll=args.poll, session=args.session, key=key, verbose=args.verbose,
                        secure=args.secure)
    _print(result, args.csv)
    if args.output:
        out = Path(args.output).expanduser()
        out.write_text(json.dumps(result_dict(result), indent=2) + "\n")
        log.info("wrote %s", out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "fit")  # the original form: aia-glm FORMULA SITE...
    args = parser().parse_args(argv)
    if args.command == "site":
        return run_site(args, allow=SITE_ALGORITHMS, loader_options=site_files(args))
    if args.command == "fit":
        result = fit(args.formula, args.sites, family=args.family, link=args.link,
                     weights=args.weights, offset=args.offset, exposure=args.exposure,
                     expected=args.expected, method=args.method, tol=args.tol,
                     max_iter=args.max_iter,
                     min_sites=args.min_sites, synchronous=not args.asynchronous,
                     verbose=args.verbose, secure=args.secure)
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
        return 1
    except KeyboardInterrupt:
        print("aia-glm central: interrupted; run the same command again to resume, or with "
              "--cancel to end the model", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
