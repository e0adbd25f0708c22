"""Every family and the main links against statsmodels on the pooled rows (in process),
and the log-likelihood, AIC and BIC of the families with a dispersion against R (whose
dispersion in the likelihood and count of parameters statsmodels does not follow).

statsmodels is run to full precision; these fits use ``tol=1e-10`` so that R's rule stops
as close to the optimum (the standard errors use X'WX of the previous iteration, as in R
and statsmodels). `test_r_glm_fit.py` checks the default ``tol=1e-8`` against R's algorithm.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from algorithms import glm

from tests.r_reference import r_values

from .conftest import close, distribglm_sites, read, reference, v6_sites

F, L = sm.families, sm.families.links

ADMIT = "admit ~ gre + gpa + C(rank)"
AWARDS = "num_awards ~ C(prog) + math"
TREES = "Volume ~ Girth + Height"
TOL = 1e-13


@pytest.fixture(autouse=True)
def trees_sites_allow_three_parameters(monkeypatch):
    """The trees sites have 20 rows: their administrators allow 15% parameters per row."""
    monkeypatch.setenv("GLM_MAX_PCT_VARS_VS_OBS", "15")

CASES = [
    # (data, formula, family name, link name, statsmodels family)
    ("binomial", ADMIT, "binomial", None, F.Binomial()),
    ("binomial", ADMIT, "binomial", "probit", F.Binomial(L.Probit())),
    ("binomial", ADMIT, "binomial", "cloglog", F.Binomial(L.CLogLog())),
    ("binomial", ADMIT, "binomial", "cauchit", F.Binomial(L.Cauchy())),
    ("poisson", AWARDS, "poisson", None, F.Poisson()),
    ("poisson", "num_awards ~ C(prog)", "poisson", "sqrt", F.Poisson(L.Sqrt())),
    ("gaussian", TREES, "gaussian", None, F.Gaussian()),
    ("gaussian", TREES, "gaussian", "log", F.Gaussian(L.Log())),
    ("gaussian", TREES, "gaussian", "inverse", F.Gaussian(L.InversePower())),
    ("gaussian", TREES, "gamma", None, F.Gamma()),
    ("gaussian", TREES, "gamma", "log", F.Gamma(L.Log())),
    ("gaussian", TREES, "gamma", "identity", F.Gamma(L.Identity())),
    ("gaussian", "Volume ~ Height", "inverse_gaussian", None, F.InverseGaussian()),
    ("gaussian", "Volume ~ I(Girth ** -2)", "inverse_gaussian", None, F.InverseGaussian()),
    ("gaussian", TREES, "inverse_gaussian", "log", F.InverseGaussian(L.Log())),
    ("gaussian", TREES, "inverse_gaussian", "inverse", F.InverseGaussian(L.InversePower())),
]


def check_against(res, ref, scale_estimated, likelihood=True):
    close(res.params.to_numpy(), ref.params)
    close(res.bse.to_numpy(), ref.bse)
    close(res.deviance, ref.deviance)
    close(res.null_deviance, ref.null_deviance)
    close(res.scale, ref.scale)
    if likelihood:
        close(res.llf, ref.llf)
        close(res.aic, ref.aic)
    close(res.pvalues.to_numpy(), ref.pvalues, rtol=1e-5, atol=1e-14)
    ci = np.asarray(ref.conf_int())
    close(res.conf_int().to_numpy(), ci, rtol=1e-6, atol=1e-6 * np.abs(ci).max())
    assert res.nobs == ref.nobs
    assert res.df_resid == ref.df_resid
    assert res.df_model == ref.df_model
    assert res.use_t == scale_estimated
    assert list(res.params.index) == list(ref.model.exog_names)


R_FAMILIES = {"gaussian": ("gaussian", "identity"), "gamma": ("Gamma", "inverse"),
              "inverse_gaussian": ("inverse.gaussian", "1/mu^2")}


def check_likelihood_against_r(res, formula, frames, family, link, weights=None,
                               keys=("llf", "aic", "bic")):
    """R's logLik, AIC and BIC of the same model on the pooled rows (started at the fit's
    estimate, so that R stops at the same optimum)."""
    name, canonical = R_FAMILIES[family]
    r_link = {None: canonical, "inverse": "inverse"}.get(link, link)
    frames = {f"s{i}": f for i, f in enumerate(read(frames))}
    start = ", ".join(repr(float(v)) for v in res.params)
    extra = f", weights = {weights}" if weights else ""
    R = r_values(f"d <- rbind({', '.join(frames)}); f <- glm({formula.replace('**', '^')}, "
                 f"{name}(link = '{r_link}'), d{extra}, start = c({start}), "
                 "control = glm.control(1e-12, 100)); out('llf', logLik(f)); "
                 "out('aic', AIC(f)); out('bic', BIC(f))", frames=frames)
    for key in keys:
        close(getattr(res, key), R[key])


@pytest.mark.parametrize("data,formula,family,link,smfamily", CASES,
                         ids=[f"{c[2]}-{c[3] or 'canonical'}" for c in CASES])
def test_family_and_link_match_statsmodels(data, formula, family, link, smfamily):
    sites = v6_sites(data)
    res = glm.fit(formula, sites, family=family, link=link, cluster="inprocess", tol=TOL)
    estimated = family in ("gaussian", "gamma", "inverse_gaussian")
    # statsmodels' own starting values are invalid for the canonical inverse Gaussian here.
    ref = reference(formula, sites, smfamily, use_t=estimated, start_params=res.params)
    assert res.converged
    check_against(res, ref, estimated, likelihood=not estimated)
    if estimated:
        check_likelihood_against_r(res, formula, sites, family, link)


def test_statsmodels_family_object_is_accepted():
    sites = v6_sites("binomial")
    res = glm.fit(ADMIT, sites, family=F.Binomial(L.Probit()), cluster="inprocess",
                  tol=TOL)
    check_against(res, reference(ADMIT, sites, F.Binomial(L.Probit())), False)
    assert res.link == "Probit"


@pytest.mark.parametrize("family,smfamily,formula", [
    ("binomial", F.Binomial(), "y ~ x1 + x2"),
    ("poisson", F.Poisson(), "pois_y ~ x1 + x2"),
    ("gaussian", F.Gaussian(), "x2 ~ x1 + I(x1 ** 2)"),
])
def test_distribglm_sites(family, smfamily, formula):
    sites = distribglm_sites()
    res = glm.fit(formula, sites, family=family, cluster="inprocess", tol=TOL)
    gaussian = family == "gaussian"
    check_against(res, reference(formula, sites, smfamily, use_t=gaussian), gaussian,
                  likelihood=not gaussian)
    if gaussian:
        check_likelihood_against_r(res, formula, sites, family, None)


def weighted(frames):
    return [f.assign(w=1.0 + (np.arange(len(f)) % 3) * 0.5) for f in frames]


@pytest.mark.parametrize("family,smfamily,data,formula", [
    ("gaussian", F.Gaussian(), "gaussian", TREES),
    ("gamma", F.Gamma(L.Log()), "gaussian", TREES),
    ("binomial", F.Binomial(), "binomial", ADMIT),
    ("poisson", F.Poisson(), "poisson", AWARDS),
])
def test_prior_weights(family, smfamily, data, formula):
    frames = weighted(read(v6_sites(data)))
    link = "log" if family == "gamma" else None
    res = glm.fit(formula, frames, family=family, link=link, weights="w", cluster="inprocess",
                  tol=TOL)
    estimated = family in ("gaussian", "gamma")
    # statsmodels' binomial likelihood ignores the prior weights as numbers of trials
    # (binomial()$aic in R); R's is the reference (tests/algorithms/glm/test_r_models.py)
    check_against(res, reference(formula, frames, smfamily, weights="w", use_t=estimated),
                  estimated, likelihood=family == "poisson")
    if estimated:  # each row's log-density times its weight, R's dispersion
        check_likelihood_against_r(res, formula, frames, family, link, weights="w")
    if family == "binomial":
        frames = {f"s{i}": f for i, f in enumerate(frames)}
        R = r_values(f"d <- rbind({', '.join(frames)}); f <- glm(admit ~ gre + gpa + "
                     "factor(rank), binomial, d, weights = w, control = glm.control(1e-12)); "
                     "out('llf', logLik(f)); out('aic', AIC(f))", frames=frames)
        close(res.llf, R["llf"])
        close(res.aic, R["aic"])


def test_binomial_proportions_with_trials_as_weights():
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(3):
        n = rng.integers(1, 20, 40).astype(float)
        x = rng.normal(size=40)
        k = rng.binomial(n.astype(int), 1 / (1 + np.exp(-(0.3 + 0.8 * x))))
        frames.append(pd.DataFrame({"p": k / n, "n": n, "x": x}))
    res = glm.fit("p ~ x", frames, family="binomial", weights="n", cluster="inprocess",
                  tol=TOL)
    # the likelihood takes the weights as numbers of trials, as R's (test_r_models.py)
    check_against(res, reference("p ~ x", frames, F.Binomial(), weights="n"), False,
                  likelihood=False)


def test_offset_and_exposure_null_deviance_refits_intercept_only():
    frames = [f.assign(t=1.0 + (f["math"] % 5), logt=np.log(1.0 + (f["math"] % 5)))
              for f in read(v6_sites("poisson"))]
    ref = reference(AWARDS, frames, F.Poisson(), exposure="t")
    for kwargs in ({"exposure": "t"}, {"offset": "logt"}):
        res = glm.fit(AWARDS, frames, family="poisson", cluster="inprocess", tol=TOL, **kwargs)
        check_against(res, ref, False)
    # The intercept-only model's deviance, not the one at the pooled mean:
    pooled = pd.concat(frames)
    y = pooled["num_awards"].to_numpy(float)
    at_mean = F.Poisson().deviance(y, np.full_like(y, y.mean()))
    assert abs(res.null_deviance - at_mean) > 1


def test_non_canonical_link_with_offset_null_deviance():
    frames = [f.assign(o=0.01 * f["gpa"]) for f in read(v6_sites("binomial"))]
    res = glm.fit(ADMIT, frames, family="binomial", link="probit", offset="o",
                  cluster="inprocess", tol=TOL)
    check_against(res, reference(ADMIT, frames, F.Binomial(L.Probit()), offset="o"), False)


def test_no_intercept_null_deviance_is_r_s():
    """Without an intercept, R's null model is mu = g^-1(offset): here g^-1(0) = 1/2."""
    sites = v6_sites("binomial")
    res = glm.fit("admit ~ 0 + gre + gpa", sites, family="binomial", cluster="inprocess",
                  tol=TOL)
    y = pd.concat(read(sites))["admit"].to_numpy(float)
    close(res.null_deviance, F.Binomial().deviance(y, np.full_like(y, 0.5)))
    assert res.df_null == len(y)
    ref = reference("admit ~ 0 + gre + gpa", sites, F.Binomial())
    close(res.params.to_numpy(), ref.params)
    close(res.bse.to_numpy(), ref.bse)


