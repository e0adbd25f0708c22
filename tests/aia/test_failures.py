"""Failures (issue 4): workers that raise or die, Ctrl-C, a dead central, hung workers,
failing hooks, unpicklable objects, and runs that leave nothing behind.

The crash table follows loky's ``crash_cases``: each way a worker can fail, in each mode, with
and without resilience, and the outcome each must have. Every wait is bounded: the file's
``timeout`` marks, and explicit timeouts on every subprocess wait.
"""

from __future__ import annotations

import logging
import multiprocessing.process
import os
import signal
import textwrap
import threading
import time

import psutil
import pytest

import aia

from .failure_helpers import (BadQuery, FailingHook, FailingProblem, FailOnce, HangOnWorker1,
                              FailsToLoadOnWorkers, HookError, LockedAlgorithm,
                              RaisesUnpicklableError, Recording, Script, WorkerOnlyFailure,
                              descendants, kill_all, pid_problem, wait_gone)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def no_leftover():
    """Every process a test starts is gone when it ends (checked at once: `start` and
    `LocalCluster.close` return only after their workers are gone)."""
    before = descendants()
    yield
    left = descendants() - before
    kill_all(left)
    assert not left, f"processes left behind: {left}"


# -- the crash table -------------------------------------------------------------------
#
# What worker 1 does on its 3rd answer -> (exit code, remote traceback?, words in the cause)
CRASHES = {
    "raise": (None, True, ["FailureError", "boom on worker 1"]),  # raise FailureError(...)
    "exit": (3, False, ["exit code 3"]),  # os._exit(3)
    "sigkill": (-signal.SIGKILL, False, ["SIGKILL"]),  # os.kill(os.getpid(), SIGKILL)
    "segfault": (-signal.SIGSEGV, False, ["SIGSEGV"]),  # faulthandler._sigsegv()
    "unpicklable": (None, True, ["TypeError", "lock"]),  # returns a threading.Lock
}
MODES = {"async": False, "sync": True}

#: Epoch 10 cannot be reached without worker 1's 3rd answer (an epoch waits for every active
#: worker), so the failure is always seen, in both modes, whatever the scheduling.
STOPAT = {"epoch": 10}


def test_the_process_id_is_os_pid_and_pid_is_its_deprecated_name():
    """A ``pid`` is a worker id in aia (``start(pids=)``, ``make_problem(pid)``); the process
    id of a failed worker is ``os_pid``. The old name still reads it, with a warning."""
    with aia.LocalCluster(2) as cluster:
        os_pid = cluster.os_pids()[1]
        with pytest.raises(aia.WorkerFailedError) as info:
            aia.start(FailOnce("raise"), pid_problem, STOPAT, cluster=cluster, verbose=0)
    exc = info.value
    assert exc.worker == 1 and exc.os_pid == os_pid and exc.failures[0].os_pid == os_pid
    assert f"worker 1 (process {os_pid})" in str(exc)
    with pytest.warns(DeprecationWarning, match="os_pid"):
        assert exc.pid == os_pid
    with pytest.warns(DeprecationWarning, match="os_pid"):
        assert exc.failures[0].pid == os_pid


