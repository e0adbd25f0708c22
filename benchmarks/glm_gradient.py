"""GLM by gradient descent against Fisher scoring, synchronous against asynchronous, with
and without one slow site.

    python benchmarks/glm_gradient.py [--rows N] [--predictors P] [--delay SECONDS]
                                      [--repeats R]

Two logistic regressions over three sites, each site on its own worker of an
`aia.LocalCluster`:

- ``admissions``: the UCLA admissions data (400 rows, ``admit ~ gre + gpa + C(rank)``; gre
  in the hundreds, gpa near 3), split in three as in v6-glm;
- ``synthetic``: N rows (default 200,000) and P predictors (default 20) whose scales run
  from 1e-3 to 1e4, some far from zero, split in three.

Each is fitted by `glm.FisherScoring` and `glm.GradientDescent`, synchronously and
asynchronously, with equal sites and with site 1 slowed down (it sleeps ``--delay``
seconds, default 0.02, in every answer: a slower machine or link). The time is that of the
fit itself (`aia.start` on persistent workers whose sites have already read their rows);
the passes that ``glm.fit`` adds (levels, null deviance, log-likelihood) are the same for
both methods. For every coefficient vector the central sends, the deviance on the pooled
rows and the distance to the maximum-likelihood estimate in standard errors are computed
afterwards; "time to the estimate" is the first time that distance is below 1e-6. The
median of ``--repeats`` runs (default 3) is reported, after one run not counted.

Prints a table; writes benchmarks/results/glm_gradient.json and a plot of the deviance gap
against time (benchmarks/results/glm_gradient.png).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from formulaic import Formula

import aia
from algorithms import glm

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "v6-glm" / "binomial"
PACKAGED = Path(glm.__file__).resolve().parent / "data"
CLOSE = 1e-6  # "at the estimate": within this many standard errors of the MLE


class SlowSite(glm.Site):
    """A site that sleeps ``delay`` seconds in every answer (only used by this benchmark)."""

    def __init__(self, source, name=None, delay: float = 0.0):
        super().__init__(source, name)
        self.delay = delay

    def model(self, design):
        if self.delay:
            time.sleep(self.delay)
        return super().model(design)


def admissions() -> tuple[str, list]:
    paths = [DATA / f"{s}.csv" for s in "abc"]
    if not all(p.exists() for p in paths):
        frame = pd.concat([pd.read_csv(p) for p in sorted(PACKAGED.glob("*.csv"))])
        return "admit ~ gre + gpa + C(rank)", [frame.iloc[i::3] for i in range(3)]
    return "admit ~ gre + gpa + C(rank)", [pd.read_csv(p) for p in paths]


def synthetic(rows: int, predictors: int, seed: int = 0) -> tuple[str, list]:
    rng = np.random.default_rng(seed)
    scales = np.geomspace(1e-3, 1e4, predictors)
    shifts = np.where(np.arange(predictors) % 3 == 0, 5 * scales, 0.0)  # far from zero
    Z = rng.standard_normal((rows, predictors))
    beta = rng.normal(0, 1.5 / np.sqrt(predictors), predictors)
    p = 1 / (1 + np.exp(-(-0.5 + Z @ beta)))
    y = (rng.random(rows) < p).astype(float)
    names = [f"x{j + 1}" for j in range(predictors)]
    frame = pd.DataFrame(Z * scales + shifts, columns=names)
    frame["y"] = y
    formula = "y ~ " + " + ".join(names)
    return formula, [frame.iloc[i::3].reset_index(drop=True) for i in range(3)]


class Pooled:
    """The pooled rows (for the benchmark's bookkeeping only: the fit never sees them)."""

    def __init__(self, formula: str, frames: list):
        y, X = Formula(formula).get_model_matrix(pd.concat(frames, ignore_index=True))
        self.y, self.X = np.asarray(y, float).ravel(), np.asarray(X, float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = sm.GLM(self.y, self.X, family=sm.families.Binomial()).fit(tol=1e-14)
        beta = ref.params
        for _ in range(3):  # polish statsmodels' estimate with Newton steps
            mu = 1 / (1 + np.exp(-self.X @ beta))
            self.H = self.X.T @ (self.X * (mu * (1 - mu))[:, None])
            beta = beta + np.linalg.solve(self.H, self.X.T @ (self.y - mu))
        self.beta = beta
        self.deviance = self.deviance_at(beta)

    def deviance_at(self, beta) -> float:
        eta = self.X @ beta
        return float(2 * np.sum(np.logaddexp(0, eta) - self.y * eta))

    def distance(self, beta) -> float:
        """Distance to the MLE in standard errors (the largest over linear combinations)."""
        e = np.asarray(beta) - self.beta
        return float(np.sqrt(max(e @ self.H @ e, 0.0)))


def _slow_site(delay: float, pid: int):
    return SlowSite(None, f"site {pid}", delay if pid == 1 else 0.0) if pid else None


def _set_table(frame, site) -> None:
    site.set_table(frame)


def _build(design, site) -> None:
    site.delay, delay = 0.0, site.delay
    site.build(design)  # the design matrices, built before the clock starts
    site.delay = delay


def place_sites(cluster, frames, delay, design):
    """One site per worker, its rows sent to it only, its design matrices built."""
    pids = list(range(1, len(frames) + 1))
    sites = aia.DistributedObject(functools.partial(_slow_site, delay), cluster, pids)
    for pid, frame in zip(pids, frames):
        sites.apply(pid, functools.partial(_set_table, frame))
    sites.map(functools.partial(_build, design))
    return sites


def run_once(cluster, sites, design, method, synchronous, pooled) -> dict:
    make = (glm.FisherScoring if method == "fisher" else glm.GradientDescent)
    alg = make(design, n_sites=len(sites.pids))
    stopat = {"tol": 1e-8, "maxit": 25 if method == "fisher" else 1000}
    gc.collect()
    t0 = time.perf_counter()
    h = aia.start(alg, sites, stopat, saveat={"iteration": 1}, save_answers=True,
                  cluster=cluster, pids=sites.pids, synchronous=synchronous, verbose=0)
    wall = time.perf_counter() - t0
    times, gaps, reached = [], [], None
    start_offset = h.timestamps[0]
    for t, q in zip(h.timestamps, h.queries):
        beta = getattr(q, "beta", None)
        if beta is None or getattr(q, "hold", 0):
            continue
        t = t - start_offset
        gap = (pooled.deviance_at(beta) - pooled.deviance) / pooled.deviance
        times.append(t)
        gaps.append(max(gap, 1e-16))
        if reached is None and pooled.distance(beta) < CLOSE:
            reached = t
    numbers, matrices, scores = sent_numbers(h, len(h.params))
    return {
        "wall_s": wall, "to_estimate_s": reached, "iterations": int(h.iterations[-1]),
        "algorithm_iterations": int(h.fisher_iterations if method == "fisher"
                                    else h.gradient_iterations),
        "converged": bool(h.converged),
        "distance_se": pooled.distance(h.params.to_numpy()),
        "answers": {int(k): int(v) for k, v in h.answer_count.items()},
        "matrix_answers_per_site": matrices, "score_answers_per_site": scores,
        "numbers_per_site": numbers,
        "curve": list(zip(times, gaps)),
    }


def sent_numbers(h, p: int) -> tuple:
    """The numbers the busiest site sent (holds excluded): X'WX (p(p+1)/2, symmetric) and
    X'Wz for a `Contribution`, p for a `Score`, plus the deviance; and its answers of each
    kind."""
    per_site: dict = {}
    for answers, origin in zip(h.answers, h.answers_origin):
        if not isinstance(answers, list):
            answers, origin = [answers], [origin]
        for a, w in zip(answers, origin):
            if getattr(a, "repeat", False):
                continue
            count = per_site.setdefault(w, [0, 0, 0])
            if isinstance(a, glm.Contribution):
                count[0] += p * (p + 1) // 2 + p + 1
                count[1] += 1
            else:
                count[0] += p + 1
                count[2] += 1
    numbers, matrices, scores = max(per_site.values())
    return numbers, matrices, scores


def median_run(runs: list) -> dict:
    def med(key):
        values = [r[key] for r in runs]
        if any(v is None for v in values):
            return None
        return float(np.median(values))

    best = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    out = dict(best)
    out["wall_s"] = med("wall_s")
    out["to_estimate_s"] = med("to_estimate_s")
    out["wall_s_runs"] = [round(r["wall_s"], 4) for r in runs]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--predictors", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    datasets = {"admissions": admissions(),
                "synthetic": synthetic(args.rows, args.predictors)}
    configs = [(m, s) for m in ("fisher", "gradient") for s in (True, False)]
    rows = []
    t_start = time.perf_counter()
    with aia.LocalCluster(3, blas_threads=1) as cluster:
        for name, (formula, frames) in datasets.items():
            pooled = Pooled(formula, frames)
            design = glm.Design.make(formula, "binomial")
            for delay in (0.0, args.delay):
                sites = place_sites(cluster, frames, delay, design)
                for method, synchronous in configs:  # one run first, not counted
                    run_once(cluster, sites, design, method, synchronous, pooled)
                for method, synchronous in configs:
                    runs = [run_once(cluster, sites, design, method, synchronous, pooled)
                            for _ in range(args.repeats)]
                    r = median_run(runs)
                    r.update(dataset=name, method=method,
                             mode="sync" if synchronous else "async",
                             slow_site_delay_s=delay, rows=len(pooled.y),
                             predictors=pooled.X.shape[1])
                    rows.append(r)
                sites.free()
    total = time.perf_counter() - t_start
    print_table(rows, args)
    report = {
        "benchmark": "glm_gradient", "family": "binomial", "sites": 3,
        "slow_site_delay_s": args.delay, "repeats": args.repeats, "close_se": CLOSE,
        "total_seconds": round(total, 1),
        "results": [{k: v for k, v in r.items() if k != "curve"} for r in rows],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "glm_gradient.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, args.delay, RESULTS / "glm_gradient.png")
    print(f"\nwritten to {RESULTS / 'glm_gradient.json'} and glm_gradient.png "
          f"({total:.0f} s in all)")
    return report


def print_table(rows: list, args) -> None:
    print(f"\nLogistic regression, 3 sites, {os.cpu_count()} CPU(s), load average "
          f"{os.getloadavg()[0]:.1f}; slow site: site 1 sleeps "
          f"{args.delay * 1e3:.0f} ms per answer; median of {args.repeats} runs\n")
    xwx = "X'WX"
    head = (f"{'data':<11}{'slow':>5} {'method':<9}{'mode':<6}{'iterations':>11}"
            f"{xwx:>7}{'to estimate (s)':>16}{'wall (s)':>9}{'numbers/site':>13}"
            f"{'dist (se)':>10} conv")
    print(head)
    print("-" * len(head))
    # iterations: Fisher scoring's iterations (asynchronous: solves); gradient rounds
    # (asynchronous: steps, one per answer); X'WX: the matrices the busiest site sent
    for r in rows:
        reach = "-" if r["to_estimate_s"] is None else f"{r['to_estimate_s']:.3f}"
        print(f"{r['dataset']:<11}{'yes' if r['slow_site_delay_s'] else 'no':>5} "
              f"{r['method']:<9}{r['mode']:<6}{r['algorithm_iterations']:>11}"
              f"{r['matrix_answers_per_site']:>7}{reach:>16}{r['wall_s']:>9.3f}"
              f"{r['numbers_per_site']:>13}{r['distance_se']:>10.1e} "
              f"{'yes' if r['converged'] else 'NO'}")


def plot(rows: list, delay: float, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4 * len(datasets)), squeeze=False)
    styles = {("fisher", "sync"): ("tab:blue", "-"), ("fisher", "async"): ("tab:blue", "--"),
              ("gradient", "sync"): ("tab:red", "-"), ("gradient", "async"): ("tab:red", "--")}
    for i, name in enumerate(datasets):
        for j, d in enumerate((0.0, delay)):
            ax = axes[i][j]
            for r in rows:
                if r["dataset"] != name or r["slow_site_delay_s"] != d or not r["curve"]:
                    continue
                t, gap = zip(*r["curve"])
                color, ls = styles[(r["method"], r["mode"])]
                ax.step(t, gap, where="post", color=color, ls=ls,
                        label=f"{r['method']} {r['mode']}")
            ax.set_yscale("log")
            ax.set_xlabel("wall time (s)")
            ax.set_ylabel("(deviance - minimum) / minimum")
            slow = f"site 1 sleeps {d * 1e3:.0f} ms per answer" if d else "equal sites"
            ax.set_title(f"{name}: {slow}")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
