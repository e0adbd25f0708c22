"""Fits whose sites live in worker processes: synchronous and asynchronous, through
`glm.fit` and through `aia.start` directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import aia
from algorithms import glm

from .conftest import close, distribglm_sites, read, v6_sites

ADMIT = "admit ~ gre + gpa + C(rank)"
AWARDS = "num_awards ~ C(prog) + math"

CASES = [
    ("binomial", ADMIT, "binomial"),
    ("poisson", AWARDS, "poisson"),
    ("gaussian", "Volume ~ Girth", "gamma"),
]


@pytest.mark.parametrize("data,formula,family", CASES, ids=[c[2] for c in CASES])
def test_synchronous_on_workers_is_the_in_process_fit(glm_cluster, data, formula, family):
    sites = v6_sites(data)
    here = glm.fit(formula, sites, family=family, cluster="inprocess")
    there = glm.fit(formula, sites, family=family, cluster=glm_cluster, synchronous=True)
    close(there.params, here.params, rtol=1e-12)
    close(there.bse, here.bse, rtol=1e-12)
    assert there.iterations == here.iterations
    assert (there.deviance, there.null_deviance, there.llf) == pytest.approx(
        (here.deviance, here.null_deviance, here.llf), rel=1e-12)


@pytest.mark.parametrize("data,formula,family", CASES, ids=[c[2] for c in CASES])
def test_asynchronous_reaches_the_same_estimate(glm_cluster, data, formula, family):
    sites = v6_sites(data)
    sync = glm.fit(formula, sites, family=family, cluster="inprocess", tol=1e-12)
    res = glm.fit(formula, sites, family=family, cluster=glm_cluster, synchronous=False)
    assert res.converged and not res.synchronous
    close(res.params, sync.params, rtol=1e-6)
    close(res.bse, sync.bse, rtol=1e-6)
    close(res.deviance, sync.deviance, rtol=1e-9)
    close(res.null_deviance, sync.null_deviance, rtol=1e-12)
    close(res.llf, sync.llf, rtol=1e-9)


def test_asynchronous_with_an_offset_refits_the_null_model(glm_cluster):
    frames = [f.assign(t=1.0 + (f["math"] % 5)) for f in read(v6_sites("poisson"))]
    sync = glm.fit(AWARDS, frames, family="poisson", exposure="t", cluster="inprocess")
    res = glm.fit(AWARDS, frames, family="poisson", exposure="t", cluster=glm_cluster,
                  synchronous=False)
    close(res.params, sync.params, rtol=1e-6)
    close(res.null_deviance, sync.null_deviance, rtol=1e-8)


def test_temporary_cluster_and_dataframe_sites():
    frames = read(v6_sites("binomial"))
    res = glm.fit(ADMIT, {"north": frames[0], "south": frames[1], "east": frames[2]},
                  family="binomial")  # cluster=None: three workers, closed at the end
    here = glm.fit(ADMIT, frames, family="binomial", cluster="inprocess")
    close(res.params, here.params, rtol=1e-12)
    assert res.sites == ["north", "south", "east"]


def test_fewer_sites_than_workers_and_parquet(glm_cluster, tmp_path):
    paths = []
    for i, frame in enumerate(read(distribglm_sites())):
        paths.append(tmp_path / f"site{i}.parquet")
        frame.to_parquet(paths[-1])
    res = glm.fit("y ~ x1 + x2", paths, family="binomial", cluster=glm_cluster)
    here = glm.fit("y ~ x1 + x2", read(distribglm_sites()), family="binomial",
                   cluster="inprocess")
    close(res.params, here.params, rtol=1e-12)
    assert len(res.sites) == 2


def test_too_few_workers_for_the_sites(glm_cluster):
    sites = v6_sites("binomial") * 2
    with pytest.raises(ValueError, match="6 sites need 6 workers"):
        glm.fit(ADMIT, sites, family="binomial", cluster=glm_cluster)


@pytest.mark.parametrize("synchronous", [True, False])
def test_fisher_scoring_through_aia_start(glm_cluster, synchronous):
    paths = v6_sites("binomial")
    alg = glm.FisherScoring(ADMIT, family="binomial", n_sites=3)
    history = aia.start(alg, lambda pid: glm.Site(paths[pid - 1]) if pid else None,
                        {"tol": 1e-8, "maxit": 25}, cluster=glm_cluster,
                        synchronous=synchronous, verbose=0)
    here = glm.fit(ADMIT, paths, family="binomial", cluster="inprocess")
    assert history.converged
    close(history.params.to_numpy(), here.params.to_numpy(), rtol=1e-6)
    close(history.deviance, here.deviance, rtol=1e-9)
    close(history.null_deviance, here.null_deviance, rtol=1e-12)
    assert list(history.params.index) == list(here.params.index)
    assert alg.converged  # the central's state is on the instance passed in


def test_asynchronous_max_iter_ends_with_a_consistent_estimate(glm_cluster):
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    with pytest.warns(ConvergenceWarning):
        res = glm.fit(ADMIT, v6_sites("binomial"), family="binomial", cluster=glm_cluster,
                      synchronous=False, max_iter=1)
    assert not res.converged
    assert np.all(np.isfinite(res.params)) and np.isfinite(res.deviance)
