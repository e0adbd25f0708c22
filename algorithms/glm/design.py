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
"""

from __future__ import annotations

import ast
import hashlib
import uuid
from dataclasses import dataclass, field, replace
from functools import cached_property

import sys
from typing import Any, Collection, Mapping, Optional

import numpy as np
import pandas as pd
from formulaic import Formula
from formulaic.parser.types import Factor

from .families import Family, resolve
from .formula_bounds import (MAX_NUMBER, MAX_POWER, MAX_STRING, BoundsError, check_bounds,
                             count_nodes)
from .guards import Guards


class FormulaError(ValueError):
    """The formula is malformed, or uses something outside the whitelist."""


class SiteError(ValueError):
    """A site cannot take part (missing column, invalid response...). The message quotes
    no data value."""


#: Functions a formula may call, by name.
FUNCTIONS = frozenset({"C", "I", "log", "exp", "sqrt", "center", "scale", "Treatment", "Sum",
                       "cbind"})
#: numpy functions a formula may call as ``np.<name>``.
NUMPY_FUNCTIONS = frozenset({"log", "exp", "sqrt"})
#: The contrasts ``C(column, contrast)`` takes, as formulaic names them: a contrast by name
#: (``Sum``) or called with constants (``Treatment('b')``), and the keywords each accepts.
CONTRASTS = {"Treatment": ("reference",), "Sum": (), "Helmert": ("reverse", "scale"),
             "Poly": ("scores",), "Diff": ("backward",)}
#: ``contr.<name>``: formulaic's R-style contrasts (``contr.treatment('General')``).
CONTR = {"treatment": ("base",), "sum": (), "helmert": ("reverse", "scale"),
         "poly": ("scores",), "diff": ("backward",), "SAS": ("base",)}

#: ``missing=`` values (`Design.missing`).
MISSING = ("drop", "raise")
#: Keyword arguments allowed in those calls.
KEYWORDS = frozenset({"reference", "levels", "contrasts"})

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)
_UNARYOPS = (ast.UAdd, ast.USub)
_COMPARE = (ast.Gt, ast.GtE, ast.Lt, ast.LtE, ast.Eq, ast.NotEq)
_CONSTANTS = (int, float, str, bool, type(None))



def cbind(successes, failures) -> np.ndarray:
    """R's ``cbind(successes, failures)`` response: the two counts side by side."""
    return np.column_stack([np.asarray(successes, dtype=float),
                            np.asarray(failures, dtype=float)])


#: What formulaic may see when it evaluates a term (besides its own C, I, center, scale...).
CONTEXT = {"np": np, "numpy": np, "log": np.log, "exp": np.exp, "sqrt": np.sqrt, "cbind": cbind}


@dataclass(frozen=True)
class FormulaInfo:
    """What a whitelisted formula reads: ``response`` and ``variables`` (column names),
    ``categorical`` (columns inside ``C()``) and ``standardized`` (columns inside
    ``center()``/``scale()``); ``counts``: the response is ``cbind(successes, failures)``;
    ``expressions``, the Python text of every computed factor (``I(...)``, ``np.log(...)``),
    whose intermediate values a site checks too."""

    response: frozenset
    variables: frozenset
    categorical: frozenset
    standardized: frozenset
    counts: bool = False
    expressions: tuple = ()


def inspect_formula(formula: str) -> FormulaInfo:
    """Parse ``formula`` without evaluating it and check every term against the whitelist."""
    if not isinstance(formula, str):
        raise TypeError(f"formula: expected a string, got {type(formula).__name__}")
    try:  # our own parse first: formulaic's expansion can take minutes (formula_bounds)
        lhs, rhs = check_bounds(formula)
    except BoundsError as exc:
        raise FormulaError(f"formula refused: {exc}") from None
    try:
        parsed = Formula(formula)
    except Exception as exc:  # formulaic's parser errors have several types
        # A call outside the whitelist (__import__('os').system(...)) is said to be one,
        # not to be a syntax error.
        for factor in sorted({f for term in lhs | rhs for f in term}):
            if "(" in factor:
                _check_text(factor, {"variables": set(), "categorical": set(),
                                     "standardized": set()})
        raise FormulaError(f"formula {formula!r} cannot be parsed: {exc}") from None
    if not hasattr(parsed, "lhs"):
        raise FormulaError(f"formula {formula!r} has no response: write 'y ~ x1 + x2'")
    found = {"variables": set(), "categorical": set(), "standardized": set()}
    response: set = set()
    expressions: list = []
    for side, terms in (("lhs", parsed.lhs), ("rhs", parsed.rhs)):
        for term in terms:
            for factor in term.factors:
                before = set(found["variables"])
                _check_factor(factor, found, side)
                if factor.eval_method == Factor.EvalMethod.PYTHON:
                    expressions.append(factor.expr)
                if side == "lhs":
                    response |= found["variables"] - before
    if len(list(parsed.lhs)) != 1:
        raise FormulaError("the response must be a single term")
    return FormulaInfo(
        response=frozenset(response),
        variables=frozenset(found["variables"]),
        categorical=frozenset(found["categorical"]),
        standardized=frozenset(found["standardized"]),
        counts=_is_cbind(list(parsed.lhs)[0]),
        expressions=tuple(dict.fromkeys(expressions)),
    )


