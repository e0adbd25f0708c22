"""The latency of the folder engine: the README's examples over real site processes on a
local folder.

    python benchmarks/folder.py [--modes events,poll=0.5] [--epochs 100] [--repeat 1]

- ``sgd``: the README's `FolderCluster` example, `SGD(0.01, x0=zeros(10))` asynchronous to
  ``{"epoch": E}`` over 3 sites (``python -m aia.folder site``, 100 rows x 10 each): seconds,
  answers, milliseconds per answer (sites already waiting, as in the README);
- ``glm``: ``aia-glm central`` (`algorithms.glm.folder.fit_folder`) of the shipped admissions
  data (``admit ~ gre + gpa + rank``, binomial) over 3 ``aia-glm site`` processes already
  waiting in the session: seconds from the central's start to its result (4 runs: describe,
  build, the Fisher iterations, the log-likelihood).

Modes: ``events`` waits on file events (watchdog: inotify on Linux), with a look every 0.5 s
as the fallback; ``poll=S`` looks every S seconds and ignores events (``--poll S
--no-watch``: what a folder that sends no events gets; ``poll=0.5`` was the only behaviour
before events). Prints a table and writes benchmarks/results/folder.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import aia
from aia.folder import serve
from algorithms import SGD, make_lrmse_problem

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[1] / "algorithms" / "glm" / "data"
SITES = ["s1", "s2", "s3"]
HAS_WATCH = "watch" in inspect.signature(serve).parameters  # False before file events


def mode_options(mode: str) -> tuple:
    """(site command-line flags, FolderCluster/fit_folder keyword arguments) of a mode."""
    if mode == "events":
        if not HAS_WATCH:
            raise SystemExit("this checkout has no file events: use poll=S modes")
        return [], {}
    if mode.startswith("poll="):
        seconds = float(mode.split("=", 1)[1])
        flags = ["--poll", str(seconds)] + (["--no-watch"] if HAS_WATCH else [])
        return flags, {"poll": seconds, **({"watch": False} if HAS_WATCH else {})}
    raise SystemExit(f"--modes: expected 'events' or 'poll=SECONDS', got {mode!r}")


class Sites:
    """Site processes on one folder, killed at the end."""

    def __init__(self):
        self.procs: list = []

    def start(self, args: list, log: Path) -> None:
        with open(log, "ab") as out:
            self.procs.append(subprocess.Popen([sys.executable, *args], stdout=out,
                                               stderr=subprocess.STDOUT))

    def wait(self, timeout: float = 30) -> list:
        return [p.wait(timeout) for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def sgd_case(folder: Path, mode: str, epochs: int) -> dict:
    flags, kwargs = mode_options(mode)
    make = make_lrmse_problem(n_rows=100, n_features=10, seed=0)
    sites = Sites()
    try:
        for pid, name in enumerate(SITES, 1):
            p = make(pid)
            np.savez(folder / f"{name}.npz", A=p.A, b=p.b)
            sites.start(["-m", "aia.folder", "site", "--folder", str(folder), "--site", name,
                         "--data", str(folder / f"{name}.npz"), "--timeout", "600",
                         "--verbose", "0", *flags], folder / f"{name}.log")
        with aia.FolderCluster(folder, SITES, timeout=600, **kwargs) as cluster:
            deadline = time.monotonic() + 60
            while len(cluster.joined()) < len(SITES):  # the README's sites are waiting
                if time.monotonic() > deadline:
                    raise RuntimeError("the sites never joined")
                time.sleep(0.01)
            started = time.perf_counter()
            h = aia.start(SGD(0.01, x0=np.zeros(10)), lambda pid: None, {"epoch": epochs},
                          cluster=cluster, verbose=0)
            seconds = time.perf_counter() - started
        if sites.wait() != [0, 0, 0]:
            raise RuntimeError("a site failed: see its log in " + str(folder))
    finally:
        sites.stop()
    answers = sum(h.answer_count.values())
    return {"case": "sgd", "mode": mode, "seconds": seconds, "answers": answers,
            "ms_per_answer": 1000 * seconds / answers}


def glm_case(folder: Path, mode: str) -> dict:
    from algorithms.glm import cli  # noqa: PLC0415

    flags, kwargs = mode_options(mode)
    private = Path(tempfile.mkdtemp(prefix="aia-bench-site-"))
    sites = Sites()
    try:
        for name, part in zip(SITES, "abc"):
            data = private / f"{name}.csv"
            shutil.copy(DATA / f"admissions_{part}.csv", data)
            sites.start(["-m", "algorithms.glm.cli", "site", "--folder", str(folder), "--site",
                         name, "--data", str(data), "--timeout", "600", "--verbose", "0",
                         *flags], private / f"{name}.log")
        # The session first, so that the sites are waiting in it (their start, mostly
        # imports, is not the folder's latency): then the central's whole fit.
        aia.FolderCluster(folder, SITES, session="bench", **kwargs).close()
        deadline = time.monotonic() + 120
        while not all((folder / "bench" / "sites" / f"{s}.json").exists() for s in SITES):
            if time.monotonic() > deadline:
                raise RuntimeError("the sites never joined")
            time.sleep(0.01)
        started = time.perf_counter()
        res = cli.fit_folder("admit ~ gre + gpa + rank", folder, SITES, "binomial",
                             session="bench", timeout=600, **kwargs)
        seconds = time.perf_counter() - started
        if sites.wait() != [0, 0, 0]:
            raise RuntimeError("a site failed")
    finally:
        sites.stop()
        shutil.rmtree(private, ignore_errors=True)
    return {"case": "glm", "mode": mode, "seconds": seconds, "answers": None,
            "ms_per_answer": None, "iterations": int(res.iterations)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="events,poll=0.5" if HAS_WATCH else "poll=0.5,poll=0.02")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--cases", default="sgd,glm")
    ap.add_argument("--output", default=str(RESULTS / "folder.json"))
    args = ap.parse_args()
    rows = []
    for mode in args.modes.split(","):
        for case in args.cases.split(","):
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory(prefix="aia-bench-folder-") as tmp:
                    row = sgd_case(Path(tmp), mode, args.epochs) if case == "sgd" else \
                        glm_case(Path(tmp), mode)
                rows.append(row)
                print(f"  {case:4s} {mode:10s} {row['seconds']:8.2f} s", file=sys.stderr)
    print(f"\n{'case':5s} {'mode':10s} {'seconds':>8s} {'answers':>8s} {'ms/answer':>10s}")
    for r in rows:
        ans = "" if r["answers"] is None else str(r["answers"])
        ms = "" if r["ms_per_answer"] is None else f"{r['ms_per_answer']:.1f}"
        print(f"{r['case']:5s} {r['mode']:10s} {r['seconds']:8.2f} {ans:>8s} {ms:>10s}")
    medians = {}
    for r in rows:
        medians.setdefault((r["case"], r["mode"]), []).append(r["seconds"])
    print(f"\nmedian of {args.repeat}: " + ", ".join(
        f"{case} {mode} {np.median(v):.2f} s" for (case, mode), v in medians.items()))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "file_events": HAS_WATCH, "epochs": args.epochs, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
