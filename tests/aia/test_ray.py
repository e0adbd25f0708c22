"""`aia.RayCluster`: the engine's runs on Ray actors, against a real Ray runtime.

One local runtime serves the module (`runtime`, started by `RayCluster` itself: 2 CPUs,
loopback only); tests that need more workers, or kill some, add a `RayCluster` on that same
runtime (it attaches to the connection and stops nothing when closed). The last test stops
that runtime and joins an external head started with ``ray start --head`` on 127.0.0.1, then
stops it with ``ray stop``.

Ray workers import the classes of these tests by name: the runtime's ``PYTHONPATH`` holds the
repository (``runtime_env``), as a user ships their code to a cluster.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

ray = pytest.importorskip("ray")

import aia  # noqa: E402
from aia import ray_cluster  # noqa: E402

from tests.processes import living_children  # noqa: E402

from .algorithms_for_tests import Counter, pid_problem  # noqa: E402
from .failure_helpers import (FailingProblem, FailOnce,  # noqa: E402
                              RaisesUnpicklableError)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
RUNTIME_ENV = {"env_vars": {"PYTHONPATH": str(REPO)}}
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _children() -> set:
    return {p.pid for p in living_children()}


def _listening(pids) -> list:
    """``[(pid, ip, port)]`` of the sockets the processes ``pids`` listen on."""
    return [(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` exits (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _ray_processes() -> set:
    """Ray's own processes on this machine (its servers and workers)."""
    found = set()
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            text = (p.info["name"] or "") + " " + " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if "multiprocessing.forkserver" in text or "resource_tracker" in text:
            continue  # multiprocessing's servers (sys.path in their command line names Ray)
        if p.info["name"] in ("gcs_server", "raylet") or "ray::" in text \
                or "site-packages/ray/" in text:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    found.add(p.pid)
            except psutil.Error:
                pass
    return found


def _stop(cluster) -> None:
    """Close the module's runtime cluster: Ray stops, and its processes are gone."""
    cluster.close()
    assert not ray.is_initialized(), "the runtime RayCluster started must be stopped"
    left = set()
    for _ in range(150):  # up to 15 s for Ray's processes to exit
        left = _children() - cluster.children_before
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module")
def runtime():
    """A RayCluster of 2 workers that starts the module's local Ray runtime, and stops it."""
    before = _children()
    cluster = aia.RayCluster(2, num_cpus=2, log_to_driver=False, runtime_env=RUNTIME_ENV)
    cluster.module_runtime = True
    cluster.children_before = before
    yield cluster
    _stop(cluster)


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Replaces conftest's check of each test: the Ray runtime lives for the module (its
    processes are checked when `runtime` stops it); a cluster a test made must be closed."""
    yield
    left = [c for c in list(ray_cluster._clusters)
            if not c._closed and not getattr(c, "module_runtime", False)]
    for c in left:
        c.close()
    assert not left, f"RayCluster left open: {left}"


# -- algorithms ------------------------------------------------------------------------------

class InPlace(aia.AbstractAlgorithm):
    """Large arrays both ways, changed in place on both sides: they must arrive writable.

    Worker ``pid`` adds ``pid`` to its query in place and sends it back; the central
    subtracts the query in place, which leaves ``pid`` in every entry.
    """

    def __init__(self, size):
        self.size = size
        self.x = None

    def initialize(self, problem):
        self.x = np.zeros(self.size)
        return self.x

    def answer(self, q, problem):
        q += problem
        return q

    def sync_central_step(self, answers, workers, problem):
        for a, w in zip(answers, workers):
            a -= self.x
            assert np.all(a == w), "an answer came back wrong"
        self.x = self.x + 1
        return self.x

    def central_step(self, a, worker, problem):
        a *= 1.0  # writable
        self.x = self.x + 1
        return self.x


class Tagged(aia.AbstractAlgorithm):
    """Answers carry the run's tag; worker 1 answers after ``delay`` seconds."""

    def __init__(self, tag, delay=0.0):
        self.tag = tag
        self.delay = delay

    def initialize(self, problem):
        return 0

    def answer(self, q, problem):
        if problem == 1:
            time.sleep(self.delay)
        return self.tag, os.getpid()

    def central_step(self, a, worker, problem):
        assert a[0] == self.tag, f"an answer of run {a[0]!r} reached run {self.tag!r}"
        return 0


