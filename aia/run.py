"""`aia.start`: the central loop.

    asynchronous                              synchronous
    ------------                              -----------
    q = initialize(problem)                   q = initialize(problem)
    send q to every worker                    loop:
    loop:                                         send q to every live worker
        (a, worker) = next answer                 answers = one from each live worker
        q = central_step(a, worker, problem)      q = sync_central_step(answers, workers, problem)
        record, maybe stop                        record, maybe stop
        send q to that worker

A failure (an exception in a worker, or a worker that dies) removes the worker from the run;
up to ``resilience`` failures the loop goes on with the others, one more raises
`aia.WorkerFailedError`. The workers of a temporary cluster are gone when `start` returns,
whatever happened; any exception carries the history recorded before it as ``exc.history``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from typing import Any, Mapping, Optional, Sequence

from . import checkpoint as checkpoint_module
from .checks import (check_all, check_pids_in, check_resilience, serialize)
from .cluster import BuildProblem, Cluster, Failed
from .distributed import DistributedObject
from .errors import WorkerFailedError, attach_history
from .history import History
from .local import LocalCluster, cpu_count
from .progress import Progress
from .recording import Recorder

log = logging.getLogger("aia")


def start(algorithm, problem, stopat: Mapping, *, saveat: Optional[Mapping] = None,
          save_answers: bool = False, pids: Optional[Sequence[int]] = None, cluster=None,
          synchronous: bool = False, resilience: int = 0, verbose: int = 1,
          progress_file=None, checkpoint=None, replace_failed: bool = False) -> History:
    """Run ``algorithm`` on the workers until a criterion of ``stopat`` is met.

    ``problem`` is ``make_problem(pid)``, called in every process that takes part (the
    central is pid 0, workers are 1..n), or an `aia.DistributedObject`. ``stopat`` maps
    ``iteration``, ``epoch``, ``time`` (seconds) and custom keys read by ``stopnow`` to their
    limits; the run stops when any is met. ``saveat`` maps ``iteration``/``epoch`` (and custom
    keys read by ``savenow``) to checkpoint intervals. ``cluster``: None (a temporary local
    cluster, one worker per core), an int (that many temporary local workers) or a cluster
    object. ``pids``: the workers taking part (default all; ``[0]`` runs here,
    non-distributed). ``synchronous``: wait for every worker each round. ``resilience``: the
    worker failures tolerated. ``verbose``: 0 silent, 1 a progress bar, 2 the bar and the
    values of ``showvalues``. ``progress_file``: where the bar is written (stderr).
    ``checkpoint``: a file path; at every recorded checkpoint the central's state is written
    there atomically, for `aia.resume` (see `aia.checkpoint`). ``replace_failed``: a worker
    that fails (raises, or dies) is counted in ``history.failures`` as always, and a fresh
    worker takes its slot, its problem rebuilt from ``make_problem`` (asynchronous: it gets
    the current query; synchronous: it joins the next round), so that a long run's pool does
    not shrink; ``resilience`` still bounds the failures. Engines that can: `LocalCluster`
    (and the temporary cluster); not with a `DistributedObject` problem, whose objects the
    fresh worker would lack.

    Returns an `aia.History`. See the README for the counting semantics.
    """
    return start_from(None, algorithm, problem, stopat, saveat=saveat,
                      save_answers=save_answers, pids=pids, cluster=cluster,
                      synchronous=synchronous, resilience=resilience, verbose=verbose,
                      progress_file=progress_file, checkpoint=checkpoint,
                      replace_failed=replace_failed)


def start_from(state, algorithm, problem, stopat: Mapping, *, saveat=None,
               save_answers: bool = False, pids=None, cluster=None, synchronous: bool = False,
               resilience: int = 0, verbose: int = 1, progress_file=None,
               checkpoint=None, replace_failed: bool = False) -> History:
    """`start`, or with ``state`` (a loaded checkpoint) its continuation (`aia.resume`)."""
    clock_start = time.perf_counter() - (state["elapsed"] if state is not None else 0.0)
    _check_checkpoint_path(checkpoint)
    stopat, saveat, pids = check_all(algorithm, problem, stopat, saveat, save_answers, pids,
                                     cluster, synchronous, resilience, verbose)
    _check_replace_failed(replace_failed, problem, cluster)
    options = dict(saveat=saveat, save_answers=save_answers, resilience=resilience,
                   verbose=verbose, progress_file=progress_file, clock_start=clock_start,
                   state=state)
    run_info = dict(stopat=stopat, saveat=saveat, save_answers=save_answers,
                    synchronous=synchronous, resilience=resilience)
    if pids == [0]:
        _check_workers(algorithm, [0])
        central = _Central(algorithm, None, stopat, workers=[0], synchronous=True, run=None,
                           writer=_writer(checkpoint, run_info, [0]), **options)
        try:
            central.problem = _central_problem(problem)
        except BaseException as exc:  # make_problem(0) raised: the (empty) history too
            central.attach(exc)
            raise
        return central.go()

    if isinstance(problem, DistributedObject) and cluster is None:
        cluster = problem.cluster
    owned = not isinstance(cluster, Cluster)
    available = list(range(1, (cluster or cpu_count()) + 1)) if owned else cluster.pids
    if pids is None:
        pids = available
    check_pids_in(pids, available)
    if not replace_failed:  # with replacement the pool keeps its size: any bound will do
        check_resilience(resilience, len(pids))
    _check_workers(algorithm, pids)
    algorithm_bytes = serialize(algorithm, "algorithm")
    if isinstance(problem, DistributedObject):
        if problem.cluster is not cluster:
            raise ValueError("problem: this DistributedObject lives on another cluster than "
                             "the one given to start")
        spec = problem.problem_spec(pids)
    else:
        spec = BuildProblem(serialize(problem, "problem constructor"))

    central = _Central(algorithm, None, stopat, workers=pids, synchronous=synchronous,
                       run=None, writer=_writer(checkpoint, run_info, pids), **options)
    try:
        with _terminate_as_exit():
            return _run_on(central, _workers_of(cluster, owned, available), owned,
                           algorithm_bytes, spec, pids, problem, replace_failed)
    except BaseException as exc:
        # Whatever ended the run, and wherever: the set-up, make_problem(0), the loop, or a
        # Ctrl-C during the clean-up (the history recorded so far is complete then).
        central.attach(exc)
        raise


@contextlib.contextmanager
def _terminate_as_exit():
    """For the run, SIGTERM (``kill``, a scheduler's stop) ends it as Ctrl-C does, then
    raises ``SystemExit(143)`` carrying the history (by default SIGTERM ends the process
    at once, the history lost, the workers left to notice). It is delivered as a SIGINT,
    so that what the engine shields from Ctrl-C (a message half sent, a fork, the clean-up)
    is shielded from it too. Only in the main thread, where SIGTERM has its default
    action."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    terminated = []
    # Where Ctrl-C is ignored (a background job of a non-interactive shell, as batch
    # schedulers start them) a SIGINT would be lost: SystemExit is raised at once instead.
    as_interrupt = signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None)

    def on_terminate(signum, frame):
        terminated.append(signum)
        if not as_interrupt:
            raise SystemExit(128 + signum)
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield
    except KeyboardInterrupt as exc:
        if not terminated:
            raise
        stop = SystemExit(128 + terminated[0])
        history = getattr(exc, "history", None)
        if history is not None:
            stop.history = history
        raise stop from exc
    finally:
        if signal.getsignal(signal.SIGTERM) is on_terminate:  # not one set since
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _workers_of(cluster, owned: bool, available: list):
    """The cluster a run uses: the given one, or a temporary one of ``available`` workers."""
    return LocalCluster(len(available)) if owned else cluster