@pytest.mark.parametrize("resilience", [0, 1])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("how", list(CRASHES))
def test_crash_table(how, mode, resilience, caplog, no_leftover):
    exitcode, has_traceback, words = CRASHES[how]
    synchronous = MODES[mode]
    caplog.set_level(logging.WARNING, logger="aia")
    alg = FailOnce(how)
    with aia.LocalCluster(2) as cluster:
        os_pid = cluster.os_pids()[1]
        if resilience == 0:
            with pytest.raises(aia.WorkerFailedError) as info:
                aia.start(alg, pid_problem, STOPAT, cluster=cluster, synchronous=synchronous,
                          resilience=0, verbose=0)
            exc = info.value
            assert exc.worker == 1
            assert exc.os_pid == os_pid
            assert exc.exitcode == exitcode
            assert exc.iteration >= 2  # worker 1 answered twice before failing
            if synchronous:
                assert exc.iteration == 2  # it failed in round 3
            message = str(exc)
            assert "worker 1" in message and str(os_pid) in message
            for word in words:
                assert word in message
            if has_traceback:
                assert exc.traceback and "Traceback (most recent call last)" in exc.traceback
                assert all(w in exc.traceback for w in words)
            else:
                assert exc.traceback is None
            assert len(exc.failures) == 1 and exc.failures[0].worker == 1
            # What was recorded before the failure is not lost.
            h = exc.history
            assert isinstance(h, aia.History)
            assert h.iterations[0] == 0 and h.queries[0] == 0
            assert h.iterations[-1] == exc.iteration
            assert h.answer_count[1] == 2
        else:
            h = aia.start(alg, pid_problem, STOPAT, cluster=cluster, synchronous=synchronous,
                          resilience=1, verbose=0)
            assert h.epochs[-1] == 10
            assert len(h.failures) == 1
            failure = h.failures[0]
            assert failure.worker == 1 and failure.os_pid == os_pid
            assert failure.exitcode == exitcode
            assert failure.iteration >= 2
            assert all(w in failure.cause for w in words[:1])
            assert h.answer_count[1] == 2
            # The other worker carried the run on alone after the failure.
            assert h.answer_count[2] >= 10
            if synchronous:
                assert failure.iteration == 2
                assert h.answer_count[2] == 10 and h.iterations[-1] == 10
            warnings = [r for r in caplog.records
                        if r.name == "aia" and r.levelno == logging.WARNING]
            assert len(warnings) == 1 and "worker 1" in warnings[0].getMessage()
            assert cluster.alive() == ([2] if exitcode is not None else [1, 2])


def test_worker_exception_is_the_cause_as_a_remote_error(no_leftover):
    """errors.py and style.md: the remote exception is attached as ``__cause__``, a
    `RemoteError` with the type name, the message and the traceback text."""
    with pytest.raises(aia.WorkerFailedError) as info:
        aia.start(FailOnce("raise"), pid_problem, STOPAT, cluster=2, verbose=0)
    cause = info.value.__cause__
    assert isinstance(cause, aia.RemoteError), f"__cause__ is {cause!r}"
    assert cause.type_name.endswith("FailureError")
    assert cause.message == "boom on worker 1"
    assert cause.traceback == info.value.traceback


def test_exception_whose_class_cannot_be_unpickled_still_arrives(no_leftover):
    with pytest.raises(aia.WorkerFailedError) as info:
        aia.start(RaisesUnpicklableError(), pid_problem, STOPAT, cluster=2, synchronous=True,
                  verbose=0)
    exc = info.value
    assert exc.worker == 1
    assert "TwoArgumentError" in str(exc) and "column gre is missing" in str(exc)
    assert "TwoArgumentError" in exc.traceback


def test_unpicklable_generator_answer_is_a_failure_naming_the_type(no_leftover):
    with pytest.raises(aia.WorkerFailedError) as info:
        aia.start(FailOnce("generator"), pid_problem, STOPAT, cluster=2, synchronous=True,
                  verbose=0)
    assert info.value.worker == 1
    assert "generator" in str(info.value) and "picklable" in str(info.value)


# -- the problem constructor -----------------------------------------------------------


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_problem_constructor_failure_stops_start_before_iteration_1(how, no_leftover):
    alg = Recording()
    with pytest.raises(aia.WorkerFailedError) as info:
        aia.start(alg, FailingProblem(how), {"iteration": 20}, cluster=2, verbose=0)
    exc = info.value
    assert exc.worker == 1 and exc.iteration == 0
    if how == "raise":
        assert "LookupError" in str(exc) and "no data for site 1" in str(exc)
        assert "no data for site 1" in exc.traceback
    else:
        assert exc.exitcode == 5 and "exit code 5" in str(exc)
    assert not alg.initialized
    assert isinstance(exc.history, aia.History)
    assert all(i == 0 for i in exc.history.iterations)


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_problem_constructor_failure_within_resilience(how, no_leftover):
    h = aia.start(FailOnce(), FailingProblem(how), {"iteration": 20}, cluster=2, resilience=1,
                  verbose=0)
    assert h.iterations[-1] == 20
    assert [(f.worker, f.iteration) for f in h.failures] == [(1, 0)]
    assert h.answer_count[1] == 0 and h.answer_count[2] == 20


