"""Bounds on a formula, checked on our own syntax tree before formulaic sees it.

formulaic's parser expands interactions by an algorithm whose time grows exponentially with
their order: ``y ~ (a+b+c+d+e+f+g+h)**8``, 25 characters, holds a CPU for minutes. A site
must not let an analyst's formula cost it more than a model is worth, so `check_bounds`
first reads the formula with a small parser of Wilkinson's notation (``~ + - * / : ** ^
%in% |``, parentheses, names, the literals 0 and 1, calls ``f(...)`` and ``{...}`` blocks
taken whole) and expands its terms itself, as sets of factors, refusing before the work is
done when the formula is longer than ``MAX_CHARS``, a term has more than ``MAX_ORDER``
factors, or there are more than ``MAX_TERMS`` terms. What is inside a call is checked by
`algorithms.glm.design`'s whitelist (on Python's own syntax tree), with bounds of its own:
``MAX_NODES`` nodes, literals within ``MAX_NUMBER`` and ``MAX_STRING``.
"""

from __future__ import annotations

import ast
import re

MAX_CHARS = 2000  # characters of a formula
MAX_TERMS = 200  # terms of one side once expanded
MAX_ORDER = 5  # factors of one term (the order of an interaction)
MAX_NODES = 200  # nodes of the Python expression of one factor
MAX_NUMBER = 1e15  # the largest magnitude of a number in a formula
MAX_STRING = 200  # the longest string in a formula
MAX_POWER = 4  # I(x ** k): |k| at most this

_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9.]*")
_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_OPERATORS = ("%in%", "**", "~", "+", "-", "*", "/", ":", "^", "|", "(", ")")


class BoundsError(ValueError):
    """The formula is too large or malformed for the site (before formulaic sees it)."""


def check_bounds(formula: str) -> tuple:
    """``(response terms, model terms)`` of ``formula``, each a set of frozensets of factor
    texts; `BoundsError` past a bound (see the module docstring)."""
    if len(formula) > MAX_CHARS:
        raise BoundsError(f"the formula is longer than {MAX_CHARS} characters")
    return _Parser(_tokens(formula)).formula()


