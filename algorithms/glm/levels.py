"""The levels and moments every site shares: each site's categorical levels and the moments
of its ``center()``/``scale()`` columns, and their merging (the union, sorted as formulaic
sorts; the pooled mean and standard deviation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .formula_whitelist import FormulaInfo

if TYPE_CHECKING:
    from .design import Design


def used_columns(design: Design) -> set:
    """Every column of the site's table that the model reads."""
    return set(design.info.variables) | set(design.extra_columns.values())


def categorical_columns(frame: pd.DataFrame, info: FormulaInfo) -> list:
    """Columns encoded as categories: inside ``C()``, or non-numeric ones on the right."""
    cols = set(info.categorical)
    for col in info.variables - info.response:
        if col in frame and not (pd.api.types.is_numeric_dtype(frame[col])
                                 or pd.api.types.is_bool_dtype(frame[col])):
            cols.add(col)
    return sorted(cols)


def site_levels(column: pd.Series) -> tuple[list, list]:
    """The levels present in one site's column and their row counts, in formulaic's order."""
    counts = column.value_counts(sort=False)
    counts = counts[counts > 0]
    levels = sort_levels(list(counts.index))
    return levels, [int(counts[lv]) for lv in levels]


def sort_levels(levels) -> list:
    """Sorted as formulaic sorts levels; mixed types fall back to their text."""
    levels = [_plain(lv) for lv in levels]
    try:
        return sorted(set(levels))
    except TypeError:
        return sorted(set(levels), key=lambda v: (type(v).__name__, str(v)))


def merge_levels(per_site: list) -> dict:
    """The union of every site's levels, column by column."""
    merged: dict = {}
    for levels in per_site:
        for col, lv in levels.items():
            merged.setdefault(col, []).extend(lv)
    return {col: tuple(sort_levels(lv)) for col, lv in merged.items()}


def site_moments(column: pd.Series) -> tuple:
    """(count, mean, sum of squared deviations) of one site's column."""
    x = column.to_numpy(dtype=float)
    mean = float(x.mean()) if len(x) else 0.0
    return (len(x), mean, float(np.sum((x - mean) ** 2)))


def merge_moments(per_site: list) -> dict:
    """Global mean and standard deviation (ddof=1) from every site's moments (Chan et al.)."""
    merged = {}
    cols = {c for m in per_site for c in m}
    for col in sorted(cols):
        n, mean, m2 = 0, 0.0, 0.0
        for moments in per_site:
            nb, mb, m2b = moments[col]
            if nb == 0:
                continue
            delta = mb - mean
            total = n + nb
            mean += delta * nb / total
            m2 += m2b + delta**2 * n * nb / total
            n = total
        merged[col] = (mean, float(np.sqrt(m2 / (n - 1))) if n > 1 else float("nan"))
    return merged


def _plain(value):
    """numpy scalars as Python ones, so levels from different sites compare and sort."""
    return value.item() if isinstance(value, np.generic) else value
