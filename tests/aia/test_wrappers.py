"""`aia.AggregationAlgorithm` and `aia.AveragingAlgorithm` on real worker processes.

The closed-form tests use integer-valued answers and integer weights: every sum is exact, so
the wrappers' query must equal, bit for bit, ``query`` of the (weighted) mean of the latest
answers, replayed from the recorded history.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import time
from fractions import Fraction

import cloudpickle
import numpy as np
import pytest

import aia
from algorithms import make_lrmse_problem

from .algorithms_for_tests import pid_problem

# -- inner algorithms --------------------------------------------------------------------


class PidVectors(aia.AbstractAlgorithm):
    """Worker ``pid`` answers ``floor(q) + pid * [1, 2, ...]`` (reshaped): integer values.

    ``query`` adds 0.5, so the next answers depend on which query a worker got. At the central
    it records the staleness the wrapper forwarded.
    """

    def __init__(self, shape=(3,)):
        self.shape = shape
        self.staleness_seen = []

    def initialize(self, problem):
        return np.zeros(self.shape)

    def answer(self, q, problem):
        pid = problem
        ramp = np.arange(1, int(np.prod(self.shape)) + 1, dtype=float).reshape(self.shape)
        return np.floor(q) + pid * ramp

    def aggregate(self, answers, workers):
        return np.mean(answers, axis=0)

    def query(self, aggregated, problem):
        self.staleness_seen.append(copy.copy(self.staleness))
        return aggregated + 0.5


class PidFloats(PidVectors):
    """The same with Python floats: worker ``pid`` answers ``floor(q) + pid``."""

    def initialize(self, problem):
        return 0.0

    def answer(self, q, problem):
        return float(math.floor(q) + problem)

    def aggregate(self, answers, workers):
        return sum(answers) / len(answers)


class Hooked:
    """Defines every hook, reading custom keys ``calls`` (stopat) and ``every`` (saveat).

    Not an AbstractAlgorithm: the wrappers take any object with the needed methods.
    """

    def __init__(self):
        self.calls = 0
        self.saved = []

    def initialize(self, problem):
        self.calls = 0
        return np.zeros(2)

    def answer(self, q, problem):
        return q + problem

    def aggregate(self, answers, workers):
        return np.mean(answers, axis=0)

    def query(self, aggregated, problem):
        self.calls += 1
        return aggregated

    def stopnow(self, stopat):
        return self.calls >= stopat["calls"]

    def savenow(self, saveat):
        return self.calls % saveat["every"] == 0

    def savevalues(self):
        self.saved.append(self.calls)

    def report(self):
        return {"calls": self.calls, "saved": list(self.saved)}

    def progress(self, stopat):
        return self.calls / stopat["calls"]

    def showvalues(self):
        return [("calls_shown", self.calls)]


class Bare:
    """initialize, answer, aggregate and query only: no hook."""

    def initialize(self, problem):
        return 0.0

    def answer(self, q, problem):
        return float(problem)

    def aggregate(self, answers, workers):
        return sum(answers)

    def query(self, aggregated, problem):
        return aggregated


class ToBeAveragedGD(aia.AbstractAlgorithm):
    """The Julia manual's example: each worker takes a gradient step from the query."""

    def __init__(self, q1, stepsize):
        self.q1 = q1
        self.stepsize = stepsize

    def initialize(self, problem):
        return self.q1

    def query(self, a, problem):
        return a

    def answer(self, q, problem):
        return q - self.stepsize * problem.gradient(q)


class Given:
    """In-process use: the answer is whatever is passed as the problem."""

    def initialize(self, problem):
        return 0.0

    def answer(self, q, problem):
        return problem

    def query(self, a, problem):
        return a


# -- replay of the closed forms ----------------------------------------------------------


def mean_of(latest, weights=None):
    """The (weighted) mean of ``{worker: answer}`` in increasing worker order."""
    workers = sorted(latest)
    if weights is None:
        return np.mean([latest[w] for w in workers], axis=0)
    total = math.fsum(weights[w] for w in workers)
    return sum(weights[w] * np.asarray(latest[w]) for w in workers) / total


