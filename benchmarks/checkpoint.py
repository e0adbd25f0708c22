"""The cost of one checkpoint (`aia.start(..., checkpoint=...)`): pickling and the atomic write.

    python benchmarks/checkpoint.py

For queries of 10, 1e4 and 1e6 floats and a history of 10, 100 and 1000 checkpoints so far:
the seconds per checkpoint of `aia.checkpoint.Writer` (cloudpickle of the algorithm, query
and history, write to a temporary file, fsync, os.replace), measured on a Recorder built the
way `aia.start` builds it; and, for the smallest case, the same loop through `aia.start` with
and without a checkpoint at every iteration (pids=[0], no worker processes).

Prints a table and writes benchmarks/results/checkpoint.json.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import aia
from aia.checkpoint import Writer
from aia.recording import Recorder


class Step(aia.AbstractAlgorithm):
    def __init__(self, n):
        self.x = np.zeros(n)

    def initialize(self, problem):
        return self.x

    def answer(self, q, problem):
        return 1.0

    def sync_central_step(self, answers, workers, problem):
        self.x = self.x + answers[0]
        return self.x


def per_checkpoint(n: int, length: int, directory: str, repeats: int = 5) -> float:
    alg = Step(n)
    rec = Recorder(alg, {"iteration": 10 ** 9}, {"iteration": 1}, False, [1, 2],
                   time.perf_counter())
    q = alg.initialize(None)
    rec.begin(q)
    # a history of ``length`` checkpoints (the query of each is what the history keeps)
    for _ in range(length - 1):
        rec.consumed([1, 2], [0, 0])
        rec.stepped(q, None, None)
    writer = Writer(os.path.join(directory, f"b{n}-{length}.ckpt"), {})
    for _ in range(repeats):
        writer(rec, q)
    return writer.seconds / writer.count


def through_start(directory: str, iterations: int = 300) -> dict:
    out = {}
    for label, ckpt in (("no checkpoint", None),
                        ("checkpoint every iteration", os.path.join(directory, "s.ckpt"))):
        began = time.perf_counter()
        aia.start(Step(10), lambda pid: None, {"iteration": iterations},
                  saveat={"iteration": 1}, pids=[0], verbose=0, checkpoint=ckpt)
        out[label] = (time.perf_counter() - began) / iterations
    return out


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as directory:
        for n in (10, 10_000, 1_000_000):
            for length in (10, 100, 1000):
                if n == 1_000_000 and length > 10:
                    continue  # 8 GB of history: not a sensible run to checkpoint
                rows.append(dict(query_floats=n, history_checkpoints=length,
                                 seconds_per_checkpoint=per_checkpoint(n, length, directory)))
        loop = through_start(directory)
    print(f"{'query floats':>14} {'history':>8} {'ms/checkpoint':>14}")
    for r in rows:
        print(f"{r['query_floats']:>14} {r['history_checkpoints']:>8} "
              f"{1e3 * r['seconds_per_checkpoint']:>14.2f}")
    print("aia.start, pids=[0], 10 floats, 300 iterations, seconds per iteration:")
    for label, s in loop.items():
        print(f"  {label}: {1e3 * s:.3f} ms")
    results = dict(machine=platform.platform(), cpus=os.cpu_count(), per_checkpoint=rows,
                   start_loop_seconds_per_iteration=loop)
    path = Path(__file__).parent / "results" / "checkpoint.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
