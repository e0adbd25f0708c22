"""Secure aggregation of glmnet paths beyond gaussian: binomial and Poisson (IRLS rounds of
strong-set sums, the score and the deviances at earlier solutions, all masked) and
cv_glmnet (each fold's sums over the sites masked; no site's per-fold sums reach the
central)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from algorithms import glm
from algorithms.glm import secure
from algorithms.glm.glmnet_site import GlmnetQuery, glmnet_answer
from algorithms.glm.site import Site

from .conftest import read, v6_sites

glmnet_module = sys.modules["algorithms.glm.glmnet"]

PATHS = {
    "binomial": ("binomial", "admit ~ gre + gpa + C(rank)"),
    "poisson": ("poisson", "num_awards ~ C(prog) + math"),
}


def _no_process(*args, **kwargs):
    raise AssertionError("a process was started")


def assert_same_path(plain, masked):
    np.testing.assert_allclose(masked.lambdas, plain.lambdas, rtol=1e-10)
    np.testing.assert_allclose(masked.coefs, plain.coefs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(masked.dev_ratio, plain.dev_ratio, rtol=1e-10)
    np.testing.assert_allclose(masked.null_deviance, plain.null_deviance, rtol=1e-10)
    np.testing.assert_array_equal(masked.rounds, plain.rounds)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("family", list(PATHS))
def test_secure_irls_path_equals_the_plain_one(family, glm_cluster):
    data, formula = PATHS[family]
    frames = read(v6_sites(data))
    args = dict(family=family, alpha=0.7, nlambda=20, cluster=glm_cluster)
    plain = glm.glmnet(formula, frames, **args)
    masked = glm.glmnet(formula, frames, secure=True, **args)
    assert len(plain.lambdas) > 5
    assert_same_path(plain, masked)


class Recording(secure.SecureAggregation):
    """Keeps, at the central, every masked glmnet answer and the query it answered."""

    seen: list = []

    def sync_central_step(self, answers, workers, problem):
        if self._phase == "sums" and isinstance(self._inner_query, GlmnetQuery):
            Recording.seen.append((self._inner_query, self.inner.design, list(answers)))
        return super().sync_central_step(answers, workers, problem)


@pytest.mark.timeout(180)
def test_the_central_never_receives_a_sites_true_path_or_fold_sums(glm_cluster, monkeypatch):
    """cv_glmnet, binomial: every answer the central receives (moments per fold, IRLS sums
    per training fit, held-out sums per fold) differs in every entry from the site's true
    sums encoded in the same ring; the fit equals the plain one."""
    Recording.seen = []
    monkeypatch.setattr("algorithms.glm.secure.SecureAggregation", Recording)
    data, formula = PATHS["binomial"]
    frames = read(v6_sites(data))
    names = ["a", "b", "c"]
    sites = dict(zip(names, frames))
    args = dict(family="binomial", folds=3, nlambda=10, cluster=glm_cluster)
    plain = glm.cv_glmnet(formula, sites, **args)
    masked = glm.cv_glmnet(formula, sites, secure=True, **args)
    np.testing.assert_allclose(masked.cvm, plain.cvm, rtol=1e-10)
    np.testing.assert_allclose(masked.cvsd, plain.cvsd, rtol=1e-10)
    assert (masked.index_min, masked.index_1se) == (plain.index_min, plain.index_1se)
    np.testing.assert_allclose([masked.lambda_min, masked.lambda_1se],
                               [plain.lambda_min, plain.lambda_1se], rtol=1e-10)
    assert_same_path(plain.glmnet_fit, masked.glmnet_fit)
    kinds = {q.kind for q, _, _ in Recording.seen}
    assert kinds == {"moments", "sums", "heldout"}, kinds
    checked = 0
    # one site per name, asked in the run's order: a site sends sums over folds only after
    # it has checked them in the moments query
    replay = {name: Site(frame, name) for name, frame in zip(names, frames)}
    for query, design, answers in Recording.seen:
        for name, frame, a in zip(names, frames, answers):
            assert isinstance(a, secure.MaskedAnswer) and a.site == name
            if not a.valid:
                continue
            true = glmnet_answer(replay[name], design, query)
            values, _, _ = secure._pack(true)
            encoded = secure.encode(values, 3, name)
            got = secure.from_bytes(a.payload)
            assert len(got) == len(encoded) > 0
            assert not any(m == t for m, t in zip(got, encoded))
            checked += 1
    assert checked >= 3 * 5


def test_secure_cv_refuses_site_folds_before_any_process(monkeypatch):
    """folds='sites' trains on the total minus one site's sums: that site's sums."""
    monkeypatch.setattr("aia.LocalCluster.__init__", _no_process)
    frames = read(v6_sites("binomial"))
    with pytest.raises(ValueError, match="got folds='sites'"):
        glm.cv_glmnet("admit ~ gre + gpa", frames, family="binomial", folds="sites",
                      secure=True)


@pytest.mark.timeout(120)
def test_a_malformed_variable_length_is_an_error_naming_the_site(glm_cluster, monkeypatch):
    """A site claiming another number of deviances than the others: refused, named."""

    class Lies(secure.SecureAggregation):
        def sync_central_step(self, answers, workers, problem):
            if self._phase == "sums" and any(n for _, _, n in answers[1].lengths or ()):
                from dataclasses import replace
                bad = tuple((i, f, n + 1) for i, f, n in answers[1].lengths)
                answers = [answers[0], replace(answers[1], lengths=bad), *answers[2:]]
            return super().sync_central_step(answers, workers, problem)

    monkeypatch.setattr("algorithms.glm.secure.SecureAggregation", Lies)
    data, formula = PATHS["poisson"]
    with pytest.raises(secure.SecureAggregationError, match="site b: malformed masked vector"):
        glm.glmnet(formula, dict(zip("abc", read(v6_sites(data)))), family="poisson",
                   nlambda=10, secure=True, cluster=glm_cluster)