def replay_async(inner, h, closed_form):
    """Check every recorded query against ``query(closed_form(latest answers))``."""
    assert h.iterations == list(range(len(h.queries)))
    last_query = {}  # the query each worker is answering
    latest = {}
    for k, worker in enumerate(h.answers_origin, start=1):
        q = last_query.get(worker, h.queries[0])
        latest[worker] = inner.answer(q, worker)
        expected = closed_form(latest) + 0.5
        assert np.array_equal(h.queries[k], expected), (k, h.queries[k], expected)
        last_query[worker] = h.queries[k]
    return latest


def replay_sync(inner, h, closed_form, workers):
    assert h.iterations == list(range(len(h.queries)))
    for k, origin in enumerate(h.answers_origin, start=1):
        assert list(origin) == workers
        latest = {w: inner.answer(h.queries[k - 1], w) for w in workers}
        expected = closed_form(latest) + 0.5
        assert np.array_equal(h.queries[k], expected), (k, h.queries[k], expected)


# -- AggregationAlgorithm ----------------------------------------------------------------


def test_aggregation_async_steps_on_the_aggregate_of_the_latest_answers():
    inner = PidVectors()
    alg = aia.AggregationAlgorithm(inner)
    h = aia.start(alg, pid_problem, {"epoch": 30}, saveat={"iteration": 1},
                  save_answers=True, cluster=3, verbose=0)
    assert len(h.queries) == h.iterations[-1] + 1
    latest = replay_async(PidVectors(), h, mean_of)
    # The raw answers are what the workers sent, and the central holds the latest of each.
    assert set(alg.latest_answers) == {1, 2, 3}
    for w, a in alg.latest_answers.items():
        assert np.array_equal(a, latest[w])
    assert all(isinstance(s, int) and s >= 0 for s in alg.inner.staleness_seen)
    assert len(alg.inner.staleness_seen) == h.iterations[-1]


def test_aggregation_sync_steps_on_the_aggregate_of_the_round():
    alg = aia.AggregationAlgorithm(PidVectors(shape=(2, 2)))
    h = aia.start(alg, pid_problem, {"iteration": 25}, saveat={"iteration": 1},
                  save_answers=True, cluster=3, synchronous=True, verbose=0)
    replay_sync(PidVectors(shape=(2, 2)), h, mean_of, [1, 2, 3])
    assert alg.inner.staleness_seen == [[0, 0, 0]] * 25
    assert alg.central_memory()["arrays"] == 3


def test_aggregation_passes_answers_and_workers_in_worker_order():
    class Recording(Bare):
        def __init__(self):
            self.seen = []

        def aggregate(self, answers, workers):
            self.seen.append((list(answers), list(workers)))
            return sum(answers)

    alg = aia.AggregationAlgorithm(Recording())
    aia.start(alg, pid_problem, {"epoch": 3}, cluster=3, verbose=0)  # all have answered
    for answers, workers in alg.inner.seen:
        assert workers == sorted(workers) and answers == [float(w) for w in workers]
    assert alg.inner.seen[-1][1] == [1, 2, 3]


# -- AveragingAlgorithm: closed forms ----------------------------------------------------

WEIGHTS = {1: 1, 2: 2, 3: 5}


def test_averaging_async_is_the_weighted_mean_of_the_latest_answers():
    alg = aia.AveragingAlgorithm(PidVectors(shape=(2, 3)), weights=WEIGHTS)
    h = aia.start(alg, pid_problem, {"iteration": 150}, saveat={"iteration": 1},
                  save_answers=True, cluster=3, verbose=0)
    latest = replay_async(PidVectors(shape=(2, 3)),
                          h, lambda latest: mean_of(latest, WEIGHTS))
    # The messages are the changes: each worker's sum of deltas is its latest answer.
    for w in latest:
        sent = sum(a for a, o in zip(h.answers, h.answers_origin) if o == w)
        assert np.array_equal(sent, latest[w])
    assert np.array_equal(alg.average(), mean_of(latest, WEIGHTS))
    assert all(isinstance(s, int) for s in alg.inner.staleness_seen)


def test_averaging_async_with_equal_weights_is_the_mean():
    alg = aia.AveragingAlgorithm(PidVectors())
    h = aia.start(alg, pid_problem, {"iteration": 100}, saveat={"iteration": 1},
                  save_answers=True, cluster=2, verbose=0)
    replay_async(PidVectors(), h, mean_of)


