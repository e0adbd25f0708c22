"""Privacy guards, enforced by each site before anything leaves it (as in v6-glm-py).

A site's administrator sets the thresholds through environment variables of the process
that holds the site; the analyst may ask for stricter ones (``fit(..., guards={...})``) but
never for looser ones: `Guards.stricter` keeps, for each guard, the stricter of the two.

=================================  =======  ===============================================
environment variable               default  the site refuses when
=================================  =======  ===============================================
GLM_MINIMUM_ROWS                   10       it has fewer complete rows for the model, or a
                                            column used has fewer non-null values
GLM_MIN_ROWS_PER_CATEGORY_LEVEL    3        a level of a categorical column has fewer rows
GLM_MAX_PCT_VARS_VS_OBS            10       parameters exceed this percentage of its rows
GLM_ALLOWED_COLUMNS                (all)    a column used is not in this comma-separated list
GLM_DISALLOWED_COLUMNS             (none)   a column used is in this comma-separated list
=================================  =======  ===============================================

A refusal is a `PrivacyError` that names the guard and its threshold, never a data value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Mapping, Optional

#: Guard field -> the environment variable that sets it at a site.
ENVIRONMENT = {
    "minimum_rows": "GLM_MINIMUM_ROWS",
    "min_rows_per_category_level": "GLM_MIN_ROWS_PER_CATEGORY_LEVEL",
    "max_pct_vars_vs_obs": "GLM_MAX_PCT_VARS_VS_OBS",
    "allowed_columns": "GLM_ALLOWED_COLUMNS",
    "disallowed_columns": "GLM_DISALLOWED_COLUMNS",
}


class PrivacyError(PermissionError):
    """A site refused to compute: a privacy guard would be violated.

    Attributes: ``guard`` (the environment variable that sets it, or ``"min_sites"``),
    ``threshold`` and ``site`` (the site's name, set by the central; None at the site).
    """

    def __init__(self, guard: str, threshold: Any, message: str, site: Optional[str] = None):
        self.guard = guard
        self.threshold = threshold
        self.site = site
        self.detail = message
        where = f"{site} refused: " if site else ""
        super().__init__(f"{where}{guard} (threshold {threshold}): {message}")

    def __reduce__(self):  # keep the attributes when the error crosses a process boundary
        return (PrivacyError, (self.guard, self.threshold, self.detail, self.site))


@dataclass(frozen=True)
class Guards:
    """The thresholds of one site (see the module docstring)."""

    minimum_rows: int = 10
    min_rows_per_category_level: int = 3
    max_pct_vars_vs_obs: float = 10.0
    allowed_columns: Optional[frozenset] = None  # None: every column is allowed
    disallowed_columns: frozenset = frozenset()

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "Guards":
        """The guards set by this process's environment (defaults where unset).

        A value that cannot be read is an error, never a silent fall-back to the default.
        """
        env = os.environ if environ is None else environ
        values: dict = {}
        for name, var in ENVIRONMENT.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            if name.endswith("columns"):
                values[name] = frozenset(c.strip() for c in raw.split(",") if c.strip())
                continue
            try:
                values[name] = float(raw) if name == "max_pct_vars_vs_obs" else int(raw)
            except ValueError:
                raise ValueError(f"{var} must be a number, got {raw!r}") from None
        return cls(**values)

    @classmethod
    def coerce(cls, value: Any) -> Optional["Guards"]:
        """A `Guards`, a mapping of its field names, or None."""
        if value is None or isinstance(value, Guards):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = set(value) - known
            if unknown:
                raise ValueError(
                    f"guards: unknown guard(s) {sorted(unknown)}; expected some of {sorted(known)}"
                )
            values = dict(value)
            for key in ("allowed_columns", "disallowed_columns"):
                if values.get(key) is not None:
                    values[key] = frozenset(_as_list(values[key]))
            return cls(**values)
        raise TypeError(f"guards: expected a mapping or glm.Guards, got {type(value).__name__}")

    def stricter(self, request: Any) -> "Guards":
        """The stricter of this site's guards and the analyst's ``request``, guard by guard."""
        other = Guards.coerce(request)
        if other is None:
            return self
        allowed = self.allowed_columns
        if other.allowed_columns is not None:
            allowed = other.allowed_columns if allowed is None else allowed & other.allowed_columns
        return replace(
            self,
            minimum_rows=max(self.minimum_rows, other.minimum_rows),
            min_rows_per_category_level=max(
                self.min_rows_per_category_level, other.min_rows_per_category_level
            ),
            max_pct_vars_vs_obs=min(self.max_pct_vars_vs_obs, other.max_pct_vars_vs_obs),
            allowed_columns=allowed,
            disallowed_columns=self.disallowed_columns | other.disallowed_columns,
        )

    # -- the checks -----------------------------------------------------------------------
    def check_columns(self, used: Iterable[str]) -> None:
        """Every column the model reads must be allowed and not disallowed."""
        for col in sorted(used):
            if self.allowed_columns is not None and col not in self.allowed_columns:
                raise PrivacyError(
                    ENVIRONMENT["allowed_columns"], "list",
                    f"column {col!r} is not among the columns this site allows",
                )
            if col in self.disallowed_columns:
                raise PrivacyError(
                    ENVIRONMENT["disallowed_columns"], "list",
                    f"column {col!r} is among the columns this site disallows",
                )

    def check_rows(self, complete_rows: int, non_null: Mapping[str, int]) -> None:
        """Enough complete rows, and enough non-null values in every column used."""
        var, minimum = ENVIRONMENT["minimum_rows"], self.minimum_rows
        for col in sorted(non_null):
            if non_null[col] < minimum:
                raise PrivacyError(
                    var, minimum, f"column {col!r} has fewer non-null values than the minimum"
                )
        if complete_rows < minimum:
            raise PrivacyError(var, minimum, "the site has fewer complete rows than the minimum")

    def check_levels(self, column: str, counts: Iterable[int]) -> None:
        """Every level present at the site must have enough rows."""
        minimum = self.min_rows_per_category_level
        if any(0 < c < minimum for c in counts):
            raise PrivacyError(
                ENVIRONMENT["min_rows_per_category_level"], minimum,
                f"a level of column {column!r} has fewer rows than the minimum",
            )

    def check_parameters(self, n_params: int, n_rows: int) -> None:
        """Not more parameters than ``max_pct_vars_vs_obs`` percent of the rows."""
        if n_rows == 0 or 100.0 * n_params / n_rows > self.max_pct_vars_vs_obs:
            raise PrivacyError(
                ENVIRONMENT["max_pct_vars_vs_obs"], f"{self.max_pct_vars_vs_obs:g}%",
                "the model has too many parameters for the rows of this site",
            )


def check_min_sites(n_sites: int, min_sites: int) -> None:
    """The analyst's minimum number of sites."""
    if n_sites < min_sites:
        raise PrivacyError(
            "min_sites", min_sites, f"the fit needs at least {min_sites} sites, got {n_sites}"
        )


def _as_list(value) -> list:
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return list(value)
