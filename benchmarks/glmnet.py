"""A 100-lambda binomial elastic-net path on 1M rows x 50 correlated predictors over 2 sites:
glm.glmnet against R's glmnet and scikit-learn on the pooled arrays.

    python benchmarks/glmnet.py [--rows N] [--predictors P] [--alpha A] [--no-sklearn]

- ``glm.glmnet``, two sites of N/2 rows (Parquet files, each read by its own worker of an
  `aia.LocalCluster` started beforehand, its start-up listed apart), synchronous and
  asynchronous: rounds (every round of site sums, the moments included), rounds per lambda,
  seconds end to end (reading the files, building the design, the path) and of the path
  alone (from the first query of sums to the last answer);
- R's ``glmnet`` (Rscript) on the pooled arrays, read from a binary file before the clock
  starts: the same path (same lambdas; glmnet's default ``thresh`` 1e-7 on both sides);
- scikit-learn's ``LogisticRegression(penalty="elasticnet", solver="saga")`` on the pooled
  arrays, warm-started along R's lambdas (``C = 1 / (n lambda)``; saga needs standardized
  columns, so it gets them, and its coefficients are scaled back). scikit-learn has no
  glmnet path for the binomial family; it is optional (``pip install -e ".[bench]"``) and
  skipped with a note when missing.

R and aia are run ``--repeats`` times, alternating (the table gives medians; the JSON every
run). Every row of the table gives the largest difference of its coefficients from R's along
the whole path. Prints the table and writes benchmarks/results/glmnet.json (and
glmnet_<rows>rows.json for other sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import aia
from algorithms import glm

RESULTS = Path(__file__).resolve().parent / "results"


def make_data(rows: int, predictors: int, rho: float = 0.5, seed: int = 0):
    """Correlated Gaussian predictors (corr(x_i, x_j) = rho^|i - j|), a sparse truth (10
    nonzero coefficients), a binary response."""
    rng = np.random.default_rng(seed)
    X = np.empty((rows, predictors))
    X[:, 0] = rng.standard_normal(rows)
    scale = np.sqrt(1 - rho ** 2)
    for j in range(1, predictors):  # AR(1) across columns: the correlation of the issue
        X[:, j] = rho * X[:, j - 1] + scale * rng.standard_normal(rows)
    beta = np.zeros(predictors)
    beta[rng.choice(predictors, 10, replace=False)] = rng.choice([-1, 1], 10) * \
        rng.uniform(0.2, 0.6, 10)
    p = 1 / (1 + np.exp(-(-0.3 + X @ beta)))
    y = (rng.random(rows) < p).astype(float)
    return X, y


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# -- R's glmnet --------------------------------------------------------------------------------
R_SCRIPT = r"""
suppressPackageStartupMessages(library(glmnet))
args <- commandArgs(trailingOnly = TRUE)
n <- as.integer(args[2]); p <- as.integer(args[3]); alpha <- as.numeric(args[4])
thresh <- as.numeric(args[6])
con <- file(args[1], "rb")
x <- matrix(readBin(con, "double", n * p), n, p)
y <- readBin(con, "double", n)
close(con)
t <- system.time(f <- glmnet(x, y, family = "binomial", alpha = alpha,
                             thresh = thresh))[["elapsed"]]
