"""The relative-survival family (v6-glm-py's "survival"): mu = d* + exp(eta), Poisson
variance, with the person-time as exposure. The v6 survival sites have no column of expected
deaths, so d* = 0.01 * eventtime here. The reference is the maximum of the Poisson
likelihood found by scipy, and the Fisher information at it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from formulaic import Formula
from scipy import optimize, stats

from algorithms import glm

from .conftest import close, survival_frames

FORMULA = "status ~ sex + age"


def poisson_mle(y, X, d_star, offset):
    """Maximise sum(y log mu - mu) with mu = d* + exp(X b + offset); return b, cov."""

    def negloglik(b):
        excess = np.exp(X @ b + offset)
        mu = d_star + excess
        grad = X.T @ ((y / mu - 1) * excess)
        return -np.sum(y * np.log(mu) - mu), -grad

    start = np.zeros(X.shape[1])
    start[0] = np.log(max(y.sum() - d_star.sum(), 1.0) / np.exp(offset).sum())
    opt = optimize.minimize(negloglik, start, jac=True, method="BFGS",
                            options={"gtol": 1e-12, "maxiter": 10_000})
    excess = np.exp(X @ opt.x + offset)
    mu = d_star + excess
    info = X.T @ (X * (excess**2 / mu)[:, None])  # Fisher information
    return opt.x, np.linalg.inv(info), mu


@pytest.fixture
def frames():
    return survival_frames()


def pooled(frames, formula=FORMULA):
    df = pd.concat(frames, ignore_index=True)
    y, X = Formula(formula).get_model_matrix(df)
    return (np.asarray(y, float).ravel(), np.asarray(X, float),
            df["dstar"].to_numpy(float), np.log(df["eventtime"].to_numpy(float)))


def test_relative_survival_is_the_poisson_mle(frames):
    res = glm.fit(FORMULA, frames, family="relative_survival", expected="dstar",
                  exposure="eventtime", cluster="inprocess", tol=1e-12)
    y, X, d_star, offset = pooled(frames)
    beta, cov, mu = poisson_mle(y, X, d_star, offset)
    assert res.converged and res.family == "Relative survival"
    close(res.params.to_numpy(), beta, rtol=1e-6)
    close(res.bse.to_numpy(), np.sqrt(np.diag(cov)), rtol=1e-6)
    close(res.deviance, 2 * np.sum(np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / mu), 0)
                                   - (y - mu)), rtol=1e-9)
    close(res.llf, np.sum(stats.poisson.logpmf(y, mu)), rtol=1e-9)
    assert res.scale == 1 and not res.use_t


def test_relative_survival_null_deviance_is_the_intercept_only_fit(frames):
    res = glm.fit(FORMULA, frames, family="relative_survival", expected="dstar",
                  exposure="eventtime", cluster="inprocess", tol=1e-12)
    y, X, d_star, offset = pooled(frames)
    _, _, mu0 = poisson_mle(y, X[:, :1], d_star, offset)
    null = 2 * np.sum(np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / mu0), 0) - (y - mu0))
    close(res.null_deviance, null, rtol=1e-8)


def test_relative_survival_starts_like_dickman_and_converges_as_r(frames):
    """R's rule from Dickman's starting values pmax(y, d*) + 0.1: a handful of iterations."""
    res = glm.fit(FORMULA, frames, family="relative_survival", expected="dstar",
                  exposure="eventtime", cluster="inprocess")
    assert res.converged and 3 <= res.iterations <= 10


def test_relative_survival_needs_expected_deaths(frames):
    with pytest.raises(ValueError, match="expected deaths"):
        glm.fit(FORMULA, frames, family="relative_survival", cluster="inprocess")
    with pytest.raises(ValueError, match="only the relative_survival family"):
        glm.fit(FORMULA, frames, family="poisson", expected="dstar", cluster="inprocess")


def test_relative_survival_on_workers(glm_cluster, frames):
    here = glm.fit(FORMULA, frames, family="relative_survival", expected="dstar",
                   exposure="eventtime", cluster="inprocess")
    there = glm.fit(FORMULA, frames, family="relative_survival", expected="dstar",
                    exposure="eventtime", cluster=glm_cluster, synchronous=False)
    close(there.params, here.params, rtol=1e-6)
