"""Time to fit a logistic regression on 1M rows x 20 predictors: federated against pooled.

    python benchmarks/glm.py [--rows N] [--predictors P]

- ``glm.fit``, two sites (two Parquet files of N/2 rows, each read by its own worker of an
  `aia.LocalCluster`), synchronous and asynchronous; the time is end to end (reading the
  files, building the design with formulaic, guards, Fisher scoring, null deviance and
  log-likelihood), the cluster being started beforehand (its start-up is listed apart);
- statsmodels' GLM (IRLS) on the pooled arrays (the fit only, no formula);
- R's IRLS in numpy, in process, on the pooled arrays (the floor: the same arithmetic with
  no process, no pipe, no formula); it and glm.fit are run ``--repeats`` times, alternating,
  each fit on fresh workers, and the table gives medians;
- dask-glm's Newton method on two chunks, when dask-glm is installed;
- the machine's own limits (``glm_floor.py``): one site's round against the BLAS gram of
  its rows, a gradient round against one pass over X, the fit (on fresh and on warm
  workers) against rounds x gram + one read of a site's file, and a site's peak private memory against its design;
- with ``--secure``: ``glm.fit`` on three sites (N/3 rows each), in clear and with
  ``secure=True`` (secure aggregation, `algorithms.glm.secure`), alternating, medians of
  ``--repeats``, and the CPU time of the secure steps in one fit (keys, masks, decoding:
  what secure aggregation adds, measured apart from the sums themselves); written to
  glm_secure.json (the goal: under 10% slower than in clear).

Prints a table and writes benchmarks/results/glm.json and glm.png (other sizes:
glm_<rows>rows.json and .png).
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
from algorithms.glm import secure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import bars  # noqa: E402
from glm_floor import fit_ratio, print_fit, print_ratios, site_ratios  # noqa: E402

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


def frame_parts(X, y, names, k: int, tmp) -> list:
    """``k`` Parquet files of consecutive rows."""
    frame = pd.DataFrame(X, columns=names).assign(y=y)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(y)), k)):
        paths.append(Path(tmp) / f"secure_site{i + 1}.parquet")
        frame.iloc[part].to_parquet(paths[-1])
    return paths


def _secure_runs(paths: list, formula: str, repeats: int, times: dict) -> list:
    """glm.fit on three sites in clear and with secure=True, alternating, fresh workers."""
    fits = {}
    for key in ("3 plain", "3 secure"):
        times[key] = []
    for _ in range(repeats):
        for key in ("3 plain", "3 secure"):
            with aia.LocalCluster(3) as cluster:
                seconds, res = timed(lambda: glm.fit(formula, paths, family="binomial",
                                                     cluster=cluster,
                                                     secure=key == "3 secure"))
            times[key].append(seconds)
            fits[key] = res
    return [(f"aia glm.fit, 3 sites, sync{', secure' if key == '3 secure' else ''} "
             "(end to end)", float(np.median(times[key])), fits[key].iterations,
             fits[key].params.to_numpy()) for key in ("3 plain", "3 secure")]


class _TimedSecure(secure.SecureAggregation):
    """Secure aggregation that adds up the CPU time of its own work (not the GLM's sums):
    on each site (written to ``folder``) and at the central. CPU time, not wall time: on a
    loaded machine the wall time of two fits varies more than the whole cost measured."""

    folder = ""
    central_cpu = 0.0

    def answer(self, q, problem):
        inner, spent = self.inner.answer, [0.0]

        def timed(query, site):
            t = time.process_time()
            try:
                return inner(query, site)
            finally:
                spent[0] += time.process_time() - t

        self.inner.answer = timed
        t = time.process_time()
        try:
            return super().answer(q, problem)
        finally:
            self.inner.answer = inner
            own = time.process_time() - t - spent[0]
            with open(Path(self.folder) / f"{problem.name}.cpu", "a") as f:
                f.write(f"{own} {spent[0]}\n")

    def sync_central_step(self, answers, workers, problem):
        t = time.process_time()
        try:
            return super().sync_central_step(answers, workers, problem)
        finally:
            _TimedSecure.central_cpu += time.process_time() - t


def _secure_cpu(paths: list, formula: str, tmp: str) -> dict:
    """The CPU seconds of the secure steps in one fit, against those of the sites' sums."""
    fit_module = sys.modules["algorithms.glm.fit"]
    folder = Path(tmp) / "cpu"
    folder.mkdir()
    _TimedSecure.folder, _TimedSecure.central_cpu = str(folder), 0.0
    plain_class, fit_module.SecureAggregation = fit_module.SecureAggregation, _TimedSecure
    try:
        with aia.LocalCluster(len(paths)) as cluster:
            glm.fit(formula, paths, family="binomial", cluster=cluster, secure=True)
    finally:
        fit_module.SecureAggregation = plain_class
    sites = [np.loadtxt(f, ndmin=2) for f in sorted(folder.glob("*.cpu"))]
    return {"site_secure_cpu_seconds": max(float(s[:, 0].sum()) for s in sites),
            "site_sums_cpu_seconds": max(float(s[:, 1].sum()) for s in sites),
            "central_secure_cpu_seconds": _TimedSecure.central_cpu}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--predictors", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the numpy floor and of glm.fit (medians)")
    parser.add_argument("--secure", action="store_true",
                        help="also glm.fit on 3 sites, in clear and with secure=True")
    args = parser.parse_args(argv)
    n, p = args.rows, args.predictors
    X, y = make_data(n, p)
    Xc = np.column_stack([np.ones(n), X])
    names = [f"x{j + 1}" for j in range(p)]
    formula = "y ~ " + " + ".join(names)
    rows = []
    fits: dict = {}

    seconds, ref = timed(lambda: sm.GLM(y, Xc, family=sm.families.Binomial()).fit())
    rows.append(("statsmodels GLM (pooled arrays)", seconds, int(ref.fit_history["iteration"]),
                 ref.params))

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
        # Alternate the floor and glm.fit, each fit on fresh workers (started beforehand,
        # not timed): on this virtual machine the first write to fresh memory costs a
        # random 0-200 ms, so one run alone says little. Medians of the repeats.
        times: dict = {"numpy": [], True: [], False: []}
        startups = []
        for _ in range(args.repeats):
            seconds, (beta, its) = timed(lambda: numpy_irls(y, Xc))
            times["numpy"].append(seconds)
            for synchronous in (True, False):
                startup, cluster = timed(lambda: aia.LocalCluster(2))
                startups.append(startup)
                with cluster:
                    seconds, res = timed(lambda: glm.fit(formula, paths, family="binomial",
                                                         cluster=cluster,
                                                         synchronous=synchronous))
                times[synchronous].append(seconds)
                fits[synchronous] = res
        if args.secure:
            three = frame_parts(X, y, names, 3, tmp)
            secure_rows = _secure_runs(three, formula, args.repeats, times)
            cpu = _secure_cpu(three, formula, tmp)
        startup = float(np.median(startups))
        # The machine's own limits, measured in this run: one site's BLAS gram, one pass
        # over its X, its round, its file read (issue 19).
        site = site_ratios(paths[0], formula)
        hardware = fit_ratio(paths, formula, site)
        rows.append(("numpy IRLS in process (pooled arrays)", float(np.median(times["numpy"])),
                     its, beta))
        for synchronous in (True, False):
            mode = "sync" if synchronous else "async"
            res = fits[synchronous]
            rows.append((f"aia glm.fit, 2 sites, {mode} (end to end)",
                         float(np.median(times[synchronous])), res.iterations,
                         res.params.to_numpy()))
        if args.secure:
            rows.extend(secure_rows)

    print(f"\nLogistic regression, {n:,} rows x {p} predictors, {os.cpu_count()} CPU(s); "
          f"local cluster start-up {startup:.2f} s (not included); numpy and aia: medians "
          f"of {args.repeats} alternating runs\n")
    print(f"{'method':<46}{'seconds':>9}{'iterations':>12}{'max |diff| vs statsmodels':>28}")
    print("-" * 95)
    results = []
    for name, seconds, its, params in rows:
        diff = float(np.max(np.abs(np.asarray(params) - ref.params)))
        print(f"{name:<46}{seconds:>9.2f}{its if its is not None else '-':>12}{diff:>28.2e}")
        results.append({"method": name, "seconds": round(seconds, 4), "iterations": its,
                        "max_abs_diff_vs_statsmodels": diff})
    floor = times["numpy"]
    ratios = [a / b for a, b in zip(times[True], floor)]
    print(f"\nglm.fit sync / numpy IRLS: {np.median(times[True]) / np.median(floor):.2f} "
          f"(run by run {min(ratios):.2f}-{max(ratios):.2f}); statsmodels / glm.fit sync: "
          f"{rows[0][1] / np.median(times[True]):.1f}x")
    print_ratios(site)
    print_fit(hardware, 2)
    if args.secure:
        plain, masked = np.median(times["3 plain"]), np.median(times["3 secure"])
        print(f"glm.fit 3 sites, secure / in clear (wall time): {masked / plain:.3f} "
              f"({100 * (masked / plain - 1):+.1f}%)")
        print(f"CPU seconds of one secure fit: secure steps {cpu['site_secure_cpu_seconds']:.3f} "
              f"at the busiest site (its sums: {cpu['site_sums_cpu_seconds']:.3f}), "
              f"{cpu['central_secure_cpu_seconds']:.3f} at the central; "
              f"{100 * (cpu['site_secure_cpu_seconds'] + cpu['central_secure_cpu_seconds']) / plain:.1f}% "
              "of the fit in clear")
    report = {
        "benchmark": "glm", "rows": n, "predictors": p, "sites": 2, "family": "binomial",
        "repeats": args.repeats,
        "runs_seconds": {"numpy IRLS": floor, "aia sync": times[True],
                         "aia async": times[False],
                         **({"aia 3 sites sync": times["3 plain"],
                             "aia 3 sites sync secure": times["3 secure"]}
                            if args.secure else {})},
        "cluster_startup_seconds": round(startup, 4), "results": results,
        "hardware": {**{k: round(v, 5) if isinstance(v, float) else v
                        for k, v in {**site, **hardware}.items()},
                     "round_over_gram": round(site["fisher_round"] / site["gram"], 3),
                     "gradient_round_over_pass": round(site["gradient_round"]
                                                       / site["one_pass"], 3),
                     "fit_over_floor": round(hardware["fit"] / hardware["floor"], 3),
                     "warm_fit_over_floor": round(hardware["fit_warm"] / hardware["floor"], 3),
                     "peak_private_over_design": round(hardware["peak_private"]
                                                       / hardware["design_bytes"], 3)},
        **({"secure_cpu": cpu} if args.secure else {}),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    RESULTS.mkdir(exist_ok=True)
    # The default size writes glm.json; another size its own file (glm_600000rows.json).
    stem = "glm" if (n, p) == (1_000_000, 20) else f"glm_{n}rows" + ("" if p == 20 else f"_{p}p")
    stem += "_secure" if args.secure else ""
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    bars([r["method"].replace(" (", "\n(") for r in results],
         {"seconds": [r["seconds"] for r in results]}, "seconds",
         f"logistic regression, {n:,} rows x {p} predictors", RESULTS / f"{stem}.png")
    print(f"\nwritten to {RESULTS / stem}.json and .png")
    return report


if __name__ == "__main__":
    main()
