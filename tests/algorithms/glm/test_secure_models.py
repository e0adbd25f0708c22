"""Secure aggregation of glm.nb (family="negative_binomial": the Fisher fits and every
theta.ml pass masked) and of frequency weights."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from algorithms import glm
from algorithms.glm import secure

from .conftest import r_frame, split3
from .test_secure import assert_same_fit

QUINE = "Days ~ Eth + Sex + Age + Lrn"


@pytest.fixture(autouse=True)
def _small_sites(monkeypatch):
    """quine's sites are small for its 7 parameters (read by the sites' fresh processes)."""
    monkeypatch.setenv("GLM_MAX_PCT_VARS_VS_OBS", "50")


def _quine():
    """MASS's quine with frequency weights 1, 2, 1, 2... and two missing responses."""
    d = r_frame("quine").assign(f=lambda d: 1 + np.arange(len(d)) % 2)
    d.loc[[4, 9], "Days"] = np.nan
    return d


class Sums(secure.SiteSum):
    """Counts the secure theta passes (at the central)."""

    passes: list = []

    def sync_central_step(self, answers, workers, problem):
        Sums.passes.append((self.method, answers[0]))
        return super().sync_central_step(answers, workers, problem)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("freq", [None, "f"])
def test_secure_negative_binomial_equals_the_plain_fit(freq, monkeypatch):
    Sums.passes = []
    monkeypatch.setattr(sys.modules["algorithms.glm.fit"], "SiteSum", Sums)
    frames = split3(_quine())
    args = dict(family="negative_binomial", freq_weights=freq, cluster=3)
    plain = glm.fit(QUINE, frames, **args)
    masked = glm.fit(QUINE, frames, secure=True, **args)
    assert_same_fit(plain, masked)
    np.testing.assert_allclose(masked.theta, plain.theta, rtol=1e-10)
    np.testing.assert_allclose(masked.theta_se, plain.theta_se, rtol=1e-10)
    # theta.ml's passes went through the secure sum, and came masked to the central
    theta = [a for method, a in Sums.passes if method == "theta_sums"]
    assert len(theta) >= 3
    assert all(isinstance(a, secure.Totals) for a in theta)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", ["poisson", "gaussian"])
def test_secure_freq_weights_equal_the_plain_fit(family):
    frames = split3(_quine())
    args = dict(family=family, freq_weights="f", cluster=3)
    assert_same_fit(glm.fit(QUINE, frames, **args),
                    glm.fit(QUINE, frames, secure=True, **args))


def test_secure_negative_binomial_refuses_resilience_before_any_process():
    with pytest.raises(ValueError, match="expected resilience=0"):
        glm.fit(QUINE, split3(_quine()), family="negative_binomial", secure=True,
                resilience=1, cluster=2)


@pytest.mark.timeout(150)
def test_secure_negative_binomial_with_freq_weights_over_a_folder(tmp_path):
    """``aia-glm central --secure`` and three ``aia-glm site`` processes: glm.nb with
    frequency weights and an HC1 sandwich, every theta pass and the meat a masked sum, the
    plain fit's numbers."""
    from .test_cli_folder_models import Folder, _same

    f = Folder(tmp_path, split3(_quine()))
    try:
        code, log = f.fit("--family", "negative_binomial", "--freq-weights", "f",
                          "--cov-type", "HC1", "--secure")
        assert code == 0, log
        got = f.result()
    finally:
        f.stop()
    ref = glm.fit(QUINE, split3(_quine()), "negative_binomial", freq_weights="f",
                  cov_type="HC1", cluster="inprocess")
    _same(got, ref)
    assert got["cov_type"] == "HC1"
    assert got["theta"] == pytest.approx(ref.theta, rel=1e-10, abs=0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cov_type", ["HC0", "HC1", "cluster"])
def test_secure_sandwich_equals_the_plain_one(cov_type, glm_cluster, monkeypatch):
    """The meat summed securely (``cluster``: each site one cluster, the outer product of
    its score sum): the plain robust covariance to 1e-10; the central got a masked sum."""
    from .conftest import v6_sites
    from .test_secure import ADMIT

    Sums.passes = []
    monkeypatch.setattr(sys.modules["algorithms.glm.fit"], "SiteSum", Sums)
    args = dict(family="binomial", cov_type=cov_type, cluster=glm_cluster)
    plain = glm.fit(ADMIT, v6_sites("binomial"), **args)
    masked = glm.fit(ADMIT, v6_sites("binomial"), secure=True, **args)
    assert_same_fit(plain, masked)
    np.testing.assert_allclose(masked.cov_robust, plain.cov_robust, rtol=1e-10, atol=0)
    assert [m for m, _ in Sums.passes].count("meat") == 1


@pytest.mark.parametrize("fitter", ["fit", "glmnet"])
def test_asynchronous_mode_is_refused_by_design_before_any_process(fitter, monkeypatch):
    from .conftest import v6_sites
    from .test_secure import _no_process

    monkeypatch.setattr("aia.LocalCluster.__init__", _no_process)
    with pytest.raises(ValueError, match="asynchronous mode is refused by design: the masks "
                                         "cancel only in the sum of every site's answer"):
        getattr(glm, fitter)("admit ~ gre + gpa", v6_sites("binomial"), family="binomial",
                             secure=True, synchronous=False)