def test_averaging_sync_is_the_weighted_mean_of_the_round_from_the_first_step():
    alg = aia.AveragingAlgorithm(PidVectors(), weights=WEIGHTS)
    h = aia.start(alg, pid_problem, {"iteration": 30}, saveat={"iteration": 1},
                  save_answers=True, cluster=3, synchronous=True, verbose=0)
    replay_sync(PidVectors(), h, lambda latest: mean_of(latest, WEIGHTS), [1, 2, 3])
    assert alg.inner.staleness_seen == [[0, 0, 0]] * 30


@pytest.mark.parametrize("synchronous", [False, True])
def test_averaging_python_floats(synchronous):
    alg = aia.AveragingAlgorithm(PidFloats(), weights=WEIGHTS)
    h = aia.start(alg, pid_problem, {"iteration": 60}, saveat={"iteration": 1},
                  save_answers=True, cluster=3, synchronous=synchronous, verbose=0)
    assert all(type(q) is float for q in h.queries)
    closed = lambda latest: mean_of(latest, WEIGHTS)  # noqa: E731
    if synchronous:
        replay_sync(PidFloats(), h, closed, [1, 2, 3])
    else:
        replay_async(PidFloats(), h, closed)


def test_averaging_non_distributed_run():
    alg = aia.AveragingAlgorithm(PidVectors())
    h = aia.start(alg, pid_problem, {"iteration": 5}, saveat={"iteration": 1}, pids=[0],
                  verbose=0)
    q = np.zeros(3)
    for k in range(1, 6):
        q = PidVectors().answer(q, 0) + 0.5
        assert np.array_equal(h.queries[k], q)


def test_a_wrapper_serves_two_runs_and_pickles_without_run_state():
    alg = aia.AveragingAlgorithm(PidVectors(), weights=WEIGHTS)
    for _ in range(2):  # initialize resets the central's state
        h = aia.start(alg, pid_problem, {"iteration": 20}, saveat={"iteration": 1},
                      save_answers=True, cluster=3, synchronous=True, verbose=0)
        replay_sync(PidVectors(), h, lambda latest: mean_of(latest, WEIGHTS), [1, 2, 3])
    assert alg.central_memory()["workers"] == 3
    copy_ = cloudpickle.loads(cloudpickle.dumps(alg))
    assert copy_.central_memory() == {"arrays": 0, "nbytes": 0, "workers": 0}
    assert copy_.weights == {1: 1.0, 2: 2.0, 3: 5.0} and copy_.average() is None
    agg = aia.AggregationAlgorithm(PidVectors())
    aia.start(agg, pid_problem, {"iteration": 5}, cluster=2, verbose=0)
    assert agg.latest_answers and not pickle.loads(pickle.dumps(agg)).latest_answers


# -- hooks and staleness -----------------------------------------------------------------


@pytest.mark.parametrize("wrapper", [aia.AggregationAlgorithm, aia.AveragingAlgorithm])
@pytest.mark.parametrize("synchronous", [False, True])
def test_every_hook_is_forwarded(wrapper, synchronous):
    alg = wrapper(Hooked())
    out = io.StringIO()
    h = aia.start(alg, pid_problem, {"calls": 17}, saveat={"every": 5}, cluster=2,
                  synchronous=synchronous, verbose=2, progress_file=out)
    # stopnow: the custom key ended the run; report: its values are in the history.
    assert h.iterations[-1] == 17 and h.calls == 17 == h["calls"]
    # savenow + savevalues: initialization, every 5 calls, and the end.
    assert h.saved == [0, 5, 10, 15, 17]
    assert h.iterations == [0, 5, 10, 15, 17]
    # progress and showvalues reached the bar.
    assert "calls_shown: 17" in out.getvalue()
    assert alg.progress({"calls": 34}) == 0.5
    assert alg.showvalues() == [("calls_shown", 17)]