class Mean(aia.AbstractAlgorithm):
    """The inner algorithm of AveragingAlgorithm: worker ``pid`` answers ``q + pid``."""

    def initialize(self, problem):
        return 0.0

    def answer(self, q, problem):
        return q + problem

    def query(self, average, problem):
        return average


class Sum(Mean):
    """The inner algorithm of AggregationAlgorithm."""

    def aggregate(self, answers, workers):
        return float(sum(answers))

    def query(self, aggregated, problem):
        return aggregated / 100.0


KILLERS: dict = {}  # read on the central only: how `KillDuringRun` kills a worker


class KillDuringRun(FailOnce):
    """After 3 central steps the central kills the actor of worker 2 (``KILLERS[how]``)."""

    def __init__(self, killer):
        super().__init__()
        self.killer = killer

    def _step(self):
        self.steps += 1
        if self.steps == 3:
            KILLERS[self.killer]()

    def central_step(self, a, worker, problem):
        self._step()
        return a

    def sync_central_step(self, answers, workers, problem):
        self._step()
        return max(answers)


class Hang(FailOnce):
    """Worker 1 never answers; the others answer every 5 ms."""

    def answer(self, q, problem):
        while problem == 1:
            time.sleep(100)
        time.sleep(0.005)
        return q + 1


def where_built(pid):
    """A problem that remembers the process that built it, and counts its answers."""
    return {"pid": pid, "os_pid": os.getpid(), "answers": 0}


class CountsOnProblem(aia.AbstractAlgorithm):
    """Each answer increments a counter kept in the worker's (persistent) problem."""

    def initialize(self, problem):
        return 0

    def answer(self, q, problem):
        problem["answers"] += 1
        return problem["answers"]

    def central_step(self, a, worker, problem):
        return 0

    def sync_central_step(self, answers, workers, problem):
        return 0


# -- the local runtime -----------------------------------------------------------------------

