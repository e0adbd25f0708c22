"""The cost of the engine against the floor: the same loops on raw multiprocessing pipes.

    python benchmarks/overhead.py [--seconds S]

- asynchronous loop, a 10-float query, 2 and 4 workers: iterations per second of `aia.start`
  against a raw loop (one `multiprocessing.Pipe` per worker, `connection.wait`, recv, send);
- synchronous round, a 1e6-float query to every worker and 1e6-float answers: rounds per
  second against the same round sent in-band over raw pipes, and (column "aia, no shm")
  `aia.start` with its shared memory turned off, the arrays in the socket frames;
- when Ray is installed (``pip install -e ".[ray]"``), the same runs of `aia.start` on an
  `aia.RayCluster` (one local Ray runtime, loopback only, started once for every case): an
  extra column.

Prints a table and writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import signal
import sys
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

import aia
from aia import transport

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import bars  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class Echo(aia.AbstractAlgorithm):
    """The lightest algorithm there is: workers send the query back."""

    def __init__(self, size):
        self.size = size

    def initialize(self, problem):
        return np.zeros(self.size)

    def answer(self, q, problem):
        return q

    def central_step(self, a, worker, problem):
        return a

    def sync_central_step(self, answers, workers, problem):
        return answers[0]


def _raw_worker(conn):
    while True:
        q = conn.recv()
        if q is None:
            return
        conn.send(q)


def raw_loop(n_workers: int, size: int, seconds: float, synchronous: bool) -> float:
    """Iterations (or rounds) per second of the same loop on raw pipes."""
    ctx = mp.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(n_workers)]
    procs = [ctx.Process(target=_raw_worker, args=(child,)) for _, child in pipes]
    for p in procs:
        p.start()
    conns = [parent for parent, _ in pipes]
    q = np.zeros(size)
    steps = 0
    t0 = time.perf_counter()
    if synchronous:
        while time.perf_counter() - t0 < seconds:
            for c in conns:
                c.send(q)
            answers = [c.recv() for c in conns]
            q = answers[0]
            steps += 1
    else:
        for c in conns:
            c.send(q)
        while time.perf_counter() - t0 < seconds:
            for c in wait(conns):
                a = c.recv()
                c.send(a)
                steps += 1
        for c in conns:  # drain the answers in flight
            c.recv()
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.send(None)
    for p in procs:
        p.join(5)
    return steps / elapsed


def aia_loop(n_workers: int, size: int, seconds: float, synchronous: bool,
             shared_memory: bool = True) -> float:
    """Iterations (or rounds) per second of `aia.start` on a `LocalCluster`.
    ``shared_memory=False``: large arrays in the socket frames, as without memfd. The answers
    of the least-served worker, as a fraction of an equal share, go to ``LEAST_SHARE``."""
    saved = transport.SHARED_MIN
    if not shared_memory:
        transport.SHARED_MIN = None  # read at each send, inherited by the forked workers
    try:
        with aia.LocalCluster(n_workers) as cluster:
            h = aia.start(Echo(size), lambda pid: None, {"time": seconds}, cluster=cluster,
                          synchronous=synchronous, verbose=0)
    finally:
        transport.SHARED_MIN = saved
    LEAST_SHARE.append(min(h.answer_count.values()) * n_workers / sum(h.answer_count.values()))
    # From the first step to the last, as the raw loop measures.
    return h.iterations[-1] / (h.timestamps[-1] - h.timestamps[0])


#: Per `aia_loop` run: the least-served worker's answers over an equal share (1: even).
LEAST_SHARE: list = []


def ray_loop(n_workers: int, size: int, seconds: float, synchronous: bool) -> float:
    """Iterations (or rounds) per second of `aia.start` on an `aia.RayCluster` of
    ``n_workers`` actors (on the Ray runtime this process holds, else a local one started
    for this call)."""
    start_runtime = {} if _ray_connected() else {"include_dashboard": False,
                                                  "log_to_driver": False}
    with aia.RayCluster(n_workers, **start_runtime) as cluster:
        h = aia.start(Echo(size), lambda pid: None, {"time": seconds}, cluster=cluster,
                      synchronous=synchronous, verbose=0)
    return h.iterations[-1] / (h.timestamps[-1] - h.timestamps[0])


def _ray_connected() -> bool:
    import ray

    return ray.is_initialized()


def _has_ray() -> bool:
    return importlib.util.find_spec("ray") is not None


class Sleeper(aia.AbstractAlgorithm):
    """Workers sit in a long answer, so that the only event is the death of one."""

    def initialize(self, problem):
        return 0

    def answer(self, q, problem):
        time.sleep(60)
        return q

    def central_step(self, a, worker, problem):
        return a


def startup_seconds(n_workers: int, repeats: int = 5) -> float:
    """Median time to start a LocalCluster (all workers up and ready)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cluster = aia.LocalCluster(n_workers)
        times.append(time.perf_counter() - t0)
        cluster.close()
    return float(np.median(times))