def _run_on(central: "_Central", workers, owned: bool, algorithm_bytes: bytes, spec,
            pids: Sequence[int], problem, replace_failed: bool = False) -> History:
    run = None
    try:
        remaining = central.recorder.remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        run, failed = workers.open_run_tolerating(algorithm_bytes, spec, pids, deadline,
                                                  central.resilience)
        central.run = run
        if replace_failed:
            central.replace = functools.partial(run.replace, algorithm=algorithm_bytes,
                                                problem=spec, deadline=deadline)
        for event in failed:  # a constructor that raised, or a worker that died
            central.fail(event)
        central.problem = _central_problem(problem)
        return central.go()
    finally:
        try:
            if run is not None:
                run.close()
        finally:
            if owned:
                workers.close(grace=0.0)  # even if run.close was interrupted; no grace:
                # nothing of a temporary cluster's workers is kept


def _check_replace_failed(replace_failed, problem, cluster) -> None:
    """Before any process starts: ``replace_failed`` is a bool, on an engine that can."""
    if not isinstance(replace_failed, bool):
        raise TypeError(f"replace_failed: expected True or False, got {replace_failed!r}")
    if not replace_failed:
        return
    if isinstance(problem, DistributedObject):
        raise ValueError("replace_failed=True with a DistributedObject problem: a fresh worker "
                         "would not have the object built on the one it replaces (it is lost "
                         "with it); pass a make_problem function, or leave replace_failed off")
    engine = problem.cluster if isinstance(problem, DistributedObject) else cluster
    if isinstance(engine, Cluster) and not engine.replaces_workers:
        raise TypeError(f"replace_failed=True: {type(engine).__name__} cannot start a fresh "
                        f"worker in a failed one's slot; LocalCluster (or cluster=None, a "
                        f"temporary one) can")


