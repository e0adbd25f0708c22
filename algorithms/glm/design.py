"""The model's design: the formula's whitelist, the levels shared by every site, and the
design matrices each site builds from its own rows.

A formula is code: formulaic evaluates its terms as Python. A site therefore accepts only
column names and a short list of transforms, checked on the parsed terms with `ast` before
anything is evaluated (`inspect_formula`):

- ``C(column)``, with an optional contrast (formulaic's: ``Treatment('b')``, ``Sum``,
  ``Helmert``, ``Poly``, ``Diff``, ``contr.treatment('b')``, ``contr.sum``, ``contr.helmert``,
  ``contr.poly``, ``contr.diff``, ``contr.SAS``, by name or called with constants) and
  ``levels=[...]``: a categorical column;
- ``I(...)`` with arithmetic (``+ - * / **``, unary minus, comparisons) on columns and numbers;
- ``log``, ``exp``, ``sqrt`` (also as ``np.log`` etc.);
- ``center(column)``, ``scale(column)``: standardised with the mean and standard deviation of
  *all sites' rows* (formulaic's own would use each site's rows, and every site would then
  fit a different model);
- ``cbind(successes, failures)`` as the whole response of a binomial model (R's syntax: the
  numbers of trials are the row sums; each argument a column or arithmetic on columns).

Every site must build the same columns. The categorical levels are collected from every site
and merged (the union, sorted as formulaic sorts them), and each site casts its categorical
columns to that list of levels, so a level seen at one site only still gets its column
everywhere.

The whitelist is `formula_whitelist`'s, the levels' and moments' merging `levels`', the
matrices `matrices`'; their names are importable from here as before.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Mapping, Optional

from .errors import FormulaError, SiteError  # noqa: F401 (the errors' names of old)
from .families import Family, resolve
from .formula_whitelist import (CONTEXT, FUNCTIONS, MISSING, ExpressionVisitor,  # noqa: F401
                                FormulaInfo, call_name, cbind, inspect_formula)
from .guards import Guards


@dataclass(frozen=True)
class Design:
    """Everything a site needs to build its design matrices and answer Fisher scoring.

    ``levels`` (categorical column -> the merged levels) and ``moments`` (column inside
    ``center``/``scale`` -> global mean and standard deviation) are filled in by
    `algorithms.glm.fit` from every site's answers; with ``levels=None`` each site uses its
    own levels, and the central checks that the columns agree. ``guards`` are the analyst's
    requests (a site only takes the stricter ones). ``token`` identifies the design, so that
    a site builds its matrices once per design. ``groups``: the column of cluster ids of a
    cluster-robust covariance (its rows must be complete too; the ids never leave the site).
    """

    formula: str
    family: Family
    weights: Optional[str] = None
    offset: Optional[str] = None
    exposure: Optional[str] = None
    expected: Optional[str] = None
    levels: Optional[Mapping[str, tuple]] = None
    moments: Optional[Mapping[str, tuple]] = None
    guards: Optional[Guards] = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    groups: Optional[str] = None
    #: rows with a missing value in a used column: ``"drop"`` (R's ``na.omit``, counted) or
    #: ``"raise"`` (refused, statsmodels' word)
    missing: str = "drop"
    #: the column of frequency weights (statsmodels' ``freq_weights``: a row counts as that
    #: many rows), else None
    freq_weights: Optional[str] = None

    @classmethod
    def make(cls, formula: str, family: Any = "gaussian", link: Any = None, *, weights=None,
             offset=None, exposure=None, expected=None, guards=None,
             groups=None, missing: str = "drop", freq_weights=None) -> "Design":
        """Check the arguments (and the formula's whitelist) and build a `Design`."""
        if missing not in MISSING:
            raise ValueError(f"missing: expected 'drop' (R's na.omit: rows with a missing value "
                             f"in a used column are left out and counted) or 'raise', got "
                             f"{missing!r}")
        inspect_formula(formula)
        fam = resolve(family, link)
        for name, value in (("weights", weights), ("offset", offset),
                            ("exposure", exposure), ("expected", expected),
                            ("groups", groups), ("freq_weights", freq_weights)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name}: expected a column name, got {type(value).__name__}")
        if inspect_formula(formula).counts and not fam.binomial:
            raise ValueError(f"formula: cbind(successes, failures) is a binomial response; "
                             f"expected family='binomial' or 'quasibinomial', got {fam.name}")
        if fam.relative_survival and expected is None:
            raise ValueError("expected: the relative_survival family needs the column of "
                             "expected deaths d* (expected='...')")
        if expected is not None and not fam.relative_survival:
            raise ValueError("expected: only the relative_survival family uses expected deaths")
        return cls(formula, fam, weights, offset, exposure, expected,
                   guards=Guards.coerce(guards), groups=groups, missing=missing,
                   freq_weights=freq_weights)

    @cached_property
    def info(self) -> FormulaInfo:
        """What the formula reads (parsed once per design)."""
        return inspect_formula(self.formula)

    @property
    def extra_columns(self) -> dict:
        """The columns read besides the formula's: role -> column name."""
        roles = {"weights": self.weights, "offset": self.offset,
                 "exposure": self.exposure, "expected": self.expected,
                 "groups": self.groups, "freq_weights": self.freq_weights}
        return {k: v for k, v in roles.items() if v is not None}

    @property
    def model_key(self) -> str:
        """The model whatever its shared levels and moments (a site's audit and budget count
        models by it): a digest of the formula, family, link and columns."""
        text = "\x1f".join(str(v) for v in (
            " ".join(self.formula.split()), self.family.name, self.family.link_name,
            self.weights, self.offset, self.exposure, self.expected)
            + ((self.groups,) if self.groups else ())
            + ((f"freq={self.freq_weights}",) if self.freq_weights else ()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> dict:
        """The model as the audit log records it."""
        return {"formula": self.formula, "family": self.family.name,
                "link": self.family.link_name, **self.extra_columns}

    @property
    def has_offset(self) -> bool:
        return self.offset is not None or self.exposure is not None

    def with_shared(self, levels: Mapping, moments: Mapping) -> "Design":
        """This design with the merged levels and global moments (a new token)."""
        return replace(self, levels=dict(levels), moments=dict(moments),
                       token=uuid.uuid4().hex)


# The design's other concepts, by their names of old (``from .design import ...``).
from .levels import (categorical_columns, merge_levels, merge_moments,  # noqa: E402,F401
                     site_levels, site_moments, sort_levels, used_columns)
from .matrices import (SPEC_ROWS, ModelData, direct_columns, freq_problem,  # noqa: E402,F401
                       model_data)
