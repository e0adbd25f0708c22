"""How `glm.fit` (Fisher scoring) scales with rows and with sites.

    python benchmarks/scaling.py [--max-rows 800000] [--predictors 20]

- rows: 2 sites, total rows doubling up to --max-rows; time end to end (cluster started
  beforehand) and a least-squares line time = a + b * rows, with its R^2 (linear growth: R^2
  near 1, and the time per row roughly constant);
- sites: the same rows split over 1, 2 and 4 sites (one worker each, on this machine's cores).

Prints two tables, writes benchmarks/results/scaling.json and scaling.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import aia
from algorithms import glm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glm import make_data  # noqa: E402  (the same data as benchmarks/glm.py)
from plotting import pyplot  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def write_sites(folder: Path, rows: int, predictors: int, sites: int) -> tuple[list, str]:
    X, y = make_data(rows, predictors)
    names = [f"x{j}" for j in range(predictors)]
    frame = pd.DataFrame(X, columns=names)
    frame["y"] = y
    paths = []
    for i, part in enumerate(np.array_split(np.arange(rows), sites)):
        path = folder / f"rows{rows}_site{i}.parquet"
        frame.iloc[part].to_parquet(path)
        paths.append(str(path))
    return paths, "y ~ " + " + ".join(names)


def time_fit(paths, formula, repeats=2) -> float:
    with aia.LocalCluster(len(paths)) as cluster:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            glm.fit(formula, sites=paths, family="binomial", cluster=cluster, verbose=0)
            best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-rows", type=int, default=800_000)
    parser.add_argument("--predictors", type=int, default=20)
    args = parser.parse_args(argv)
    sizes = [args.max_rows // 8, args.max_rows // 4, args.max_rows // 2, args.max_rows]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        by_rows = []
        for rows in sizes:
            paths, formula = write_sites(folder, rows, args.predictors, 2)
            by_rows.append({"rows": rows, "seconds": time_fit(paths, formula)})
        by_sites = []
        for sites in (1, 2, 4):
            paths, formula = write_sites(folder, args.max_rows, args.predictors, sites)
            by_sites.append({"sites": sites, "rows": args.max_rows,
                             "seconds": time_fit(paths, formula)})
    r = np.array([row["rows"] for row in by_rows], float)
    t = np.array([row["seconds"] for row in by_rows])
    slope, intercept = np.polyfit(r, t, 1)
    fitted = intercept + slope * r
    r2 = 1 - np.sum((t - fitted) ** 2) / np.sum((t - t.mean()) ** 2)

    print(f"\nglm.fit, logistic, {args.predictors} predictors, 2 sites")
    print(f"{'rows':>10}{'seconds':>10}{'us per row':>12}")
    for row in by_rows:
        print(f"{row['rows']:>10}{row['seconds']:>10.3f}{row['seconds'] / row['rows'] * 1e6:>12.2f}")
    print(f"linear fit: {intercept:.3f} s + {slope * 1e6:.3f} us x rows, R^2 = {r2:.4f}")
    print(f"\n{args.max_rows} rows over N sites (one worker each, {aia.local.cpu_count()} cores)")
    print(f"{'sites':>10}{'seconds':>10}")
    for row in by_sites:
        print(f"{row['sites']:>10}{row['seconds']:>10.3f}")

    out = {"predictors": args.predictors, "by_rows": by_rows, "by_sites": by_sites,
           "linear_fit": {"intercept_s": intercept, "seconds_per_row": slope, "r2": r2}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(out, indent=2))
    plot(by_rows, intercept, slope, RESULTS / "scaling.png")
    print(f"written to {RESULTS / 'scaling.json'} and scaling.png")
    return out


def plot(by_rows, intercept, slope, path) -> None:
    plt = pyplot()
    if plt is None:
        return
    rows = [r["rows"] for r in by_rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rows, [r["seconds"] for r in by_rows], "o", label="glm.fit, 2 sites")
    ax.plot(rows, [intercept + slope * n for n in rows], "-", label="linear fit")
    ax.set_xlabel("rows")
    ax.set_ylabel("seconds, end to end")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
