"""Disclosure checks on the numbers a site is about to sum: can the sums read out a row?

The central receives sums over a site's rows: X'WX, X'Wz, the score, deviances, counts. A
sum reads out a row when the model's columns (or its weights) single that row out:

- a column that is **one value but on a few rows**: a binary column (an indicator such as
  ``I(id == 17)`` or ``I(x > t)``, a dummy of a rare level, a 0/1 response) with fewer than
  a few rows in one of its values (DataSHIELD's glmDS2 rule, ``nfilter.tab``), or any column
  equal on all but those rows (``I((id == 17) + 2 * (id == 18))``): its sums are those rows'
  values. Checked on every column of the design, the response, the prior weights and the
  offset, over the rows that enter the sums (complete cases with a positive prior weight);
- a design whose column space holds a vector that is zero but for one row (an indicator
  hidden in a continuous column, ``I(x + (id == 17))`` beside ``x``, or a spike such as
  ``I(exp(20 * (id == 17)))``): that row's **leverage** is (close to) 1. Checked once per
  design, exactly, on the prior-weighted design;
- **weights** concentrated on one row: the working weights depend on the coefficients, which
  the central chooses, and coefficients that make them vanish everywhere but near one row
  read that row out of X'WX and X'Wz. Checked at every round that sends X'WX: the weighted
  leverage ``w_i x_i' (X'WX)^-1 x_i`` of every row, against the same threshold. (Kish's
  effective number of rows would be cheaper, but honest fits fail it: a gaussian fit with
  the inverse link weighs rows by mu^4, and rests on ~3 rows' worth of weight while no row's
  leverage passes 0.5.)

- **every intermediate value of the formula**: ``I(y * (1 + (id == 17)))`` as the response, or
  ``I(x + (id == 17))`` alone, passes the checks above, yet its sums minus those of ``y ~ 1``
  (or ``y ~ x``) are row 17's values: differencing across fits. Each sub-expression that the
  formula computes from the rows (``id == 17``, ``exp(-1000 * (id - 17) ** 2)``) is checked
  as a column of its own (`check_expressions`): the minority rule, its leverage beside an
  intercept, and the rows where it is not finite. A formula may compute, at any step, only
  what could be a column of the model.

None of these stops differencing across fits whose columns are all acceptable (the same
model on a site's rows before and after one row was added), nor what crafted coefficients
can learn from many score-only rounds and deviances: the site's budgets of models and of
queries per model, and its audit log, bound those (`algorithms.glm.audit`).
"""

from __future__ import annotations

import ast
import operator as _op
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from scipy.linalg.blas import dsyrk

from .formula_whitelist import ExpressionVisitor
from .guards import ENVIRONMENT, Guards, PrivacyError

#: Rows per block when the leverage is computed (bounds the memory to a few MiB).
BLOCK = 65536
#: Eigenvalues of the scaled X'WX below this fraction of the largest are the aliased
#: directions (they carry no row's information: the span is that of the others).
RANK_TOL = 1e-10


def minority(values: np.ndarray, minimum: int) -> int:
    """How many rows differ from the value most rows share, when it is shared by all but
    fewer than ``minimum`` rows (else ``minimum``: nothing to fear). A column that is one
    value everywhere but on a few rows reads those rows out of its sums, whatever their
    values (``I(id == 17)``, ``I((id == 17) + 2 * (id == 18))``); it is a binary column's
    smaller category. Such a dominant value is among any ``minimum`` rows, so at most
    ``minimum`` passes over the column."""
    n = len(values)
    if n == 0 or minimum <= 1:
        return minimum
    fewest = minimum
    for candidate in np.unique(values[:minimum]):
        others = n - int(np.count_nonzero(values == candidate))
        fewest = min(fewest, others)
    return fewest


def check_columns(guards: Guards, X: np.ndarray, names: Sequence[str], y: np.ndarray,
                  weights: np.ndarray, offset: np.ndarray) -> None:
    """The minority rule on every column of the model, the binary-column rule of DataSHIELD
    being its simplest case (see the module docstring)."""
    used = weights > 0
    if not used.all():
        X, y, offset, weights = X[used], y[used], offset[used], weights[used]
    # A design column's name may hold a level (C(g)[T.b]): the error names its term only.
    columns = [(f"design column {_term(name)!r}", X[:, j]) for j, name in enumerate(names)]
    columns += [("the response", y), ("the prior weights", weights), ("the offset", offset)]
    minimum = guards.min_rows_per_category_level
    for what, values in columns:
        few = minority(np.asarray(values), minimum)
        if 0 < few < minimum:
            guards.check_rows_apart(what, few)


