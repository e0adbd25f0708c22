"""glm.glmnet and glm.cv_glmnet whose sites live in real worker processes: local workers in
synchronous and asynchronous modes, and Ray actors of a real Ray runtime on 127.0.0.1. The
central's arithmetic is the same wherever the sites are, so every path equals the
in-process one to 1e-10 (asynchronous mode gathers every site's answer before each step)."""

from __future__ import annotations

import numpy as np
import pytest

import aia
from algorithms import glm

from .conftest import REPO, read, v6_sites

ADMIT = "admit ~ gre + gpa + C(rank)"
AWARDS = "num_awards ~ math + C(prog)"
EXACT = dict(rtol=1e-10, atol=1e-12)


def _same_path(there, here) -> None:
    assert list(there.coefs.columns) == list(here.coefs.columns)
    np.testing.assert_allclose(there.lambdas, here.lambdas, **EXACT)
    np.testing.assert_allclose(there.coefs.to_numpy(), here.coefs.to_numpy(), **EXACT)
    np.testing.assert_allclose(there.dev_ratio, here.dev_ratio, **EXACT)
    np.testing.assert_array_equal(there.rounds_per_lambda, here.rounds_per_lambda)
    assert there.rounds == here.rounds


def _same_cv(there, here) -> None:
    _same_path(there.glmnet_fit, here.glmnet_fit)
    np.testing.assert_allclose(there.cvm, here.cvm, **EXACT)
    np.testing.assert_allclose(there.cvsd, here.cvsd, **EXACT)
    assert (there.lambda_min, there.lambda_1se) == (here.lambda_min, here.lambda_1se)


@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize("data,formula,family", [
    ("binomial", ADMIT, "binomial"),
    ("poisson", AWARDS, "poisson"),
    ("binomial", "gpa ~ gre + admit + C(rank)", "gaussian"),
])
def test_path_on_local_workers_is_the_in_process_path(glm_cluster, synchronous, data,
                                                      formula, family):
    sites = v6_sites(data)  # files, read by each worker's own site
    here = glm.glmnet(formula, sites, family=family, alpha=0.5, cluster="inprocess")
    there = glm.glmnet(formula, sites, family=family, alpha=0.5, cluster=glm_cluster,
                       synchronous=synchronous)
    _same_path(there, here)


@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
def test_cv_and_exact_coef_on_local_workers(glm_cluster, synchronous):
    frames = read(v6_sites("binomial"))  # DataFrames, each sent to its worker only
    kwargs = dict(family="binomial", alpha=0.5, folds=4, seed=3)
    here = glm.cv_glmnet("admit ~ gre + gpa", frames, cluster="inprocess", **kwargs)
    there = glm.cv_glmnet("admit ~ gre + gpa", frames, cluster=glm_cluster,
                          synchronous=synchronous, **kwargs)
    _same_cv(there, here)
    # off the path: a new fit at exactly that lambda, on the same workers
    s = float(np.sqrt(here.lambdas[5] * here.lambdas[6]))
    np.testing.assert_allclose(there.glmnet_fit.coef(s), here.glmnet_fit.coef(s), **EXACT)


def test_path_and_cv_on_a_ray_cluster():
    """One Ray runtime (started by RayCluster on loopback, stopped when it closes) for both
    modes, the path and the cross-validation: starting Ray is the slow part, and a round
    trip to an actor the next (30 lambdas keep it short)."""
    pytest.importorskip("ray")
    sites = v6_sites("binomial")
    short = dict(family="binomial", alpha=0.5, nlambda=30)
    here = glm.glmnet(ADMIT, sites, cluster="inprocess", **short)
    cv_here = glm.cv_glmnet("admit ~ gre + gpa", sites, folds="sites", cluster="inprocess",
                            **short)
    with aia.RayCluster(3, num_cpus=2, log_to_driver=False,
                        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}) as ray_cluster:
        for synchronous in (True, False):
            there = glm.glmnet(ADMIT, sites, cluster=ray_cluster, synchronous=synchronous,
                               **short)
            _same_path(there, here)
        cv_there = glm.cv_glmnet("admit ~ gre + gpa", sites, folds="sites",
                                 cluster=ray_cluster, synchronous=False, **short)
        _same_cv(cv_there, cv_here)