def _is_cbind(term) -> bool:
    """Whether the response term is ``cbind(successes, failures)`` (checked by the
    whitelist: ``cbind`` is only allowed as the whole response)."""
    factors = list(term.factors)
    if len(factors) != 1 or factors[0].eval_method != Factor.EvalMethod.PYTHON:
        return False
    node = ast.parse(factors[0].expr, mode="eval").body
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
        and node.func.id == "cbind"


def _check_factor(factor: Factor, found: dict, side: str) -> None:
    expr = factor.expr
    if factor.eval_method == Factor.EvalMethod.LITERAL:
        if expr.strip() not in ("0", "1", "-1"):
            raise FormulaError(f"term {expr!r}: only the literals 0 and 1 are allowed")
        return
    if factor.eval_method == Factor.EvalMethod.LOOKUP:
        found["variables"].add(expr)
        return
    _check_text(expr, found, side)


def _check_text(expr: str, found: dict, side: str = "rhs") -> None:
    """The Python expression of one factor against the whitelist."""
    try:
        tree = ast.parse(expr, mode="eval")
        count_nodes(tree)
    except SyntaxError:
        raise FormulaError(f"term {expr!r} is not a valid expression") from None
    except (BoundsError, RecursionError, MemoryError) as exc:
        raise FormulaError(f"term refused: {exc}") from None
    body = tree.body
    if side == "lhs" and isinstance(body, ast.Call) and isinstance(body.func, ast.Name) \
            and body.func.id == "cbind":
        if len(body.args) != 2 or body.keywords or any(isinstance(a, ast.Starred)
                                                        for a in body.args):
            raise _refuse(expr, "cbind() of anything but two counts (successes, failures)")
        for arg in body.args:
            if not any(isinstance(n, ast.Name) for n in ast.walk(arg)):
                raise _refuse(expr, "a cbind() argument that reads no column")
            _check_node(arg, expr, found, side)
        return
    _check_node(body, expr, found, side)


def _refuse(expr: str, what: str) -> FormulaError:
    allowed = ", ".join(sorted(FUNCTIONS)) + ", np." + "/np.".join(sorted(NUMPY_FUNCTIONS))
    return FormulaError(
        f"term {expr!r}: {what} is not allowed in a formula; a formula may use column names, "
        f"numbers, arithmetic and the functions {allowed}"
    )


def _check_node(node: ast.AST, expr: str, found: dict, side: str) -> None:
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, _CONSTANTS):
            raise _refuse(expr, f"the constant {node.value!r}")
        value = node.value
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise _refuse(expr, f"a string of more than {MAX_STRING} characters")
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not abs(value) <= MAX_NUMBER:
            raise _refuse(expr, f"a number beyond {MAX_NUMBER:g}")
    elif isinstance(node, ast.Name):
        if node.id in FUNCTIONS or node.id in ("np", "numpy"):
            raise _refuse(expr, f"the name {node.id!r} outside a call")
        found["variables"].add(node.id)
    elif isinstance(node, ast.BinOp):
        if not isinstance(node.op, _BINOPS):
            raise _refuse(expr, f"the operator {type(node.op).__name__}")
        if any(isinstance(side_, ast.Constant) and isinstance(side_.value, str)
               for side_ in (node.left, node.right)):
            raise _refuse(expr, "arithmetic on a string")
        if isinstance(node.op, ast.Pow):
            _check_power(node, expr)
        _check_node(node.left, expr, found, side)
        _check_node(node.right, expr, found, side)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, _UNARYOPS):
            raise _refuse(expr, f"the operator {type(node.op).__name__}")
        _check_node(node.operand, expr, found, side)
    elif isinstance(node, ast.Compare):
        if not all(isinstance(op, _COMPARE) for op in node.ops):
            raise _refuse(expr, "this comparison")
        for child in (node.left, *node.comparators):
            _check_node(child, expr, found, side)
    elif isinstance(node, (ast.List, ast.Tuple)):
        for elt in node.elts:
            if not isinstance(elt, ast.Constant) or not isinstance(elt.value, _CONSTANTS):
                raise _refuse(expr, "a list of anything but constants")
    elif isinstance(node, ast.Call):
        _check_call(node, expr, found, side)
    else:
        raise _refuse(expr, f"a {type(node).__name__} expression")