def check_expressions(guards: Guards, frame, expressions: Sequence[str],
                      used: Optional[np.ndarray] = None,
                      moments: Optional[Mapping[str, tuple]] = None) -> None:
    """Every sub-expression the formula computes (see the module docstring), on the rows of
    ``frame`` that enter the sums (``used``: a mask of them), checked as a column would be.
    The expressions have passed the formula's whitelist; what cannot be evaluated here is
    left to the design's own build, which refuses it. ``moments``: the design's (column ->
    mean, sd), with which ``center(x)`` and ``scale(x)`` are evaluated: the central sends
    them, and a mean put on one row's value would make ``exp(-scale(x) ** 2)`` a spike."""
    minimum = guards.min_rows_per_category_level
    for text in expressions:
        for sub, values in _intermediates(text, frame, used, moments):
            what = f"the expression {sub!r} inside the formula"
            finite = np.isfinite(values)
            if not finite.all():
                guards.check_rows_apart(f"{what} (where it is finite)",
                                        minority(finite, minimum))
                values = values[finite]
            guards.check_rows_apart(what, minority(values, minimum))
            if _lone_leverage(values) > guards.max_leverage:
                raise PrivacyError(ENVIRONMENT["max_leverage"], f"{guards.max_leverage:g}",
                                   f"{what} singles out a row (its leverage beside an "
                                   "intercept is above the maximum)")


def _lone_leverage(values: np.ndarray) -> float:
    """The largest leverage of a column beside an intercept: 1/n + d_i^2 / sum d^2."""
    n = len(values)
    if n < 2:
        return 0.0
    with np.errstate(all="ignore"):
        d = values - values.mean()
        ss = float(d @ d)
        if not np.isfinite(ss) or ss <= 0.0:
            return 0.0
        return 1.0 / n + float(np.max(d * d)) / ss


#: What the check of intermediate values does with each function of the formula whitelist
#: (`design.FUNCTIONS`, `design.NUMPY_FUNCTIONS`; the tests hold the keys equal to them):
#: a numpy function is evaluated; "same" (identity or affine) leaves the values as they
#: are, the same checks apply; "each" checks each argument (cbind's two counts); "levels"
#: (C(), contrasts) computes no row values (the level checks cover categorical columns).
CALLS = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "I": "same", "center": "same",
         "scale": "same", "cbind": "each", "C": "levels", "Treatment": "levels",
         "Sum": "levels"}
#: The value of a node that computes no row values of its own (C(), a list, cbind()).
_OPAQUE = object()


