"""One grammar for the formula's whitelist and for a site's check of every intermediate
value (`design.ExpressionVisitor`): what the whitelist admits, the site evaluates and checks.

Before they shared it, the check skipped every expression with a call it did not know, and
``cbind(s * (1 + (id == 17)), n - s) ~ x`` fitted: minus the sums of ``cbind(s, n - s) ~ x``
(which pass), they are row 17's count."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest

from algorithms import glm
from algorithms.glm import disclosure
from algorithms.glm import formula_whitelist as design  # the whitelist of design.py
from algorithms.glm.design import ExpressionVisitor

from .test_attacks import refusal, site_frame


@pytest.fixture(scope="module")
def frames():
    return [site_frame(i).assign(n=5, s=lambda d: d.b * 2) for i in range(3)]


def test_the_check_knows_every_function_and_operator_the_whitelist_admits():
    assert set(disclosure.CALLS) == design.FUNCTIONS | design.NUMPY_FUNCTIONS
    assert set(disclosure._BINARY) == set(design._BINOPS)
    assert set(disclosure._COMPARE) == set(design._COMPARE)
    kinds = {k for k, v in vars(ExpressionVisitor).items() if callable(v) and k != "visit"}
    for visitor in (design._Whitelist, disclosure._Evaluator):
        assert all(getattr(visitor, k) is not getattr(ExpressionVisitor, k) for k in kinds)


@pytest.mark.parametrize("formula", [
    "cbind(s * (1 + (id == 17)), n - s) ~ x",      # inside cbind's counts
    "cbind(s, n - s + (id == 17)) ~ x",
    "cbind(s, n - s) ~ I(x + (id == 17) + 0 * C(diag))",  # beside a C() (no row values)
])
def test_intermediate_values_inside_cbind_and_beside_c_are_checked(frames, formula):
    err = refusal(formula, frames, family="binomial")
    assert err.guard in ("GLM_MIN_ROWS_PER_CATEGORY_LEVEL", "GLM_MAX_LEVERAGE")


def test_honest_cbind_and_transforms_still_fit(frames):
    res = glm.fit("cbind(s, n - s) ~ np.sqrt(age) + I(x * (x > 0))", frames, "binomial",
                  cluster="inprocess")
    assert res.converged and len(res.params) == 3


def test_the_intermediates_found_are_the_computed_nodes():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "g": list("abab")})
    found = disclosure._intermediates("cbind(np.log(x) + 1, -x)", frame, None)
    assert [text for text, _ in found] == ["np.log(x)", "np.log(x) + 1", "-x"]
    np.testing.assert_allclose(found[1][1], np.log(frame.x) + 1)
    # a C() has no row values: the sum with it is not checked, its sibling still is
    assert [t for t, _ in disclosure._intermediates("I(x * 2) + C(g)", frame, None)] == \
        ["x * 2"]
    whole = ast.parse("x * 2", mode="eval").body
    assert disclosure._Evaluator(frame, None).visit(whole).tolist() == [2, 4, 6, 8]
