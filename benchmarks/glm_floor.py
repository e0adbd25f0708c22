"""The GLM against the machine itself: a site's round against the BLAS gram of its rows,
a gradient round against one pass over X, and a fit against rounds x gram + one read of
the files (issue 19). Used by ``benchmarks/glm.py``; run alone:

    python benchmarks/glm_floor.py [--rows N] [--predictors P] [--sites S]

(N rows in all, split over S sites.) Prints the tables and writes
benchmarks/results/glm_floor_<N>rows.json.

Every ratio is measured in one process on one core (BLAS limited to one thread, as an
`aia` worker runs when the sites fill the cores), each time the median of ``repeats``
alternating runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.linalg.blas import dsyrk
from threadpoolctl import threadpool_limits

from algorithms.glm.design import Design
from algorithms.glm.gradient import GradientQuery, site_score
from algorithms.glm.messages import Query
from algorithms.glm.site import Site, read_parquet


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def site_ratios(path: Path, formula: str, family: str = "binomial",
                repeats: int = 7) -> dict:
    """One site (the Parquet file ``path``): seconds of the BLAS gram of [X z], one pass
    over X, a Fisher-scoring round, a gradient round, and the read of the file."""
    site = Site(path)
    design = Design.make(formula, family)
    with threadpool_limits(1):
        read = _median(lambda: read_parquet(path), 3)
        m = site.model(design)
        X = m.X
        p = X.shape[1]
        beta = np.zeros(p)
        A = np.asfortranarray(np.column_stack([X, m.y]))
        v = np.ones(len(m.y))
        gram = _median(lambda: dsyrk(1.0, A, trans=1), repeats)
        one_pass = _median(lambda: X.T @ v, repeats)
        site.contribution(design, Query(0))  # the round's buffers, as in a fit
        version = iter(range(1, 10 ** 6))
        fisher = _median(lambda: site.contribution(design, Query(next(version), beta)),
                         repeats)
        score = _median(lambda: site_score(site, design, GradientQuery(next(version), beta)),
                        repeats)
    return {"gram": gram, "one_pass": one_pass, "fisher_round": fisher,
            "gradient_round": score, "read": read, "rows": len(m.y), "columns": p}


def fit_ratio(paths: list, formula: str, site: dict, family: str = "binomial",
              repeats: int = 3) -> dict:
    """``glm.fit`` end to end on a local cluster of one worker per site (started
    beforehand), against its floor: rounds x the BLAS gram of one site's rows + one read
    of one site's file (the sites work in parallel, one core each). ``site``: `site_ratios`
    of one of the sites. Each of ``repeats`` clusters runs two fits: the first on fresh
    workers (they import the GLM code and touch fresh memory), then one on the same,
    warm workers (a persistent cluster's every later fit; each fit reads the files
    again). Also each worker's peak private memory during a fit (on fresh workers)
    against its design."""
    import aia
    from algorithms import glm

    cold, warm, peaks = [], [], []
    for _ in range(repeats):
        with aia.LocalCluster(len(paths)) as cluster:
            for times in (cold, warm):
                t0 = time.perf_counter()
                res = glm.fit(formula, paths, family=family, cluster=cluster)
                times.append(time.perf_counter() - t0)
    # The memory in fits of their own: sampling /proc 500 times a second slows the
    # workers (a warm fit of 2 x 500k rows: 0.35-0.37 s sampled, 0.30-0.32 s not).
    for _ in range(repeats):
        with aia.LocalCluster(len(paths)) as cluster:
            with PeakMemory(cluster.os_pids().values()) as memory:
                glm.fit(formula, paths, family=family, cluster=cluster)
            peaks.append(memory.peak)
    return fit_floor(res.iterations, float(np.median(cold)), float(np.median(warm)), site,
                     float(np.median(peaks)))


def fit_floor(iterations: int, cold: float, warm: float, site: dict, peak: float) -> dict:
    """A fit's time (on fresh and on warm workers) against its floor, and a site's peak
    memory against its design."""
    rounds = iterations + 1  # R's starting values, then one round per iteration
    floor = rounds * site["gram"] + site["read"]
    return {"fit": cold, "fit_warm": warm, "rounds": rounds, "floor": floor,
            "peak_private": peak, "design_bytes": site["rows"] * site["columns"] * 8}


class PeakMemory:
    """The most private resident memory (RssAnon) any of ``pids`` took while the block
    ran, above the least it held before that moment, sampled every 2 ms. Private memory,
    not VmHWM: the pages of a memory-mapped Parquet file count in VmHWM though the kernel
    can drop them. Above the least so far, not above the start: a fresh worker frees
    ~70 MB of start-up memory during its first fit, which would hide as much of the fit's."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.peak = 0.0

    def __enter__(self) -> "PeakMemory":
        import threading

        self._least = {pid: _anon(pid) for pid in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                now = _anon(pid)
                if now == 0.0:  # gone
                    continue
                self._least[pid] = min(self._least[pid], now)
                self.peak = max(self.peak, now - self._least[pid])
            self._stop.wait(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _anon(pid: int) -> float:
    """A process's private resident memory (RssAnon), bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


def print_ratios(r: dict) -> None:
    print(f"\nOne site, {r['rows']:,} rows x {r['columns']} columns, one core:")
    print(f"{'step':<44}{'ms':>9}{'ratio':>9}")
    print("-" * 62)
    for name, key, ref in (("BLAS gram of [X z] (dsyrk)", "gram", None),
                           ("one pass over X (X'v)", "one_pass", None),
                           ("Fisher-scoring round / gram", "fisher_round", "gram"),
                           ("gradient round / one pass", "gradient_round", "one_pass"),
                           ("read of the site's Parquet file", "read", None)):
        ratio = f"{r[key] / r[ref]:.2f}" if ref else ""
        print(f"{name:<44}{r[key] * 1e3:>9.1f}{ratio:>9}")


def print_fit(f: dict, sites: int) -> None:
    print(f"\nglm.fit, {sites} sites on {sites} workers, {f['rounds']} rounds:")
    print(f"{'':<44}{'s':>9}{'ratio':>9}")
    print("-" * 62)
    print(f"{'floor (rounds x gram + one read)':<44}{f['floor']:>9.3f}")
    print(f"{'glm.fit on fresh workers / floor':<44}{f['fit']:>9.3f}{f['fit'] / f['floor']:>9.2f}")
    print(f"{'glm.fit on warm workers / floor':<44}{f['fit_warm']:>9.3f}"
          f"{f['fit_warm'] / f['floor']:>9.2f}")
    print(f"{'peak private memory of a site / design (GB)':<44}{f['peak_private'] / 1e9:>9.2f}"
          f"{f['peak_private'] / f['design_bytes']:>9.2f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--predictors", type=int, default=20)
    parser.add_argument("--sites", type=int, default=2)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n, p = args.rows, args.predictors
    X = rng.standard_normal((n, p))
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ rng.normal(0, 0.3, p)))).astype(float)
    names = [f"x{j + 1}" for j in range(p)]
    formula = "y ~ " + " + ".join(names)
    with tempfile.TemporaryDirectory() as tmp:
        frame = pd.DataFrame(X, columns=names).assign(y=y)
        del X
        paths = []
        for i, part in enumerate(np.array_split(np.arange(n), args.sites)):
            paths.append(Path(tmp) / f"site{i + 1}.parquet")
            frame.iloc[part].to_parquet(paths[-1])
        del frame
        r = site_ratios(paths[0], formula)
        print_ratios(r)
        f = fit_ratio(paths, formula, r)
        print_fit(f, args.sites)
    report = {"rows": n, "predictors": p, "sites": args.sites, "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"), **r, **f,
              "fisher_over_gram": r["fisher_round"] / r["gram"],
              "gradient_over_one_pass": r["gradient_round"] / r["one_pass"],
              "fit_over_floor": f["fit"] / f["floor"],
              "warm_fit_over_floor": f["fit_warm"] / f["floor"],
              "peak_private_over_design": f["peak_private"] / f["design_bytes"]}
    out = Path(__file__).resolve().parent / "results" / f"glm_floor_{n}rows.json"
    out.write_text(json.dumps({k: round(v, 5) if isinstance(v, float) else v
                               for k, v in report.items()}, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return report


if __name__ == "__main__":
    main()
