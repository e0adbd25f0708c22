"""Distributed objects: built on the workers, kept there across runs, used where they live."""

from __future__ import annotations

import os
import signal
import time
import types

import numpy as np
import pytest

import aia
from algorithms import LRMSE, SGD, make_lrmse_problem

from .algorithms_for_tests import Counter, GradientDescent


def test_objects_live_on_their_workers(cluster):
    d = aia.DistributedObject(lambda pid: {"pid": pid, "os": os.getpid()}, cluster)
    assert d.where() == [1, 2, 3]
    assert d.local is None
    where = d.map(lambda o: o["os"])
    assert where == cluster.os_pids()  # each object was built in its own worker process
    assert d.apply(2, lambda o: o["pid"]) == 2
    d.local = {"pid": 0}
    assert d.where() == [0, 1, 2, 3]
    assert d.map(lambda o: o["pid"]) == {0: 0, 1: 1, 2: 2, 3: 3}


def test_objects_persist_across_runs_and_state_is_kept(cluster):
    d = aia.DistributedObject(lambda pid: [pid], cluster)
    d.apply(1, lambda o: o.append("x"))
    assert d.apply(1, lambda o: o) == [1, "x"]
    h1 = aia.start(Counter(), aia.DistributedObject(lambda pid: pid, cluster), {"iteration": 5},
                   cluster=cluster, verbose=0)
    h2 = aia.start(Counter(), aia.DistributedObject(lambda pid: pid, cluster), {"iteration": 5},
                   cluster=cluster, verbose=0, pids=[2, 3])
    assert h1.iterations[-1] == h2.iterations[-1] == 5
    assert d.apply(1, lambda o: o) == [1, "x"]


def test_the_three_options_give_the_same_run(cluster):
    make = make_lrmse_problem(n_rows=40, n_features=4, seed=5)
    problems = {pid: make(pid) for pid in [0] + cluster.pids}
    distributed = aia.DistributedObject(make, cluster)
    results = []
    for problem in (make, lambda pid: problems[pid], distributed):  # options 1, 2, 3
        alg = GradientDescent(stepsize=0.05, n=4)
        aia.start(alg, problem, {"iteration": 20}, cluster=cluster, synchronous=True, verbose=0)
        results.append(alg.x)
    np.testing.assert_allclose(results[0], results[1], rtol=0, atol=0)
    np.testing.assert_allclose(results[0], results[2], rtol=0, atol=0)


def test_rebuilding_the_global_problem_without_moving_the_data(cluster):
    make = make_lrmse_problem(n_rows=30, n_features=3, seed=2)
    d = aia.DistributedObject(make, cluster)
    sizes = d.map(lambda p: p.m)
    x = np.ones(3)
    grads = d.map(lambda p: p.gradient(x) * p.m)
    m = sum(sizes.values())
    global_gradient = sum(grads.values()) / m
    A = np.vstack([make(pid).A for pid in cluster.pids])
    b = np.concatenate([make(pid).b for pid in cluster.pids])
    np.testing.assert_allclose(global_gradient, LRMSE(A, b).gradient(x), rtol=1e-12)
    # The sum of the blocks' Lipschitz constants bounds the global one.
    L = sum(d.map(lambda p: p.L * p.m).values()) / m
    assert L >= LRMSE(A, b).L * (1 - 1e-12)
    # As in the manual: the central's own object is the rebuilt global problem.
    d.local = types.SimpleNamespace(n=3, m=m, L=L, gradient=lambda v: sum(
        d.map(lambda p: p.gradient(v) * p.m, pids=cluster.pids).values()) / m)
    assert d.where() == [0, 1, 2, 3]
    np.testing.assert_allclose(d.local.gradient(x), global_gradient, rtol=1e-12)
    sgd = SGD(1 / L)
    h = aia.start(sgd, d, {"epoch": 10}, cluster=cluster, verbose=0)
    assert h.epochs[-1] == 10