def death_seconds(repeats: int = 3) -> float:
    """Median time from SIGKILL of a busy worker to the WorkerFailedError of the run."""
    times = []
    for _ in range(repeats):
        with aia.LocalCluster(2) as cluster:
            victim = cluster.os_pids()[1]
            killed = []

            def kill():
                time.sleep(0.3)
                killed.append(time.perf_counter())
                os.kill(victim, signal.SIGKILL)

            killer = threading.Thread(target=kill)
            killer.start()
            try:
                aia.start(Sleeper(), lambda pid: None, {"time": 10}, cluster=cluster, verbose=0)
            except aia.WorkerFailedError:
                times.append(time.perf_counter() - killed[0])
            killer.join()
    return float(np.median(times))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="engine overhead against raw pipes")
    parser.add_argument("--seconds", type=float, default=2.0, help="per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (medians)")
    args = parser.parse_args(argv)
    cases = [
        ("async, 10 floats", 2, 10, False),
        ("async, 10 floats", 4, 10, False),
        ("sync, 1e6 floats", 2, 10**6, True),
        ("sync, 1e6 floats", 4, 10**6, True),
    ]
    rows = []
    for name, n, size, sync in cases:
        # Alternate the two loops and take medians: with more processes than cores, the
        # scheduler alone moves one run by 20% or more.
        raws, ours, unshared, shares = [], [], [], []
        for _ in range(args.repeats):
            raws.append(raw_loop(n, size, args.seconds, sync))
            ours.append(aia_loop(n, size, args.seconds, sync))
            shares.append(LEAST_SHARE[-1])
            if size >= 10**5:  # what shared memory buys: the same run with arrays in frames
                unshared.append(aia_loop(n, size, args.seconds, sync, shared_memory=False))
        raw, mine = float(np.median(raws)), float(np.median(ours))
        rows.append({"case": name, "workers": n, "raw_pipe_per_s": raw, "aia_per_s": mine,
                     "ratio": mine / raw,
                     "ratio_range": [min(o / r for o, r in zip(ours, raws)),
                                     max(o / r for o, r in zip(ours, raws))],
                     "aia_without_shared_memory_per_s":
                         float(np.median(unshared)) if unshared else None,
                     "least_served_worker_share": float(min(shares))})
    with_ray = _has_ray()
    if with_ray:
        # One local runtime for every case: the first cluster starts it, the others attach.
        with aia.RayCluster(1, include_dashboard=False, log_to_driver=False):
            for row, (_, n, size, sync) in zip(rows, cases):
                row["ray_per_s"] = ray_loop(n, size, args.seconds, sync)
    unit = "iterations/s (async) or rounds/s (sync)"
    ray_head = f"{'aia on Ray':>14}" if with_ray else ""
    print(f"\n{'case':<20}{'workers':>8}{'raw pipe':>14}{'aia':>14}{'aia / raw':>12}"
          f"{'range':>14}{'aia, no shm':>14}{'least share':>13}{ray_head}")
    for r in rows:
        ray_cell = f"{r['ray_per_s']:>14.0f}" if with_ray else ""
        low, high = r["ratio_range"]
        unshared = r["aia_without_shared_memory_per_s"]
        unshared = "-" if unshared is None else f"{unshared:.0f}"
        print(f"{r['case']:<20}{r['workers']:>8}{r['raw_pipe_per_s']:>14.0f}"
              f"{r['aia_per_s']:>14.0f}{r['ratio']:>12.2f}{f'{low:.2f}-{high:.2f}':>14}"
              f"{unshared:>14}{r['least_served_worker_share']:>13.2f}{ray_cell}")
    print(f"({unit}; medians of {args.repeats} alternating runs of {args.seconds:.0f} s; "
          f"{os.cpu_count()} cores; least share: the answers of aia's least-served worker "
          f"over an equal share, lowest of the runs)")
    startup, death = startup_seconds(2), death_seconds()
    print(f"start of a 2-worker LocalCluster: {startup * 1e3:.0f} ms (median of 5); "
          f"a killed worker seen after {death * 1e3:.1f} ms (median of 3)")
    RESULTS.mkdir(exist_ok=True)
    out = {"python": sys.version.split()[0], "machine": platform.machine(),
           "cores": os.cpu_count(), "seconds_per_case": args.seconds, "rows": rows,
           "startup_2_workers_s": startup, "killed_worker_seen_s": death}
    (RESULTS / "overhead.json").write_text(json.dumps(out, indent=2))
    series = {"raw pipe": [r["raw_pipe_per_s"] for r in rows],
              "aia": [r["aia_per_s"] for r in rows]}
    if with_ray:
        series["aia on Ray"] = [r["ray_per_s"] for r in rows]
    bars([f"{r['case']}\n{r['workers']} workers" for r in rows], series, unit,
         "engine overhead against raw pipes", RESULTS / "overhead.png", log=True)
    print(f"written to {RESULTS / 'overhead.json'} and overhead.png")


if __name__ == "__main__":
    main()