def _check_power(node: ast.BinOp, expr: str) -> None:
    """``x ** k``: a power of something that reads a column, by a small integer."""
    exponent = node.right
    if isinstance(exponent, ast.UnaryOp) and isinstance(exponent.op, (ast.USub, ast.UAdd)):
        exponent = exponent.operand
    if not (isinstance(exponent, ast.Constant) and type(exponent.value) is int
            and exponent.value <= MAX_POWER):
        raise _refuse(expr, f"a power other than a small integer (at most {MAX_POWER})")
    if not any(isinstance(n, ast.Name) for n in ast.walk(node.left)):
        raise _refuse(expr, "a power of a number (powers apply to columns)")


def _check_call(node: ast.Call, expr: str, found: dict, side: str) -> None:
    func = node.func
    if isinstance(func, ast.Name) and func.id in FUNCTIONS:
        name = func.id
    elif (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id in ("np", "numpy")
        and func.attr in NUMPY_FUNCTIONS
    ):
        name = func.attr
    else:
        raise _refuse(expr, f"the call {ast.unparse(func)}()")
    if name == "cbind":  # the whole response only (see _check_text)
        raise _refuse(expr, "cbind() anywhere but as the whole response, "
                            "cbind(successes, failures) ~ ...")
    if any(isinstance(a, ast.Starred) for a in node.args) or any(
        k.arg is None or k.arg not in KEYWORDS for k in node.keywords
    ):
        raise _refuse(expr, f"this argument of {name}()")
    if name in ("C", "center", "scale"):
        if not node.args or not isinstance(node.args[0], ast.Name):
            raise _refuse(expr, f"{name}() of anything but a column name")
        if name != "C" and (side == "lhs" or len(node.args) > 1 or node.keywords):
            raise _refuse(expr, f"this use of {name}()")
        found["variables"].add(node.args[0].id)
        found["categorical" if name == "C" else "standardized"].add(node.args[0].id)
        rest = node.args[1:]
        if name == "C":  # C(column, contrast, levels=[...]): the contrast is no expression
            if len(rest) > 1:
                raise _refuse(expr, "C() with more than a column and a contrast")
            for contrast in rest + [k.value for k in node.keywords if k.arg == "contrasts"]:
                _check_contrast(contrast, expr)
            for kw in node.keywords:
                if kw.arg != "contrasts":
                    _check_node(kw.value, expr, found, side)
            return
    elif name in ("Treatment", "Sum"):
        rest = node.args
        if any(not isinstance(a, ast.Constant) for a in rest):
            raise _refuse(expr, f"{name}() of anything but constants")
    else:
        rest = node.args
    for arg in rest:
        _check_node(arg, expr, found, side)
    for kw in node.keywords:
        _check_node(kw.value, expr, found, side)


