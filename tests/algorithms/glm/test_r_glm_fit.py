"""The default fit is R's ``glm.fit``: starting values, stopping rule, iteration count and
the covariance of the last iteration's X'WX, against a transcription of R's algorithm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from formulaic import Formula

from algorithms import glm

from .conftest import close, r_glm_fit, read, v6_sites

F, L = sm.families, sm.families.links


def pooled(formula, sites):
    df = pd.concat(read(sites), ignore_index=True)
    y, X = Formula(formula).get_model_matrix(df)
    return np.asarray(y, float).ravel(), np.asarray(X, float)


@pytest.mark.parametrize("data,formula,family,link,smfamily,mustart", [
    ("binomial", "admit ~ gre + gpa + C(rank)", "binomial", None, F.Binomial(),
     lambda y: (y + 0.5) / 2),
    ("binomial", "admit ~ gre + gpa + C(rank)", "binomial", "probit",
     F.Binomial(L.Probit()), lambda y: (y + 0.5) / 2),
    ("poisson", "num_awards ~ C(prog) + math", "poisson", None, F.Poisson(),
     lambda y: y + 0.1),
    ("gaussian", "Volume ~ Girth", "gamma", "log", F.Gamma(L.Log()), lambda y: y),
    ("gaussian", "Volume ~ Girth", "gaussian", "log", F.Gaussian(L.Log()), lambda y: y),
])
def test_default_fit_is_r_glm_fit(data, formula, family, link, smfamily, mustart):
    sites = v6_sites(data)
    res = glm.fit(formula, sites, family=family, link=link, cluster="inprocess")
    y, X = pooled(formula, sites)
    beta, cov, dev, iterations = r_glm_fit(y, X, smfamily, mustart=mustart(y))
    assert res.iterations == iterations
    assert res.converged
    close(res.params.to_numpy(), beta, rtol=1e-9)
    close(res.cov_unscaled.to_numpy(), cov, rtol=1e-8, atol=1e-14)
    close(res.deviance, dev, rtol=1e-12)


def test_max_iter_stops_like_r():
    sites = v6_sites("binomial")
    formula = "admit ~ gre + gpa + C(rank)"
    with pytest.warns(sm.tools.sm_exceptions.ConvergenceWarning, match="did not converge"):
        res = glm.fit(formula, sites, family="binomial", max_iter=2, cluster="inprocess")
    y, X = pooled(formula, sites)
    beta, cov, dev, _ = r_glm_fit(y, X, F.Binomial(), maxit=2, mustart=(y + 0.5) / 2)
    assert res.iterations == 2 and not res.converged
    close(res.params.to_numpy(), beta, rtol=1e-10)
    close(res.deviance, dev, rtol=1e-12)
