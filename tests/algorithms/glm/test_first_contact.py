"""What a new user meets first: the same mistake reads the same in aia and glm, and a data
error says what it is."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import aia
from algorithms import SGD, glm, make_lrmse_problem
from algorithms.glm import FormulaError, SiteError, PrivacyError

ADMISSIONS = [f"algorithms/glm/data/admissions_{s}.csv" for s in "abc"]


@pytest.mark.parametrize("cluster", [0, -1, 2.5, "x"])
def test_a_bad_cluster_is_the_same_error_in_glm_and_aia(cluster):
    with pytest.raises(TypeError) as engine:
        aia.start(SGD(0.1), make_lrmse_problem(), {"epoch": 1}, cluster=cluster, verbose=0)
    with pytest.raises(TypeError) as fit:
        glm.fit("admit ~ gre", ADMISSIONS, family="binomial", cluster=cluster, verbose=0)
    assert str(fit.value).startswith(str(engine.value))


def test_a_call_outside_the_whitelist_is_said_to_be_one():
    with pytest.raises(FormulaError, match=r"the call __import__\('os'\).system\(\) is not "
                                           "allowed"):
        glm.fit("admit ~ __import__('os').system('true')", ADMISSIONS, cluster="inprocess")


def test_a_typing_error_in_a_numeric_column_names_the_column_and_the_site():
    frames = [pd.read_csv(p) for p in ADMISSIONS]
    frames[1]["gre"] = frames[1]["gre"].astype(object)
    frames[1].loc[7, "gre"] = "6OO"  # a letter O typed for a zero
    with pytest.raises(SiteError) as info:
        glm.fit("admit ~ gre + gpa", frames, family="binomial", cluster="inprocess")
    message = str(info.value)
    assert "'gre'" in message and "site 2" in message and "not numeric" in message
    assert "site site" not in message  # the default names already say "site"
    assert "6OO" not in message and not isinstance(info.value, PrivacyError)
    # as a factor, on purpose: the privacy checks of a factor apply
    with pytest.raises(PrivacyError):
        glm.fit("admit ~ C(gre)", frames, family="binomial", cluster="inprocess")