@pytest.mark.parametrize("wrapper", [aia.AggregationAlgorithm, aia.AveragingAlgorithm])
def test_an_inner_without_hooks_gets_the_defaults(wrapper):
    alg = wrapper(Bare())
    assert alg.stopnow({"x": 1}) is False and alg.savenow({"x": 1}) is False
    assert alg.savevalues() is None and alg.report() == {}
    assert alg.progress({"x": 1}) == 0.0 and alg.showvalues() == []
    h = aia.start(alg, pid_problem, {"iteration": 10}, cluster=2, verbose=0)
    assert h.iterations[-1] == 10
    with pytest.raises(ValueError, match="read by nothing"):
        aia.start(alg, pid_problem, {"iteration": 10, "precision": 1e-3}, cluster=2,
                  verbose=0)


def test_staleness_reaches_inner_before_it_is_called():
    class Checking(PidVectors):
        def __init__(self):
            super().__init__()
            self.staleness = "unset"

    alg = aia.AveragingAlgorithm(Checking())
    h = aia.start(alg, pid_problem, {"epoch": 5}, cluster=3, verbose=0)
    seen = alg.inner.staleness_seen
    assert len(seen) == h.iterations[-1] and "unset" not in seen
    assert all(isinstance(s, int) and 0 <= s < len(seen) for s in seen)
    # The first answers of the second and third workers to answer are of query 0, consumed
    # after the first central step.
    assert any(s > 0 for s in seen)
    alg.staleness = 7
    assert alg.staleness == 7 == alg.inner.staleness


def test_inner_missing_a_step_is_a_type_error():
    class NoAggregate:
        def initialize(self, problem): ...
        def answer(self, q, problem): ...
        def query(self, a, problem): ...

    with pytest.raises(TypeError, match="aggregate"):
        aia.AggregationAlgorithm(NoAggregate())
    aia.AveragingAlgorithm(NoAggregate())  # averaging needs no aggregate

    class OnlyAnswer(aia.AbstractAlgorithm):
        def answer(self, q, problem): ...

    with pytest.raises(TypeError, match=r"initialize\(problem\).*query\(average"):
        aia.AveragingAlgorithm(OnlyAnswer())


# -- central memory ----------------------------------------------------------------------


def test_averaging_central_memory_does_not_grow_with_the_workers():
    size = 1000
    memory = {}
    with aia.LocalCluster(6) as cluster:
        for pids in ([1, 2], [1, 2, 3, 4, 5, 6]):
            averaging = aia.AveragingAlgorithm(PidVectors(shape=(size,)))
            aia.start(averaging, pid_problem, {"epoch": 3}, cluster=cluster, pids=pids,
                      verbose=0)
            aggregation = aia.AggregationAlgorithm(PidVectors(shape=(size,)))
            aia.start(aggregation, pid_problem, {"epoch": 3}, cluster=cluster, pids=pids,
                      verbose=0)
            memory[len(pids)] = (averaging.central_memory(), aggregation.central_memory())
    answer_bytes = size * 8
    for n in (2, 6):
        averaging, aggregation = memory[n]
        # The running sum and its compensation: two answers' worth, whatever n.
        assert averaging == {"arrays": 2, "nbytes": 2 * answer_bytes, "workers": n}
        assert aggregation == {"arrays": n, "nbytes": n * answer_bytes, "workers": n}


# -- weights -----------------------------------------------------------------------------


@pytest.mark.parametrize("weights, error", [
    ({1: 0.0, 2: 1.0}, ValueError),
    ({1: -1.0}, ValueError),
    ({1: float("nan")}, ValueError),
    ({1: float("inf")}, ValueError),
    ({1: True}, ValueError),
    ({1: "2"}, ValueError),
    ({-1: 1.0}, ValueError),
    ({"1": 1.0}, ValueError),
    ({}, ValueError),
    ([1.0, 2.0], TypeError),
])
def test_invalid_weights_are_rejected_at_construction(weights, error):
    with pytest.raises(error, match="weights"):
        aia.AveragingAlgorithm(PidVectors(), weights=weights)