def _tokens(text: str) -> list:
    """The formula's tokens: ``("op", text)``, ``("factor", text)``, ``("number", text)``."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
        if op is not None:
            out.append(("op", op))
            i += len(op)
            continue
        if c == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise BoundsError("an unterminated `quoted name`")
            out.append(("factor", text[i:end + 1]))
            i = end + 1
            continue
        if c == "{":
            end = _closing(text, i, "{", "}")
            out.append(("factor", text[i:end + 1]))
            i = end + 1
            continue
        m = _NUMBER.match(text, i)
        if m and not (c.isalpha() or c == "_"):
            out.append(("number", m.group(0)))
            i = m.end()
            continue
        m = _NAME.match(text, i)
        if not m:
            raise BoundsError(f"unexpected character {c!r} at position {i}")
        j = m.end()
        k = j
        while k < n and text[k].isspace():
            k += 1
        if k < n and text[k] == "(":  # a call: taken whole, checked by the whitelist
            end = _closing(text, k, "(", ")")
            # with what chains onto it (f(x).g(y)), for the whitelist to name it whole
            while end + 1 < n and text[end + 1] == "." and (m := _NAME.match(text, end + 2)):
                end = m.end() - 1
                if m.end() < n and text[m.end()] == "(":
                    end = _closing(text, m.end(), "(", ")")
            out.append(("factor", text[i:end + 1]))
            i = end + 1
        else:
            out.append(("factor", m.group(0)))
            i = j
    return out


def _closing(text: str, start: int, open_: str, close: str) -> int:
    """The index of the bracket that closes the one at ``start`` (quotes respected)."""
    depth, i, quote = 0, start, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise BoundsError(f"an unbalanced {open_!r}")


class _Parser:
    """Recursive descent over the tokens; each rule returns a set of terms."""

    def __init__(self, tokens: list):
        self.tokens = tokens
        self.i = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def take(self):
        token = self.peek()
        self.i += 1
        return token

    def formula(self) -> tuple:
        lhs = set()
        if ("op", "~") != self.peek():
            lhs = self.parts()
        if self.take() != ("op", "~"):
            raise BoundsError("a formula needs a '~' between the response and the model")
        rhs = self.parts()
        if self.peek() != (None, None):
            raise BoundsError(f"unexpected {self.peek()[1]!r} in the formula")
        return lhs, rhs

    def parts(self) -> set:  # a | b: multi-part formulas
        terms = self.sums()
        while self.peek() == ("op", "|"):
            self.take()
            terms = _bounded(terms | self.sums())
        return terms

    def sums(self) -> set:
        terms = self.products()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            right = self.products()
            terms = _bounded(terms | right) if op == "+" else terms - right
        return terms

    def products(self) -> set:
        terms = self.nested()
        while self.peek() in (("op", "*"), ("op", "/")):
            op = self.take()[1]
            right = self.nested()
            if op == "*":
                terms = _bounded(terms | right | _cross(terms, right))
            else:  # a / b = a + a:b (b within the factors of a)
                whole = frozenset().union(*terms) if terms else frozenset()
                terms = _bounded(terms | _cross({whole}, right))
        return terms

    def nested(self) -> set:
        terms = self.interactions()
        while self.peek() == ("op", "%in%"):
            self.take()
            terms = _cross(terms, self.interactions())
        return terms

    def interactions(self) -> set:
        terms = self.power()
        while self.peek() == ("op", ":"):
            self.take()
            terms = _cross(terms, self.power())
        return terms

    def power(self) -> set:
        terms = self.unary()
        while self.peek() in (("op", "**"), ("op", "^")):
            self.take()
            kind, text = self.take()
            if kind != "number" or not text.isdigit() or not 1 <= int(text) <= MAX_ORDER:
                raise BoundsError(f"interactions to the power {text!r}: expected an integer "
                                  f"from 1 to {MAX_ORDER}")
            result = terms
            for _ in range(int(text) - 1):
                result = _bounded(result | _cross(result, terms))
            terms = result
        return terms

    def unary(self) -> set:
        if self.peek() in (("op", "-"), ("op", "+")):
            self.take()
            return self.unary()
        return self.atom()

    def atom(self) -> set:
        kind, text = self.take()
        if kind == "op" and text == "(":
            terms = self.parts()
            if self.take() != ("op", ")"):
                raise BoundsError("an unbalanced '('")
            return terms
        if kind == "factor":
            return {frozenset([text])}
        if kind == "number":
            if text not in ("0", "1"):
                raise BoundsError(f"the number {text} as a term: only 0 and 1 are terms")
            return set()
        raise BoundsError(f"unexpected {text!r} in the formula" if text else
                          "the formula ends too early")


def _cross(left: set, right: set) -> set:
    if len(left) * len(right) > MAX_TERMS * MAX_TERMS:
        raise BoundsError(f"the formula expands to more than {MAX_TERMS} terms")
    out = set()
    for a in left:
        for b in right:
            term = a | b
            if len(term) > MAX_ORDER:
                raise BoundsError(f"a term of the formula interacts more than {MAX_ORDER} "
                                  "factors")
            out.add(term)
    return _bounded(out)


def _bounded(terms: set) -> set:
    if len(terms) > MAX_TERMS:
        raise BoundsError(f"the formula expands to more than {MAX_TERMS} terms")
    return terms


def count_nodes(tree, limit: int = MAX_NODES) -> int:
    """The nodes of a Python syntax tree, `BoundsError` past ``limit``."""
    count = 0
    for _ in ast.walk(tree):
        count += 1
        if count > limit:
            raise BoundsError(f"a term of the formula is more than {limit} nodes long")
    return count
