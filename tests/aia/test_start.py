"""`aia.start` on real worker processes: the modes, the counting, the checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

import aia
from algorithms import LRMSE, SGD, make_lrmse_problem

from .algorithms_for_tests import Counter, GradientDescent, Precision, pid_problem


def test_async_iteration_is_exactly_the_number_of_central_steps():
    alg = Counter()
    h = aia.start(alg, pid_problem, {"iteration": 100}, cluster=3, verbose=0)
    assert h.iterations == [0, 100]
    assert alg.q == 100 and len(alg.seen) == 100
    assert sum(h.answer_count.values()) == 100
    assert set(h.answer_count) == {1, 2, 3}
    assert h.queries == [0, 100]
    assert h.timestamps[0] <= h.timestamps[1]


def test_async_epoch_passes_when_every_worker_answered_once_more():
    alg = Counter()
    h = aia.start(alg, pid_problem, {"epoch": 5}, cluster=2, verbose=0)
    # Replay the order of answers: an epoch ends when both workers answered again.
    epoch, answered = 0, set()
    for w in alg.seen:
        answered.add(w)
        if answered == {1, 2}:
            epoch, answered = epoch + 1, set()
    assert epoch == 5 and h.epochs[-1] == 5
    assert h.iterations[-1] == len(alg.seen)
    assert all(c >= 5 for c in h.answer_count.values())


def test_sync_round_is_one_iteration_and_one_epoch():
    alg = Counter()
    h = aia.start(alg, pid_problem, {"iteration": 7}, cluster=3, synchronous=True, verbose=0)
    assert h.iterations[-1] == 7 and h.epochs[-1] == 7
    assert alg.seen == [[1, 2, 3]] * 7
    assert h.answer_count == {1: 7, 2: 7, 3: 7}


def test_non_distributed_run_is_here_and_synchronous():
    alg = Counter()
    h = aia.start(alg, pid_problem, {"iteration": 10}, pids=[0], verbose=0)
    assert alg.seen == [[0]] * 10  # answer(q, problem 0) then sync_central_step([0], [0])
    assert h.answer_count == {0: 10} and h.epochs[-1] == 10


def test_subset_of_workers_on_a_persistent_cluster(cluster):
    alg = Counter()
    h = aia.start(alg, pid_problem, {"iteration": 30}, cluster=cluster, pids=[1, 3], verbose=0)
    assert set(h.answer_count) == {1, 3}
    assert set(alg.seen) <= {1, 3}
    # The same workers serve another run.
    h2 = aia.start(Counter(), pid_problem, {"iteration": 5}, cluster=cluster,
                   synchronous=True, verbose=0)
    assert h2.answer_count == {1: 5, 2: 5, 3: 5}


def test_iteration_zero_runs_no_step():
    h = aia.start(Counter(), pid_problem, {"iteration": 0}, cluster=2, verbose=0)
    assert h.iterations == [0] and h.queries == [0]


def test_saveat_iteration_checkpoints():
    h = aia.start(Counter(), pid_problem, {"iteration": 50}, saveat={"iteration": 10},
                  cluster=2, verbose=0)
    assert h.iterations == [0, 10, 20, 30, 40, 50]
    assert h.queries == h.iterations  # the query of Counter is its step count


def test_saveat_iteration_and_final_state_always_recorded():
    h = aia.start(Counter(), pid_problem, {"iteration": 25}, saveat={"iteration": 10},
                  cluster=2, verbose=0)
    assert h.iterations == [0, 10, 20, 25]


def test_saveat_epoch_checkpoints_once_per_epoch():
    # With 3 workers, an epoch spans several iterations; one checkpoint each epoch multiple.
    h = aia.start(Counter(), pid_problem, {"epoch": 9}, saveat={"epoch": 3}, cluster=3, verbose=0)
    assert h.epochs == [0, 3, 6, 9]
    assert len(set(h.iterations)) == len(h.iterations)


def test_save_answers_async_records_answer_and_worker():
    h = aia.start(Counter(), pid_problem, {"iteration": 12}, saveat={"iteration": 4},
                  save_answers=True, cluster=2, verbose=0)
    assert len(h.answers) == len(h.iterations) - 1 == 3
    assert h.answers == h.answers_origin  # a worker's answer is its own pid
    assert set(h.answers_origin) <= {1, 2}


def test_save_answers_sync_records_the_round():
    h = aia.start(Counter(), pid_problem, {"iteration": 4}, saveat={"iteration": 2},
                  save_answers=True, cluster=2, synchronous=True, verbose=0)
    assert h.answers == [[1, 2], [1, 2]]
    assert h.answers_origin == [[1, 2], [1, 2]]


def test_recorded_queries_are_copies():
    class InPlace(Counter):
        def initialize(self, problem):
            self.v = np.zeros(2)
            return self.v

        def central_step(self, a, worker, problem):
            self.v += 1  # updates the query in place after it was recorded
            return self.v

    h = aia.start(InPlace(), pid_problem, {"iteration": 3}, saveat={"iteration": 1},
                  cluster=2, verbose=0)
    assert [q[0] for q in h.queries] == [0, 1, 2, 3]


def test_every_hook_with_a_custom_precision_criterion():
    make = make_lrmse_problem(n_rows=50, n_features=4, noise=0.0)
    alg = Precision(stepsize=0.1)
    h = aia.start(alg, make, {"iteration": 100000, "precision": 1e-4},
                  saveat={"precision": 1e-3}, synchronous=True, cluster=2, verbose=0)
    assert alg.precision <= 1e-4
    assert h.iterations[-1] < 100000  # stopped by stopnow, not by the iteration limit
    # savenow saved once precision dropped below 1e-3, plus initialization and the end.
    assert h.iterations[0] == 0 and len(h.iterations) > 2
    assert all(p <= 1e-3 for p in h.precisions[1:])  # savevalues ran at each checkpoint
    assert len(h.precisions) == len(h.iterations)
    assert h["precisions"] is h.precisions  # report values are attributes and items
    np.testing.assert_array_equal(h.final, alg.x)


def test_time_limit_ends_the_run():
    h = aia.start(Counter(), pid_problem, {"time": 0.5}, cluster=2, verbose=0)
    assert 0.5 <= h.timestamps[-1] < 1.5
    assert h.iterations[-1] > 0


def test_report_key_colliding_with_a_field_is_an_error():
    class Bad(Counter):
        def report(self):
            return {"iterations": 3}

    with pytest.raises(ValueError, match="collides"):
        aia.start(Bad(), pid_problem, {"iteration": 2}, cluster=2, verbose=0)


def test_staleness_is_recorded_per_worker():
    h = aia.start(Counter(), pid_problem, {"iteration": 60}, cluster=3, verbose=0)
    for w, values in h.staleness.items():
        assert len(values) == h.answer_count[w]
        assert all(0 <= s <= 60 for s in values)
    # Each answer to the first query (iteration 0) came back at some iteration i >= 0.
    hs = aia.start(Counter(), pid_problem, {"iteration": 6}, cluster=3, synchronous=True,
                   verbose=0)
    assert all(v == [0] * 6 for v in hs.staleness.values())


def test_lambdas_and_closures_travel_to_workers():
    offset = 10
    h = aia.start(Counter(), lambda pid: pid + offset - offset, {"iteration": 10}, cluster=2,
                  verbose=0)
    assert h.iterations[-1] == 10


def test_class_defined_in_a_function_runs_on_a_persistent_cluster(cluster):
    class Local(Counter):  # defined after the workers started: sent by value
        pass

    h = aia.start(Local(), pid_problem, {"iteration": 9}, cluster=cluster, verbose=0)
    assert h.iterations[-1] == 9


def test_numpy_answers_are_writable_and_exact():
    class Arrays(aia.AbstractAlgorithm):
        def initialize(self, problem):
            return np.arange(1000.0)

        def answer(self, q, problem):
            q *= 2  # the query arrives writable
            return q

        def sync_central_step(self, answers, workers, problem):
            for a in answers:
                np.testing.assert_array_equal(a, np.arange(1000.0) * 2)
                a += 1
            return np.arange(1000.0)

    aia.start(Arrays(), pid_problem, {"iteration": 3}, cluster=2, synchronous=True, verbose=0)


def test_sync_gradient_descent_converges_to_least_squares():
    make = make_lrmse_problem(n_rows=80, n_features=5, noise=0.5, seed=3)
    blocks = [make(pid) for pid in (1, 2, 3)]
    A = np.vstack([p.A for p in blocks])
    b = np.concatenate([p.b for p in blocks])
    x_star = np.linalg.lstsq(A, b, rcond=None)[0]
    L = LRMSE(A, b).L
    alg = GradientDescent(stepsize=1 / L, n=5)
    aia.start(alg, make, {"iteration": 500}, cluster=3, synchronous=True, verbose=0)
    np.testing.assert_allclose(alg.x, x_star, rtol=1e-8, atol=1e-10)


def test_async_sgd_gets_near_the_solution():
    make = make_lrmse_problem(n_rows=100, n_features=5, noise=0.0, seed=1)
    sgd = SGD(stepsize=0.01, seed=0)
    aia.start(sgd, make, {"epoch": 1500}, cluster=2, verbose=0)
    x_true = np.random.default_rng(1).normal(size=5)
    assert np.linalg.norm(sgd.x - x_true) < 0.1 * np.linalg.norm(x_true)



@pytest.mark.timeout(60)
def test_a_central_problem_that_is_none_says_how_to_set_it():
    """The README's persistent-workers block as it was: problems.local never set."""
    from algorithms import SGD, make_lrmse_problem

    class NeedsProblem(SGD):
        def initialize(self, problem):
            return np.zeros(problem.n)

    with aia.LocalCluster(2) as cluster:
        problems = aia.DistributedObject(make_lrmse_problem(), cluster)
        with pytest.raises(AttributeError) as info:
            aia.start(NeedsProblem(0.01), problems, {"epoch": 2}, cluster=cluster, verbose=0)
        assert "problems.local" in "".join(info.value.__notes__)
        assert info.value.history is not None
        with pytest.raises(ValueError, match="x0=.*problems.local"):
            aia.start(SGD(0.01), problems, {"epoch": 2}, cluster=cluster, verbose=0)
