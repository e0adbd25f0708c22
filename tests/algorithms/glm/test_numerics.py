"""Numerical edge cases: step-halving, non-finite contributions, aliased columns,
separation, a deviance of zero."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from formulaic import Formula
from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

import aia
from algorithms import glm
from algorithms.glm.messages import Contribution, Query

from .conftest import separated_sites, close, r_glm_fit, read, reference, v6_sites

ADMIT = "admit ~ gre + gpa + C(rank)"


def test_step_halving_is_r_s():
    """A log-binomial model from start values whose first step leaves (0, 1)."""
    sites = v6_sites("binomial")
    start = [np.log(0.3175), 0, 0, 0, 0, 0]
    res = glm.fit(ADMIT, sites, family="binomial", link="log", start=start,
                  cluster="inprocess")
    assert any("halved" in note for note in res.notes)
    df = pd.concat(read(sites), ignore_index=True)
    y, X = Formula(ADMIT).get_model_matrix(df)
    y, X = np.asarray(y, float).ravel(), np.asarray(X, float)
    beta, cov, dev, iterations = r_glm_fit(
        y, X, sm.families.Binomial(sm.families.links.Log()), start=start,
        valid=lambda eta, mu: bool(np.all((mu > 0) & (mu < 1))))
    assert res.iterations == iterations
    close(res.params.to_numpy(), beta, rtol=1e-9)
    close(res.cov_unscaled.to_numpy(), cov, rtol=1e-8)
    close(res.deviance, dev, rtol=1e-12)


def test_no_valid_first_step_halves_towards_the_intercept_only_fit():
    """R stops here ("no valid set of coefficients has been found", issue 13 item 10): the
    step is halved towards the intercept-only coefficients, and the fit is statsmodels'."""
    sites = v6_sites("binomial")
    res = glm.fit(ADMIT, sites, family="binomial", link="log", cluster="inprocess",
                  tol=1e-14, max_iter=100)
    assert res.converged and any("gives up" in note for note in res.notes)
    ref = reference(ADMIT, sites, sm.families.Binomial(sm.families.links.Log()))
    close(res.params.to_numpy(), ref.params, rtol=1e-6)
    close(res.deviance, ref.deviance, rtol=1e-10)


def test_no_valid_first_step_with_an_offset_asks_for_starting_values():
    """With an offset no step is known to be valid: R's error, with its advice."""
    sites = [f.assign(zero=0.0) for f in read(v6_sites("binomial"))]
    with pytest.raises(glm.NonFiniteError, match="supply starting values"):
        glm.fit(ADMIT, sites, family="binomial", link="log", offset="zero",
                cluster="inprocess")


def contribution(version, site, xtwx, xtwz=np.zeros(2), deviance=1.0, valid=True):
    return Contribution(version, valid, deviance=deviance, pearson_chi2=1.0, xtwx=xtwx,
                        xtwz=xtwz, nobs=20, n_ok=20, sum_wy=10.0, sum_w=20.0, site=site,
                        columns=("Intercept", "x") if version == 0 else None)


def test_a_non_finite_contribution_names_its_site():
    alg = glm.FisherScoring("y ~ x")
    alg.initialize(None)
    good = contribution(0, "north", np.eye(2))
    bad = contribution(0, "south", np.array([[1.0, np.inf], [np.inf, 1.0]]))
    with pytest.raises(glm.NonFiniteError, match=r"\['south'\]"):
        alg.sync_central_step([good, bad], [1, 2], None)


def test_a_column_that_overflows_x_w_x(admissions_with=lambda f: f.assign(big=f["gre"] * 1e160)):
    frames = [admissions_with(f) for f in read(v6_sites("binomial"))]
    with pytest.raises(glm.NonFiniteError, match="non-finite X'WX"):
        glm.fit("admit ~ big", frames, family="binomial", cluster="inprocess")


def test_an_invalid_step_is_halved_without_counting_an_iteration():
    alg = glm.FisherScoring("y ~ x")
    alg.initialize(None)
    q1 = alg.sync_central_step([contribution(0, "a", 2 * np.eye(2), np.array([2.0, 4.0]))],
                               [1], None)
    q2 = alg.sync_central_step([contribution(1, "a", 2 * np.eye(2), np.array([4.0, 4.0]),
                                             deviance=0.5)], [1], None)
    assert alg.iterations == 1
    q3 = alg.sync_central_step([Contribution(2, False, site="a")], [1], None)
    assert alg.iterations == 1 and alg.boundary
    np.testing.assert_allclose(q3.beta, (q2.beta + q1.beta) / 2)
    alg.sync_central_step([contribution(3, "a", 2 * np.eye(2), np.array([4.0, 4.0]),
                                        deviance=0.4)], [1], None)
    assert alg.iterations == 2
    np.testing.assert_allclose(alg.beta, q3.beta)


def test_aliased_columns_are_named():
    frames = [f.assign(gre2=2 * f["gre"] + 1) for f in read(v6_sites("binomial"))]
    with pytest.raises(glm.SingularDesignError) as info:
        glm.fit("admit ~ gre + gpa + gre2", frames, family="binomial", cluster="inprocess")
    assert info.value.aliased == ["gre2"]
    assert "gre2" in str(info.value)


def test_perfect_separation_warns_and_does_not_claim_convergence():
    frames = separated_sites()
    with pytest.warns(PerfectSeparationWarning, match="separation"):
        res = glm.fit("y ~ x", frames, family="binomial", cluster="inprocess")
    assert not res.converged
    assert any("separation" in note for note in res.notes)
    assert "separation" in str(res.summary())


def test_zero_deviance_converges_without_dividing_by_zero():
    x = np.arange(30.0)
    frames = [pd.DataFrame({"x": x + 30 * i, "y": 1 + 2 * (x + 30 * i)}) for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = glm.fit("y ~ x", frames, cluster="inprocess")
        text = str(res.summary())
        res.pvalues, res.conf_int()
    assert res.converged and res.deviance < 1e-20
    close(res.params.to_numpy(), [1.0, 2.0], rtol=1e-10)
    assert "Intercept" in text


def test_constant_response_intercept_only():
    frames = [pd.DataFrame({"y": np.full(15, 4.0)}) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = glm.fit("y ~ 1", frames, cluster="inprocess")
        str(res.summary())
    assert res.converged and res.deviance == 0 and res.null_deviance == 0
    assert res.params["Intercept"] == pytest.approx(4.0)


def test_start_values_give_the_same_estimate():
    sites = v6_sites("binomial")
    default = glm.fit(ADMIT, sites, family="binomial", cluster="inprocess", tol=1e-12)
    started = glm.fit(ADMIT, sites, family="binomial", cluster="inprocess", tol=1e-12,
                      start=default.params.to_numpy() * 0.9)
    close(started.params, default.params, rtol=1e-8)