def _intermediates(text: str, frame, used: Optional[np.ndarray],
                   moments: Optional[Mapping[str, tuple]] = None) -> list:
    """``(sub-expression text, float values)`` for each computed node of ``text`` that
    varies with the rows (plain columns and constants are checked elsewhere)."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return []
    evaluator = _Evaluator(frame, used, moments)
    with np.errstate(all="ignore"):
        try:
            evaluator.visit(tree.body)
        except Exception:  # noqa: BLE001 - what fails here fails the design's build too
            pass
    return evaluator.found


class _Evaluator(ExpressionVisitor):
    """The values of every node of a whitelisted expression on the rows that enter the sums
    (the whitelist's grammar, `design.ExpressionVisitor`); ``found`` collects the computed
    ones that vary with the rows. A node with no row values of its own (`_OPAQUE`) makes
    its parents opaque, and its siblings are still evaluated."""

    def __init__(self, frame, used: Optional[np.ndarray],
                 moments: Optional[Mapping[str, tuple]] = None):
        self.frame, self.used, self.moments = frame, used, moments or {}
        self.n = len(frame) if used is None else int(np.count_nonzero(used))
        self.found: list = []

    def _computed(self, node: ast.AST, value: Any) -> Any:
        if isinstance(value, np.ndarray) and value.shape == (self.n,) \
                and value.dtype.kind in "biuf":
            self.found.append((ast.unparse(node), value.astype(float)))
        return value

    def constant(self, node: ast.Constant) -> Any:
        return node.value

    def name(self, node: ast.Name) -> Any:
        if node.id not in self.frame:
            raise KeyError(node.id)
        values = self.frame[node.id].to_numpy()
        values = values if self.used is None else values[self.used]
        if values.dtype.kind in "biuf":
            return values.astype(float)
        return values  # text: only comparisons use it

    def binop(self, node: ast.BinOp) -> Any:
        left, right = self.visit(node.left), self.visit(node.right)
        if left is _OPAQUE or right is _OPAQUE:
            return _OPAQUE
        return self._computed(node, _BINARY[type(node.op)](left, right))

    def unaryop(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if value is _OPAQUE:
            return _OPAQUE
        return self._computed(node, -value if isinstance(node.op, ast.USub) else value)

    def compare(self, node: ast.Compare) -> Any:
        values = [self.visit(child) for child in (node.left, *node.comparators)]
        if any(v is _OPAQUE for v in values):
            return _OPAQUE
        value = True
        for op, left, right in zip(node.ops, values, values[1:]):
            value = value & _COMPARE[type(op)](left, right)
        return self._computed(node, value)

    def sequence(self, node: ast.AST) -> Any:
        return _OPAQUE  # constants only (the whitelist's rule)

    def call(self, node: ast.Call, name: Optional[str]) -> Any:
        rule = CALLS[name]  # KeyError for a name the whitelist refuses
        if rule == "levels":
            return _OPAQUE
        if rule == "each":
            for arg in node.args:
                self.visit(arg)
            return _OPAQUE
        if not node.args:
            raise KeyError(name)
        value = self.visit(node.args[0])
        if value is _OPAQUE:
            return value
        if name in ("center", "scale") and isinstance(node.args[0], ast.Name) \
                and node.args[0].id in self.moments:
            mean, sd = self.moments[node.args[0].id]
            value = value - float(mean)
            return value / float(sd) if name == "scale" else value
        if rule == "same":
            return value
        return self._computed(node, rule(value))

    def other(self, node: ast.AST) -> Any:
        raise KeyError(type(node).__name__)


#: The arithmetic and comparisons of the whitelist (`formula_whitelist._BINOPS`, `formula_whitelist._COMPARE`).
_BINARY = {ast.Add: _op.add, ast.Sub: _op.sub, ast.Mult: _op.mul, ast.Div: _op.truediv,
           ast.Pow: _op.pow}
_COMPARE = {ast.Gt: _op.gt, ast.GtE: _op.ge, ast.Lt: _op.lt, ast.LtE: _op.le, ast.Eq: _op.eq,
            ast.NotEq: _op.ne}


def _term(name: str) -> str:
    return re.sub(r"\[[^\]]*\]", "[...]", str(name))


def max_leverage(X: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """The largest leverage ``h_ii = w_i x_i' (X'WX)^+ x_i`` of the rows of ``X`` (prior
    weights ``weights``), exactly, in blocks of rows.

    X'WX is scaled to unit diagonal and its aliased directions dropped (eigenvalues below
    ``RANK_TOL`` of the largest): an aliased column adds nothing to the span, so the
    leverages are those of the remaining ones."""
    n, p = X.shape
    if n == 0 or p == 0:
        return 0.0
    root = None if weights is None else np.sqrt(np.maximum(weights, 0.0))
    gram = np.zeros((p, p))
    for rows in _blocks(n):
        A = _weighted(X[rows], None if root is None else root[rows])
        gram += dsyrk(1.0, A, trans=1, lower=0)
    gram = np.triu(gram) + np.triu(gram, 1).T
    finite = np.isfinite(np.diag(gram))
    if not finite.all():  # an overflowing column: the central refuses the sums anyway; the
        # leverage of the others is still checked
        return max_leverage(X[:, finite], weights) if finite.any() else 0.0
    d = np.diag(gram)
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    values, vectors = np.linalg.eigh(gram * s[:, None] * s[None, :])
    keep = values > RANK_TOL * max(values.max(), 0.0)
    if not keep.any():
        return 0.0
    project = (s[:, None] * vectors[:, keep]) / np.sqrt(values[keep])[None, :]
    largest = 0.0
    for rows in _blocks(n):
        A = _weighted(X[rows], None if root is None else root[rows])
        h = np.einsum("ij,ij->i", A @ project, A @ project)
        largest = max(largest, float(h.max()))
    return largest


def check_design(guards: Guards, X: np.ndarray, weights: Optional[np.ndarray],
                 peaks: Optional[np.ndarray] = None,
                 gram: Optional[np.ndarray] = None) -> None:
    """The leverage of every row of the prior-weighted design against
    ``GLM_MAX_LEVERAGE``: from `round_bound` when ``peaks`` (`rounds.x_peaks` of X, by
    sub-blocks of ``sub_rows``) settle it, one pass for the gram (none when ``gram``, the
    gram of sqrt(w) X, comes with the peaks: `rounds.design_sums`); else exactly
    (`max_leverage`, two passes)."""
    if peaks is not None and len(X):
        from .rounds import SUB_ROWS  # the sub-blocks of the peaks

        w = np.ones(len(X)) if weights is None else np.maximum(weights, 0.0)
        if gram is None:
            gram = _design_gram(X, w)
        heaviest = np.maximum.reduceat(w, np.arange(0, len(X), SUB_ROWS))
        if round_bound(gram, peaks * heaviest[:, None]) <= guards.max_leverage:
            return
    guards.check_leverage(max_leverage(X, weights))


def _design_gram(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The symmetric gram of sqrt(w) X."""
    if np.all(w == 1.0) and X.dtype == np.float64 and X.flags.f_contiguous:
        gram = dsyrk(1.0, X, trans=1, lower=0)  # unit weights: X'X, X read as it is
    else:
        gram = np.zeros((X.shape[1], X.shape[1]))
        for rows in _blocks(len(X)):
            gram += dsyrk(1.0, _weighted(X[rows], np.sqrt(w[rows])), trans=1, lower=0)
    return np.triu(gram) + np.triu(gram, 1).T


