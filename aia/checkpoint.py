"""Checkpoints on disk and `aia.resume`.

``aia.start(..., checkpoint="run.ckpt")`` writes, at every recorded checkpoint (the ``saveat``
ones and the last), what the central needs to go on: the algorithm object, the last query,
the history so far and the counters (iteration, epoch, answer counts, staleness, elapsed time
of the ``time`` criterion). The write is atomic: a temporary file in the same directory,
fsync, then ``os.replace``, so a central killed mid-write leaves the previous checkpoint
intact (and a leftover temporary file is never read).

The file is a header (a magic line, the payload's length and its SHA-256) and a cloudpickle
payload. It is the user's own pickle: loading it runs code, so aia never loads one
implicitly; only `resume` (or `load`) reads it, when told to.
"""

from __future__ import annotations

import copy
import hashlib
import os
import struct
import tempfile
import time
from typing import Any, Optional

import cloudpickle

MAGIC = b"AIA-CHECKPOINT 1\n"
_HEADER = struct.Struct(">Q32s")  # payload length, SHA-256 of the payload


class CheckpointError(ValueError):
    """A checkpoint file that cannot be resumed from (corrupt, truncated, not a checkpoint,
    or of another algorithm class than the one expected)."""


# -- writing -------------------------------------------------------------------------------
def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, fsync, replace."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)  # the rename itself survives a crash of the machine


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def encode(state: dict) -> bytes:
    payload = cloudpickle.dumps(state)
    return MAGIC + _HEADER.pack(len(payload), hashlib.sha256(payload).digest()) + payload


class Writer:
    """Called by the `Recorder` after each recorded checkpoint: writes the run's state."""

    def __init__(self, path, run_info: dict):
        self.path = os.fspath(path)
        self.run_info = dict(run_info)  # stopat, saveat, synchronous, workers, ...
        self.count = 0
        self.seconds = 0.0  # total time spent writing, for the benchmark

    def __call__(self, recorder, q: Any) -> None:
        began = time.perf_counter()
        write_atomic(self.path, encode(state_of(recorder, q, self.run_info)))
        self.count += 1
        self.seconds += time.perf_counter() - began


def state_of(recorder, q: Any, run_info: dict) -> dict:
    """What the central needs to go on from this checkpoint."""
    return dict(
        format=1, run=run_info, algorithm=recorder.algorithm, query=q,
        history=recorder.history, iteration=recorder.iteration, epoch=recorder.epoch,
        answered=set(recorder.answered), active=set(recorder.active),
        elapsed=recorder.elapsed(),
    )


# -- reading -------------------------------------------------------------------------------
def load(path, algorithm_class: Optional[type] = None) -> dict:
    """The state written by a checkpointed run. Unpickles the file: only for your own files.

    Raises `CheckpointError` naming the file if it is truncated, corrupt or not a checkpoint,
    or if ``algorithm_class`` is given and the algorithm is of another class.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not an aia checkpoint (expected it to begin with "
                              f"{MAGIC!r}, got {data[:len(MAGIC)]!r})")
    head = data[len(MAGIC):len(MAGIC) + _HEADER.size]
    if len(head) < _HEADER.size:
        raise CheckpointError(f"{path}: truncated aia checkpoint (its header is incomplete)")
    length, digest = _HEADER.unpack(head)
    payload = data[len(MAGIC) + _HEADER.size:]
    if len(payload) != length:
        raise CheckpointError(f"{path}: truncated or corrupt aia checkpoint (expected "
                              f"{length} bytes of payload, got {len(payload)})")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path}: corrupt aia checkpoint (its checksum does not match)")
    try:
        state = cloudpickle.loads(payload)
    except Exception as exc:
        raise CheckpointError(f"{path}: the aia checkpoint cannot be unpickled here: "
                              f"{type(exc).__name__}: {exc}") from exc
    if algorithm_class is not None and not isinstance(state["algorithm"], algorithm_class):
        raise CheckpointError(
            f"{path}: expected a checkpoint of a {algorithm_class.__name__} run, got one of "
            f"{type(state['algorithm']).__name__}")
    return state


def restore(recorder, state: dict) -> None:
    """Put the counters and the history of ``state`` into a fresh `Recorder`."""
    workers = set(recorder.active)  # the workers of the resumed run
    h = state["history"]
    for w in workers:  # a worker new to the run starts its counts at zero
        h.answer_count.setdefault(w, 0)
        h.staleness.setdefault(w, [])
    h._report = {}  # the report is added again at the end of the resumed run
    recorder.history = h
    recorder.iteration = state["iteration"]
    recorder.epoch = state["epoch"]
    recorder.answered = set(state["answered"]) & workers
    recorder._recorded_at = state["iteration"]  # this checkpoint is recorded already


def resume(path, make_problem, stopat=None, *, algorithm_class: Optional[type] = None,
           **start_kwargs):
    """Continue the run checkpointed in ``path`` on fresh workers; return its whole history.

    The workers receive the checkpointed algorithm; counting goes on from the checkpoint
    (iteration, epoch, answer counts, staleness, and the clock of ``stopat["time"]``: the
    time between the death of the central and the resume is not counted). The returned
    `aia.History` covers the whole run from iteration 0. ``make_problem`` is as for
    `aia.start`. ``stopat`` defaults to the original run's; ``start_kwargs`` are
    `aia.start`'s keywords, defaulting to the original run's ``saveat``, ``save_answers``,
    ``synchronous``, ``resilience`` and ``checkpoint`` (the resumed run goes on writing to
    ``path``), and to a temporary local cluster with the workers active at the checkpoint.
    A synchronous deterministic algorithm ends on the same iterate as an uninterrupted run.

    The file is the user's own cloudpickle: reading it runs code, so resume only files you
    wrote; aia never loads one implicitly. ``algorithm_class``: if given, a checkpoint of
    another class is a `CheckpointError` (a ``ValueError``), as is a corrupt file.
    """
    from .run import start_from

    state = load(path, algorithm_class)
    run = state["run"]
    kwargs = dict(saveat=run["saveat"], save_answers=run["save_answers"],
                  synchronous=run["synchronous"], resilience=run["resilience"],
                  checkpoint=path)
    kwargs.update(start_kwargs)
    if "pids" not in kwargs:
        kwargs["pids"] = [0] if run["workers"] == [0] else sorted(state["active"])
    if "cluster" not in kwargs and kwargs["pids"] != [0]:
        kwargs["cluster"] = max(kwargs["pids"])
    stopat = run["stopat"] if stopat is None else stopat
    return start_from(state, state["algorithm"], make_problem, stopat, **kwargs)


def copy_query(q: Any) -> Any:
    """The resumed run's first query, apart from the history's copy of it."""
    return copy.deepcopy(q)
