"""What building a design may cost a site: its width, its memory, its time.

A formula within `algorithms.glm.formula_bounds` can still ask for a huge matrix (a 5-way
interaction of 40-level factors has 10^8 columns), so a site works out the width before it
builds: an upper bound from the levels first (no matrix at all), then the exact width from a
few rows. The memory of the whole matrix is compared with what the machine has free, and the
build itself runs under a time limit (``GLM_MAX_BUILD_SECONDS``) where the operating system
allows one (a timer signal, in the main thread).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from typing import Optional

import pandas as pd
import psutil
from formulaic import Formula
from formulaic.parser.types import Factor

from .design import SiteError
from .matrices import SPEC_ROWS  # the rows of the spec (direct_columns reuses it)

#: The most columns a design may have (X'WX is then 200 MB).
MAX_COLUMNS = 5000
#: The variable, and default, of the time a site gives one build.
BUILD_SECONDS = ("GLM_MAX_BUILD_SECONDS", 300.0)
#: Bytes per cell while a design is built (pandas and formulaic copy it about twice).
BYTES_PER_CELL = 24


class BuildLimitError(SiteError):
    """Building the design would cost the site more than it gives (width, memory, time)."""


def upper_width(frame: pd.DataFrame, formula: str, levels: Optional[dict]) -> int:
    """An upper bound on the columns of the design: per term, the product of the levels of
    its categorical factors (a numeric factor counts 1), without building anything."""
    total = 0
    for term in Formula(formula).rhs:
        width = 1
        for factor in term.factors:
            width *= _levels(factor, frame, levels)
            if width > MAX_COLUMNS:
                break
        total += width
        if total > MAX_COLUMNS:
            break
    return total


def _levels(factor: Factor, frame: pd.DataFrame, levels: Optional[dict]) -> int:
    expr = factor.expr
    name = expr[2:].split(",")[0].split(")")[0].strip() if expr.startswith("C(") else expr
    if levels and name in levels:
        return max(1, len(levels[name]))
    if name in frame and (expr.startswith("C(") or not pd.api.types.is_numeric_dtype(
            frame[name])):
        return max(1, int(frame[name].nunique()))
    return 1


def check_width(frame: pd.DataFrame, formula: str, levels: Optional[dict], context: dict,
                check_parameters):
    """The exact number of columns, refused past `MAX_COLUMNS`, past the site's parameter
    guard (``check_parameters(columns, rows)``) or past its free memory; it builds the
    design of a few rows only, and returns those model matrices (formulaic's
    ``ModelMatrices`` of ``SPEC_ROWS`` rows: their model spec tells how to build the rest,
    see `algorithms.glm.matrices.direct_columns`)."""
    if upper_width(frame, formula, levels) > MAX_COLUMNS:
        raise BuildLimitError(f"the design would have more than {MAX_COLUMNS} columns")
    spec = Formula(formula).get_model_matrix(frame.head(SPEC_ROWS), context=context,
                                             na_action="ignore")
    columns = spec.rhs.shape[1]
    if columns > MAX_COLUMNS:
        raise BuildLimitError(f"the design would have more than {MAX_COLUMNS} columns")
    check_parameters(columns, len(frame))
    need = len(frame) * (columns + 2) * BYTES_PER_CELL
    free = psutil.virtual_memory().available
    if need > free:
        raise BuildLimitError(f"the design needs about {need / 2**30:.1f} GiB and the site "
                              f"has {free / 2**30:.1f} GiB free")
    return spec


def build_seconds(environ=None) -> float:
    env = os.environ if environ is None else environ
    name, default = BUILD_SECONDS
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


@contextlib.contextmanager
def time_limit(seconds: float, what: str = "building the design"):
    """Raise `BuildLimitError` if the block runs longer than ``seconds`` (a SIGALRM timer:
    only in the main thread, where Python runs signal handlers; elsewhere no limit)."""
    usable = (hasattr(signal, "setitimer") and math.isfinite(seconds)
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expired(signum, frame):
        raise BuildLimitError(f"{what} took longer than {seconds:g} s "
                              f"({BUILD_SECONDS[0]})")

    previous = signal.signal(signal.SIGALRM, expired)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if old_delay:  # someone else's timer: give it back
            signal.setitimer(signal.ITIMER_REAL, old_delay, old_interval)