@pytest.mark.parametrize("synchronous", [False, True])
def test_a_worker_without_weight_is_a_value_error(synchronous):
    alg = aia.AveragingAlgorithm(PidVectors(), weights={1: 1.0, 3: 2.0})
    # start checks the weights against the run's workers before any process starts.
    with pytest.raises(ValueError, match=r"no weight for worker\(s\) \[2\]"):
        aia.start(alg, pid_problem, {"epoch": 5}, cluster=3, synchronous=synchronous,
                  verbose=0)
    with pytest.raises(ValueError, match=r"worker\(s\) \[2\]"):
        alg.check_workers([1, 2, 3])
    alg.check_workers([1, 3])
    # A weight for a worker that does not take part is harmless.
    h = aia.start(alg, pid_problem, {"iteration": 10}, cluster=3, pids=[1, 3], verbose=0)
    assert h.iterations[-1] == 10


def test_averaging_rejects_mismatched_or_non_finite_answers():
    alg = aia.AveragingAlgorithm(Given())
    worker = copy.deepcopy(alg)
    alg.initialize(None)
    alg.central_step(worker.answer(None, np.ones(3)), 1, None)
    other = copy.deepcopy(aia.AveragingAlgorithm(Given()))
    with pytest.raises(ValueError, match="shape"):
        alg.central_step(other.answer(None, np.ones(4)), 2, None)
    with pytest.raises(ValueError, match="shape"):
        worker.answer(None, np.ones(2))
    with pytest.raises(ValueError, match="NaN or infinity"):
        worker.answer(None, np.array([1.0, np.nan, 0.0]))
    with pytest.raises(TypeError, match="real"):
        worker.answer(None, np.array([1j, 0, 0]))
    assert np.array_equal(alg.average(), np.ones(3))  # the rejected message changed nothing


# -- drift guard -------------------------------------------------------------------------


def exact_weighted_mean(latest, weights):
    """In rationals, rounded once."""
    total = sum(Fraction(weights[w]) for w in latest)
    if np.ndim(next(iter(latest.values()))) == 0:
        return float(sum(Fraction(weights[w]) * Fraction(latest[w]) for w in latest) / total)
    arrays = {w: np.asarray(a, dtype=float).ravel() for w, a in latest.items()}
    n = len(next(iter(arrays.values())))
    return np.array([float(sum(Fraction(weights[w]) * Fraction(arrays[w][i]) for w in arrays)
                           / total) for i in range(n)])


def simulate(weights, steps, draw, seed=0):
    """Asynchronous-style updates in process: random workers, each with its own copy."""
    central = aia.AveragingAlgorithm(Given(), weights=weights)
    workers = {w: cloudpickle.loads(cloudpickle.dumps(central)) for w in weights}
    central.initialize(None)
    rng = np.random.default_rng(seed)
    latest, naive, previous, count = {}, 0.0, {}, dict.fromkeys(weights, 0)
    for w in rng.integers(1, len(weights) + 1, size=steps).tolist():
        count[w] += 1
        a = draw(rng, w, count[w])  # the answer number count[w] of worker w
        q = central.central_step(workers[w].answer(None, a), w, None)
        latest[w] = a
        # What a plain running sum of deltas would hold.
        naive = naive + weights[w] * (a - previous.get(w, 0.0))
        previous[w] = a
    assert q is not None
    return central, latest, naive / math.fsum(weights[w] for w in latest)


def test_drift_guard_random_updates_match_the_exact_weighted_mean():
    weights = {1: 0.3, 2: 1.7, 3: 2.9, 4: 1.0}
    central, latest, _ = simulate(weights, 100_000,
                                  lambda rng, w, n: float(rng.normal(5.0, 1000.0)))
    exact = exact_weighted_mean(latest, weights)
    scale = max(abs(a) for a in latest.values())
    assert abs(central.average() - exact) <= 1e-15 * scale


def test_drift_guard_keeps_creeping_changes_a_plain_running_sum_loses():
    # Worker 1 answers 1.0, worker 2 creeps up by 5e-17 per answer: each change is below half
    # an ulp of the running sum, so a plain running sum never moves; after its ~50000 answers
    # it is off by ~2.5e-12 relative. The compensated sum keeps every change.
    weights = {1: 1.0, 2: 1.0}
    central, latest, naive = simulate(weights, 100_000,
                                      lambda rng, w, n: 1.0 if w == 1 else n * 5e-17)
    exact = exact_weighted_mean(latest, weights)
    assert abs(naive - exact) / exact > 1e-12  # the failure being guarded against
    assert abs(central.average() - exact) / exact <= 1e-15


