"""`glm.anova` of negative binomial fits (``family="negative_binomial"``) as
``MASS::anova.negbin``: likelihood-ratio tests, each fit with its own theta."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms import glm
from tests.r_reference import r_values

from .conftest import r_frame, split3

FORMULAS = ["Days ~ Eth", "Days ~ Eth + Sex + Age + Lrn", "Days ~ Eth + Sex"]
TIGHT = "control = glm.control(epsilon = 1e-12, maxit = 100)"
ANOVA_NB = """
d <- rbind(s1, s2, s3)
f <- lapply(c({formulas}), function(x) glm.nb(as.formula(x), d, {tight}))
a <- anova(f[[1]], f[[2]], f[[3]])
for (k in c("theta", "Resid. df", "   2 x log-lik.", "   df", "LR stat.", "Pr(Chi)"))
  out(k, a[[k]])
outnames("Model", as.character(a$Model)); outnames("Test", as.character(a$Test))
outnames("columns", names(a))
"""


@pytest.fixture(autouse=True)
def _small_sites(monkeypatch):
    monkeypatch.setenv("GLM_MAX_PCT_VARS_VS_OBS", "50")


@pytest.fixture(scope="module")
def sites():
    return split3(r_frame("quine"))


@pytest.fixture(scope="module")
def fits(sites):
    with pytest.MonkeyPatch.context() as m:
        m.setenv("GLM_MAX_PCT_VARS_VS_OBS", "50")
        return [glm.fit(f, sites, "negative_binomial", cluster="inprocess", tol=1e-12,
                        max_iter=100) for f in FORMULAS]


def test_anova_of_negative_binomial_fits_is_mass_anova_negbin(sites, fits):
    table = glm.anova(*fits)  # given out of order: sorted by residual df, as MASS does
    frames = {f"s{i + 1}": s for i, s in enumerate(sites)}
    R = r_values(ANOVA_NB.format(formulas=", ".join(f'"{f}"' for f in FORMULAS),
                                 tight=TIGHT), frames=frames, packages=("MASS",))
    assert list(table.columns) == R["columns"]
    assert list(table["Model"]) == R["Model"] == ["Eth", "Eth + Sex", "Eth + Sex + Age + Lrn"]
    assert list(table["Test"]) == [t.strip() for t in R["Test"]]
    for col in ("theta", "Resid. df", "   2 x log-lik.", "   df", "LR stat.", "Pr(Chi)"):
        np.testing.assert_allclose(table[col].to_numpy(float), R[col], rtol=1e-6,
                                   atol=1e-300, err_msg=col)
    assert table.attrs["heading"][1] == "Response: Days"
    assert glm.anova(*fits, test="LRT").equals(table)


def test_anova_of_negative_binomial_fits_refuses_what_mass_cannot_test(sites, fits):
    poisson = glm.fit(FORMULAS[1], sites, "poisson", cluster="inprocess")
    with pytest.raises(ValueError, match="not all fits are family='negative_binomial'"):
        glm.anova(fits[0], poisson)
    with pytest.raises(ValueError, match="only MASS's likelihood-ratio test"):
        glm.anova(*fits, test="F")
    with pytest.raises(ValueError, match="dispersion: negative binomial fits"):
        glm.anova(*fits, test="Chisq", dispersion=2.0)
    with pytest.raises(ValueError, match="expected two or more"):
        glm.anova(fits[0])
    other = glm.fit("Days ~ Age", sites, "negative_binomial", cluster="inprocess")
    with pytest.raises(ValueError, match="not nested"):
        glm.anova(fits[0], other)
    fewer = glm.fit(FORMULAS[1], sites[:2], "negative_binomial", cluster="inprocess")
    with pytest.raises(ValueError, match="same size of dataset"):
        glm.anova(fits[0], fewer)
