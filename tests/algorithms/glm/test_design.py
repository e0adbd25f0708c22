"""Formulas: the whitelist checked before any evaluation, the levels merged across sites,
and center()/scale() with the statistics of all sites."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import aia
from algorithms import glm
from algorithms.glm.design import Design, inspect_formula
from algorithms.glm.families import resolve

from .conftest import close, read, reference, v6_sites

AWARDS = "num_awards ~ C(prog) + math"


@pytest.mark.parametrize("formula", [
    "y ~ x",
    "y ~ x + C(g) + C(g, Treatment(reference='b')) + C(g, Treatment('b'))",
    "y ~ I(x ** 2) + I(x > 3) + I(-x / 2 + 1)",
    "y ~ np.log(x) + log(x) + exp(x / 10) + numpy.sqrt(x) + sqrt(x)",
    "y ~ center(x) + scale(z)",
    "y ~ x:z + x * z - 1",
    "y ~ 0 + x",
    "np.log(y) ~ x",
])
def test_whitelisted_formulas(formula):
    inspect_formula(formula)


@pytest.mark.parametrize("formula", [
    "y ~ __import__('os').system('true')",
    "y ~ os.system('true')",
    "y ~ I(x.__class__)",
    "y ~ I(x[0])",
    "y ~ I((lambda: 1)())",
    "y ~ np.random.rand(3)",
    "y ~ poly(x, 2)",
    "y ~ open('f')",
    "y ~ {x.real}",
    "y ~ C(I(x))",
    "y ~ I(x if x else 1)",
    "y ~ I(x @ x)",
    "y ~ C(g, **{'levels': 1})",
    "y ~ I(f'{x}')",
])
def test_formulas_outside_the_whitelist(formula):
    with pytest.raises(glm.FormulaError, match="not allowed|not a valid|cannot be parsed"):
        inspect_formula(formula)


def test_the_site_checks_the_formula_before_evaluating_it(tmp_path):
    """Even a design made without Design.make (which checks too) is checked at the site."""
    marker = tmp_path / "evaluated"
    formula = f"admit ~ I(__import__('pathlib').Path({str(marker)!r}).touch())"
    site = glm.Site(v6_sites("binomial")[0])
    with pytest.raises(glm.FormulaError):
        site.describe(Design(formula, resolve("binomial")))
    assert not marker.exists()


def test_formula_reads_its_columns():
    info = inspect_formula("np.log(y) ~ x + C(g) + I(z ** 2) + center(w) + a:b")
    assert info.response == {"y"}
    assert info.variables == {"y", "x", "g", "z", "w", "a", "b"}
    assert info.categorical == {"g"} and info.standardized == {"w"}


def test_unknown_column_is_named():
    with pytest.raises(glm.SiteError, match=r"\['nope'\]"):
        glm.fit("admit ~ nope", v6_sites("binomial"), family="binomial", cluster="inprocess")


def split_levels():
    """The awards rows, moved so that 'Vocational' is at the third site only and 'General'
    is not there."""
    a, b, c = read(v6_sites("poisson"))
    voc = pd.concat([a[a["prog"] == "Vocational"], b[b["prog"] == "Vocational"]])
    gen = c[c["prog"] == "General"]
    return [pd.concat([a[a["prog"] != "Vocational"], gen]),
            b[b["prog"] != "Vocational"],
            pd.concat([c[c["prog"] != "General"], voc])]


def test_levels_are_the_union_of_the_sites():
    frames = split_levels()
    res = glm.fit(AWARDS, frames, family="poisson", cluster="inprocess", tol=1e-13)
    assert list(res.params.index) == [
        "Intercept", "C(prog)[T.General]", "C(prog)[T.Vocational]", "math"]
    ref = reference(AWARDS, frames, sm.families.Poisson())
    close(res.params.to_numpy(), ref.params)
    close(res.bse.to_numpy(), ref.bse)
    close(res.deviance, ref.deviance)


def test_string_columns_are_categorical_without_c():
    frames = split_levels()
    res = glm.fit("num_awards ~ prog + math", frames, family="poisson", cluster="inprocess")
    assert "prog[T.Vocational]" in res.params.index


def test_reference_level_from_another_site():
    frames = split_levels()
    formula = "num_awards ~ C(prog, Treatment(reference='Vocational')) + math"
    res = glm.fit(formula, frames, family="poisson", cluster="inprocess", tol=1e-13)
    close(res.params.to_numpy(), reference(formula, frames, sm.families.Poisson()).params)


def test_sites_that_build_different_columns_are_an_error_before_any_fit():
    """FisherScoring without merged levels: every site uses its own, and they differ."""
    sites = glm.SiteGroup([glm.Site(f, f"site {i}") for i, f in enumerate(split_levels())])
    alg = glm.FisherScoring(AWARDS, family="poisson")
    with pytest.raises(glm.DesignMismatchError, match="different design columns"):
        aia.start(alg, lambda pid: sites, {"tol": 1e-8, "maxit": 25}, pids=[0], verbose=0)
    assert alg.iterations == 0


def test_center_and_scale_use_all_sites():
    sites = v6_sites("binomial")
    formula = "admit ~ scale(gre) + center(gpa) + C(rank)"
    res = glm.fit(formula, sites, family="binomial", cluster="inprocess", tol=1e-13)
    ref = reference(formula, sites, sm.families.Binomial())  # pooled mean and sd
    close(res.params.to_numpy(), ref.params)
    close(res.bse.to_numpy(), ref.bse)
    # A site's own mean would give another intercept:
    own = glm.fit(formula, sites[:1], family="binomial", cluster="inprocess")
    assert abs(own.params["Intercept"] - res.params["Intercept"]) > 1e-3
