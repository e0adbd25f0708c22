"""The GLM on the folder transport: the names a folder site knows, and how each is described.

A site of a synced folder (``aia-glm site``) runs only algorithms registered by name
(`aia.folder.register`) and reads only registered messages. This module registers the GLM's:
``glm.fisher``, ``glm.gradient``, ``glm.glmnet``, ``glm.secure`` (each an algorithm described
by plain parameters, its `Design` by `design_params`), ``glm.site`` (`SiteTasks`: the passes
of a fit besides its iterations) and their messages (``glm.Query``, ``glm.Contribution``...).
`aia.folder` finds it through the entry point ``glm`` of the group ``aia.folder``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
from statsmodels.genmod import families as smf

from aia.algorithm import AbstractAlgorithm
from aia.folder import register, register_message

from . import secure as secure_sums
from .design import Design
from .families import LINKS, NEGATIVE_BINOMIAL
from .fisher import FisherScoring
from .glmnet import GlmnetRun
from .glmnet_messages import Ask, Moments, PathSpec, Sums
from .glmnet_site import Folds, GlmnetAnswer, GlmnetQuery, Heldout
from .gradient import GradientDescent, GradientQuery, Score
from .guards import Guards
from .messages import Contribution, Query
from .site import Site
from .site_errors import SITE_ERRORS, error_data

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
        except SITE_ERRORS as exc:
            return {"error": error_data(exc)}
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
    bread = q.get("bread")
    return site.meat(design, np.asarray(q["beta"], dtype=float), clusters, str(q["salt"]),
                     None if version is None else int(version),
                     None if bread is None else np.asarray(bread, dtype=float),
                     int(q.get("hat_power", 0)))


def load_site(path: Optional[str], name: str, audit_log: Optional[str] = None) -> Site:
    """A site's problem: its own table (CSV or Parquet), read where it lives, with its audit
    log (`algorithms.glm.audit`)."""
    if path is None:
        raise ValueError(f"site {name} was started without --data")
    if not Path(path).is_file():
        raise FileNotFoundError(f"site {name}: no data file {path}")
    return Site(path, name, audit_log=audit_log)


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

# glmnet's path (`algorithms.glm.glmnet._run` over a folder): describe and build through
# `SiteTasks`, then the path as the algorithm "glm.glmnet", its queries and the sites' sums as
# registered messages.
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