# -- unpicklable objects ---------------------------------------------------------------


@pytest.fixture
def no_process_starts(monkeypatch):
    started = []

    def refuse(self):
        started.append(self)
        raise AssertionError("a process was started")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    yield started
    assert not started


def test_unpicklable_algorithm_is_a_type_error_before_any_process(no_process_starts):
    before = descendants()
    with pytest.raises(TypeError) as info:
        aia.start(LockedAlgorithm(), pid_problem, {"iteration": 5}, cluster=2, verbose=0)
    message = str(info.value)
    assert "LockedAlgorithm" in message and "lock" in message
    assert "pickl" in message  # how to fix it
    assert descendants() == before


def test_unpicklable_problem_constructor_is_a_type_error_before_any_process(
        no_process_starts):
    lock = threading.Lock()

    def make_problem(pid):
        with lock:
            return pid

    with pytest.raises(TypeError) as info:
        aia.start(FailOnce(), make_problem, {"iteration": 5}, cluster=2, verbose=0)
    message = str(info.value)
    assert "problem" in message and "lock" in message and "pickl" in message


def test_unpicklable_algorithm_leaves_a_persistent_cluster_usable(no_leftover):
    with aia.LocalCluster(2) as cluster:
        with pytest.raises(TypeError, match="LockedAlgorithm"):
            aia.start(LockedAlgorithm(), pid_problem, {"iteration": 5}, cluster=cluster,
                      verbose=0)
        assert cluster.alive() == [1, 2]
        h = aia.start(FailOnce(), pid_problem, {"iteration": 5}, cluster=cluster, verbose=0)
        assert h.iterations[-1] == 5


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("at, make, name", [
    (0, threading.Lock, "lock"),  # the first query, from initialize
    (3, lambda: (i for i in range(3)), "generator"),  # a later query, from a central step
])
def test_unpicklable_query_is_a_type_error_where_it_happens(at, make, name, mode,
                                                            no_leftover):
    with pytest.raises(TypeError) as info:
        aia.start(BadQuery(at, make), pid_problem, {"iteration": 20}, cluster=2,
                  synchronous=MODES[mode], verbose=0)
    message = str(info.value)
    assert name in message, message
    assert "picklable" in message, f"no hint on how to fix it: {message}"
    assert isinstance(info.value.history, aia.History)
    if at:
        assert info.value.history.iterations[0] == 0


# -- Ctrl-C ----------------------------------------------------------------------------

CTRL_C_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import aia

    WHEN, SYNC = sys.argv[1], sys.argv[2] == "sync"

    def make_problem(pid):
        if WHEN == "startup" and pid > 0:
            os.write(1, f"WORKER {os.getpid()}\\n".encode())  # one atomic write
            time.sleep(60)  # still building its problem when Ctrl-C comes
        return pid

    class Busy(aia.AbstractAlgorithm):
        answers = steps = 0

        def initialize(self, problem):
            return 0

        def answer(self, q, problem):
            self.answers += 1
            if self.answers == 1:
                os.write(1, f"WORKER {os.getpid()}\\n".encode())  # one atomic write
            if self.answers >= 3:  # a long pure-Python computation
                t, x = time.time(), 0
                while time.time() - t < 60:
                    x += 1
            time.sleep(0.01)
            return q + 1

        def central_step(self, a, worker, problem):
            self.steps += 1
            if self.steps == 4:
                print("RUNNING", flush=True)
            return a

        def sync_central_step(self, answers, workers, problem):
            self.steps += 1
            if self.steps == 2:
                print("RUNNING", flush=True)
            return max(answers)

    try:
        aia.start(Busy(), make_problem, {"iteration": 1000}, cluster=2, synchronous=SYNC,
                  verbose=0)
    except KeyboardInterrupt as exc:
        h = getattr(exc, "history", None)
        print("INTERRUPTED", "none" if h is None else (h.iterations or ["empty"])[-1],
              flush=True)
        sys.exit(42)
    print("COMPLETED", flush=True)