def test_iterations_follow_r():
    """R reports 4 Fisher scoring iterations for the admissions logit, 2 for a Gaussian
    identity fit, and v6-glm-py (R's rule) 6 for the awards Poisson model."""
    assert glm.fit(ADMIT, v6_sites("binomial"), family="binomial",
                   cluster="inprocess").iterations == 4
    assert glm.fit(TREES, v6_sites("gaussian"), cluster="inprocess").iterations == 2
    assert glm.fit(AWARDS, v6_sites("poisson"), family="poisson",
                   cluster="inprocess").iterations == 6


def test_unknown_family_and_link():
    with pytest.raises(ValueError, match="unknown family"):
        glm.fit(ADMIT, v6_sites("binomial"), family="bernoulli", cluster="inprocess")
    with pytest.raises(ValueError, match="not a link of the Poisson family"):
        glm.fit(AWARDS, v6_sites("poisson"), family="poisson", link="logit",
                cluster="inprocess", tol=TOL)


def test_the_saturated_binomial_log_likelihood_of_01_outcomes_is_zero_without_a_pass():
    """0/1 outcomes with unit weights: the shortcut gives what the full formula gives."""
    from algorithms.glm import families

    fam = families.resolve("binomial")
    rng = np.random.default_rng(2)
    y = (rng.random(1000) < 0.4) * 1.0
    w = np.ones(1000)
    assert fam.saturated_loglike(y, w) == 0.0
    assert families.binomial_loglike(y, y, w) == 0.0
    assert fam.saturated_loglike(y, w, freq=np.full(1000, 2.0)) == 0.0
    assert families.binomial_loglike(y, y, w, freq=np.full(1000, 2.0)) == 0.0
    # weights of 2 (two trials each): the binomial coefficient log 2 of each y = 1/2 row
    y2 = np.array([0.0, 0.5, 1.0])
    assert fam.saturated_loglike(y2, np.full(3, 2.0)) == pytest.approx(
        families.binomial_loglike(y2, y2, np.full(3, 2.0)))


@pytest.mark.parametrize("family", ["gaussian", "gamma"])
def test_a_zero_weight_row_is_left_out_of_the_likelihood(family):
    """R's Gaussian logLik is -Inf with a zero prior weight (its sum(log(wt))): here the
    row is left out, so the likelihood is R's of the fit without it. Gamma's is R's own
    (its BIC counts the row, as R's: logLik's nobs are the rows with a residual)."""
    frames = weighted(read(v6_sites("gaussian")))
    frames[0].loc[frames[0].index[0], "w"] = 0.0
    link = "log" if family == "gamma" else None
    res = glm.fit(TREES, frames, family=family, link=link, weights="w", cluster="inprocess",
                  tol=TOL)
    assert np.isfinite(res.llf)
    if family == "gaussian":
        without = [frames[0].iloc[1:]] + frames[1:]
        check_likelihood_against_r(res, TREES, without, family, link, "w", ("llf", "aic"))
    else:
        check_likelihood_against_r(res, TREES, frames, family, link, "w")