def _check_checkpoint_path(path) -> None:
    if path is None:
        return
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint: expected a file path (str or os.PathLike) or None, "
                        f"got {type(path).__name__}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"checkpoint: the directory {directory!r} of {os.fspath(path)!r} "
                         f"does not exist")


def _writer(path, run_info: dict, pids) -> Optional[checkpoint_module.Writer]:
    """The checkpoint writer of a run (None without ``checkpoint``)."""
    if path is None:
        return None
    return checkpoint_module.Writer(path, {**run_info, "workers": list(pids)})


def _check_workers(algorithm, pids: Sequence[int]) -> None:
    """Let an algorithm that depends on the workers (e.g. averaging weights) check them
    before any process starts."""
    _call_if_defined(algorithm, "check_workers", list(pids))


def _call_if_defined(algorithm, name: str, *args) -> None:
    """``algorithm.name(*args)`` for the engine's optional calls (the wrappers define them)."""
    method = getattr(algorithm, name, None)
    if callable(method):
        method(*args)


#: Added to a TypeError or AttributeError raised while the central's problem is None: the
#: usual cause, far from where it shows (``len(None)`` in the user's own code).
_NO_CENTRAL_PROBLEM = (
    "aia: the central's problem (pid 0) is None: make_problem(0) returned None, or the "
    "DistributedObject's .local was never set; set problems.local = ... (what the algorithm's "
    "initialize and central steps need), or have make_problem(0) return it")


def _central_problem(problem) -> Any:
    return problem.local if isinstance(problem, DistributedObject) else problem(0)


