"""A site's rows for a model: the complete cases of the columns it uses, after the column
and row guards (R's ``na.omit``: rows with a missing value are left out first and counted),
and the checks of first contact (categorical levels, a column of numbers read as text).
`algorithms.glm.site.Site` is a `SiteFrame`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .design import Design, SiteError, site_levels, used_columns
from .guards import Guards


def _non_missing(column: pd.Series) -> int:
    """``column.count()``, without its temporary mask for numpy floats (NA is NaN there)."""
    values = column.to_numpy() if isinstance(column.dtype, np.dtype) else None
    if values is not None and values.dtype.kind == "f":
        return len(values) - int(np.count_nonzero(np.isnan(values)))
    return int(column.count())


class SiteFrame:
    """The frame of a design at a site (`Site`'s ``guards``, ``_columns``, ``audit``, ``label``
    and its frame cache)."""

    def _frame(self, design: Design) -> tuple[pd.DataFrame, Guards]:
        """The complete cases of the used columns, after the column and row guards.

        Kept for the next call with the same columns and guards (``describe`` then
        ``model``): selecting columns and rows copies the table.
        """
        guards = self.guards.stricter(design.guards)
        used = used_columns(design)
        key = (tuple(sorted(used)), repr(guards), design.missing)
        if self._frame_cache is not None and self._frame_cache[0] == key:
            self.missing_rows = self._frame_cache[2]
            return self._frame_cache[1], guards
        guards.check_columns(used)
        table = self._columns(used)
        missing = sorted(used - set(table.columns))
        if missing:
            raise SiteError(f"column(s) {missing} are not in the table of {self.label}")
        # Selecting columns copies them all: skip it when the model uses every column.
        frame = table if set(table.columns) == used else table[sorted(used)]
        counts = {c: _non_missing(frame[c]) for c in used}
        self.missing_rows = 0
        if all(k == len(frame) for k in counts.values()):  # every row complete: no row mask
            guards.check_rows(len(frame), counts)
        else:
            complete = frame.notna().all(axis=1).to_numpy()
            self._refuse_missing(design, frame, counts, int(complete.sum()))
            guards.check_rows(int(complete.sum()), counts)
            frame = frame[complete]  # a take copies every column: only when needed
            self.missing_rows = int(len(complete) - complete.sum())
        self._frame_cache = (key, frame, self.missing_rows)
        return frame, guards

    def _refuse_missing(self, design: Design, frame: pd.DataFrame, counts: dict,
                        complete: int) -> None:
        """R's ``na.omit`` leaves out the rows with a missing value (before the guards
        count rows); ``missing="raise"`` refuses them; a site left with no rows cannot take
        part."""
        columns = sorted(c for c, k in counts.items() if k < len(frame))
        if design.missing == "raise":
            raise SiteError(f"{len(frame) - complete} row(s) of this site have missing "
                            f"values in column(s) {columns} (missing='raise'; "
                            "missing='drop' leaves them out, as R's na.omit)")
        if complete == 0:
            raise SiteError(f"no rows left at {self.label}: each of its "
                            f"{len(frame)} rows has a missing value in column(s) {columns}")

    def _admit(self, design: Design, guards: Guards, frame: pd.DataFrame) -> None:
        """First contact with a model: its categorical columns pass their checks, and it is
        counted against the site's budget and logged (`algorithms.glm.audit`)."""
        self._check_categories(frame, design, guards)
        self.audit.admit(design.model_key, guards, {**design.describe(), "rows": len(frame),
                                                    "site": self.name})

    def _check_categories(self, frame: pd.DataFrame, design: Design, guards: Guards) -> None:
        """Every text (or other non-numeric) column the model reads, in the response and
        inside ``I()`` too, passes the level checks: a comparison such as
        ``I(diag == 'CODE')`` would otherwise count the rows of a rare level. ``C(x)`` of a
        numeric column needs the site's consent (its values become level names)."""
        info = design.info
        for col in sorted(info.variables):
            if col not in frame:
                continue
            column = frame[col]
            numeric = pd.api.types.is_numeric_dtype(column) and \
                not pd.api.types.is_bool_dtype(column)
            if col in info.categorical:
                if numeric:
                    guards.check_numeric_levels(col)
            elif numeric:
                continue
            else:
                self._check_mostly_numbers(col, column)
            guards.check_levels(col, site_levels(column)[1])

    def _check_mostly_numbers(self, col: str, column: pd.Series) -> None:
        """A column of numbers but for a few values (one 'abc' in a CSV) is read as text,
        and would then be refused as a factor with rare levels: say what it is, without
        the value."""
        if column.dtype != object:
            return
        present = column.notna()
        numbers = pd.to_numeric(column[present], errors="coerce").notna()
        bad = int((~numbers).sum())
        if 0 < bad and bad * 2 < len(numbers):
            raise SiteError(f"column {col!r} at {self.label} is not numeric: {bad} of its "
                            f"{len(numbers)} values are not numbers (a typing error in the "
                            "data?); fix them, or wrap the column in C() to use it as a factor")
