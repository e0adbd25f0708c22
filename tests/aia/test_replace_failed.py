"""``aia.start(..., replace_failed=True)``: a failed worker's slot gets a fresh worker, its
problem rebuilt, so a long run's pool does not shrink; ``resilience`` still bounds it."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import aia

from .algorithms_for_tests import Counter, pid_problem
from .failure_helpers import FailingProblem, FailOnce, SignalsItselfAtItsThirdAnswer


#: The cluster whose workers `KillsEachWorkerOnce` kills (read on the central only: the
#: algorithm itself must travel to the workers, and a cluster cannot).
TARGET = {}


class KillsEachWorkerOnce(Counter):
    """On the central: at steps 5, 10 and 15 sends SIGKILL to worker 1, 2, then 3 (the
    operating-system process that serves it at that moment) of ``TARGET["cluster"]``."""

    def __init__(self, at=(5, 10, 15)):
        super().__init__()
        self.at = at  # the steps at which worker 1, 2, ... is killed
        self.killed = []

    def answer(self, q, problem):
        time.sleep(0.002)  # so that every worker takes part in the asynchronous mode
        return super().answer(q, problem)

    def _maybe_kill(self):
        if self.q in self.at:
            worker = self.at.index(self.q) + 1
            pid = TARGET["cluster"].os_pids()[worker]
            os.kill(pid, signal.SIGKILL)
            self.killed.append((worker, pid))

    def central_step(self, a, worker, problem):
        q = super().central_step(a, worker, problem)
        self._maybe_kill()
        return q

    def sync_central_step(self, answers, workers, problem):
        q = super().sync_central_step(answers, workers, problem)
        self._maybe_kill()
        return q


@pytest.mark.timeout(90)
@pytest.mark.parametrize("synchronous", [False, True])
def test_three_workers_killed_once_each_are_replaced(synchronous):
    with aia.LocalCluster(3) as cluster:
        TARGET["cluster"] = cluster
        alg = KillsEachWorkerOnce()
        h = aia.start(alg, pid_problem, {"iteration": 60}, cluster=cluster,
                      synchronous=synchronous, resilience=3, replace_failed=True, verbose=0)
        # (in the order their deaths were seen: a kill may outrun the sight of the last)
        assert sorted(f.worker for f in h.failures) == [1, 2, 3]
        assert all("SIGKILL" in f.cause or "killed" in f.cause or "signal 9" in f.cause
                   for f in h.failures), [f.cause for f in h.failures]
        assert sorted(f.os_pid for f in h.failures) == sorted(pid for _, pid in alg.killed)
        assert h.iterations[-1] == 60
        assert cluster.alive() == [1, 2, 3], "three live workers at the end"
        fresh = cluster.os_pids()
        assert all(fresh[w] != pid for w, pid in alg.killed), "each slot has a new process"
        assert all(cluster.generation(w) == 1 for w in (1, 2, 3))
        # Every slot answered after its replacement (the last kill was at step 15 of 60).
        last = alg.seen[30:]
        flat = [w for step in last for w in (step if synchronous else [step])]
        assert set(flat) == {1, 2, 3}


@pytest.mark.timeout(60)
def test_without_replacement_the_pool_shrinks():
    with aia.LocalCluster(3) as cluster:
        TARGET["cluster"] = cluster
        alg = KillsEachWorkerOnce(at=(5, 10))
        h = aia.start(alg, pid_problem, {"iteration": 600}, cluster=cluster, resilience=2,
                      verbose=0)
        assert sorted(f.worker for f in h.failures) == [1, 2]
        assert cluster.alive() == [3]


@pytest.mark.timeout(60)
def test_resilience_still_bounds_the_failures_of_replaced_workers():
    """A constructor that always raises on worker 1: each replacement fails too, until one
    failure more than ``resilience`` ends the run with its history."""
    with pytest.raises(aia.WorkerFailedError) as info:
        aia.start(FailOnce(), FailingProblem("raise"), {"iteration": 10}, cluster=2,
                  resilience=2, replace_failed=True, verbose=0)
    assert [f.worker for f in info.value.failures] == [1, 1, 1]
    assert info.value.history is not None


class RaisesOnQuery3(Counter):
    """Worker 1 raises when it is asked query 3 (once in a synchronous run)."""

    def answer(self, q, problem):
        if problem == 1 and q == 3:
            raise ArithmeticError("worker 1 cannot answer query 3")
        return super().answer(q, problem)


@pytest.mark.timeout(30)
def test_a_raising_answer_is_replaced_in_a_temporary_cluster():
    h = aia.start(RaisesOnQuery3(), pid_problem, {"iteration": 8}, cluster=2,
                  synchronous=True, resilience=1, replace_failed=True, verbose=0)
    (failure,) = h.failures
    assert failure.worker == 1 and "ArithmeticError" in failure.cause
    assert failure.iteration == 3
    # It missed round 3 only: the fresh worker joined the next round.
    assert h.answer_count == {1: 7, 2: 8}, h.answer_count


def test_bad_uses_are_refused_before_any_process_starts():
    with pytest.raises(TypeError, match="replace_failed: expected True or False, got 'yes'"):
        aia.start(Counter(), pid_problem, {"iteration": 1}, cluster=2, replace_failed="yes")
    with pytest.raises(TypeError, match="InMemoryCluster cannot start a fresh worker"):
        aia.start(Counter(), pid_problem, {"iteration": 1}, cluster=aia.InMemoryCluster(2),
                  replace_failed=True, verbose=0)
    with aia.LocalCluster(2) as cluster:
        obj = aia.DistributedObject(lambda pid: np.full(2, pid), cluster)
        with pytest.raises(ValueError, match="DistributedObject problem: a fresh worker"):
            aia.start(Counter(), obj, {"iteration": 1}, cluster=cluster, replace_failed=True,
                      verbose=0)


@pytest.mark.timeout(90)
def test_a_round_in_which_every_worker_failed_is_asked_again_not_stepped_on():
    """When all the workers of a synchronous round fail and fresh ones take their slots,
    the round has no answers: the central step is not called with none (it would step on
    nothing: an SGD's mean of no gradients is NaN), the query goes to the fresh workers."""
    with aia.LocalCluster(2) as cluster:
        alg = SignalsItselfAtItsThirdAnswer(signal.SIGKILL)
        h = aia.start(alg, pid_problem, {"iteration": 8}, cluster=cluster,
                      synchronous=True, resilience=20, replace_failed=True, verbose=0)
    assert len(h.failures) >= 2
    assert h.iterations[-1] == 8 and h.queries[-1] == 8
    assert h.answer_count == {1: 8, 2: 8}