def test_drift_guard_arrays_with_weights():
    weights = {1: 0.3, 2: 1.7, 3: 2.9}
    central, latest, _ = simulate(
        weights, 20_000,
        lambda rng, w, n: rng.uniform(0.1, 10.0, size=(2, 2)) * 10.0 ** rng.integers(-3, 4))
    exact = exact_weighted_mean(latest, weights).reshape(2, 2)
    assert central.average().shape == (2, 2)
    np.testing.assert_allclose(central.average(), exact, rtol=1e-12, atol=0)
    assert central.central_memory() == {"arrays": 2, "nbytes": 64, "workers": 3}


# -- the manual's example ----------------------------------------------------------------


def test_to_be_averaged_gd_converges_to_the_least_squares_solution():
    make_problem = make_lrmse_problem(n_rows=100, n_features=10, seed=3)
    blocks = [make_problem(pid) for pid in (1, 2, 3)]
    A = np.vstack([p.A for p in blocks])
    b = np.concatenate([p.b for p in blocks])
    x_star = np.linalg.lstsq(A, b, rcond=None)[0]
    stepsize = 1.0 / max(p.L for p in blocks)
    alg = aia.AveragingAlgorithm(ToBeAveragedGD(np.zeros(10), stepsize))
    h = aia.start(alg, make_problem, {"epoch": 200}, cluster=3, synchronous=True, verbose=0)
    # Equal blocks and weights: the average of the workers' steps is a full gradient step.
    assert np.linalg.norm(h.queries[-1] - x_star) <= 1e-8 * np.linalg.norm(x_star)
    # The same with the aggregation wrapper and a mean.
    alg = aia.AggregationAlgorithm(ToBeAggregatedGD(np.zeros(10), stepsize))
    h = aia.start(alg, make_problem, {"epoch": 200}, cluster=3, synchronous=True, verbose=0)
    assert np.linalg.norm(h.queries[-1] - x_star) <= 1e-8 * np.linalg.norm(x_star)


class ToBeAggregatedGD(ToBeAveragedGD):
    def aggregate(self, answers, workers):
        return np.mean(answers, axis=0)


def test_missing_weight_is_caught_before_any_process_starts():
    import psutil

    class Inner:
        def initialize(self, problem):
            return 0.0

        def answer(self, q, problem):
            return 1.0

        def query(self, average, problem):
            return average

    before = len(psutil.Process().children(recursive=True))
    with pytest.raises(ValueError, match=r"no weight for worker\(s\) \[2\]"):
        aia.start(aia.AveragingAlgorithm(Inner(), weights={1: 1.0}), lambda pid: None,
                  {"iteration": 3}, cluster=2, verbose=0)
    assert len(psutil.Process().children(recursive=True)) == before


class DiesOnWorker2:
    """Worker 2 exits at its third answer; every answer is the worker's id."""

    def __init__(self):
        self.seen = []

    def initialize(self, problem):
        return 0

    def answer(self, q, problem):
        import os as _os

        self.count = getattr(self, "count", 0) + 1
        if problem == 2 and self.count == 3:
            _os._exit(3)
        time.sleep(0.002)  # every worker takes turns, whatever the scheduler
        return float(problem)

    def aggregate(self, answers, workers):
        self.seen.append(list(workers))
        return sum(answers)

    def query(self, aggregated, problem):
        return len(self.seen)


@pytest.mark.parametrize("synchronous", [True, False])
def test_a_failed_worker_leaves_the_aggregate(synchronous):
    alg = aia.AggregationAlgorithm(DiesOnWorker2())
    h = aia.start(alg, pid_problem, {"iteration": 60}, cluster=3, resilience=1,
                  synchronous=synchronous, verbose=0)
    assert [f.worker for f in h.failures] == [2]
    seen = alg.inner.seen
    assert any(2 in workers for workers in seen)  # it was aggregated while it lived
    after = seen[h.failures[0].iteration:]  # from the step that followed the failure
    assert after and all(workers == [1, 3] for workers in after)
    assert set(alg.latest_answers) == {1, 3}