def _check_contrast(node: ast.AST, expr: str) -> None:
    """The contrast of ``C(column, contrast)``: one of formulaic's (`CONTRASTS`, `CONTR`),
    by name or called with constants (numbers, text, True/False, a list of numbers)."""
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Name) and target.id in CONTRASTS:
        label, allowed = target.id, CONTRASTS[target.id]
    elif (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
          and target.value.id == "contr" and target.attr in CONTR):
        label, allowed = f"contr.{target.attr}", CONTR[target.attr]
    else:
        known = ", ".join([*CONTRASTS, *(f"contr.{n}" for n in CONTR)])
        raise _refuse(expr, f"the contrast {ast.unparse(node)} (expected one of {known}, "
                            "by name or called with constants)")
    if not isinstance(node, ast.Call):
        return
    if len(node.args) > len(allowed) or any(k.arg not in allowed for k in node.keywords):
        what = ", ".join(allowed) if allowed else "no arguments"
        raise _refuse(expr, f"this argument of {label}() (it takes {what})")
    for arg in [*node.args, *(k.value for k in node.keywords)]:
        values = arg.elts if isinstance(arg, (ast.List, ast.Tuple)) else [arg]
        for value in values:
            if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub):
                value = value.operand
            if not isinstance(value, ast.Constant) or not isinstance(value.value, _CONSTANTS):
                raise _refuse(expr, f"{label}() of anything but constants")
            _check_node(value, expr, {"variables": set()}, "rhs")  # the bounds of literals


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


@dataclass
class ModelData:
    """One site's rows as the fit sees them (numpy arrays, complete cases only).
    ``built_by`` says how X was built: ``"formulaic"`` or ``"direct"`` (`direct_columns`)."""

    y: np.ndarray
    X: np.ndarray
    weights: np.ndarray
    offset: np.ndarray
    d_star: Optional[np.ndarray]
    names: list
    built_by: str = "formulaic"
    #: ``cbind(successes, failures)``: the numbers of trials (the prior weights are then
    #: the weights times the trials, as R's binomial family sets them); else None.
    trials: Optional[np.ndarray] = None
    #: the cluster ids of ``Design.groups`` (never sent), else None.
    groups: Optional[np.ndarray] = None
    #: the frequency weights of ``Design.freq_weights``, else None.
    freq: Optional[np.ndarray] = None

    @property
    def fit_weights(self) -> np.ndarray:
        """The weights of the sums: the prior weights times the frequency weights (a row
        counts as that many rows, each with its prior weight)."""
        return self.weights if self.freq is None else self.weights * self.freq

    @property
    def rows(self) -> int:
        """The observations: the rows, or the sum of their frequency weights."""
        return len(self.y) if self.freq is None else int(round(float(np.sum(self.freq))))

    @property
    def rows_ok(self) -> int:
        """The observations with a positive prior weight (R's ``n.ok``)."""
        ok = self.weights > 0
        return int(np.sum(ok)) if self.freq is None else int(round(float(np.sum(self.freq[ok]))))


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


def model_data(frame: pd.DataFrame, design: Design, direct: bool = True,
               width_check=None, consume: bool = False) -> ModelData:
    """Build y, X, prior weights, offset and d* from one site's complete rows.

    ``frame`` holds the complete cases of the used columns. Categorical columns are cast to
    the design's merged levels, and ``center``/``scale`` use the design's global moments.
    When formulaic's model spec says that the design is plain numeric columns of the table
    (and the intercept), X is filled from those columns directly (`direct_columns`), unless
    ``direct`` is False; the matrices are the same. ``width_check(frame)``, given the frame
    with its categorical columns cast, may refuse the design before it is built.
    ``consume``: ``frame`` is the caller's to empty (see `_direct_design`).
    """
    info = design.info
    if design.levels is not None:
        cast = {}
        for col, levels in design.levels.items():
            if col in frame:
                values = frame[col].map(_plain)
                cat = pd.Categorical(values, categories=list(levels))
                if cat.isna().any():
                    raise SiteError(f"column {col!r} has a level missing from the merged levels")
                cast[col] = cat
        if cast:  # a new frame: the site's table is left as it is, and nothing else copied
            frame = frame.assign(**cast)
    if info.standardized and design.moments is None:
        raise SiteError("center() and scale() need the mean and standard deviation of all "
                         "sites: build the design with glm.fit or glm.prepare")
    if width_check is not None:
        width_check(frame)
    columns = direct_columns(frame, design) if direct else None
    if columns is not None:
        y, X, names = _direct_design(frame, *columns, consume=consume,
                                     keep=set(design.extra_columns.values()))
        built_by = "direct"
    else:
        y, X, names = _formulaic_design(frame, design)
        built_by = "formulaic"
    trials = None
    if info.counts:
        y, trials = _proportions(y, whole=design.family.has_likelihood)
    n = len(y)
    w = _column(frame, design.weights, n, 1.0)
    offset = _column(frame, design.offset, n, 0.0)
    if design.exposure is not None:
        exposure = _column(frame, design.exposure, n, 1.0)
        if np.any(exposure <= 0):
            raise SiteError(f"exposure column {design.exposure!r} must be positive")
        offset = offset + np.log(exposure)
    d_star = _column(frame, design.expected, n, 0.0) if design.expected else None
    for what, values in (("response", y), ("prior weights", w), ("offset", offset)):
        if not np.all(np.isfinite(values)):
            raise SiteError(f"the {what} has non-finite values at this site")
    bad = [names[j] for j in np.flatnonzero(~np.all(np.isfinite(X), axis=0))]
    if bad:
        raise SiteError(f"design column(s) {bad} have non-finite values at this site "
                         "(e.g. the log of a non-positive value)")
    if np.any(w < 0):
        raise SiteError("prior weights must not be negative")
    if trials is not None:
        w = w * trials  # R's binomial()$initialize: weights <- weights * n
    if d_star is not None and (np.any(d_star < 0) or not np.all(np.isfinite(d_star))):
        raise SiteError(f"expected deaths column {design.expected!r} must be finite and >= 0")
    groups = None if design.groups is None else frame[design.groups].to_numpy()
    freq = None
    if design.freq_weights is not None:
        freq = _column(frame, design.freq_weights, n, 1.0)
        problem = freq_problem(freq)
        if problem:
            raise SiteError(f"freq_weights column {design.freq_weights!r}: {problem} at this "
                            "site")
    return ModelData(y, X, w, offset, d_star, names, built_by, trials, groups, freq)


