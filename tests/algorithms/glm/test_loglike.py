"""The log-likelihood without a pass over the rows: saturated log-likelihood minus half the
deviance (binomial with one trial per row, Poisson), against statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from algorithms import glm
from algorithms.glm.families import resolve
from algorithms.glm.site import Site

from .conftest import close

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("name, y", [
    ("binomial", RNG.integers(0, 2, 500).astype(float)),
    ("binomial", np.r_[0.0, 1.0, RNG.random(498)]),  # proportions, with both ends
    ("poisson", RNG.poisson(3, 500).astype(float)),
])
def test_saturated_minus_half_the_deviance_is_statsmodels_loglike(name, y):
    family = resolve(name)
    w = RNG.uniform(0.5, 3, y.size)
    mu = np.clip(RNG.random(y.size), 0.05, 0.95) if name == "binomial" else RNG.uniform(1, 5, y.size)
    expected = family.sm.loglike(y, mu, var_weights=w, scale=1.0)
    got = family.saturated_loglike(y, w) - family.deviance(y, mu, w) / 2
    close(got, expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["gaussian", "gamma", "inverse_gaussian"])
def test_families_with_a_dispersion_have_no_shortcut(name):
    assert resolve(name).saturated_loglike(np.ones(3), np.ones(3)) is None


def _proportions(n=3000, seed=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    trials = rng.integers(1, 20, n).astype(float)
    successes = rng.binomial(trials.astype(int), 1 / (1 + np.exp(-(0.3 + 0.8 * x))))
    return pd.DataFrame({"x": x, "p": successes / trials, "n": trials})


def test_fit_takes_the_loglike_of_binomial_proportions_without_a_pass(monkeypatch):
    frame = _proportions()
    sites = [frame.iloc[i::3] for i in range(3)]

    def no_pass(*args, **kwargs):
        raise AssertionError("the log-likelihood pass over the rows was not needed")

    monkeypatch.setattr(Site, "loglike", no_pass)
    res = glm.fit("p ~ x", sites, family="binomial", weights="n", cluster="inprocess",
                  tol=1e-12)
    ref = sm.GLM(frame["p"], sm.add_constant(frame[["x"]]), family=sm.families.Binomial(),
                 var_weights=frame["n"]).fit(tol=1e-14)
    close(res.llf, ref.llf, rtol=1e-9)
    close(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-8)


def test_gaussian_fit_still_asks_the_sites(monkeypatch):
    calls = []
    original = Site.loglike
    monkeypatch.setattr(Site, "loglike",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    frame = _proportions()
    glm.fit("p ~ x", [frame.iloc[:1500], frame.iloc[1500:]], family="gaussian", cluster="inprocess")
    assert len(calls) == 2
