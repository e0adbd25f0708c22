"""Asynchronous against synchronous when one worker is 4x slower than the others.

    python benchmarks/straggler.py [--workers 4] [--seconds 6]

Gradient steps on a least-squares problem split over the workers, the central stepping on the
average of the workers' latest block gradients (`aia.AveragingAlgorithm`). Each answer takes a
fixed compute time; worker 1 takes 4x as long. The synchronous loop waits for
the straggler every round; the asynchronous loop steps on each answer as it arrives. Prints the
time each needs to reach the target loss (a fixed factor above the least-squares floor), writes
benchmarks/results/straggler.json and a plot of loss against wall time (straggler.png).

Then the shipped `algorithms.SGD` (one row's gradient per answer, same straggler), asynchronous,
with and without ``staleness_aware=True`` (each step divided by 1 + the staleness of its answer),
over a grid of step sizes: the time each needs to reach its own target (SGD's constant step
leaves it above the floor, so a looser factor; medians of a few runs), and the best of each
over the grid; written to
straggler.json ("sgd_staleness") and straggler_sgd.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import aia

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import pyplot  # noqa: E402
from algorithms.sgd import LRMSE, SGD, make_lrmse_problem

RESULTS = Path(__file__).resolve().parent / "results"


class BlockGradient:
    """Inner algorithm of `aia.AveragingAlgorithm`: each worker answers with the gradient of
    its block (after ``compute`` seconds, 4x on the straggler); the central steps on the
    average of the latest gradients of all workers (stale ones included, as in SAG)."""

    def __init__(self, stepsize, n, compute):
        self.stepsize, self.n, self.compute = stepsize, n, compute

    def initialize(self, problem):
        self.x = np.zeros(self.n)
        return self.x

    def answer(self, q, problem):
        g = problem.gradient(q)
        time.sleep(self.compute * (4 if problem.slow else 1))  # the work a real answer does
        return g

    def query(self, average, problem):
        self.x = self.x - self.stepsize * average
        return self.x


class StragglerSGD(SGD):
    """The shipped SGD, each answer taking ``compute`` seconds (4x on the straggler)."""

    def __init__(self, stepsize, n, compute, staleness):
        super().__init__(stepsize, x0=np.zeros(n), staleness_aware=staleness)
        self.compute = compute

    def answer(self, q, problem):
        time.sleep(self.compute * (4 if problem.slow else 1))
        return super().answer(q, problem)


def make_problem_with_straggler(make, scales):
    """Columns scaled to make the problem ill-conditioned: many steps are needed, so the
    number of steps per second matters."""

    def make_problem(pid):
        block = make(pid)
        problem = LRMSE(block.A * scales, block.b)
        problem.slow = pid == 1
        return problem

    return make_problem


def first_time_below(history, pooled, target):
    for t, x in zip(history.timestamps, history.queries):
        if pooled.loss(x) <= target:
            return t - history.timestamps[0]
    return float("inf")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="async against sync with a straggler")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--compute", type=float, default=0.004, help="seconds per answer")
    parser.add_argument("--sgd-seconds", type=float, default=2.5,
                        help="seconds per SGD run (two per step size and repeat)")
    parser.add_argument("--sgd-repeats", type=int, default=3)
    parser.add_argument("--sgd-steps", type=float, nargs="+",
                        default=[0.1, 0.2, 0.4, 0.8, 1.6, 3.2],
                        help="SGD step sizes, in units of 1 / (mean squared row norm)")
    parser.add_argument("--sgd-target", type=float, default=1.2,
                        help="SGD target: this factor times the floor")
    args = parser.parse_args(argv)

    n = 20
    make = make_problem_with_straggler(make_lrmse_problem(n_rows=2000, n_features=n, noise=0.5,
                                                          seed=7), np.geomspace(1, 5, n))
    pooled_blocks = [make(pid) for pid in range(1, args.workers + 1)]
    pooled = LRMSE(np.vstack([p.A for p in pooled_blocks]),
                   np.concatenate([p.b for p in pooled_blocks]))
    floor = pooled.loss(np.linalg.lstsq(pooled.A, pooled.b, rcond=None)[0])
    target = 1.001 * floor
    stepsize = 0.5 / pooled.L
    problem = make

    runs = {}
    with aia.LocalCluster(args.workers, blas_threads=1) as cluster:
        for mode in ("synchronous", "asynchronous"):
            alg = aia.AveragingAlgorithm(BlockGradient(stepsize, n, args.compute))
            h = aia.start(alg, problem, {"time": args.seconds}, saveat={"iteration": 5},
                          cluster=cluster, synchronous=mode == "synchronous", verbose=0)
            runs[mode] = h
        sgd_runs = run_sgd(args, cluster, problem, pooled, n)
    rows = []
    for mode, h in runs.items():
        losses = [pooled.loss(x) for x in h.queries]
        rows.append({"mode": mode, "iterations": h.iterations[-1],
                     "answers": dict(h.answer_count),
                     "seconds_to_target": first_time_below(h, pooled, target),
                     "final_loss": losses[-1],
                     "curve": list(zip(h.timestamps, losses))})
    sync_t, async_t = rows[0]["seconds_to_target"], rows[1]["seconds_to_target"]
    speedup = sync_t / async_t if async_t > 0 else float("inf")
    print(f"\n{args.workers} workers, worker 1 is 4x slower ({args.compute * 1e3:.0f} ms vs "
          f"{4 * args.compute * 1e3:.0f} ms per answer); target loss {target:.4f} "
          f"(floor {floor:.4f})")
    print(f"{'mode':<14}{'iterations':>12}{'s to target':>14}{'final loss':>12}")
    for r in rows:
        print(f"{r['mode']:<14}{r['iterations']:>12}{r['seconds_to_target']:>14.3f}"
              f"{r['final_loss']:>12.4f}")
    print(f"asynchronous reaches the target {speedup:.1f}x sooner")
    RESULTS.mkdir(exist_ok=True)
    summary = {"workers": args.workers, "compute_s": args.compute, "target_loss": target,
               "floor": floor, "speedup": speedup,
               "rows": [{k: v for k, v in r.items() if k != "curve"} for r in rows]}
    summary["sgd_staleness"] = report_sgd(args, sgd_runs, pooled, floor)
    (RESULTS / "straggler.json").write_text(json.dumps(summary, indent=2))
    plot(rows, target, RESULTS / "straggler.png")
    plot_sgd(sgd_runs, summary["sgd_staleness"], RESULTS / "straggler_sgd.png")
    print(f"written to {RESULTS / 'straggler.json'}, straggler.png and straggler_sgd.png")


def run_sgd(args, cluster, problem, pooled, n) -> list:
    """Asynchronous SGD with and without staleness_aware=True, at each step size of the grid,
    ``--sgd-repeats`` times each (interleaved, so that a slow spell of the machine hits
    both variants alike)."""
    unit = 1 / float(np.mean(np.sum(pooled.A ** 2, axis=1)))  # one row's gradient is safe below
    runs = []
    for repeat in range(args.sgd_repeats):
        for factor in args.sgd_steps:
            for aware in (False, True):
                alg = StragglerSGD(factor * unit, n, args.compute, aware)
                h = aia.start(alg, problem, {"time": args.sgd_seconds},
                              saveat={"iteration": 20}, cluster=cluster, verbose=0)
                runs.append({"step": factor, "staleness": aware, "repeat": repeat,
                             "history": h})
    return runs


def report_sgd(args, runs, pooled, floor) -> dict:
    """Print the table of the SGD runs (medians over the repeats); the summary for the JSON."""
    target = args.sgd_target * floor
    for r in runs:
        h = r["history"]
        r["losses"] = [pooled.loss(x) for x in h.queries]
        r["seconds_to_target"] = first_time_below(h, pooled, target)
    rows = []
    for factor in args.sgd_steps:
        for aware in (False, True):
            mine = [r for r in runs if r["step"] == factor and r["staleness"] == aware]
            stale = [s for r in mine for v in r["history"].staleness.values() for s in v]
            times = [r["seconds_to_target"] for r in mine]
            rows.append({"step": factor, "staleness": aware,
                         "iterations": float(np.median([r["history"].iterations[-1]
                                                        for r in mine])),
                         "mean_staleness": float(np.mean(stale)),
                         "max_staleness": int(max(stale)),
                         "seconds_to_target": float(np.median(times)),
                         "seconds_to_target_runs": times,
                         "final_loss": float(np.median([r["losses"][-1] for r in mine]))})
    print(f"\nalgorithms.SGD, asynchronous, one row per answer, same straggler; target loss "
          f"{target:.4f} ({args.sgd_target}x the floor); step in units of 1 / mean |row|^2; "
          f"{args.sgd_seconds:g} s per run; medians of {args.sgd_repeats} runs (inf: not "
          f"reached)")
    print(f"{'step':>6}{'staleness':>11}{'iterations':>12}{'mean stale':>12}{'max stale':>11}"
          f"{'s to target':>13}{'reached':>9}{'final loss':>12}")
    for r in rows:
        reached = sum(t < float("inf") for t in r["seconds_to_target_runs"])
        print(f"{r['step']:>6g}{('divide' if r['staleness'] else 'ignore'):>11}"
              f"{r['iterations']:>12.0f}{r['mean_staleness']:>12.1f}{r['max_staleness']:>11}"
              f"{r['seconds_to_target']:>13.3f}{f'{reached}/{args.sgd_repeats}':>9}"
              f"{r['final_loss']:>12.4g}")
    best = {}
    for aware in (False, True):
        mine = [r for r in rows if r["staleness"] == aware]
        best[aware] = min(mine, key=lambda r: r["seconds_to_target"])
    for aware, name in ((False, "without staleness"), (True, "with staleness_aware")):
        b = best[aware]
        stable = [r["step"] for r in rows if r["staleness"] == aware and
                  all(t < float("inf") for t in r["seconds_to_target_runs"])]
        print(f"best {name:<20}: {b['seconds_to_target']:.3f} s to target (step {b['step']:g}; "
              f"every run reached it at steps {stable})")
    return {"target_loss": target, "target_factor": args.sgd_target,
            "seconds_per_run": args.sgd_seconds, "repeats": args.sgd_repeats, "rows": rows,
            "best_without": best[False], "best_with": best[True]}


def plot_sgd(runs, summary, path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, name in (("best_without", "ignore staleness"), ("best_with", "staleness_aware=True")):
        b = summary[key]
        r = next(r for r in runs if r["step"] == b["step"] and r["staleness"] == b["staleness"]
                 and r["repeat"] == 0)
        h = r["history"]
        ax.plot(np.array(h.timestamps) - h.timestamps[0], r["losses"],
                label=f"{name} (step {b['step']:g})")
    ax.axhline(summary["target_loss"], color="grey", ls="--", label="target")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("loss on all rows")
    ax.set_title("async SGD, one worker 4x slower: best step of each")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(rows, target, path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        t, loss = zip(*r["curve"])
        ax.plot(t, loss, label=r["mode"])
    ax.axhline(target, color="grey", ls="--", label="target")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("loss on all rows")
    ax.set_title("one worker 4x slower")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
