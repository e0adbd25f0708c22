"""The formula's whitelist: what a site lets formulaic evaluate (see `algorithms.glm.design`),
checked on the parsed terms with `ast` before anything is evaluated (`inspect_formula`)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from formulaic import Formula
from formulaic.parser.types import Factor

from .errors import FormulaError
from .formula_bounds import (MAX_NUMBER, MAX_POWER, MAX_STRING, BoundsError, check_bounds,
                             count_nodes)


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


class ExpressionVisitor:
    """The grammar of a formula's Python expressions (inside ``I()``, ``np.log()``,
    ``cbind()``...): one method per kind of node. The whitelist (`_check_node`) and a site's
    check of every intermediate value (`algorithms.glm.disclosure.check_expressions`) walk
    expressions with it, so that both see the same nodes: a kind of node, or a function,
    that the whitelist admits is one the site's check evaluates (the tests hold the
    function tables equal), and anything else is `other`."""

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.UnaryOp):
            return self.unaryop(node)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, (ast.List, ast.Tuple)):
            return self.sequence(node)
        if isinstance(node, ast.Call):
            return self.call(node, call_name(node))
        return self.other(node)

    def constant(self, node: ast.Constant) -> Any:
        raise NotImplementedError

    def name(self, node: ast.Name) -> Any:
        raise NotImplementedError

    def binop(self, node: ast.BinOp) -> Any:
        raise NotImplementedError

    def unaryop(self, node: ast.UnaryOp) -> Any:
        raise NotImplementedError

    def compare(self, node: ast.Compare) -> Any:
        raise NotImplementedError

    def sequence(self, node: ast.AST) -> Any:
        raise NotImplementedError

    def call(self, node: ast.Call, name: Optional[str]) -> Any:
        """``name``: the whitelisted function called (``"log"`` for ``np.log``), else None."""
        raise NotImplementedError

    def other(self, node: ast.AST) -> Any:
        raise NotImplementedError


def call_name(node: ast.Call) -> Optional[str]:
    """The whitelisted function a call names (`FUNCTIONS` by name, `NUMPY_FUNCTIONS` as
    ``np.<name>``/``numpy.<name>``), else None."""
    func = node.func
    if isinstance(func, ast.Name) and func.id in FUNCTIONS:
        return func.id
    if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            and func.value.id in ("np", "numpy") and func.attr in NUMPY_FUNCTIONS):
        return func.attr
    return None


def _check_node(node: ast.AST, expr: str, found: dict, side: str) -> None:
    _Whitelist(expr, found, side).visit(node)


class _Whitelist(ExpressionVisitor):
    """The whitelist on the nodes of one factor's expression ``expr``: refuses what it does
    not allow, and records the columns read in ``found``."""

    def __init__(self, expr: str, found: dict, side: str):
        self.expr, self.found, self.side = expr, found, side

    def constant(self, node: ast.Constant) -> None:
        expr = self.expr
        if not isinstance(node.value, _CONSTANTS):
            raise _refuse(expr, f"the constant {node.value!r}")
        value = node.value
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise _refuse(expr, f"a string of more than {MAX_STRING} characters")
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not abs(value) <= MAX_NUMBER:
            raise _refuse(expr, f"a number beyond {MAX_NUMBER:g}")

    def name(self, node: ast.Name) -> None:
        if node.id in FUNCTIONS or node.id in ("np", "numpy"):
            raise _refuse(self.expr, f"the name {node.id!r} outside a call")
        self.found["variables"].add(node.id)

    def binop(self, node: ast.BinOp) -> None:
        expr = self.expr
        if not isinstance(node.op, _BINOPS):
            raise _refuse(expr, f"the operator {type(node.op).__name__}")
        if any(isinstance(side_, ast.Constant) and isinstance(side_.value, str)
               for side_ in (node.left, node.right)):
            raise _refuse(expr, "arithmetic on a string")
        if isinstance(node.op, ast.Pow):
            _check_power(node, expr)
        self.visit(node.left)
        self.visit(node.right)

    def unaryop(self, node: ast.UnaryOp) -> None:
        if not isinstance(node.op, _UNARYOPS):
            raise _refuse(self.expr, f"the operator {type(node.op).__name__}")
        self.visit(node.operand)

    def compare(self, node: ast.Compare) -> None:
        if not all(isinstance(op, _COMPARE) for op in node.ops):
            raise _refuse(self.expr, "this comparison")
        for child in (node.left, *node.comparators):
            self.visit(child)

    def sequence(self, node: ast.AST) -> None:
        for elt in node.elts:
            if not isinstance(elt, ast.Constant) or not isinstance(elt.value, _CONSTANTS):
                raise _refuse(self.expr, "a list of anything but constants")

    def call(self, node: ast.Call, name: Optional[str]) -> None:
        expr, found, side = self.expr, self.found, self.side
        if name is None:
            raise _refuse(expr, f"the call {ast.unparse(node.func)}()")
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
                        self.visit(kw.value)
                return
        elif name in ("Treatment", "Sum"):
            rest = node.args
            if any(not isinstance(a, ast.Constant) for a in rest):
                raise _refuse(expr, f"{name}() of anything but constants")
        else:
            rest = node.args
        for arg in rest:
            self.visit(arg)
        for kw in node.keywords:
            self.visit(kw.value)

    def other(self, node: ast.AST) -> None:
        raise _refuse(self.expr, f"a {type(node).__name__} expression")


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
