"""The log-likelihood without a pass over the rows: saturated log-likelihood minus half the
deviance (binomial with whole numbers of successes, Poisson), against statsmodels and R's
binomial likelihood."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from algorithms import glm
from algorithms.glm.families import resolve
from algorithms.glm.site import Site

from .conftest import close

RNG = np.random.default_rng(11)


TRIALS = RNG.integers(1, 5, 500).astype(float)


@pytest.mark.parametrize("name, y, w", [
    ("binomial", RNG.integers(0, 2, 500).astype(float), TRIALS),
    # proportions of whole numbers of successes, with both ends
    ("binomial", np.r_[0.0, 1.0, RNG.integers(0, 5, 498) / 4], np.full(500, 4.0)),
    ("poisson", RNG.poisson(3, 500).astype(float), RNG.uniform(0.5, 3, 500)),
])
def test_saturated_minus_half_the_deviance_is_the_loglike(name, y, w):
    """Poisson: statsmodels' log-likelihood; binomial: R's, the prior weights being the
    numbers of trials (``binomial()$aic``), here a sum of scipy's binomial log-pmf."""
    family = resolve(name)
    mu = np.clip(RNG.random(y.size), 0.05, 0.95) if name == "binomial" else RNG.uniform(1, 5, y.size)
    if name == "binomial":
        expected = np.sum(stats.binom.logpmf(np.round(w * y), w, mu))
    else:
        expected = family.sm.loglike(y, mu, var_weights=w, scale=1.0)
    got = family.saturated_loglike(y, w) - family.deviance(y, mu, w) / 2
    close(got, expected, rtol=1e-12)
    close(family.loglike(y, mu, w, 1.0), expected, rtol=1e-12)


def test_binomial_with_fractional_trials_needs_a_pass():
    """R rounds m y and m in its likelihood: no shortcut through the deviance then."""
    assert resolve("binomial").saturated_loglike(np.array([0.0, 1.0]), np.array([1.5, 2.0])) \
        is None


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
    # R's likelihood: the weights are numbers of trials
    llf = np.sum(stats.binom.logpmf(np.round(frame["p"] * frame["n"]), frame["n"],
                                    ref.fittedvalues))
    close(res.llf, llf, rtol=1e-9)
    close(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-8)


def test_gaussian_fit_still_asks_the_sites(monkeypatch):
    calls = []
    original = Site.loglike
    monkeypatch.setattr(Site, "loglike",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    frame = _proportions()
    glm.fit("p ~ x", [frame.iloc[:1500], frame.iloc[1500:]], family="gaussian", cluster="inprocess")
    assert len(calls) == 2