def check_round(guards: Guards, A: np.ndarray, gram: np.ndarray) -> None:
    """The weighted leverage of every row of a round, ``A = sqrt(W) X`` (the rows of the
    round, ``gram = A'A``), against ``GLM_MAX_LEVERAGE``.

    A bound first, one pass over A: with D the unit-diagonal scaling of the gram and
    ``lmin`` the smallest eigenvalue of D A'A D, ``h_i <= ||D a_i||^2 / lmin``. On large
    sites it settles the check; the exact leverages are computed only when it does not."""
    n, p = A.shape
    if n == 0 or p == 0:
        return
    finite = np.isfinite(np.diag(gram))
    if not finite.all():  # as in max_leverage: the finite columns are still checked
        if finite.any():
            check_round(guards, A[:, finite], gram[np.ix_(finite, finite)])
        return
    d = np.diag(gram)
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    scaled = gram * s[:, None] * s[None, :]
    values = np.linalg.eigvalsh(scaled)
    lmin = values[0]
    if lmin > RANK_TOL * values[-1]:
        largest = 0.0
        for rows in _blocks(n):
            B = A[rows] * s[None, :]
            largest = max(largest, float(np.einsum("ij,ij->i", B, B).max()))
        if largest / lmin <= guards.max_leverage:
            return
    guards.check_leverage(max_leverage(A), weighted=True)


def round_bound(gram: np.ndarray, peaks: np.ndarray) -> float:
    """`check_round`'s bound from column maxima instead of rows: with ``peaks[k, j]`` the
    largest ``a_ij^2`` over the rows i of sub-block k, every row's leverage is at most
    ``max_k sum_j s_j^2 peaks[k, j] / lmin`` (D = diag(s) scales the gram to unit diagonal,
    ``lmin`` the smallest eigenvalue of D A'A D). Infinite where that bound does not hold
    (non-finite or rank-deficient grams): the exact check decides then."""
    d = np.diag(gram)
    if not np.all(np.isfinite(d)):
        return float("inf")
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    values = np.linalg.eigvalsh(gram * s[:, None] * s[None, :])
    if not values[0] > RANK_TOL * values[-1]:
        return float("inf")
    return float((peaks @ (s * s)).max() / values[0])


def _blocks(n: int):
    for start in range(0, n, BLOCK):
        yield slice(start, min(n, start + BLOCK))


def _weighted(X: np.ndarray, root: Optional[np.ndarray]) -> np.ndarray:
    A = np.asarray(X, dtype=float)
    return A if root is None else A * root[:, None]
