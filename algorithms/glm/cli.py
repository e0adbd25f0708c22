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
workers (`algorithms.glm.glmnet`). This module parses the command line and prints: the fits
over a folder are `algorithms.glm.folder`'s (`fit_folder`, `glmnet_folder`), the names a
folder site knows are `algorithms.glm.folder_protocol`'s, the transport `aia.FolderCluster`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from aia.errors import RemoteError, WorkerFailedError
from aia.folder import FolderCluster, SitesTimeoutError
from aia.folder.__main__ import add_site_arguments, read_key, run_site, setup_logging

from .base import DesignMismatchError
from .design import FormulaError, SiteError
from .fit import fit
from .folder import SiteFailedError, fit_folder, glmnet_folder, session_name  # noqa: F401
from .folder_protocol import (METHODS, SITE_ALGORITHMS, design_from,  # noqa: F401
                              design_params, load_site, with_token)
from .glmnet import GlmnetPath
from .guards import PrivacyError
from .results import GLMResults

log = logging.getLogger("aia.folder")

# -- a site's files -----------------------------------------------------------------------------
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
    central.add_argument("--resilience", type=int, default=0, metavar="N",
                         help="with --secure: up to N sites may fail (answer with an error) "
                              "and the fit goes on among the others (default 0)")
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
    local.add_argument("--resilience", type=int, default=0, metavar="N",
                       help="with --secure: up to N sites may fail and the fit goes on among "
                            "the others (default 0)")
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
    p.add_argument("--cov-type", default="nonrobust",
                   choices=("nonrobust", "HC0", "HC1", "HC2", "HC3", "cluster"),
                   help="the covariance: R's (default), or sandwich's HC0-HC3, cluster")
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
                        resilience=args.resilience,
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
                     missing=args.missing, secure=args.secure,
                     resilience=args.resilience, **_result_options(args))
        _print(result, args.csv)
        return 0
    setup_logging(1 if args.verbose else 0)
    try:
        return _central(args)
    except (SitesTimeoutError, PrivacyError, FormulaError, SiteError, DesignMismatchError,
            SiteFailedError, WorkerFailedError, ValueError, RuntimeError, OSError) as exc:
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