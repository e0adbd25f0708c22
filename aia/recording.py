"""The counting and recording of a run: iterations, epochs, checkpoints, stopping.

`Recorder` is driven by the central loop: ``begin(q0)`` after ``initialize``, then for each
central step ``consumed(workers)`` and ``stepped(q, answers, workers)``, which says whether
to stop. It owns the rules of api.md:

- ``initialize`` is iteration 0, epoch 0; each central step is one iteration;
- an epoch passes when every active worker has answered at least once more (every
  synchronous round is one epoch);
- a checkpoint at initialization, every ``saveat["iteration"]`` iterations, once each time
  the epoch reaches a multiple of ``saveat["epoch"]``, when ``savenow`` is true, and at the
  end; at most one per iteration.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Mapping, Sequence

from .errors import Failure
from .history import History

BUILTIN_STOP = ("iteration", "epoch", "time")
BUILTIN_SAVE = ("iteration", "epoch")


class Recorder:
    def __init__(self, algorithm, stopat: Mapping, saveat: Mapping, save_answers: bool,
                 workers: Sequence[int], clock_start: float):
        self.algorithm = algorithm
        self.stopat = dict(stopat)
        self.saveat = dict(saveat)
        self.save_answers = save_answers
        self.clock_start = clock_start
        self.active = set(workers)
        self.iteration = 0
        self.epoch = 0
        self.answered: set = set()  # workers that answered in the current epoch
        self.history = History()
        self.history.answer_count = {w: 0 for w in workers}
        self.history.staleness = {w: [] for w in workers}
        self.stop_iteration = self.stopat.get("iteration")
        self.stop_epoch = self.stopat.get("epoch")
        self.stop_time = self.stopat.get("time")
        self.save_iteration = self.saveat.get("iteration")
        self.save_epoch = self.saveat.get("epoch")
        self.custom_stop = any(k not in BUILTIN_STOP for k in self.stopat)
        self.custom_save = any(k not in BUILTIN_SAVE for k in self.saveat)
        self._recorded_at = -1
        self.on_checkpoint = None  # aia.checkpoint.Writer when start(checkpoint=...) is given

    def elapsed(self) -> float:
        return time.perf_counter() - self.clock_start

    def remaining(self):
        """Seconds left before ``stopat["time"]`` (None when there is no time limit)."""
        if self.stop_time is None:
            return None
        return max(0.0, self.stop_time - self.elapsed())

    # -- the run ------------------------------------------------------------------------
    def begin(self, q0: Any) -> bool:
        """Record initialization; whether the run is already over (e.g. iteration 0)."""
        self._checkpoint(q0, None, None)
        return self.should_stop()

    def consumed(self, workers: Sequence[int], staleness: Sequence[int]) -> None:
        """The answers of ``workers`` were consumed by the central step about to run."""
        count, stale = self.history.answer_count, self.history.staleness
        for w, s in zip(workers, staleness):
            count[w] += 1
            stale[w].append(s)
        self.answered.update(workers)

    def stepped(self, q: Any, answers: Any, workers: Any) -> bool:
        """Count the central step just taken, record if due; whether to stop."""
        self.iteration += 1
        self.last = (q, answers, workers)  # before the hooks, which may raise
        epoch_passed = self._advance_epoch()
        if self._save_due(epoch_passed):
            self._checkpoint(q, answers, workers)
        return self.should_stop()

    def _advance_epoch(self) -> bool:
        if self.active and self.active <= self.answered:
            self.epoch += 1
            self.answered = set()
            return True
        return False

    def remove_worker(self, failure: Failure) -> None:
        """A worker failed and leaves the run; the epoch no longer waits for it."""
        self.history.failures.append(failure)
        self.active.discard(failure.worker)

    def _save_due(self, epoch_passed: bool) -> bool:
        if self.save_iteration and self.iteration % self.save_iteration == 0:
            return True
        if epoch_passed and self.save_epoch and self.epoch % self.save_epoch == 0:
            return True
        return self.custom_save and bool(self.algorithm.savenow(self.saveat))

    def should_stop(self) -> bool:
        if self.stop_iteration is not None and self.iteration >= self.stop_iteration:
            return True
        if self.stop_epoch is not None and self.epoch >= self.stop_epoch:
            return True
        if self.stop_time is not None and self.elapsed() >= self.stop_time:
            return True
        return self.custom_stop and bool(self.algorithm.stopnow(self.stopat))

    def progress(self) -> float:
        """Completion in [0, 1]: the criterion nearest to stopping."""
        fractions = [0.0]
        if self.stop_iteration:
            fractions.append(self.iteration / self.stop_iteration)
        if self.stop_epoch:
            fractions.append(self.epoch / self.stop_epoch)
        if self.stop_time:
            fractions.append(self.elapsed() / self.stop_time)
        if self.custom_stop:
            fractions.append(float(self.algorithm.progress(self.stopat)))
        return min(1.0, max(fractions))

    # -- recording ----------------------------------------------------------------------
    def _checkpoint(self, q: Any, answers: Any, workers: Any) -> None:
        if self._recorded_at == self.iteration:
            return
        self._recorded_at = self.iteration
        h = self.history
        # Copies: an algorithm may update its query in place after sending it.
        h.queries.append(_copy(q))
        h.iterations.append(self.iteration)
        h.epochs.append(self.epoch)
        h.timestamps.append(self.elapsed())
        if self.save_answers and self.iteration > 0:
            h.answers.append(_copy(answers))
            h.answers_origin.append(copy.copy(workers))
        self.algorithm.savevalues()
        if self.on_checkpoint is not None:  # after savevalues: the file has its values
            self.on_checkpoint(self, q)

    def finish(self) -> History:
        """Record the last state (if not yet recorded) and the algorithm's report."""
        if self.iteration > 0 and self._recorded_at != self.iteration:
            self._checkpoint(*self.last)
        self.history.add_report(self.algorithm.report())
        return self.history

    def snapshot(self) -> History:
        """The history so far, for an error raised mid-run; never raises itself."""
        try:
            if self.iteration > 0 and self._recorded_at != self.iteration:
                self._checkpoint(*self.last)
        except Exception:  # a failing hook must not hide the error being reported
            pass
        try:
            self.history.add_report(self.algorithm.report())
        except Exception:
            pass
        return self.history


def _copy(value: Any) -> Any:
    """A deep copy, or the value itself if it cannot be copied (sending it will then fail
    with an error that says why, at the point where it matters)."""
    try:
        return copy.deepcopy(value)
    except Exception:
        return value