def test_importing_aia_does_not_import_ray():
    code = ("import sys, aia; aia.RayCluster; from aia import *; "
            "assert 'ray' not in sys.modules, 'aia imported ray'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_arguments_are_checked_before_connecting():
    with pytest.raises(ValueError, match="n_workers"):
        aia.RayCluster(0)
    with pytest.raises(ValueError, match="blas_threads"):
        aia.RayCluster(2, blas_threads=0)
    with pytest.raises(ValueError, match="leave out 'name'"):
        aia.RayCluster(2, actor_options={"name": "mine"})


def test_the_local_runtime_listens_on_loopback_only(runtime):
    assert runtime.pids == [1, 2] and runtime.alive() == [1, 2]
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    assert set(runtime.nodes().values()) == {"127.0.0.1"}
    pids = _children() | {os.getpid()}
    sockets = _listening(pids)
    assert sockets, "no listening socket found: the check would prove nothing"
    assert [s for s in sockets if s[1] not in LOOPBACK] == []
    os_pids = runtime.os_pids()
    assert set(os_pids.values()) <= pids and len(set(os_pids.values())) == 2
    assert "RayCluster(2 workers" in repr(runtime)
    with pytest.raises(RuntimeError, match="already connected to Ray"):
        aia.RayCluster(1, address="auto")


def test_asynchronous_and_synchronous_runs(runtime):
    h = aia.start(Counter(), pid_problem, {"iteration": 100}, cluster=runtime, verbose=0)
    assert h.iterations[-1] == 100
    assert sum(h.answer_count.values()) == 100 and set(h.answer_count) == {1, 2}
    h = aia.start(Counter(), pid_problem, {"epoch": 20}, cluster=runtime, verbose=0,
                  synchronous=True)
    assert h.answer_count == {1: 20, 2: 20} and h.epochs[-1] == 20
    h = aia.start(Counter(), pid_problem, {"iteration": 10}, cluster=runtime, verbose=0,
                  pids=[2])
    assert h.answer_count == {2: 10}


def test_progress_bar_checkpoints_and_answers(runtime):
    out = io.StringIO()
    h = aia.start(Counter(), pid_problem, {"iteration": 50}, saveat={"iteration": 10},
                  save_answers=True, cluster=runtime, verbose=2, progress_file=out)
    assert h.iterations == [0, 10, 20, 30, 40, 50]
    assert len(h.answers) == len(h.answers_origin) == 5
    assert all(a == w for a, w in zip(h.answers, h.answers_origin))
    assert "aia" in out.getvalue()


@pytest.mark.parametrize("synchronous", [True, False])
def test_large_arrays_cross_both_ways_and_arrive_writable(runtime, synchronous):
    size = 10**6  # 8 MB: through Ray's object store
    h = aia.start(InPlace(size), pid_problem, {"iteration": 6}, cluster=runtime, verbose=0,
                  synchronous=synchronous)
    assert np.all(h.queries[-1] == 6)


def test_a_stopped_run_drops_its_late_answers(runtime):
    """Worker 1 is still answering run "a" when it ends; run "b" sees only its own answers."""
    before = runtime.os_pids()
    h = aia.start(Tagged("a", delay=0.5), pid_problem, {"iteration": 3}, cluster=runtime,
                  verbose=0)
    assert h.answer_count[1] == 0
    h = aia.start(Tagged("b"), pid_problem, {"iteration": 30}, cluster=runtime, verbose=0)
    assert h.answer_count[1] > 0 and sum(h.answer_count.values()) == 30
    # Back within its patience (1 s): worker 1 was waited for, not replaced.
    assert runtime.generation(1) == 0 and runtime.os_pids() == before


def test_distributed_objects_live_on_the_actors(runtime):
    problems = aia.DistributedObject(where_built, runtime)
    assert problems.where() == [1, 2]
    built = problems.map(lambda p: (p["pid"], p["os_pid"]))
    assert built == {pid: (pid, runtime.os_pids()[pid]) for pid in (1, 2)}
    assert problems.apply(2, lambda p: p["pid"]) == 2
    # Each actor's BLAS threads: the node's 2 CPUs shared by its 2 actors.
    assert problems.map(lambda p: os.environ.get("OPENBLAS_NUM_THREADS")) == {1: "1", 2: "1"}
    # The problems stay where they are, across runs: their counters go on.
    aia.start(CountsOnProblem(), problems, {"epoch": 5}, cluster=runtime, verbose=0,
              synchronous=True)
    h = aia.start(CountsOnProblem(), problems, {"epoch": 5}, cluster=runtime, verbose=0,
                  synchronous=True, save_answers=True)
    assert h.answers[-1] == [10, 10]
    assert problems.map(lambda p: p["answers"]) == {1: 10, 2: 10}
    array = problems.apply(1, lambda p: np.arange(200_000.0))
    array += 1  # results arrive writable too
    problems.free()
    with pytest.raises(RuntimeError, match="holds no object"):
        aia.start(CountsOnProblem(), problems, {"epoch": 1}, cluster=runtime, verbose=0)


def test_wrappers(runtime):
    h = aia.start(aia.AveragingAlgorithm(Mean()), pid_problem, {"iteration": 8},
                  cluster=runtime, verbose=0, synchronous=True)
    assert h.queries[-1] == pytest.approx(8 * 1.5)  # the mean of q + 1 and q + 2
    h = aia.start(aia.AggregationAlgorithm(Sum()), pid_problem, {"iteration": 40},
                  cluster=runtime, verbose=0)
    assert sum(h.answer_count.values()) == 40


# -- failures --------------------------------------------------------------------------------

def test_an_exception_in_answer_names_the_worker_with_its_traceback(runtime):
    with pytest.raises(aia.WorkerFailedError) as info:
        aia.start(FailOnce("raise"), pid_problem, {"iteration": 100}, cluster=runtime,
                  verbose=0)
    err = info.value
    assert err.worker == 1 and err.os_pid == runtime.os_pids()[1]
    assert "FailureError: boom on worker 1" in str(err)
    assert "in _raise" in err.traceback
    assert isinstance(err.__cause__, aia.RemoteError)
    assert err.history is not None
    assert runtime.alive() == [1, 2]  # an exception leaves the actor alive


def test_errors_that_cannot_be_pickled_still_arrive(runtime):
    with pytest.raises(aia.WorkerFailedError, match="column gre is missing"):
        aia.start(RaisesUnpicklableError(at=2), pid_problem, {"iteration": 100},
                  cluster=runtime, verbose=0)
    with pytest.raises(aia.WorkerFailedError, match="cannot send an object of type 'lock'"):
        aia.start(FailOnce("unpicklable"), pid_problem, {"iteration": 100},
                  cluster=runtime, verbose=0)


def test_a_constructor_that_raises_is_tolerated(runtime):
    h = aia.start(FailOnce(), FailingProblem("raise"), {"iteration": 20}, cluster=runtime,
                  verbose=0, resilience=1)
    (failure,) = h.failures
    assert failure.worker == 1 and failure.iteration == 0
    assert "LookupError: no data for site 1" in failure.cause
    assert h.answer_count[2] == 20


def freezes_on_worker_1(pid):
    if pid == 1:
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen in its constructor
    return pid


@pytest.mark.timeout(120)
def test_an_actor_frozen_at_set_up_counts_as_failed_under_resilience(runtime):
    """The set-up rules of every engine (`aia.requests`): once the others are ready, a set-up
    far slower than theirs fails, and the run goes on; the next run replaces the actor."""
    with aia.RayCluster(3) as cluster:
        frozen = cluster.os_pids()[1]
        t0 = time.monotonic()
        h = aia.start(FailOnce(), freezes_on_worker_1, {"iteration": 50, "time": 30},
                      cluster=cluster, resilience=1, verbose=0)
        elapsed = time.monotonic() - t0
        assert h.iterations[-1] == 50 and [f.worker for f in h.failures] == [1]
        assert "set-up" in h.failures[0].cause and h.failures[0].iteration == 0
        assert elapsed < 10, f"start took {elapsed:.2f} s (the time limit is 30 s)"
        # No time limit, no resilience: the next run does not wait for ever on actor 1.
        h = aia.start(FailOnce(), pid_problem, {"iteration": 20}, cluster=cluster, verbose=0)
        assert h.failures == [] and h.answer_count[1] > 0
        assert cluster.generation(1) == 1 and cluster.os_pids()[1] != frozen
        assert _gone(frozen)


@pytest.mark.parametrize("how,synchronous", [("ray.kill", False), ("SIGKILL", True)])
def test_an_actor_that_dies_is_a_failure(runtime, how, synchronous):
    with aia.RayCluster(3) as cluster:
        assert ray.is_initialized() and cluster.alive() == [1, 2, 3]
        KILLERS["ray.kill"] = lambda: ray.kill(cluster.actor(2))
        KILLERS["SIGKILL"] = lambda: os.kill(cluster.os_pids()[2], signal.SIGKILL)
        h = aia.start(KillDuringRun(how), pid_problem, {"iteration": 300}, cluster=cluster,
                      verbose=0, resilience=1, synchronous=synchronous)
        (failure,) = h.failures
        assert failure.worker == 2 and failure.os_pid == cluster.os_pids()[2]
        assert "Ray actor aia-" in failure.cause and "worker-2" in failure.cause
        assert "died" in failure.cause
        assert h.iterations[-1] == 300 and h.answer_count[1] > 0 and h.answer_count[3] > 0
        assert cluster.alive() == [1, 3]
        # With no resilience left, the dead actor ends the next run that counts on it.
        with pytest.raises(aia.WorkerFailedError, match="worker 2 .* is dead"):
            aia.start(FailOnce(), pid_problem, {"iteration": 5}, cluster=cluster, verbose=0)
        h = aia.start(FailOnce(), pid_problem, {"iteration": 5}, cluster=cluster, verbose=0,
                      pids=[1, 3])
        assert sum(h.answer_count.values()) == 5
    assert ray.is_initialized(), "a cluster that attached must not stop the runtime"
    assert runtime.alive() == [1, 2]


def test_an_actor_that_exits_by_itself(runtime):
    with aia.RayCluster(2) as cluster:
        with pytest.raises(aia.WorkerFailedError, match="worker 1 .* died") as info:
            aia.start(FailOnce("exit"), pid_problem, {"iteration": 100}, cluster=cluster,
                      verbose=0)
        assert info.value.os_pid == cluster.os_pids()[1] and _gone(info.value.os_pid)
        assert cluster.alive() == [2]
        # An actor killed between runs: alive() pings it and finds out.
        ray.kill(cluster.actor(2))
        deadline = time.monotonic() + 10
        while cluster.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cluster.alive() == []
        with pytest.raises(RuntimeError, match="worker 2 failed building the object: .* dead"):
            aia.DistributedObject(pid_problem, cluster, pids=[2])


def test_an_actor_stuck_in_an_ended_run_is_replaced(runtime):
    with aia.RayCluster(2) as cluster:
        problems = aia.DistributedObject(pid_problem, cluster)
        stuck = cluster.os_pids()[1]
        t0 = time.monotonic()
        h = aia.start(Hang(), pid_problem, {"time": 1.0}, cluster=cluster, verbose=0)
        assert time.monotonic() - t0 < 10  # the wait for answers is bounded by stopat
        assert h.answer_count[1] == 0 and h.answer_count[2] > 0
        # No time limit in the next run: it must not wait forever for worker 1's set-up.
        h = aia.start(FailOnce(), pid_problem, {"iteration": 20}, cluster=cluster,
                      verbose=0)
        assert h.failures == [] and h.answer_count[1] > 0
        assert (cluster.generation(1), cluster.generation(2)) == (1, 0)
        assert cluster.os_pids()[1] != stuck and cluster.alive() == [1, 2]
        assert _gone(stuck)
        assert problems.where() == [2]  # worker 1's object died with its old actor
        with pytest.raises(RuntimeError, match="restarted"):
            problems.apply(1, len)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 15


# -- GLM ---------------------------------------------------------------------------------------

def test_glm_fit_on_ray_actors(runtime):
    glm = pytest.importorskip("algorithms.glm")
    sites = [SHARED / "v6-glm" / "binomial" / f"{s}.csv" for s in "abc"]
    if not all(p.exists() for p in sites):
        pytest.skip("the shared v6-glm data sets are not beside the repository")
    formula = "admit ~ gre + gpa + C(rank)"
    here = glm.fit(formula, sites, family="binomial", cluster="inprocess")
    with aia.RayCluster(3) as cluster:
        there = glm.fit(formula, sites, family="binomial", cluster=cluster)
        unsync = glm.fit(formula, sites, family="binomial", cluster=cluster,
                         synchronous=False)
        # Secure aggregation lives in the GLM's messages: the same fit over Ray actors.
        secure = glm.fit(formula, sites, family="binomial", cluster=cluster, secure=True)
    np.testing.assert_allclose(there.params, here.params, rtol=1e-12)
    np.testing.assert_allclose(there.bse, here.bse, rtol=1e-12)
    assert there.iterations == here.iterations
    np.testing.assert_allclose(unsync.params, here.params, rtol=1e-6)
    for key in ("params", "bse"):
        np.testing.assert_allclose(getattr(secure, key), getattr(here, key), rtol=1e-10)
    for key in ("deviance", "null_deviance", "llf"):
        assert getattr(secure, key) == pytest.approx(getattr(here, key), rel=1e-10)


def test_glm_negative_binomial_with_freq_weights_and_missing_rows_on_ray_actors(runtime):
    """Issue 13's models on Ray: glm.nb's theta passes (`Site.theta_sums` on each actor),
    frequency weights and R's na.omit, with the sites sent to the actors as DataFrames."""
    glm = pytest.importorskip("algorithms.glm")
    import pandas as pd  # noqa: PLC0415
    paths = [SHARED / "v6-glm" / "poisson" / f"{s}.csv" for s in "abc"]
    if not all(p.exists() for p in paths):
        pytest.skip("the shared v6-glm data sets are not beside the repository")
    sites = []
    for p in paths:
        frame = pd.read_csv(p).assign(f=lambda d: 1 + np.arange(len(d)) % 2)
        frame.loc[3, "math"] = np.nan  # one row a site left out, as R's na.omit
        sites.append(frame)
    formula, options = "num_awards ~ C(prog) + math", {"freq_weights": "f"}
    here = glm.fit(formula, sites, "negative_binomial", cluster="inprocess", **options)
    with aia.RayCluster(3) as cluster:
        there = glm.fit(formula, sites, "negative_binomial", cluster=cluster, **options)
    np.testing.assert_allclose(there.params, here.params, rtol=1e-10)
    np.testing.assert_allclose(there.bse, here.bse, rtol=1e-10)
    for name in ("theta", "theta_se", "llf", "aic", "deviance", "null_deviance"):
        assert getattr(there, name) == pytest.approx(getattr(here, name), rel=1e-10), name
    assert there.n_missing == here.n_missing == 3
    assert there.nobs == here.nobs == sum(s.f.sum() - s.f[3] for s in sites)


# -- an external head --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("ray")
    return subprocess.run([str(cli), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_local_workers_next_to_a_ray_connection_are_not_forked_from_it(runtime):
    """Forking a process that holds Ray's gRPC threads can hang the child at start and the
    driver's next call to Ray: a LocalCluster beside a Ray connection starts its workers from
    a forkserver unless told otherwise, and they work."""
    with aia.LocalCluster(2) as local:
        assert local.start_method == "forkserver"
        h = aia.start(Counter(), pid_problem, {"iteration": 4}, cluster=local, verbose=0)
        assert h.iterations[-1] == 4
    with aia.RayCluster(2) as again:  # the driver still talks to Ray's GCS
        assert again.alive() == [1, 2]


@pytest.mark.timeout(120)
def test_replace_failed_gives_each_killed_actor_a_fresh_one(runtime):
    """kill -9 each of three actors once, ``resilience=3``: three failures recorded and three
    live workers at the end (issue 16)."""
    from .test_replace_failed import TARGET, KillsEachWorkerOnce  # noqa: PLC0415

    with aia.RayCluster(3, actor_options={"num_cpus": 0}) as cluster:
        TARGET["cluster"] = cluster
        before = cluster.os_pids()
        alg = KillsEachWorkerOnce()
        h = aia.start(alg, pid_problem, {"iteration": 60}, cluster=cluster, resilience=3,
                      replace_failed=True, verbose=0)
        assert sorted(f.worker for f in h.failures) == [1, 2, 3]
        assert sorted(pid for _, pid in alg.killed) == sorted(before.values())
        assert h.iterations[-1] == 60
        assert cluster.alive() == [1, 2, 3]
        assert all(cluster.generation(w) == 1 for w in (1, 2, 3))
        assert not set(cluster.os_pids().values()) & set(before.values())


def test_joining_a_head_started_with_ray_start(runtime, monkeypatch):
    """`ray start --head` on 127.0.0.1, a driver that joins it (token authentication), runs
    and resilience; `ray stop` after. Last in the module: a process holds one Ray connection,
    so the module's runtime is stopped first.

    (A ``ray://`` address goes through Ray Client, whose proxy failed now and then to start
    its per-client server on a loaded 2-core machine: not tested here.)"""
    _stop(runtime)
    if _ray_processes():
        pytest.skip("Ray runs on this machine already: `ray stop` would stop it too")
    port, client_port = _free_port(), _free_port()
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    try:
        started = _ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port",
                       str(port), "--ray-client-server-port", str(client_port), "--num-cpus",
                       "2", "--include-dashboard", "false", "--disable-usage-stats", env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        head = _ray_processes()
        gcs = [pid for pid in head if psutil.Process(pid).name() == "gcs_server"]
        assert len(gcs) == 1
        # What the README asks of a driver on the head's machine.
        monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        address = f"127.0.0.1:{port}"
        with aia.RayCluster(2, address=address, log_to_driver=False,
                            runtime_env=RUNTIME_ENV) as cluster:
            assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
            assert set(cluster.nodes().values()) == {"127.0.0.1"}
            sockets = _listening(head | _ray_processes() | {os.getpid()})
            assert sockets and [s for s in sockets if s[1] not in LOOPBACK] == []
            h = aia.start(Counter(), pid_problem, {"iteration": 50}, cluster=cluster,
                          verbose=0)
            assert sum(h.answer_count.values()) == 50
            KILLERS["SIGKILL"] = lambda: os.kill(cluster.os_pids()[2], signal.SIGKILL)
            h = aia.start(KillDuringRun("SIGKILL"), pid_problem, {"iteration": 20},
                          cluster=cluster, verbose=0, resilience=1, synchronous=True)
            assert [f.worker for f in h.failures] == [2] and cluster.alive() == [1]
        assert not ray.is_initialized()  # disconnected; the head runs on
        assert psutil.pid_exists(gcs[0])
    finally:
        stopped = _ray("stop", timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not _ray_processes()

