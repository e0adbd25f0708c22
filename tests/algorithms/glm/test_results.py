"""The result object: statsmodels' names, R's tests, the summary table."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from algorithms import glm

from .conftest import v6_sites

ADMIT = "admit ~ gre + gpa + C(rank)"


@pytest.fixture(scope="module")
def logit():
    return glm.fit(ADMIT, v6_sites("binomial"), family="binomial", cluster="inprocess")


@pytest.fixture(scope="module")
def gaussian():
    return glm.fit("Volume ~ Girth", v6_sites("gaussian"), cluster="inprocess")


def test_series_indexed_by_term(logit):
    names = ["Intercept", "gre", "gpa", "C(rank)[T.2]", "C(rank)[T.3]", "C(rank)[T.4]"]
    for attr in ("params", "bse", "tvalues", "pvalues"):
        value = getattr(logit, attr)
        assert isinstance(value, pd.Series) and list(value.index) == names
    assert list(logit.conf_int().columns) == [0, 1]
    assert list(logit.cov_params().index) == names


def test_z_tests_when_the_dispersion_is_fixed(logit):
    assert not logit.use_t and logit.scale == 1
    np.testing.assert_allclose(logit.pvalues, 2 * stats.norm.sf(np.abs(logit.tvalues)))
    q = stats.norm.ppf(0.95)
    np.testing.assert_allclose(logit.conf_int(0.1)[1], logit.params + q * logit.bse)


def test_t_tests_with_df_resid_when_the_dispersion_is_estimated(gaussian):
    assert gaussian.use_t and gaussian.df_resid == gaussian.nobs - 2
    np.testing.assert_allclose(gaussian.pvalues,
                               2 * stats.t.sf(np.abs(gaussian.tvalues), gaussian.df_resid))


def test_v6_gaussian_values(gaussian):
    """v6-glm-py's expected coefficients for the trees data (its sites hold R's trees
    twice, so the deviance and scale are those of the pooled 62 rows)."""
    assert gaussian.params["Intercept"] == pytest.approx(-36.94346, abs=1e-5)
    assert gaussian.params["Girth"] == pytest.approx(5.0658564, abs=1e-7)
    assert gaussian.deviance == pytest.approx(2 * 524.3025, rel=1e-6)
    assert gaussian.null_deviance == pytest.approx(2 * 8106.08387, rel=1e-8)


def test_summary_reads_at_a_glance(logit):
    text = str(logit.summary())
    for expected in ("Binomial", "Logit", "No. observations:", "400", "Converged:",
                     "yes, 4 iterations", "Deviance:", "Null deviance:", "458.517",
                     "499.977", "AIC:", "P>|z|", "C(rank)[T.4]", "***", "Sites:"):
        assert expected in text, expected
    width = max(len(line) for line in text.splitlines())
    assert width <= 100


def test_frame_view(logit):
    frame = logit.summary_frame()
    assert list(frame.columns) == ["coef", "std err", "z", "P>|z|", "[0.025", "0.975]"]
    pd.testing.assert_series_equal(frame["coef"], logit.params, check_names=False)
    assert logit.to_frame().equals(frame)
    assert logit.summary().tables[0].equals(frame)


def test_information_criteria(logit):
    k = len(logit.params)
    assert logit.df_model == k - 1
    assert logit.aic == pytest.approx(-2 * logit.llf + 2 * k)
    assert logit.bic == pytest.approx(-2 * logit.llf + k * np.log(logit.nobs))
    assert "4 iterations" not in repr(logit) and "converged" in repr(logit)


def test_public_names_are_listed():
    # Every public name but the submodules (whatever modules the package grows).
    public = {n for n in dir(glm) if not n.startswith("_")
              and not isinstance(getattr(glm, n), types.ModuleType)}
    assert sorted(glm.__all__) == glm.__all__
    assert public | {"fit"} == set(glm.__all__)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kwargs", [dict(family="binomial"),
                                    dict(family="binomial", method="gradient"),
                                    dict(family="negative_binomial", formula="gre ~ gpa"),
                                    dict(family="binomial", secure=True)])
def test_the_result_comes_from_what_the_run_returns(kwargs, glm_cluster, monkeypatch):
    """glm.fit reads its result off the History that aia.start returns, not off the
    algorithm object it handed over: an engine that runs a copy gives the same fit."""
    import copy

    import aia

    kwargs = dict(kwargs)
    formula = kwargs.pop("formula", ADMIT)
    expected = glm.fit(formula, v6_sites("binomial"), cluster=glm_cluster, **kwargs)
    start = aia.start
    copies = []

    def on_a_copy(algorithm, *args, **kw):
        copies.append(type(algorithm).__name__)
        return start(copy.deepcopy(algorithm), *args, **kw)

    monkeypatch.setattr(aia, "start", on_a_copy)
    got = glm.fit(formula, v6_sites("binomial"), cluster=glm_cluster, **kwargs)
    assert copies  # the runs went through the copying engine
    pd.testing.assert_series_equal(got.params, expected.params, rtol=1e-12)
    pd.testing.assert_series_equal(got.bse, expected.bse, rtol=1e-12)
    for key in ("deviance", "null_deviance", "llf", "scale", "iterations", "nobs"):
        assert getattr(got, key) == pytest.approx(getattr(expected, key), rel=1e-12), key
    assert got.notes == expected.notes and got.converged == expected.converged
