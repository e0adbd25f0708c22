"""The seam's contract (`aia.cluster.Cluster`), one suite for every engine.

An engine is an engine when it passes: `aia.InMemoryCluster`, `aia.LocalCluster`,
`aia.RayCluster` (a real local Ray runtime on 127.0.0.1, skipped without Ray) and
`aia.FolderCluster` (real site processes on a folder under tmp). Each case runs what the
engine can produce; what it cannot (a folder site runs only registered algorithms, so no test
algorithm and no DistributedObject) is skipped or, for the object store, a TypeError.

The Ray runtime and the folder's sites live for the module (starting them per test would
cost seconds each); `no_leftover_processes` below checks each test against them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import aia
from algorithms import SGD, make_lrmse_problem

from tests.processes import living_children

from .algorithms_for_tests import Counter, pid_problem
from .failure_helpers import FailingProblem, FailOnce, FailureError

REPO = Path(__file__).resolve().parents[2]
ENGINES = ["memory", "local", "ray", "folder"]
POLL = 0.02
MAKE = make_lrmse_problem(n_rows=40, n_features=4, seed=0)
N = 2  # workers of every engine (Ray's runtime has 2 CPUs)

#: Processes of the module-wide engines (Ray's runtime, the folder's sites).
_MODULE_PROCESSES: set = set()


def _children() -> set:
    return {p.pid for p in living_children()}


def _sgd() -> SGD:
    return SGD(0.05, x0=np.zeros(4), seed=1)


class _Sites:
    """``python -m aia.folder site`` processes for sites s1..sN on one folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs = []
        for pid in range(1, N + 1):
            p = MAKE(pid)
            np.savez(folder / f"s{pid}.npz", A=p.A, b=p.b)
            log = open(folder / f"s{pid}.log", "ab")
            self.procs.append((subprocess.Popen(
                [sys.executable, "-m", "aia.folder", "site", "--folder", str(folder),
                 "--site", f"s{pid}", "--data", str(folder / f"s{pid}.npz"),
                 "--poll", str(POLL), "--timeout", "120"],
                stdout=log, stderr=subprocess.STDOUT), log))

    def stop(self) -> None:
        for p, log in self.procs:
            try:
                p.wait(20)  # the finished session makes them exit
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            log.close()


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    before = _children()
    cluster = aia.RayCluster(N, num_cpus=2, log_to_driver=False,
                             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    _MODULE_PROCESSES.update(_children() - before)
    yield cluster
    cluster.close()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def folder_cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract-folder")
    before = _children()
    sites = _Sites(folder)
    _MODULE_PROCESSES.update(_children() - before)
    cluster = aia.FolderCluster(folder, [f"s{p}" for p in range(1, N + 1)], poll=POLL,
                                timeout=60)
    yield cluster
    cluster.finish()
    cluster.close()
    sites.stop()


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Replaces conftest's check: the module-wide engines' processes (and Ray's, which it
    starts as it pleases) are allowed; anything else a test started must be gone."""
    before = _children()
    yield
    left = []
    for _ in range(50):
        left = [p for p in living_children() if p.pid not in before
                and p.pid not in _MODULE_PROCESSES and not _is_ray(p)]
        if not left:
            break
        psutil.wait_procs(left, timeout=0.1)
    assert not left, f"child processes left behind: {[(p.pid, p.cmdline()) for p in left]}"


def _is_ray(p: psutil.Process) -> bool:
    try:
        return "ray" in " ".join(p.cmdline()).lower()
    except psutil.Error:
        return True  # gone meanwhile


class Engine:
    """One engine under test: its shared cluster, fresh clusters, and what it can do."""

    def __init__(self, name: str, request):
        self.name = name
        self.request = request
        self.owned: list = []

    @property
    def runs_any_algorithm(self) -> bool:
        return self.name != "folder"

    @property
    def stores_objects(self) -> bool:
        return self.name != "folder"

    def cluster(self):
        """The engine's cluster of N workers (shared for Ray and the folder)."""
        if self.name == "ray":
            return self.request.getfixturevalue("ray_runtime")
        if self.name == "folder":
            return self.request.getfixturevalue("folder_cluster")
        return self.fresh()

    def fresh(self):
        """A cluster of N workers of its own (workers may die in it), closed after the test."""
        if self.name == "memory":
            c = aia.InMemoryCluster(N)
        elif self.name == "local":
            c = aia.LocalCluster(N)
        elif self.name == "ray":
            self.request.getfixturevalue("ray_runtime")
            c = aia.RayCluster(N)  # attaches to the module's runtime
        else:
            pytest.skip("folder sites cannot be made to fail on demand here "
                        "(tests/aia/test_folder.py covers the folder's failures)")
        self.owned.append(c)
        return c

    def need_any_algorithm(self) -> None:
        if not self.runs_any_algorithm:
            pytest.skip("a folder site runs only algorithms registered at the site")

    def close(self) -> None:
        for c in self.owned:
            c.close()


@pytest.fixture(params=ENGINES)
def engine(request):
    e = Engine(request.param, request)
    yield e
    e.close()


# -- modes and counting --------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_synchronous_run_counts_rounds_and_matches_every_other_engine(engine):
    h = aia.start(_sgd(), MAKE, {"iteration": 6}, saveat={"iteration": 2},
                  cluster=engine.cluster(), synchronous=True, verbose=0)
    assert h.iterations == [0, 2, 4, 6]
    assert h.epochs == [0, 2, 4, 6]
    assert h.answer_count == {p: 6 for p in range(1, N + 1)}
    assert h.failures == []
    reference = aia.start(_sgd(), MAKE, {"iteration": 6}, cluster=aia.InMemoryCluster(N),
                          synchronous=True, verbose=0)
    assert np.array_equal(h.queries[-1], reference.queries[-1]), \
        "a synchronous run must give the same result on every engine"


@pytest.mark.timeout(60)
def test_an_asynchronous_run_counts_iterations_epochs_and_answers(engine):
    h = aia.start(_sgd(), MAKE, {"epoch": 4}, cluster=engine.cluster(), verbose=0)
    assert h.epochs[-1] == 4
    assert min(h.answer_count.values()) >= 4
    assert sum(h.answer_count.values()) == h.iterations[-1]  # one step per answer
    assert len(h.queries) == len(h.iterations) == len(h.timestamps)


@pytest.mark.timeout(60)
def test_the_iteration_limit_stops_an_asynchronous_run_exactly(engine):
    h = aia.start(_sgd(), MAKE, {"iteration": 7}, cluster=engine.cluster(), verbose=0)
    assert h.iterations[-1] == 7 and sum(h.answer_count.values()) == 7


# -- hooks -----------------------------------------------------------------------------------

class StopsAtFive(Counter):
    """A custom stop criterion and a reported value (the hooks of the protocol)."""

    def stopnow(self, stopat):
        return self.q >= stopat["fives"] * 5

    def report(self):
        return {"steps": self.q}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("synchronous", [False, True])
def test_hooks_stop_the_run_and_report(engine, synchronous):
    engine.need_any_algorithm()
    alg = StopsAtFive()
    h = aia.start(alg, pid_problem, {"fives": 1, "iteration": 100}, cluster=engine.cluster(),
                  synchronous=synchronous, verbose=0)
    assert h.iterations[-1] == 5 and alg.q == 5
    assert h["steps"] == 5  # report() read at the end of the run


# -- failures --------------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("synchronous", [False, True])
def test_an_answer_that_raises_is_a_tolerated_failure(engine, synchronous):
    engine.need_any_algorithm()
    h = aia.start(FailOnce("raise", at=2), pid_problem, {"iteration": 12},
                  cluster=engine.fresh(), synchronous=synchronous, resilience=1, verbose=0)
    (failure,) = h.failures
    assert failure.worker == 1
    assert "raised" in failure.cause and "FailureError" in failure.cause
    assert h.iterations[-1] == 12 and h.answer_count[2] >= 6


@pytest.mark.timeout(60)
def test_one_failure_too_many_raises_with_the_history(engine):
    engine.need_any_algorithm()
    with pytest.raises(aia.WorkerFailedError) as info:
        aia.start(FailOnce("raise", at=2), pid_problem, {"iteration": 50},
                  cluster=engine.fresh(), verbose=0)
    assert info.value.worker == 1
    assert isinstance(info.value.__cause__, aia.RemoteError)
    assert "FailureError" in info.value.__cause__.type_name
    assert info.value.history is not None and info.value.history.iterations[0] == 0


@pytest.mark.timeout(60)
def test_a_problem_constructor_that_raises_fails_its_worker_at_iteration_0(engine):
    engine.need_any_algorithm()
    h = aia.start(FailOnce(), FailingProblem("raise"), {"iteration": 10},
                  cluster=engine.fresh(), resilience=1, verbose=0)
    (failure,) = h.failures
    assert failure.worker == 1 and failure.iteration == 0
    assert "LookupError: no data for site 1" in failure.cause
    assert h.answer_count[2] == 10 and h.answer_count.get(1, 0) == 0


@pytest.mark.timeout(60)
def test_a_worker_that_dies_is_a_failure_and_the_run_goes_on(engine):
    engine.need_any_algorithm()
    cluster = engine.fresh()
    if engine.name == "memory":
        cluster.kill(1, after=2)
        alg = FailOnce()
    else:
        alg = FailOnce("exit", at=3)
    h = aia.start(alg, pid_problem, {"iteration": 12}, cluster=cluster, resilience=1,
                  verbose=0)
    (failure,) = h.failures
    assert failure.worker == 1
    assert h.iterations[-1] == 12 and h.answer_count[1] == 2
    assert 1 not in cluster.alive() or engine.name == "ray"  # Ray may restart it


@pytest.mark.timeout(60)
def test_an_ended_run_leaves_nothing_to_the_next(engine):
    """Answers of an ended run are dropped: the next run counts only its own."""
    cluster = engine.cluster()
    first = aia.start(_sgd(), MAKE, {"iteration": 3}, cluster=cluster, verbose=0)
    second = aia.start(_sgd(), MAKE, {"iteration": 3}, cluster=cluster, verbose=0)
    assert sum(first.answer_count.values()) == sum(second.answer_count.values()) == 3
    assert np.array_equal(first.queries[0], second.queries[0])


# -- distributed objects ---------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_distributed_objects_where_the_engine_stores_them(engine):
    cluster = engine.cluster()
    if not engine.stores_objects:
        assert not isinstance(cluster, aia.ObjectStore)
        with pytest.raises(TypeError, match="cannot build objects"):
            aia.DistributedObject(pid_problem, cluster)
        return
    objects = aia.DistributedObject(pid_problem, cluster)
    try:
        assert objects.map(lambda o: o * 10) == {p: 10 * p for p in range(1, N + 1)}
        assert objects.apply(2, lambda o: o + 1) == 3
        objects.local = 0
        alg = Counter()
        h = aia.start(alg, objects, {"iteration": 4}, cluster=cluster, synchronous=True,
                      verbose=0)
        assert alg.seen == [[1, 2]] * 4 and h.answer_count == {1: 4, 2: 4}
    finally:
        objects.free()


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_bad_input_is_refused_before_any_worker_is_used(engine):
    cluster = engine.cluster()
    with pytest.raises(ValueError, match="no worker"):
        aia.start(_sgd(), MAKE, {"iteration": 2}, cluster=cluster, pids=[N + 5], verbose=0)
    with pytest.raises((TypeError, ValueError), match="stopat"):
        aia.start(_sgd(), MAKE, {}, cluster=cluster, verbose=0)
    with pytest.raises(ValueError, match="resilience"):
        aia.start(_sgd(), MAKE, {"iteration": 2}, cluster=cluster, resilience=N + 1,
                  verbose=0)


def test_the_in_memory_engine_is_deterministic_or_seeded():
    def order(cluster):
        alg = Counter()
        aia.start(alg, pid_problem, {"iteration": 12}, cluster=cluster, verbose=0)
        return alg.seen

    assert order(aia.InMemoryCluster(3)) == [1, 2, 3] * 4
    assert order(aia.InMemoryCluster(3, seed=7)) == order(aia.InMemoryCluster(3, seed=7))
    assert sorted(set(order(aia.InMemoryCluster(3, seed=7)))) == [1, 2, 3]
    with pytest.raises(TypeError, match="positive int"):
        aia.InMemoryCluster(0)


def test_an_injected_answer_error_carries_its_exception():
    cluster = aia.InMemoryCluster(2)
    cluster.fail(2, after=1, error=FailureError("disk full"))
    with pytest.raises(aia.WorkerFailedError) as info:
        aia.start(Counter(), pid_problem, {"iteration": 10}, cluster=cluster, verbose=0)
    assert info.value.worker == 2
    assert "disk full" in str(info.value.__cause__)