con <- file(args[5], "wb")
writeBin(c(t, length(f$lambda), f$lambda, as.vector(as.matrix(coef(f)))), con)
close(con)
cat(as.character(packageVersion("glmnet")), "\n")
"""


def r_glmnet(X: np.ndarray, y: np.ndarray, alpha: float, tmp: Path, thresh: float = 1e-7):
    """``(seconds, lambdas, coefs, version)``: R's glmnet on the pooled arrays, timed inside R
    around the glmnet() call alone."""
    n, p = X.shape
    data, out, script = tmp / "xy.bin", tmp / "r_out.bin", tmp / "glmnet.R"
    if not data.exists():
        with open(data, "wb") as f:
            f.write(np.asfortranarray(X).tobytes(order="F"))
            f.write(y.tobytes())
    script.write_text(R_SCRIPT)
    done = subprocess.run(["Rscript", "--vanilla", str(script), str(data), str(n), str(p),
                           repr(alpha), str(out), repr(thresh)], capture_output=True,
                          text=True, check=True)
    values = np.fromfile(out, dtype=np.float64)
    seconds, k = float(values[0]), int(values[1])
    lambdas = values[2:2 + k]
    coefs = values[2 + k:].reshape(k, p + 1)  # one row per lambda, intercept first
    return seconds, lambdas, coefs, done.stdout.strip()


# -- scikit-learn ------------------------------------------------------------------------------
def sklearn_path(X: np.ndarray, y: np.ndarray, alpha: float, lambdas: np.ndarray,
                 budget: float):
    """``(seconds, coefs, version)`` of saga's elastic net warm-started along ``lambdas``
    (glmnet's objective: C = 1 / (n lambda), l1_ratio = alpha), on standardized columns
    (glmnet's standardize=TRUE, population sd), stopped after the lambda that passes
    ``budget`` seconds; None without scikit-learn."""
    try:
        import sklearn
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return None
    n = len(y)
    mean, sd = X.mean(axis=0), X.std(axis=0)
    Xs = (X - mean) / sd
    model = LogisticRegression(penalty="elasticnet", solver="saga", l1_ratio=alpha,
                               warm_start=True, tol=1e-4, max_iter=1000)
    coefs = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # saga's ConvergenceWarning at the small lambdas
        for lam in lambdas:
            model.set_params(C=1.0 / (n * lam))
            model.fit(Xs, y)
            b = model.coef_.ravel() / sd
            coefs.append(np.concatenate([[model.intercept_[0] - mean @ b], b]))
            if time.perf_counter() - t0 > budget:
                break
    return time.perf_counter() - t0, np.array(coefs), sklearn.__version__


# -- aia ---------------------------------------------------------------------------------------
def aia_path(frames, formula: str, alpha: float, synchronous: bool, lambdas=None):
    """``(seconds end to end, path, cluster start-up)`` on a fresh 2-worker cluster."""
    startup, cluster = timed(lambda: aia.LocalCluster(len(frames)))
    with cluster:
        seconds, path = timed(lambda: glm.glmnet(formula, frames, family="binomial",
                                                 alpha=alpha, lambdas=lambdas,
                                                 cluster=cluster, synchronous=synchronous))
    return seconds, path, startup


def _error(coefs: np.ndarray, exact: np.ndarray) -> float:
    """The largest distance from the exact path, at the lambdas both have."""
    k = min(len(coefs), len(exact))
    return float(np.max(np.abs(coefs[:k] - exact[:k])))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--predictors", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating runs of R and of aia (the table gives medians)")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn")
    parser.add_argument("--no-async", action="store_true", help="only the synchronous run")
    parser.add_argument("--sklearn-budget", type=float, default=300,
                        help="seconds after which scikit-learn stops along the path")
    args = parser.parse_args(argv)
    n, p, alpha = args.rows, args.predictors, args.alpha
    X, y = make_data(n, p)
    names = [f"x{j + 1}" for j in range(p)]
    formula = "y ~ " + " + ".join(names)
    notes = []
    rows = []
    if shutil.which("Rscript") is None:
        sys.exit("R (Rscript) with glmnet is needed: apt-get install r-base-core r-cran-glmnet")
    modes = (True,) if args.no_async else (True, False)
    times: dict = {"R": [], True: [], False: []}
    path_times: dict = {True: [], False: []}
    startups, paths = [], {}
    with tempfile.TemporaryDirectory(prefix="aia-glmnet-bench-") as tmp:
        # Each site a Parquet file of n/2 rows, read by its own worker (as glm.py's sites)
        frame = pd.DataFrame(X, columns=names).assign(y=y)
        sites = []
        for i, part in enumerate(np.array_split(np.arange(n), 2)):
            sites.append(Path(tmp) / f"site{i + 1}.parquet")
            frame.iloc[part].to_parquet(sites[-1])
        del frame
        # The exact path (R, thresh 1e-14; not timed): how far each method's is from it.
        _, _, exact, _ = r_glmnet(X, y, alpha, Path(tmp), thresh=1e-14)
        # Alternate R and aia: on a shared machine the load moves one run by 2x.
        for _ in range(args.repeats):
            r_seconds, r_lambdas, r_coefs, r_version = r_glmnet(X, y, alpha, Path(tmp))
            times["R"].append(r_seconds)
            for synchronous in modes:
                seconds, path, startup = aia_path(sites, formula, alpha, synchronous)
                startups.append(startup)
                times[synchronous].append(seconds)
                path_times[synchronous].append(path.path_seconds)
                paths[synchronous] = path
    rows.append(dict(method=f"R glmnet {r_version} (pooled arrays)",
                     seconds=float(np.median(times["R"])),
                     path_seconds=float(np.median(times["R"])), lambdas=len(r_lambdas),
                     rounds=None, diff=0.0, runs=times["R"],
                     error=_error(r_coefs, exact)))
    for synchronous in modes:
        path = paths[synchronous]
        k = min(len(path.lambdas), len(r_lambdas))
        rows.append(dict(
            method=f"aia glm.glmnet, 2 sites, {'sync' if synchronous else 'async'}",
            seconds=float(np.median(times[synchronous])),
            path_seconds=float(np.median(path_times[synchronous])),
            lambdas=len(path.lambdas), rounds=int(path.rounds),
            lambda_rdiff=float(np.max(np.abs(path.lambdas[:k] / r_lambdas[:k] - 1))),
            diff=float(np.max(np.abs(path.coefs.to_numpy()[:k] - r_coefs[:k]))),
            error=_error(path.coefs.to_numpy(), exact),
            runs=times[synchronous], path_runs=path_times[synchronous]))

    if args.no_sklearn:
        notes.append("scikit-learn: skipped (--no-sklearn)")
    else:
        got = sklearn_path(X, y, alpha, r_lambdas, args.sklearn_budget)
        if got is None:
            notes.append("scikit-learn is not installed (pip install -e '.[bench]'): skipped")
        else:
            seconds, coefs, version = got
            if len(coefs) < len(r_lambdas):
                notes.append(f"scikit-learn stopped after {len(coefs)} of R's "
                             f"{len(r_lambdas)} lambdas (--sklearn-budget "
                             f"{args.sklearn_budget:g} s)")
            rows.append(dict(method=f"scikit-learn {version} saga, warm starts (pooled)",
                             seconds=seconds, path_seconds=seconds, lambdas=len(coefs),
                             rounds=None,
                             diff=float(np.max(np.abs(coefs - r_coefs[:len(coefs)]))),
                             error=_error(coefs, exact)))
    return report(args, rows, notes, startups)


def report(args, rows, notes, startups) -> dict:
    n, p = args.rows, args.predictors
    print(f"\nBinomial glmnet path, {n:,} rows x {p} correlated predictors, alpha {args.alpha:g}, "
          f"{os.cpu_count()} CPU(s); local cluster start-up {np.median(startups):.2f} s "
          f"(not included); R and aia: medians of {args.repeats} alternating runs; load "
          f"average {os.getloadavg()[0]:.1f}\n")
    head = f"{'method':<48}{'seconds':>9}{'path s':>9}{'lambdas':>9}{'rounds':>8}" \
           f"{'rounds/lambda':>15}{'max |coef - R|':>16}{'vs exact':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        per = "-" if r["rounds"] is None else f"{r['rounds'] / r['lambdas']:.2f}"
        rounds = "-" if r["rounds"] is None else str(r["rounds"])
        print(f"{r['method']:<48}{r['seconds']:>9.2f}{r['path_seconds']:>9.2f}"
              f"{r['lambdas']:>9}{rounds:>8}{per:>15}{r['diff']:>16.2e}{r['error']:>10.1e}")
    print("\nseconds: end to end (aia: reading the sites' files, the design, every round; R "
          "and scikit-learn: the fit on arrays in memory); path s: aia's rounds alone; "
          "vs exact: max |coef - R's path at thresh 1e-14| (R and aia at glmnet's default "
          "thresh 1e-7)")
    r_seconds = rows[0]["seconds"]
    for r in rows[1:]:
        if r["rounds"] is not None:
            print(f"goal, {r['method']}: {r['rounds'] / r['lambdas']:.2f} rounds per lambda "
                  f"(<= 3: {'met' if r['rounds'] / r['lambdas'] <= 3 else 'NOT met'}); "
                  f"{r_seconds / r['seconds']:.2f}x R end to end, "
                  f"{r_seconds / r['path_seconds']:.2f}x R for the path")
    for note in notes:
        print(f"note: {note}")
    result = dict(rows=n, predictors=p, alpha=args.alpha, cpus=os.cpu_count(),
                  python=platform.python_version(), numpy=np.__version__,
                  cluster_startup_seconds=float(np.median(startups)), results=rows,
                  notes=notes)
    RESULTS.mkdir(exist_ok=True)
    name = "glmnet.json" if (n, p) == (1_000_000, 50) else f"glmnet_{n}rows.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / name}")
    return result


if __name__ == "__main__":
    main()
