"""Time to fit a logistic regression on 1M rows x 20 predictors: federated against pooled.

    python benchmarks/glm.py [--rows N] [--predictors P]

- ``glm.fit``, two sites (two Parquet files of N/2 rows, each read by its own worker of an
  `aia.LocalCluster`), synchronous and asynchronous; the time is end to end (reading the
  files, building the design with formulaic, guards, Fisher scoring, null deviance and
  log-likelihood), the cluster being started beforehand (its start-up is listed apart);
- statsmodels' GLM (IRLS) on the pooled arrays (the fit only, no formula);
- R's IRLS in numpy, in process, on the pooled arrays (the floor: the same arithmetic with
  no process, no pipe, no formula);
- dask-glm's Newton method on two chunks, when dask-glm is installed.

Prints a table and writes benchmarks/results/glm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.linalg import cho_factor, cho_solve

import aia
from algorithms import glm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import bars  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_data(rows: int, predictors: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, predictors))
    beta = rng.normal(0, 0.3, predictors)
    p = 1 / (1 + np.exp(-(0.2 + X @ beta)))
    y = (rng.random(rows) < p).astype(float)
    return X, y


def numpy_irls(y, X, tol=1e-8, maxit=25):
    """R's glm.fit for the logit link on one machine: Cholesky on X'WX, R's rule."""
    mu = (y + 0.5) / 2
    eta = np.log(mu / (1 - mu))
    dev_old = _binomial_deviance(y, mu)
    for it in range(1, maxit + 1):
        w = mu * (1 - mu)
        z = eta + (y - mu) / w
        XW = X * w[:, None]
        beta = cho_solve(cho_factor(X.T @ XW), XW.T @ z)
        eta = X @ beta
        mu = 1 / (1 + np.exp(-eta))
        dev = _binomial_deviance(y, mu)
        if abs(dev - dev_old) / (abs(dev) + 0.1) < tol:
            break
        dev_old = dev
    return beta, it


def _binomial_deviance(y, mu):
    return -2 * np.sum(y * np.log(mu) + (1 - y) * np.log(1 - mu))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--predictors", type=int, default=20)
    args = parser.parse_args(argv)
    n, p = args.rows, args.predictors
    X, y = make_data(n, p)
    Xc = np.column_stack([np.ones(n), X])
    names = [f"x{j + 1}" for j in range(p)]
    formula = "y ~ " + " + ".join(names)
    rows = []

    seconds, ref = timed(lambda: sm.GLM(y, Xc, family=sm.families.Binomial()).fit())
    rows.append(("statsmodels GLM (pooled arrays)", seconds, int(ref.fit_history["iteration"]),
                 ref.params))
    seconds, (beta, its) = timed(lambda: numpy_irls(y, Xc))
    rows.append(("numpy IRLS in process (pooled arrays)", seconds, its, beta))

    try:
        import dask.array as da
        from dask_glm.algorithms import newton
        from dask_glm.families import Logistic
    except ImportError:
        print("dask-glm is not installed: skipped", file=sys.stderr)
    else:
        dX, dy = da.from_array(Xc, chunks=(n // 2, p + 1)), da.from_array(y, chunks=n // 2)
        seconds, beta = timed(lambda: newton(dX, dy, family=Logistic, tol=1e-8))
        rows.append(("dask-glm newton (2 chunks)", seconds, None, np.asarray(beta)))

    with tempfile.TemporaryDirectory() as tmp:
        frame = pd.DataFrame(X, columns=names).assign(y=y)
        paths = []
        for i, part in enumerate(np.array_split(np.arange(n), 2)):
            paths.append(Path(tmp) / f"site{i + 1}.parquet")
            frame.iloc[part].to_parquet(paths[-1])
        del frame
        startup, cluster = timed(lambda: aia.LocalCluster(2))
        with cluster:
            for synchronous in (True, False):
                seconds, res = timed(lambda: glm.fit(formula, paths, family="binomial",
                                                     cluster=cluster, synchronous=synchronous))
                mode = "sync" if synchronous else "async"
                rows.append((f"aia glm.fit, 2 sites, {mode} (end to end)", seconds,
                             res.iterations, res.params.to_numpy()))

    print(f"\nLogistic regression, {n:,} rows x {p} predictors, {os.cpu_count()} CPU(s); "
          f"local cluster start-up {startup:.2f} s (not included)\n")
    print(f"{'method':<46}{'seconds':>9}{'iterations':>12}{'max |diff| vs statsmodels':>28}")
    print("-" * 95)
    results = []
    for name, seconds, its, params in rows:
        diff = float(np.max(np.abs(np.asarray(params) - ref.params)))
        print(f"{name:<46}{seconds:>9.2f}{its if its is not None else '-':>12}{diff:>28.2e}")
        results.append({"method": name, "seconds": round(seconds, 4), "iterations": its,
                        "max_abs_diff_vs_statsmodels": diff})
    report = {
        "benchmark": "glm", "rows": n, "predictors": p, "sites": 2, "family": "binomial",
        "cluster_startup_seconds": round(startup, 4), "results": results,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "glm.json").write_text(json.dumps(report, indent=2) + "\n")
    bars([r["method"].replace(" (", "\n(") for r in results],
         {"seconds": [r["seconds"] for r in results]}, "seconds",
         f"logistic regression, {n:,} rows x {p} predictors", RESULTS / "glm.png")
    print(f"\nwritten to {RESULTS / 'glm.json'} and glm.png")
    return report


if __name__ == "__main__":
    main()