def test_distributed_problem_without_cluster_argument_uses_its_cluster(cluster):
    d = aia.DistributedObject(lambda pid: pid, cluster)
    h = aia.start(Counter(), d, {"iteration": 6}, verbose=0)
    assert set(h.answer_count) == {1, 2, 3}


def test_a_dead_workers_object_is_a_clear_error(cluster):
    d = aia.DistributedObject(lambda pid: pid, cluster)
    os.kill(cluster.os_pids()[2], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while 2 in cluster.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert d.where() == [1, 3]
    with pytest.raises(RuntimeError, match="worker 2 is dead"):
        d.apply(2, lambda o: o)
    with pytest.raises(RuntimeError, match="worker 2 is dead"):
        aia.start(Counter(), d, {"iteration": 3}, cluster=cluster, verbose=0)
    h = aia.start(Counter(), d, {"iteration": 3}, cluster=cluster, pids=[1, 3], verbose=0)
    assert set(h.answer_count) == {1, 3}


def test_a_constructor_that_raises_names_the_worker(cluster):
    def make(pid):
        if pid == 2:
            raise ValueError("no data at this site")
        return pid

    with pytest.raises(RuntimeError, match="worker 2 failed building the object.*no data"):
        aia.DistributedObject(make, cluster)


def test_objects_are_freed_with_the_cluster():
    with aia.LocalCluster(2) as c:
        d = aia.DistributedObject(lambda pid: np.zeros(10), c)
        assert d.where() == [1, 2]
    assert d.where() == []


class StuckInC(aia.AbstractAlgorithm):
    """Worker 1's answer is one C call that holds the GIL: the interrupt cannot reach it.
    Worker 2 answers only once worker 1 is inside that call (``marker``): the run must not
    end before worker 1 is stuck, or the end-of-run interrupt abandons its answer (as it
    should) and nothing is stuck."""

    def __init__(self, marker):
        self.marker = str(marker)

    def initialize(self, problem):
        return 0

    def answer(self, q, problem):
        if problem == 1:
            open(self.marker, "w").close()
            sum(range(10**13))
        deadline = time.monotonic() + 10
        while not os.path.exists(self.marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        return q

    def central_step(self, a, worker, problem):
        return a


def test_a_worker_replaced_for_being_stuck_loses_its_object(cluster, tmp_path):
    d = aia.DistributedObject(lambda pid: pid, cluster)
    old = cluster.os_pids()[1]
    aia.start(StuckInC(tmp_path / "stuck"), d, {"iteration": 3}, cluster=cluster, pids=[1, 2],
              verbose=0)
    # The next run finds worker 1 still stuck, replaces it, and goes on within resilience.
    t0 = time.monotonic()
    h = aia.start(Counter(), lambda pid: pid, {"iteration": 5}, cluster=cluster, verbose=0)
    assert time.monotonic() - t0 < 5
    assert h.iterations[-1] == 5 and h.failures == []
    assert cluster.os_pids()[1] != old and 1 in cluster.alive()
    assert d.where() == [2, 3]
    with pytest.raises(RuntimeError, match="worker 1 was restarted"):
        d.apply(1, lambda o: o)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", [lambda: aia.LocalCluster(2), lambda: aia.InMemoryCluster(2)])
def test_a_closed_cluster_is_a_clear_error_not_an_empty_answer(engine):
    """A closed cluster has no live worker: map would be {} and look like success."""
    c = engine()
    d = aia.DistributedObject(lambda pid: pid, c)
    assert d.map(lambda o: o * 10) == {1: 10, 2: 20}
    c.close()
    for call in (lambda: d.map(lambda o: o), lambda: d.apply(1, lambda o: o),
                 lambda: aia.DistributedObject(lambda pid: pid, c), c.__enter__):
        with pytest.raises(RuntimeError, match="is closed"):
            call()
