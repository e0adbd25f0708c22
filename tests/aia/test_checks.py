"""Every bad argument of `aia.start` is an error raised before any process starts."""

from __future__ import annotations

import threading

import psutil
import pytest

import aia

from .algorithms_for_tests import Counter, Precision, pid_problem


class AsyncOnly(aia.AbstractAlgorithm):
    def initialize(self, problem):
        return 0

    def answer(self, q, problem):
        return 0

    def central_step(self, a, worker, problem):
        return 0


class SyncOnly(aia.AbstractAlgorithm):
    def initialize(self, problem):
        return 0

    def answer(self, q, problem):
        return 0

    def sync_central_step(self, answers, workers, problem):
        return 0


def start(alg=None, problem=pid_problem, stopat=None, **kw):
    kw.setdefault("cluster", 2)
    kw.setdefault("verbose", 0)
    return aia.start(alg or Counter(), problem, {"iteration": 1} if stopat is None else stopat,
                     **kw)


@pytest.fixture(autouse=True)
def no_process_started():
    before = len(psutil.Process().children(recursive=True))
    yield
    assert len(psutil.Process().children(recursive=True)) == before


@pytest.mark.parametrize("stopat, match", [
    ({}, "empty"),
    ({"iteration": -1}, r"stopat\['iteration'\]: expected a non-negative int, got -1"),
    ({"iteration": 2.5}, "non-negative int, got 2.5"),
    ({"epoch": "10"}, r"stopat\['epoch'\]: expected a non-negative int, got '10'"),
    ({"time": -3}, r"stopat\['time'\]: expected a finite number of seconds"),
    ({"time": "1s"}, "finite number of seconds >= 0, got '1s'"),
    ({"time": float("inf")}, "finite"),
    ({"iteration": True}, "non-negative int, got True"),
    ({"iteration": 10, "precision": 1e-3}, r"\['precision'\] are read by nothing"),
])
def test_bad_stopat(stopat, match):
    with pytest.raises(ValueError, match=match):
        start(stopat=stopat)


def test_stopat_must_be_a_mapping():
    with pytest.raises(TypeError, match="stopat: expected a mapping"):
        start(stopat=100)


def test_custom_stop_key_the_hook_never_reads_is_a_typo():
    with pytest.raises(ValueError, match=r"\['precison'\] are read by nothing.*a typo"):
        start(Precision(0.1), stopat={"iteration": 5, "precison": 1e-3}, synchronous=True)


@pytest.mark.parametrize("saveat, match", [
    ({"iteration": 0}, r"saveat\['iteration'\]: expected a positive int, got 0"),
    ({"epoch": -2}, r"saveat\['epoch'\]: expected a positive int"),
    ({"every": 3}, r"\['every'\] are read by nothing"),
])
def test_bad_saveat(saveat, match):
    with pytest.raises(ValueError, match=match):
        start(saveat=saveat)


def test_missing_central_step_names_the_method_and_signature():
    with pytest.raises(TypeError, match=r"sync_central_step\(self, answers, workers, problem\)"):
        start(AsyncOnly(), synchronous=True)
    with pytest.raises(TypeError, match=r"central_step\(self, a, worker, problem\).*synchronous=True"):
        start(SyncOnly())
    with pytest.raises(TypeError, match="sync_central_step"):
        start(AsyncOnly(), pids=[0])


def test_algorithm_must_subclass_the_protocol():
    with pytest.raises(TypeError, match="subclass of aia.AbstractAlgorithm, got 'object'"):
        start(object())


@pytest.mark.parametrize("resilience, match", [
    (2, r"resilience: must be below the number of active workers \(2\), got 2"),
    (-1, "resilience: expected an int >= 0, got -1"),
    (1.5, "expected an int"),
])
def test_bad_resilience(resilience, match):
    with pytest.raises(ValueError, match=match):
        start(resilience=resilience)


def test_pids_naming_a_missing_worker():
    with pytest.raises(ValueError, match=r"pids: the cluster has no worker \[5\]"):
        start(pids=[1, 5])


def test_pids_naming_a_missing_worker_of_a_persistent_cluster(cluster):
    before = cluster.alive()
    with pytest.raises(ValueError, match=r"no worker \[4\] \(its workers are \[1, 2, 3\]\)"):
        start(cluster=cluster, pids=[4])
    assert cluster.alive() == before


@pytest.mark.parametrize("pids, error, match", [
    ([], ValueError, "empty"),
    ([1, 1], ValueError, "once"),
    ([0, 1], ValueError, "0 is the central"),
    ("12", TypeError, "list of worker ids"),
    ([1.0], TypeError, "expected ints"),
])
def test_bad_pids(pids, error, match):
    with pytest.raises(error, match=match):
        start(pids=pids)


@pytest.mark.parametrize("kw, error, match", [
    ({"cluster": 0}, TypeError, "cluster: expected None, a positive int"),
    ({"cluster": "local"}, TypeError, "cluster: expected"),
    ({"verbose": 3}, ValueError, "verbose: expected 0"),
    ({"synchronous": 1}, TypeError, "synchronous: expected True or False, got 1"),
    ({"save_answers": "yes"}, TypeError, "save_answers"),
])
def test_bad_options(kw, error, match):
    with pytest.raises(error, match=match):
        start(**kw)


def test_problem_must_be_callable_or_distributed():
    with pytest.raises(TypeError, match="make_problem\\(pid\\) or an aia.DistributedObject, got list"):
        start(problem=[1, 2])


def test_unpicklable_algorithm_names_its_type_before_any_process():
    alg = Counter()
    alg.lock = threading.Lock()
    with pytest.raises(TypeError, match="algorithm of type 'Counter' cannot be sent.*lock"):
        start(alg)
