"""R as a reference the tests can run: `r_values` runs an R script and returns the values
it reports.

The script gets a helper ``out(name, value)`` that prints a numeric (or logical) vector with
17 significant digits, and ``read_site(i)`` / the data frames passed as CSV files. R is
installed in CI by ``.ci/run`` (Debian's ``r-base-core``, ``r-cran-mass``,
``r-cran-sandwich``, ``r-cran-glmnet``). Without R a test that needs it is skipped, unless
``AIA_REQUIRE_R=1`` (set by ``.ci/run``), where it fails: R's numbers must never go
unchecked in CI silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import pytest

_PRELUDE = r"""
options(warn = 1)
out <- function(name, value) {
  v <- as.numeric(unlist(value))
  cat(name, "\t", paste(formatC(v, digits = 17, format = "g"), collapse = ","), "\n", sep = "")
}
outnames <- function(name, value) cat(name, "\t", paste(value, collapse = "\x1f"), "\n", sep = "")
"""


def r_available() -> bool:
    return shutil.which("Rscript") is not None


def require_r() -> None:
    """Skip the calling test without R (fail under ``AIA_REQUIRE_R=1``)."""
    if r_available():
        return
    message = "R (Rscript) is not installed: apt-get install r-base-core r-cran-mass " \
              "r-cran-sandwich r-cran-glmnet"
    if os.environ.get("AIA_REQUIRE_R") == "1":
        pytest.fail(message + " (AIA_REQUIRE_R=1: R's numbers must be checked)")
    pytest.skip(message)


def r_values(script: str, frames: Optional[Mapping[str, pd.DataFrame]] = None,
             timeout: float = 120, packages: Sequence[str] = ()) -> dict:
    """Run ``script`` with Rscript; ``{name: numpy array}`` of its ``out(...)`` calls (and
    ``{name: [str, ...]}`` of ``outnames(...)``).

    ``frames`` are written as CSV files and read into R variables of the same names before
    the script runs (``read.csv``, strings as factors off)."""
    require_r()
    with tempfile.TemporaryDirectory(prefix="aia-r-") as tmp:
        lines = [_PRELUDE]
        lines += [f"suppressPackageStartupMessages(library({p}))" for p in packages]
        for name, frame in (frames or {}).items():
            path = Path(tmp) / f"{name}.csv"
            frame.to_csv(path, index=False)
            lines.append(f'{name} <- read.csv("{path}", stringsAsFactors = FALSE)')
        lines.append(script)
        path = Path(tmp) / "script.R"
        path.write_text("\n".join(lines))
        done = subprocess.run(["Rscript", "--vanilla", str(path)], capture_output=True,
                              text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"R failed ({done.returncode}):\n{done.stderr[-4000:]}")
    values: dict = {}
    for line in done.stdout.splitlines():
        if "\t" not in line:
            continue
        name, _, text = line.partition("\t")
        if "\x1f" in text or not _numeric(text):
            values[name] = text.split("\x1f") if text else []
        else:
            values[name] = np.array([_number(t) for t in text.split(",")]) if text else \
                np.array([])
    return values


def _numeric(text: str) -> bool:
    try:
        [_number(t) for t in text.split(",")]
        return True
    except ValueError:
        return False


def _number(t: str) -> float:
    t = t.strip()
    return {"NA": np.nan, "NaN": np.nan, "Inf": np.inf, "-Inf": -np.inf}.get(t) \
        if t in ("NA", "NaN", "Inf", "-Inf") else float(t)