class _Central:
    """The central side of one run: the loop, its recording and its failures."""

    def __init__(self, algorithm, problem, stopat, *, workers, synchronous, run, saveat,
                 save_answers, resilience, verbose, progress_file, clock_start, state=None,
                 writer=None):
        self.algorithm = algorithm
        self.problem = problem
        self.run = run
        self.synchronous = synchronous
        self.resilience = resilience
        self.recorder = Recorder(algorithm, stopat, saveat, save_answers, workers, clock_start)
        self.resumed = state is not None  # then the first query is the checkpoint's
        if self.resumed:
            checkpoint_module.restore(self.recorder, state)
            self.first_query = checkpoint_module.copy_query(state["query"])
        self.recorder.on_checkpoint = writer
        self.verbose = verbose
        self.progress_file = progress_file
        self.progress: Optional[Progress] = None
        #: ``replace(pid) -> None | Failed``: a fresh worker in failed ``pid``'s slot
        #: (``replace_failed``); None: a failed worker leaves the run.
        self.replace = None

    def go(self) -> History:
        completed = False
        try:
            try:
                self.progress = Progress(self.recorder, self.verbose, self.progress_file)
                if self.run is None:
                    self.loop_here()
                elif self.synchronous:
                    self.loop_sync()
                else:
                    self.loop_async()
                history = self.recorder.finish()
                completed = True
            finally:
                if self.progress is not None:
                    self.progress.close(completed)  # its own failure gets the history too
            return history
        except BaseException as exc:
            self.attach(exc)
            if self.problem is None and isinstance(exc, (TypeError, AttributeError)):
                exc.add_note(_NO_CENTRAL_PROBLEM)
            raise

    def attach(self, exc: BaseException) -> None:
        """Give ``exc`` the history recorded so far (unless it carries one already)."""
        attach_history(exc, self.recorder.snapshot())

    def fail(self, event: Failed) -> bool:
        """Count a failure: past ``resilience`` it ends the run. True if a fresh worker took
        the failed one's slot (``replace_failed``), False if the run goes on without it."""
        rec = self.recorder
        failure = event.failure(rec.iteration)
        failures = rec.history.failures + [failure]
        if len(failures) > self.resilience:
            hint = (f"resilience={self.resilience} tolerates {self.resilience} failure(s); "
                    f"this is failure {len(failures)}.")
            raise WorkerFailedError(failure, failures, rec.snapshot(), hint) \
                from event.remote_error()
        if self.replace is not None:
            log.warning("aia: %s; a fresh worker takes its slot (%d of %d failures "
                        "tolerated)", failure, len(failures), self.resilience)
            rec.history.failures.append(failure)
            again = self.replace(failure.worker)
            return True if again is None else self.fail(again)  # its set-up failed too
        log.warning("aia: %s; the run goes on without it (%d of %d failures tolerated)",
                    failure, len(failures), self.resilience)
        rec.remove_worker(failure)
        # An algorithm that keeps per-worker state (AggregationAlgorithm) forgets the worker.
        _call_if_defined(self.algorithm, "worker_left", failure.worker)
        return False

    def begin(self) -> tuple:
        """The first query and whether the run is over already: ``initialize``'s (recorded
        as iteration 0), or a resumed run's from its checkpoint."""
        if self.resumed:
            return self.first_query, self.recorder.should_stop()
        q = self.algorithm.initialize(self.problem)
        return q, self.recorder.begin(q)

    def loop_async(self) -> None:
        alg, rec, run = self.algorithm, self.recorder, self.run
        q, over = self.begin()
        if over:
            return
        sent_at = {pid: rec.iteration for pid in rec.active}  # the iteration each outstanding query is from
        run.broadcast(sorted(rec.active), q)
        while True:
            events = run.wait(rec.remaining())
            if not events and rec.should_stop():
                return  # out of time while waiting
            for event in events:
                if isinstance(event, Failed):
                    if self.fail(event):  # a fresh worker in its slot: the current query
                        run.send(event.worker, q)
                        sent_at[event.worker] = rec.iteration
                    continue
                pid = event.worker
                alg.staleness = staleness = rec.iteration - sent_at[pid]
                rec.consumed((pid,), (staleness,))
                q = alg.central_step(event.value, pid, self.problem)
                stop = rec.stepped(q, event.value, pid)
                self.progress.update()
                if stop:
                    return
                run.send(pid, q)
                sent_at[pid] = rec.iteration

    def loop_sync(self) -> None:
        alg, rec, run = self.algorithm, self.recorder, self.run
        q, over = self.begin()
        if over:
            return
        while True:
            workers = sorted(rec.active)
            run.broadcast(workers, q)
            got = self._collect_round(set(workers))
            if got is None:
                return  # out of time while waiting
            if not got:  # every worker of the round failed, and fresh ones took their
                continue  # slots (replace_failed): no round to step on, ask them again
            order = [w for w in workers if w in got]
            answers = [got[w] for w in order]
            alg.staleness = [0] * len(order)
            rec.consumed(order, alg.staleness)
            q = alg.sync_central_step(answers, order, self.problem)
            stop = rec.stepped(q, answers, order)
            self.progress.update()
            if stop:
                return

    def _collect_round(self, pending: set) -> Optional[dict]:
        """One answer from each live worker of ``pending``; None if the time ran out."""
        got = {}
        while pending:
            events = self.run.wait(self.recorder.remaining())
            if not events and self.recorder.should_stop():
                return None
            for event in events:
                if isinstance(event, Failed):
                    self.fail(event)
                elif event.worker in pending:
                    got[event.worker] = event.value
                pending.discard(event.worker)
        return got

    def loop_here(self) -> None:
        """Non-distributed: answer and step in this process (pids=[0])."""
        alg, rec, problem = self.algorithm, self.recorder, self.problem
        q, over = self.begin()
        if over:
            return
        while True:
            a = alg.answer(q, problem)
            alg.staleness = [0]
            rec.consumed((0,), (0,))
            q = alg.sync_central_step([a], [0], problem)
            stop = rec.stepped(q, [a], [0])
            self.progress.update()
            if stop:
                return
