"""Issue 16 items 1-2: checkpoints on disk and `aia.resume`, with real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

import aia
from aia.checkpoint import CheckpointError, load

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STOP = 30


class Block:
    def __init__(self, pid):
        rng = np.random.default_rng(pid)
        self.A = rng.normal(size=(20, 4))
        self.b = rng.normal(size=20)
        self.m = 20


def make_problem(pid):
    return Block(pid)


class GD(aia.AbstractAlgorithm):
    """Synchronous full-gradient descent; ``delay`` slows the workers (for the kill test)."""

    def __init__(self, delay=0.0):
        self.x = np.zeros(4)
        self.delay = delay
        self.losses = []

    def initialize(self, problem):
        return self.x

    def answer(self, q, problem):
        time.sleep(self.delay)
        return problem.A.T @ (problem.A @ q - problem.b), problem.m

    def sync_central_step(self, answers, workers, problem):
        g = sum(a[0] for a in answers) / sum(a[1] for a in answers)
        self.x = self.x - 0.01 * g
        return self.x

    def savevalues(self):
        self.losses.append(float(self.x @ self.x))

    def report(self):
        return {"losses": self.losses}


class Other(GD):
    pass


def uninterrupted():
    return aia.start(GD(), make_problem, {"iteration": STOP}, saveat={"iteration": 5},
                     cluster=2, synchronous=True, verbose=0)


def test_stop_and_resume_ends_on_the_same_iterate(tmp_path):
    full = uninterrupted()
    path = tmp_path / "run.ckpt"
    first = aia.start(GD(), make_problem, {"iteration": 12}, saveat={"iteration": 5},
                      cluster=2, synchronous=True, verbose=0, checkpoint=path)
    assert first.iterations[-1] == 12
    h = aia.resume(path, make_problem, stopat={"iteration": STOP})
    assert h.iterations == [0, 5, 10, 12, 15, 20, 25, 30]
    assert np.array_equal(h.queries[-1], full.queries[-1])  # bit for bit
    assert h.answer_count == {1: STOP, 2: STOP}
    assert len(h.losses) == len(h)
    # the same iterates where both runs recorded one
    for it, q in zip(full.iterations, full.queries):
        assert np.array_equal(h.queries[h.iterations.index(it)], q)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_resume_defaults_to_the_original_stopat(tmp_path):
    path = tmp_path / "run.ckpt"
    aia.start(GD(), make_problem, {"iteration": STOP}, saveat={"iteration": 5}, cluster=2,
              synchronous=True, verbose=0, checkpoint=path)
    state = load(path)
    assert state["iteration"] == STOP and len(state["history"]) == 7
    h = aia.resume(path, make_problem)  # already over: nothing more runs
    assert h.iterations[-1] == STOP and len(h) == 7


KILL_SCRIPT = """
    import sys
    import aia
    from tests.aia.test_checkpoint import GD, make_problem
    if __name__ == "__main__":
        print("STARTED", flush=True)
        aia.start(GD(delay=0.05), make_problem, {{"iteration": {stop}}},
                  saveat={{"iteration": 2}}, cluster=2, synchronous=True, verbose=0,
                  checkpoint=sys.argv[1])
        print("DONE", flush=True)
"""


def test_sigkill_of_the_central_then_resume(tmp_path):
    full = uninterrupted()
    path = tmp_path / "run.ckpt"
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT.format(stop=STOP)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH"), ROOT) if p)}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.monotonic() + 60
        reached = 0
        while time.monotonic() < deadline and proc.poll() is None:
            children = psutil.Process(proc.pid).children(recursive=True)
            workers = list({c.pid: c for c in workers + children}.values())
            if os.path.exists(path):
                reached = load(path)["iteration"]
                if reached >= 6:
                    break
            time.sleep(0.05)
        assert proc.poll() is None and 6 <= reached < STOP, (
            f"the script did not reach iteration 6 while running: rc {proc.poll()}, "
            f"iteration {reached}; stderr {proc.stderr.read() if proc.poll() is not None else ''}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers of the killed central still alive: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for w in workers:
            try:
                w.kill()
            except psutil.Error:
                pass
    # a half-written temporary file left by a kill is never read
    (tmp_path / "run.ckpt.garbage.tmp").write_bytes(b"half written")
    h = aia.resume(path, make_problem, algorithm_class=GD)
    assert h.iterations[0] == 0 and h.iterations[-1] == STOP
    assert h.iterations == list(range(0, STOP + 1, 2))
    assert np.array_equal(h.queries[-1], full.queries[-1])
    assert len(h.losses) == len(h)


def test_corrupt_truncated_and_other_class_are_clear_errors(tmp_path):
    path = tmp_path / "run.ckpt"
    aia.start(GD(), make_problem, {"iteration": 3}, pids=[0], verbose=0, checkpoint=path)
    data = path.read_bytes()
    with pytest.raises(CheckpointError, match="Other") as info:
        aia.resume(path, make_problem, algorithm_class=Other)
    assert str(path) in str(info.value)
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated.ckpt.*truncated"):
        aia.resume(bad, make_problem)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        aia.resume(bad, make_problem)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not an aia checkpoint"):
        aia.resume(bad, make_problem)


def test_non_distributed_resume_matches(tmp_path):
    full = aia.start(GD(), make_problem, {"iteration": 10}, pids=[0], verbose=0)
    path = tmp_path / "run.ckpt"
    aia.start(GD(), make_problem, {"iteration": 4}, pids=[0], verbose=0, checkpoint=path)
    h = aia.resume(path, make_problem, stopat={"iteration": 10})
    assert h.iterations == [0, 4, 10]
    assert np.array_equal(h.queries[-1], full.queries[-1])


def test_bad_checkpoint_argument():
    with pytest.raises(ValueError, match="does not exist"):
        aia.start(GD(), make_problem, {"iteration": 1}, pids=[0], verbose=0,
                  checkpoint="/no/such/dir/run.ckpt")


class AsyncGD(GD):
    def central_step(self, a, worker, problem):
        self.x = self.x - 0.01 * a[0] / a[1]
        return self.x


def test_asynchronous_resume_counts_on_and_keeps_the_clock(tmp_path):
    path = tmp_path / "run.ckpt"
    first = aia.start(AsyncGD(), make_problem, {"iteration": 10}, saveat={"iteration": 5},
                      cluster=2, verbose=0, checkpoint=path)
    h = aia.resume(path, make_problem, stopat={"iteration": 25})
    assert h.iterations == [0, 5, 10, 15, 20, 25]
    assert sum(h.answer_count.values()) == 25
    assert sum(len(s) for s in h.staleness.values()) == 25
    assert h.timestamps[:3] == first.timestamps  # the first run's record, unchanged
    assert all(b >= a for a, b in zip(h.timestamps, h.timestamps[1:]))  # the clock goes on