def freq_problem(values) -> Optional[str]:
    """What is wrong with frequency weights (counts of rows: finite, non-negative whole
    numbers), in words without their values; None when nothing is."""
    values = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(values)):
        return "expected non-negative whole numbers (counts of rows), got non-finite values"
    if np.any(values < 0):
        return "expected non-negative whole numbers (counts of rows), got negative values"
    if np.any(values != np.round(values)):
        return "expected non-negative whole numbers (counts of rows), got non-integer values"
    return None


def _proportions(counts: np.ndarray, whole: bool = True) -> tuple:
    """The proportions of successes and the numbers of trials of a ``cbind(successes,
    failures)`` response (0 where there are no trials, as R sets them). The counts are
    whole numbers, but for the quasibinomial family (``whole=False``)."""
    if not np.all(np.isfinite(counts)):
        raise SiteError("cbind(successes, failures) has non-finite values at this site")
    if np.any(counts < 0):
        raise SiteError("cbind(successes, failures): expected non-negative counts of "
                        "successes and failures, got negative values at this site")
    if whole and np.any(counts != np.round(counts)):
        raise SiteError("cbind(successes, failures): expected counts (non-negative whole "
                        "numbers) of successes and failures, got other values at this site")
    trials = counts[:, 0] + counts[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(trials > 0, counts[:, 0] / np.where(trials > 0, trials, 1.0), 0.0)
    return y, trials


def _formulaic_design(frame: pd.DataFrame, design: Design) -> tuple:
    """y, X and the column names of X, built by formulaic."""
    mm = Formula(design.formula).get_model_matrix(frame, context=CONTEXT, na_action="ignore")
    lhs, rhs = mm.lhs, mm.rhs
    if design.info.standardized:
        state = dict(rhs.model_spec.transform_state)
        for key, value in state.items():
            col = key[key.index("(") + 1:-1]
            mean, sd = design.moments[col]
            state[key] = dict(value, center=mean, scale=sd if key.startswith("scale") else None)
        rhs = rhs.model_spec.update(transform_state=state).get_model_matrix(frame, context=CONTEXT)
    width = 2 if design.info.counts else 1
    if lhs.shape[1] != width or not all(pd.api.types.is_numeric_dtype(t) for t in lhs.dtypes):
        raise SiteError("the response must be one numeric column" if width == 1 else
                        "cbind(successes, failures) must be two numeric columns")
    y = lhs.to_numpy(dtype=float)
    y = y if design.info.counts else y.ravel()
    # pandas hands the columns over column-major; X'WX and X @ beta are as fast that way
    # (measured), so no row-major copy of the whole matrix.
    X = rhs.to_numpy(dtype=float)
    return y, X, [str(c) for c in rhs.columns]


#: The rows formulaic builds its model spec from, for `direct_columns`.
SPEC_ROWS = 5


def direct_columns(frame: pd.DataFrame, design: Design) -> Optional[tuple]:
    """When the design is plain numeric columns of ``frame`` and the intercept: the
    response's column, the source of each column of X (a column name, None for the
    intercept) and X's column names; otherwise None.

    formulaic decides: it builds the model matrices of a few rows, and its model spec must
    show one numeric response column and, on the right, terms that are the intercept or a
    numeric column looked up by name, each giving one column of the same name. A model
    matrix (a pandas frame) then a float copy of it would move the whole table twice; filled
    from the columns directly, X is written once.
    """
    info = design.info
    if info.categorical or info.standardized or len(frame) == 0:
        return None
    if not all(_plain_numeric(frame, col) for col in info.variables):
        return None  # formulaic would encode (or convert) some column: leave it the work
    mm = Formula(design.formula).get_model_matrix(frame.head(SPEC_ROWS), context=CONTEXT,
                                                  na_action="ignore")
    response, sources = _sources(mm.lhs.model_spec), _sources(mm.rhs.model_spec)
    if response is None or len(response) != 1 or response[0] is None or sources is None:
        return None
    names = [str(c) for c in mm.rhs.columns]
    if names != [c for entry in mm.rhs.model_spec.structure for c in entry.columns]:
        return None
    return response[0], sources, names


def _plain_numeric(frame: pd.DataFrame, col: str) -> bool:
    """A column of numpy integers or floats (not bool, not a pandas extension type)."""
    column = frame.get(col)
    return (isinstance(column, pd.Series) and isinstance(column.dtype, np.dtype)
            and column.dtype.kind in "iuf")


def _sources(spec) -> Optional[list]:
    """Where each column of a model spec comes from: a column name, None for the intercept;
    None if some column is anything else (a categorical, a transform, an interaction)."""
    sources = []
    for entry in spec.structure:
        if len(entry.term.factors) != 1:
            return None
        factor = entry.term.factors[0]
        if (factor.eval_method == Factor.EvalMethod.LITERAL and factor.expr == "1"
                and list(entry.columns) == ["Intercept"]):
            sources.append(None)
        elif (factor.eval_method == Factor.EvalMethod.LOOKUP
              and spec.encoder_state.get(factor.expr, (None,))[0] == Factor.Kind.NUMERICAL
              and list(entry.columns) == [factor.expr]):
            sources.append(factor.expr)
        else:
            return None
    return sources


def _direct_design(frame: pd.DataFrame, response: str, sources: list, names: list,
                   consume: bool = False, keep: Collection[str] = ()) -> tuple:
    """y, X (column-major, as formulaic's would be) and the names, copied from ``frame``.

    ``consume``: ``frame`` is the site's own, and each column is deleted from it once
    copied (but those in ``keep``): the memory of X's columns (allocated as they are
    written) replaces theirs one by one, so the site never holds its table and its design
    at once (a Parquet site's peak memory is then about its design's)."""
    y = np.array(frame[response].to_numpy(), dtype=float)
    last = {col: j for j, col in enumerate(sources) if col is not None}
    gone = lambda col: consume and col not in keep and col in frame
    if gone(response) and response not in last:
        del frame[response]
    X = np.empty((len(frame), len(sources)), order="F")
    for j, col in enumerate(sources):
        X[:, j] = 1.0 if col is None else frame[col].to_numpy()
        if col is not None and last[col] == j and col != response and gone(col):
            del frame[col]
            _return_memory()
    return y, X, list(names)


def _return_memory() -> None:
    """Give the memory of deleted columns back to the system: pyarrow's allocator
    (mimalloc or jemalloc, where a Parquet table's columns live) keeps freed pages until
    asked (measured: 2M x 20 doubles stayed resident after every column was deleted)."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()


def _column(frame: pd.DataFrame, name: Optional[str], n: int, default: float) -> np.ndarray:
    if name is None:
        return np.full(n, default)
    if not pd.api.types.is_numeric_dtype(frame[name]):
        raise SiteError(f"column {name!r} must be numeric")
    return frame[name].to_numpy(dtype=float)


def _plain(value):
    """numpy scalars as Python ones, so levels from different sites compare and sort."""
    return value.item() if isinstance(value, np.generic) else value
