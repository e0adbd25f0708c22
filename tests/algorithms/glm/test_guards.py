"""The privacy guards: each one, set by the site's environment, made stricter (never
looser) by the analyst, and reported without any data value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from algorithms import glm
from algorithms.glm import Guards, PrivacyError

from .conftest import read, v6_sites

ADMIT = "admit ~ gre + gpa + C(rank)"


@pytest.fixture
def admissions():
    return read(v6_sites("binomial"))


def refused(frames, formula=ADMIT, family="binomial", **kwargs) -> PrivacyError:
    with pytest.raises(PrivacyError) as info:
        glm.fit(formula, frames, family=family, cluster="inprocess", **kwargs)
    return info.value


def test_minimum_rows(admissions):
    admissions[1] = admissions[1].iloc[:9]
    err = refused(admissions)
    assert (err.guard, err.threshold, err.site) == ("GLM_MINIMUM_ROWS", 10, "site 2")
    assert "site 2 refused: GLM_MINIMUM_ROWS (threshold 10)" in str(err)


def test_minimum_non_null_values_per_column(admissions):
    admissions[0].loc[admissions[0].index[:len(admissions[0]) - 9], "gpa"] = np.nan
    err = refused(admissions)
    assert err.guard == "GLM_MINIMUM_ROWS" and "'gpa'" in str(err)


def test_minimum_rows_per_category_level(admissions):
    a = admissions[2]
    keep = a[a["rank"] != 1]
    admissions[2] = pd.concat([keep, a[a["rank"] == 1].iloc[:2]])
    err = refused(admissions)
    assert (err.guard, err.threshold, err.site) == ("GLM_MIN_ROWS_PER_CATEGORY_LEVEL", 3, "site 3")
    assert "'rank'" in str(err)


def test_level_guard_does_not_name_the_level():
    frames = read(v6_sites("poisson"))
    f = frames[0]
    frames[0] = pd.concat([f[f["prog"] != "Vocational"], f[f["prog"] == "Vocational"].iloc[:1]])
    err = refused(frames, "num_awards ~ C(prog) + math", "poisson")
    assert err.guard == "GLM_MIN_ROWS_PER_CATEGORY_LEVEL"
    assert "Vocational" not in str(err)


def test_maximum_parameters_per_observation():
    err = refused(read(v6_sites("gaussian")), "Volume ~ Girth + Height", "gaussian")
    assert (err.guard, err.threshold) == ("GLM_MAX_PCT_VARS_VS_OBS", "10%")


def test_allowed_columns(monkeypatch, admissions):
    monkeypatch.setenv("GLM_ALLOWED_COLUMNS", "admit,gre,rank")
    err = refused(admissions)
    assert err.guard == "GLM_ALLOWED_COLUMNS" and "'gpa'" in str(err)
    glm.fit("admit ~ gre + C(rank)", admissions, family="binomial", cluster="inprocess")


def test_disallowed_columns_include_weights_and_offsets(monkeypatch, admissions):
    monkeypatch.setenv("GLM_DISALLOWED_COLUMNS", "w")
    frames = [f.assign(w=1.0) for f in admissions]
    glm.fit(ADMIT, frames, family="binomial", cluster="inprocess")
    err = refused(frames, weights="w")
    assert err.guard == "GLM_DISALLOWED_COLUMNS" and "'w'" in str(err)


@pytest.mark.parametrize("var,value,guard", [
    ("GLM_MINIMUM_ROWS", "200", "GLM_MINIMUM_ROWS"),
    ("GLM_MIN_ROWS_PER_CATEGORY_LEVEL", "60", "GLM_MIN_ROWS_PER_CATEGORY_LEVEL"),
    ("GLM_MAX_PCT_VARS_VS_OBS", "2", "GLM_MAX_PCT_VARS_VS_OBS"),
])
def test_thresholds_come_from_the_site_environment(monkeypatch, admissions, var, value, guard):
    glm.fit(ADMIT, admissions, family="binomial", cluster="inprocess")
    monkeypatch.setenv(var, value)
    err = refused(admissions)
    assert err.guard == guard and str(value) in str(err.threshold)


def test_the_analyst_cannot_lower_a_threshold(admissions):
    small = [admissions[0], admissions[1], admissions[2].iloc[:9]]
    assert refused(small, guards={"minimum_rows": 1}).guard == "GLM_MINIMUM_ROWS"
    trees = read(v6_sites("gaussian"))
    err = refused(trees, "Volume ~ Girth + Height", "gaussian",
                  guards={"max_pct_vars_vs_obs": 50})
    assert err.guard == "GLM_MAX_PCT_VARS_VS_OBS"


def test_the_analyst_can_make_a_threshold_stricter(admissions):
    assert refused(admissions, guards={"minimum_rows": 500}).threshold == 500
    err = refused(admissions, guards={"disallowed_columns": ["gre"]})
    assert err.guard == "GLM_DISALLOWED_COLUMNS"


def test_minimum_number_of_sites(admissions):
    err = refused(admissions, min_sites=4)
    assert (err.guard, err.threshold) == ("min_sites", 4)
    glm.fit(ADMIT, admissions, family="binomial", cluster="inprocess", min_sites=3)


def test_guards_are_read_in_the_process_that_holds_the_site(monkeypatch):
    """Workers of a fresh cluster inherit the environment they start with."""
    monkeypatch.setenv("GLM_MINIMUM_ROWS", "150")
    with pytest.raises(PrivacyError, match="GLM_MINIMUM_ROWS"):
        glm.fit(ADMIT, v6_sites("binomial"), family="binomial")


def test_stricter_combines_guard_by_guard():
    site = Guards(minimum_rows=20, max_pct_vars_vs_obs=10, allowed_columns=frozenset("abc"))
    combined = site.stricter({"minimum_rows": 5, "max_pct_vars_vs_obs": 5,
                              "allowed_columns": "b,c,d", "disallowed_columns": ["c"]})
    assert combined.minimum_rows == 20 and combined.max_pct_vars_vs_obs == 5
    assert combined.allowed_columns == {"b", "c"} and combined.disallowed_columns == {"c"}
    with pytest.raises(ValueError, match="unknown guard"):
        site.stricter({"minimum_row": 5})


def test_an_unreadable_threshold_is_an_error():
    with pytest.raises(ValueError, match="GLM_MINIMUM_ROWS must be a number"):
        Guards.from_environment({"GLM_MINIMUM_ROWS": "ten"})


def test_site_errors_do_not_quote_data(admissions):
    """A pandas or formulaic message may quote a value: the site sends only its type."""
    frames = [f.assign(w="secret-value") for f in admissions]
    with pytest.raises(glm.SiteError) as info:
        glm.fit(ADMIT, frames, family="binomial", weights="w", cluster="inprocess")
    assert "secret-value" not in str(info.value) and "'w'" in str(info.value)
    frames = [f.assign(code="secret-value") for f in admissions]
    with pytest.raises(glm.SiteError) as info:
        glm.fit("admit ~ np.log(code)", frames, family="binomial", cluster="inprocess")
    assert "secret-value" not in str(info.value)
    assert "logged at the site" in str(info.value)
