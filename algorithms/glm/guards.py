"""Privacy guards, enforced by each site before anything leaves it (as in v6-glm-py).

A site's administrator sets the thresholds through environment variables of the process
that holds the site; the analyst may ask for stricter ones (``fit(..., guards={...})``) but
never for looser ones: `Guards.stricter` keeps, for each guard, the stricter of the two.

=================================  =======  ===============================================
environment variable               default  the site refuses when
=================================  =======  ===============================================
GLM_MINIMUM_ROWS                   10       it has fewer complete rows for the model, or a
                                            column used has fewer non-null values
GLM_MIN_ROWS_PER_CATEGORY_LEVEL    3        a level of a categorical column has fewer rows;
                                            a binary column of the model (design, response,
                                            weights, offset) has fewer rows in one of its
                                            two values
GLM_MAX_LEVELS                     40       a categorical column has more levels
GLM_MAX_LEVELS_DENSITY             0.33     a categorical column has more levels than this
                                            fraction of its rows
GLM_ALLOW_NUMERIC_LEVELS           0        ``C(x)`` of a numeric column would send its
                                            values as level names (1: the site consents)
GLM_MAX_LEVERAGE                   0.99     a row's leverage in the design, or in the
                                            weighted design of a round, exceeds this: the
                                            model's columns (or the coefficients) single
                                            it out
GLM_MAX_PCT_VARS_VS_OBS            10       parameters exceed this percentage of its rows
GLM_MAX_MODELS_PER_SESSION         20       it has answered this many models this session
GLM_MAX_MODELS_PER_DAY             100      its audit log holds this many models today
GLM_MAX_QUERIES_PER_MODEL          2000     a model asks it for more sums than this
GLM_ALLOWED_COLUMNS                (all)    a column used is not in this comma-separated list
GLM_DISALLOWED_COLUMNS             (none)   a column used is in this comma-separated list
=================================  =======  ===============================================

The binary-column and level rules are DataSHIELD's (``nfilter.tab``,
``nfilter.levels.density``, ``nfilter.levels.max``); the leverage rule is the remote analysis
servers' (O'Keefe and Chipperfield 2013): a design whose columns span a vector that is zero
but for one row (an indicator of that row, or a spike of one value) gives that row a
leverage of 1, and its sums read out the row. The budgets bound differencing across many
fits (vantage6's advice); they are counted in the site's audit log (`algorithms.glm.audit`).

A refusal is a `PrivacyError` that names the guard and its threshold, never a data value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Mapping, Optional

#: Guard field -> the environment variable that sets it at a site.
ENVIRONMENT = {
    "minimum_rows": "GLM_MINIMUM_ROWS",
    "min_rows_per_category_level": "GLM_MIN_ROWS_PER_CATEGORY_LEVEL",
    "max_levels": "GLM_MAX_LEVELS",
    "max_levels_density": "GLM_MAX_LEVELS_DENSITY",
    "allow_numeric_levels": "GLM_ALLOW_NUMERIC_LEVELS",
    "max_leverage": "GLM_MAX_LEVERAGE",
    "max_pct_vars_vs_obs": "GLM_MAX_PCT_VARS_VS_OBS",
    "max_models_per_session": "GLM_MAX_MODELS_PER_SESSION",
    "max_models_per_day": "GLM_MAX_MODELS_PER_DAY",
    "max_queries_per_model": "GLM_MAX_QUERIES_PER_MODEL",
    "allowed_columns": "GLM_ALLOWED_COLUMNS",
    "disallowed_columns": "GLM_DISALLOWED_COLUMNS",
}
#: Guards the analyst may only lower (the stricter value is the smaller one).
_AT_MOST = ("max_levels", "max_levels_density", "max_leverage", "max_pct_vars_vs_obs",
            "max_models_per_session", "max_models_per_day", "max_queries_per_model")
_FLOATS = ("max_levels_density", "max_leverage", "max_pct_vars_vs_obs")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


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
    max_levels: int = 40
    max_levels_density: float = 0.33
    allow_numeric_levels: bool = False
    max_leverage: float = 0.99
    max_pct_vars_vs_obs: float = 10.0
    max_models_per_session: int = 20
    max_models_per_day: int = 100
    max_queries_per_model: int = 2000
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
            if name == "allow_numeric_levels":
                text = raw.strip().lower()
                if text not in _TRUE + _FALSE:
                    raise ValueError(f"{var} must be 1 or 0, got {raw!r}")
                values[name] = text in _TRUE
                continue
            try:
                values[name] = float(raw) if name in _FLOATS else int(raw)
            except ValueError:
                raise ValueError(f"{var} must be a number, got {raw!r}") from None
            if values[name] < 0:
                raise ValueError(f"{var} must not be negative, got {raw!r}")
        return cls(**values)

    @classmethod
    def coerce(cls, value: Any) -> Optional["Guards"]:
        """A `Guards`, a mapping of its field names, or None.

        A mapping is an analyst's request: the guards it does not name are left at their
        loosest, so that combined with a site's (`stricter`) they keep the site's value."""
        if value is None or isinstance(value, Guards):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = set(value) - known
            if unknown:
                raise ValueError(
                    f"guards: unknown guard(s) {sorted(unknown)}; expected some of {sorted(known)}"
                )
            values = {**_LOOSEST, **value}
            for key in ("allowed_columns", "disallowed_columns"):
                if values.get(key) is not None:
                    values[key] = frozenset(_as_list(values[key]))
            for key, given in value.items():
                _check_request(key, given)
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
            allow_numeric_levels=self.allow_numeric_levels and other.allow_numeric_levels,
            allowed_columns=allowed,
            disallowed_columns=self.disallowed_columns | other.disallowed_columns,
            **{name: min(getattr(self, name), getattr(other, name)) for name in _AT_MOST},
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
        """Every level present at the site must have enough rows, and the column not too
        many levels for its rows (DataSHIELD's ``nfilter.levels.max`` and
        ``nfilter.levels.density``)."""
        counts = [c for c in counts if c > 0]
        minimum = self.min_rows_per_category_level
        if any(c < minimum for c in counts):
            raise PrivacyError(
                ENVIRONMENT["min_rows_per_category_level"], minimum,
                f"a level of column {column!r} has fewer rows than the minimum",
            )
        if len(counts) > self.max_levels:
            raise PrivacyError(
                ENVIRONMENT["max_levels"], self.max_levels,
                f"categorical column {column!r} has more levels than the maximum",
            )
        rows = sum(counts)
        if rows and len(counts) > self.max_levels_density * rows:
            raise PrivacyError(
                ENVIRONMENT["max_levels_density"], f"{self.max_levels_density:g}",
                f"categorical column {column!r} has too many levels for its rows",
            )

    def check_rows_apart(self, column: str, rows: int) -> None:
        """A column equal on all rows but ``rows`` (0 < rows < minimum): its sums read
        those rows out (a binary column's smaller category is the simplest case)."""
        minimum = self.min_rows_per_category_level
        if 0 < rows < minimum:
            raise PrivacyError(
                ENVIRONMENT["min_rows_per_category_level"], minimum,
                f"{column} takes one value on all rows but fewer than the minimum (binary, "
                "or nearly constant): its sums would single those rows out",
            )

    def check_numeric_levels(self, column: str) -> None:
        """``C(x)`` of a numeric column sends its values as level names: only with the
        site's consent."""
        if not self.allow_numeric_levels:
            raise PrivacyError(
                ENVIRONMENT["allow_numeric_levels"], 0,
                f"C({column}) would send the values of numeric column {column!r} to the "
                "central as level names; this site does not consent (its operator can set "
                f"{ENVIRONMENT['allow_numeric_levels']}=1), or use a text column",
            )

    def check_leverage(self, leverage: float, weighted: bool = False) -> None:
        """No row may stand out of the design so far that its sums read it out."""
        if leverage > self.max_leverage:
            what = "the weights of this round single out a row" if weighted else \
                "the model's columns single out a row of this site"
            raise PrivacyError(
                ENVIRONMENT["max_leverage"], f"{self.max_leverage:g}",
                f"{what} (its leverage is above the maximum): a column that picks out one "
                "row, such as I(id == 17), or an extreme value",
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


#: The loosest value of each guard: what an analyst's request leaves to the site.
_LOOSEST = {"minimum_rows": 0, "min_rows_per_category_level": 0, "allow_numeric_levels": True,
            **{name: math.inf for name in _AT_MOST}}


def _check_request(key: str, value: Any) -> None:
    if key in ("allowed_columns", "disallowed_columns"):
        return
    if key == "allow_numeric_levels":
        if not isinstance(value, bool):
            raise TypeError(f"guards: {key} must be True or False, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"guards: {key} must be a non-negative number, got {value!r}")


def _as_list(value) -> list:
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return list(value)