""")


@pytest.mark.parametrize("when, mode", [("startup", "async"), ("midrun", "async"),
                                        ("midrun", "sync")])
def test_ctrl_c_stops_the_central_and_every_worker(when, mode, tmp_path):
    path = tmp_path / "ctrl_c.py"
    path.write_text(CTRL_C_SCRIPT)
    script = Script(path, when, mode)
    workers = []
    try:
        workers = [int(line.split()[1]) for line in script.expect("WORKER", 2)]
        if when == "midrun":
            script.expect("RUNNING")
        assert set(workers) <= script.descendants()
        time.sleep(0.2)  # the workers are now deep in their computation (or constructor)
        start = time.monotonic()
        # As a terminal does: SIGINT to the whole process group; the workers ignore it.
        os.killpg(script.proc.pid, signal.SIGINT)
        rc = script.proc.wait(10)
        elapsed = time.monotonic() - start
        out = script.rest()
        assert rc == 42, f"exit code {rc}; stdout {out}; stderr:\n{script.stderr}"
        assert elapsed < 2.5, f"the central took {elapsed:.2f} s to stop"
        interrupted = [line for line in out if line.startswith("INTERRUPTED")]
        assert interrupted
        if when == "midrun":  # the history before the interruption is kept
            assert interrupted[0].split()[1] not in ("none", "empty", "0")
        else:  # interrupted in the set-up: a history all the same, with nothing in it yet
            assert interrupted[0].split()[1] == "empty"
        assert wait_gone(workers, 0.5) == [], "workers outlived the central"
    finally:
        script.cleanup(workers)


# -- the central killed ----------------------------------------------------------------

PARENT_DEATH_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import aia

    HOW = sys.argv[1]

    class Busy(aia.AbstractAlgorithm):
        def initialize(self, problem):
            return 0

        def answer(self, q, problem):
            os.write(1, f"BUSY {os.getpid()}\\n".encode())  # one atomic write
            if HOW == "python":
                x = 0
                while True:
                    x += 1
            elif HOW == "numpy":
                a = np.random.default_rng(0).random((300, 300))
                while True:
                    a = np.tanh(a @ a)
            else:  # one long C call that never releases the GIL
                sum(range(10**13))
            return q

        def central_step(self, a, worker, problem):
            return a

    aia.start(Busy(), lambda pid: pid, {"iteration": 10}, cluster=2, verbose=0)
""")


@pytest.mark.parametrize("how", ["python", "numpy", "gil"])
def test_workers_exit_when_the_central_is_killed(how, tmp_path):
    path = tmp_path / "parent_death.py"
    path.write_text(PARENT_DEATH_SCRIPT)
    script = Script(path, how)
    workers = []
    try:
        workers = [int(line.split()[1]) for line in script.expect("BUSY", 2)]
        time.sleep(0.3)
        script.proc.kill()  # SIGKILL: no finally, no atexit
        script.proc.wait(5)
        left = wait_gone(workers, 4.0)
        assert left == [], f"workers {left} still run 4 s after the central was killed ({how})"
    finally:
        script.cleanup(workers)


# -- hung workers ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sleep", "stubborn"])
@pytest.mark.parametrize("mode", list(MODES))
def test_hung_worker_does_not_stop_time_limit(mode, how, no_leftover):
    before = descendants()
    start = time.monotonic()
    h = aia.start(HangOnWorker1(how), pid_problem, {"time": 1.0}, cluster=2,
                  synchronous=MODES[mode], verbose=0)
    elapsed = time.monotonic() - start
    assert descendants() == before, "start returned before its workers were gone"
    assert elapsed < 3.0, f"start took {elapsed:.2f} s"
    assert h.iterations[0] == 0
    assert h.timestamps[-1] < 1.5
    if not MODES[mode]:
        assert h.answer_count[2] > 0  # the live worker kept answering


def test_shutdown_escalates_to_kill_for_a_worker_ignoring_sigterm(no_leftover):
    before = descendants()
    start = time.monotonic()
    aia.start(HangOnWorker1("stubborn_noterm"), pid_problem, {"time": 0.5}, cluster=2,
              verbose=0)
    elapsed = time.monotonic() - start
    assert descendants() == before
    assert elapsed < 5.0, f"start took {elapsed:.2f} s"


@pytest.mark.parametrize("how", ["sleep", "stubborn"])
def test_worker_hung_in_a_previous_run_does_not_stall_the_next(how, no_leftover):
    """A persistent cluster whose worker 1 is still stuck in run 1's ``answer``: run 2 must
    not spend its life waiting for that worker (it is a failure, within resilience)."""
    with aia.LocalCluster(2) as cluster:
        aia.start(HangOnWorker1(how), pid_problem, {"time": 0.5}, cluster=cluster, verbose=0)
        start = time.monotonic()
        h = aia.start(FailOnce(), pid_problem, {"iteration": 5, "time": 4.0}, cluster=cluster,
                      resilience=1, verbose=0)
        elapsed = time.monotonic() - start
        assert h.iterations[-1] == 5, (
            f"run 2 made {h.iterations[-1]} iterations in {elapsed:.1f} s; failures "
            f"{h.failures}")
        assert elapsed < 3.0


# -- central hooks ---------------------------------------------------------------------


@pytest.mark.parametrize("hook, mode", [
    ("stopnow", "async"), ("stopnow", "sync"), ("savenow", "async"), ("report", "sync"),
    ("central_step", "async"), ("sync_central_step", "sync"),
])
def test_failing_central_hook_propagates_after_a_clean_shutdown(hook, mode, no_leftover):
    before = descendants()
    stopat = {"iteration": 50, "limit": 1000}
    saveat = {"every": 2}
    with pytest.raises(HookError) as info:
        aia.start(FailingHook(hook), pid_problem, stopat, saveat=saveat, cluster=2,
                  synchronous=MODES[mode], verbose=0)
    assert descendants() == before
    h = info.value.history
    assert isinstance(h, aia.History) and h.iterations[0] == 0
    # A step that raised is not counted; a hook that raised after step 3 was counted.
    last = {"central_step": 2, "sync_central_step": 2, "report": 50}.get(hook, 3)
    assert h.iterations[-1] == last
    # Each checkpoint holds the query of its own iteration (the query is the step count).
    assert h.queries == h.iterations, list(zip(h.iterations, h.queries))


# -- nothing left behind ---------------------------------------------------------------


def test_many_runs_leave_no_process_thread_or_descriptor_behind(no_leftover):
    me = psutil.Process()
    aia.start(FailOnce(), pid_problem, {"iteration": 3}, cluster=2, verbose=0)  # warm up
    children, fds, threads = descendants(), me.num_fds(), threading.active_count()
    kinds = [None, "raise", "exit", "sigkill", "unpicklable"]
    for i in range(20):
        how = kinds[i % len(kinds)]
        resilience = (i // len(kinds)) % 2 if how else 0
        kwargs = dict(cluster=2, synchronous=bool(i % 2), resilience=resilience, verbose=0)
        if how and not resilience:
            with pytest.raises(aia.WorkerFailedError):
                aia.start(FailOnce(how), pid_problem, {"epoch": 4}, **kwargs)
        else:
            h = aia.start(FailOnce(how), pid_problem, {"epoch": 4}, **kwargs)
            assert len(h.failures) == (1 if how else 0)
    assert descendants() == children
    assert me.num_fds() == fds
    assert threading.active_count() == threads


# -- more crash cases: error at unpickling, unprintable exceptions, algorithm loading --


@pytest.mark.parametrize("resilience", [0, 1])
def test_answer_that_cannot_be_unpickled_in_the_central_is_a_worker_failure(resilience,
                                                                         no_leftover):
    """loky's "error at unpickling the result": the answer arrives but cannot be rebuilt.
    It is worker 1's failure (named, counted against resilience), not a bare exception out
    of the central loop."""
    alg = WorkerOnlyFailure("unpickle")
    if resilience == 0:
        with pytest.raises(aia.WorkerFailedError) as info:
            aia.start(alg, pid_problem, STOPAT, cluster=2, synchronous=True, verbose=0)
        assert info.value.worker == 1
        assert "cannot rebuild an UnpicklesBadly" in str(info.value)
        assert info.value.history.answer_count[1] == 2
    else:
        h = aia.start(alg, pid_problem, STOPAT, cluster=2, synchronous=True, resilience=1,
                      verbose=0)
        assert [f.worker for f in h.failures] == [1]
        assert h.answer_count[2] == 10


def test_exception_whose_str_raises_still_arrives_as_a_raised_exception(no_leftover):
    with pytest.raises(aia.WorkerFailedError) as info:
        aia.start(WorkerOnlyFailure("bad_str"), pid_problem, STOPAT, cluster=2,
                  synchronous=True, verbose=0)
    exc = info.value
    assert exc.worker == 1
    assert "BadStrError" in str(exc), str(exc)
    assert exc.exitcode is None and exc.traceback and "BadStrError" in exc.traceback


def test_algorithm_that_fails_to_load_on_the_workers_stops_start_before_iteration_1(
        no_leftover):
    with pytest.raises(aia.WorkerFailedError) as info:
        aia.start(FailsToLoadOnWorkers(), pid_problem, {"iteration": 5}, cluster=2, verbose=0)
    exc = info.value
    assert exc.worker in (1, 2) and exc.iteration == 0
    assert "ImportError" in str(exc) and "missing on this worker" in str(exc)


NEXT_RUN_SCRIPT = textwrap.dedent("""
    import sys, time
    import aia

    HOW = sys.argv[1]

    class Alg(aia.AbstractAlgorithm):
        def initialize(self, problem):
            return 0

        def answer(self, q, problem):
            if problem == 1 and self.hang:
                if HOW == "sleep":
                    while True:
                        time.sleep(100)
                elif HOW == "swallow":  # a retry loop that swallows every Exception
                    while True:
                        try:
                            time.sleep(100)
                        except Exception:
                            pass
                else:  # one C call that holds the GIL for hours
                    sum(range(10**13))
            return q + 1

        def central_step(self, a, worker, problem):
            return a

    with aia.LocalCluster(2) as cluster:
        alg = Alg()
        alg.hang = True
        aia.start(alg, lambda pid: pid, {"time": 0.5}, cluster=cluster, verbose=0)
        print("RUN1", flush=True)
        alg.hang = False
        h = aia.start(alg, lambda pid: pid, {"iteration": 5}, cluster=cluster, resilience=1,
                      verbose=0)
        print("RUN2", h.iterations[-1], len(h.failures), flush=True)
""")


@pytest.mark.parametrize("how", ["sleep", "swallow", "gil"])
def test_next_run_without_time_limit_does_not_wait_forever_on_a_hung_worker(how, tmp_path):
    """As above, with no ``time`` in run 2's stopat: it must end, not wait forever in its
    set-up for worker 1, however worker 1 hangs (run in a subprocess so that the wait is
    bounded)."""
    path = tmp_path / "next_run.py"
    path.write_text(NEXT_RUN_SCRIPT)
    script = Script(path, how)
    workers = []
    try:
        script.expect("RUN1", timeout=10)
        workers = list(script.descendants())
        line = script.expect("RUN2", timeout=5)[0]
        assert line.split()[1] == "5"
        assert script.proc.wait(5) == 0
    finally:
        script.cleanup(workers)
