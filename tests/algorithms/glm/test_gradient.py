"""GLM by gradient descent (`method="gradient"`, `glm.GradientDescent`): synchronous and
asynchronous on real worker processes, against statsmodels on the pooled rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import ConvergenceWarning

import aia
from algorithms import glm
from algorithms.glm import gradient

from .conftest import close, distribglm_sites, read, reference, v6_sites

pytestmark = pytest.mark.timeout(30)

ADMIT = "admit ~ gre + gpa + C(rank)"
AWARDS = "num_awards ~ C(prog) + math"

CASES = {
    "distribglm-binomial": (distribglm_sites, "y ~ x1 + x2", "binomial", sm.families.Binomial),
    "distribglm-poisson": (distribglm_sites, "pois_y ~ x1 + x2", "poisson", sm.families.Poisson),
    "admissions": (lambda: v6_sites("binomial"), ADMIT, "binomial", sm.families.Binomial),
    "awards": (lambda: v6_sites("poisson"), AWARDS, "poisson", sm.families.Poisson),
}


@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_statsmodels_on_worker_processes(glm_cluster, case, synchronous):
    sites, formula, family, sm_family = CASES[case]
    sites = sites()
    ref = reference(formula, sites, sm_family())
    res = glm.fit(formula, sites, family=family, method="gradient", cluster=glm_cluster,
                  synchronous=synchronous)
    assert res.converged and res.synchronous is synchronous and res.method == "gradient"
    assert list(res.params.index) == list(ref.params.index)
    close(res.params, ref.params, rtol=1e-6)
    close(res.bse, ref.bse, rtol=1e-6)
    close(res.deviance, ref.deviance, rtol=1e-10)
    close(res.null_deviance, ref.null_deviance, rtol=1e-10)
    close(res.llf, ref.llf, rtol=1e-10)
    close(res.pvalues, ref.pvalues, rtol=1e-5)
    assert res.nobs == ref.nobs and res.df_resid == ref.df_resid


def test_same_results_as_fisher_scoring():
    sites = v6_sites("binomial")
    fisher = glm.fit(ADMIT, sites, family="binomial", cluster="inprocess", tol=1e-12)
    res = glm.fit(ADMIT, sites, family="binomial", cluster="inprocess", method="gradient")
    close(res.summary_frame(), fisher.summary_frame(), rtol=1e-6)
    assert (res.aic, res.bic, res.scale) == pytest.approx((fisher.aic, fisher.bic, 1.0),
                                                          rel=1e-12)
    text = str(res.summary())
    assert "gradient descent, synchronous" in text and "Converged: yes" in text


@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
def test_not_converged_when_max_iter_is_too_small(glm_cluster, synchronous):
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = glm.fit(ADMIT, v6_sites("binomial"), family="binomial", method="gradient",
                      cluster=glm_cluster, synchronous=synchronous, max_iter=2)
    assert not res.converged
    assert "the algorithm did not converge" in res.notes
    assert np.all(np.isfinite(res.params)) and np.all(np.isfinite(res.bse))
    assert res.iterations == (2 if synchronous else 2 * 3)  # async: max_iter steps per site


@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
def test_through_aia_start_sites_send_scores(glm_cluster, synchronous):
    """Every answer is a score (p numbers), except the first round's and the last round's
    X'WX; in asynchronous mode the staleness of the answers is recorded."""
    paths = v6_sites("binomial")
    alg = glm.GradientDescent(ADMIT, family="binomial", n_sites=3)
    h = aia.start(alg, lambda pid: glm.Site(paths[pid - 1]) if pid else None,
                  {"tol": 1e-8, "maxit": 1000}, saveat={"iteration": 1}, save_answers=True,
                  cluster=glm_cluster, synchronous=synchronous, verbose=0)
    assert h.converged and alg.converged
    close(h.params, reference(ADMIT, paths, sm.families.Binomial()).params, rtol=1e-6)
    answers = [a for round_ in h.answers for a in (round_ if isinstance(round_, list)
                                                   else [round_])]
    fresh = [a for a in answers if not a.repeat]
    matrices = [a for a in fresh if isinstance(a, glm.Contribution)]
    scores = [a for a in fresh if isinstance(a, glm.Score)]
    assert len(matrices) == 3 * h.matrix_rounds  # 3 sites: the first and the final round(s)
    assert h.matrix_rounds == 2 if synchronous else h.matrix_rounds >= 2
    assert len(scores) + len(matrices) == len(fresh)
    assert all(s.score.shape == (6,) for s in scores if s.valid)
    assert h.score_rounds + h.asynchronous_steps == h.gradient_iterations
    if synchronous:
        assert len(scores) == 3 * h.score_rounds and h.max_staleness == 0
    else:
        assert h.asynchronous_steps > 0 and h.max_staleness >= 1


def test_the_units_of_the_predictors_do_not_matter():
    """Preconditioned by X'W0X, the iterates are the same whatever the columns' units."""
    frames = read(v6_sites("binomial"))
    rescaled = [f.assign(gre=f["gre"] / 1000, gpa=f["gpa"] * 100) for f in frames]
    a = glm.fit(ADMIT, frames, family="binomial", method="gradient", cluster="inprocess")
    b = glm.fit(ADMIT, rescaled, family="binomial", method="gradient", cluster="inprocess")
    assert a.converged and b.converged and a.iterations == b.iterations
    close(b.params["gre"], 1000 * a.params["gre"], rtol=1e-6)
    close(b.params["gpa"], a.params["gpa"] / 100, rtol=1e-6)
    close(b.deviance, a.deviance, rtol=1e-12)


def strong_effects(n: int = 3000, seed: int = 3) -> list:
    """Strong effects (fitted probabilities near 0 and 1: X'W0X a poor guide to the
    curvature at the estimate) on columns of very different scales."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 3))
    p = 1 / (1 + np.exp(-(-1 + 3 * Z[:, 0] - 3 * Z[:, 1] + 1.5 * Z[:, 2])))
    frame = pd.DataFrame({"y": (rng.random(n) < p).astype(float), "a": Z[:, 0],
                          "b": 1000 * Z[:, 1] + 5000, "c": Z[:, 2] / 1000})
    return [frame.iloc[i::3].reset_index(drop=True) for i in range(3)]


@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
def test_strong_effects_and_wild_scales(glm_cluster, synchronous):
    frames = strong_effects()
    ref = reference("y ~ a + b + c", frames, sm.families.Binomial())
    res = glm.fit("y ~ a + b + c", frames, family="binomial", method="gradient",
                  cluster=glm_cluster, synchronous=synchronous)
    assert res.converged
    close(res.params, ref.params, rtol=1e-6)
    close(res.bse, ref.bse, rtol=1e-6)


def test_start_and_steps_outside_the_family_range():
    """From poor starting values the inverse Gaussian steps leave the family's range; the
    line search shortens them and the fit still reaches statsmodels' estimate."""
    sites = v6_sites("gaussian")
    res = glm.fit("Volume ~ Girth", sites, family="inverse_gaussian", method="gradient",
                  cluster="inprocess", start=[0.001, 0.0])
    ref = reference("Volume ~ Girth", sites, sm.families.InverseGaussian(), use_t=True,
                    start_params=res.params.to_numpy())
    assert res.converged
    close(res.params, ref.params, rtol=1e-6)
    close(res.bse, ref.bse, rtol=1e-6)

    alg = glm.GradientDescent("Volume ~ Girth", family="inverse_gaussian", start=[0.001, 0.0])
    aia.start(alg, lambda pid: glm.SiteGroup([glm.Site(p) for p in sites]),
              {"tol": 1e-8, "maxit": 1000}, pids=[0], verbose=0)
    assert alg.rejections > 0 and alg.converged


@pytest.mark.parametrize("kwargs", [
    dict(family="poisson", exposure="t"),  # the null deviance needs a second fit
    dict(family="binomial", weights="w"),
    dict(family="gamma", link="log"),
], ids=["exposure", "weights", "gamma-log"])
def test_offsets_weights_links_as_fisher_scoring(kwargs):
    if kwargs["family"] == "poisson":
        formula, frames = AWARDS, [f.assign(t=1.0 + f["math"] % 5)
                                   for f in read(v6_sites("poisson"))]
    elif kwargs["family"] == "binomial":
        formula, frames = "admit ~ gre + gpa", [f.assign(w=1.0 + f["rank"])
                                                for f in read(v6_sites("binomial"))]
    else:
        formula, frames = "Volume ~ Girth", read(v6_sites("gaussian"))
    fisher = glm.fit(formula, frames, cluster="inprocess", tol=1e-14, max_iter=100, **kwargs)
    res = glm.fit(formula, frames, cluster="inprocess", method="gradient", **kwargs)
    assert res.converged
    close(res.params, fisher.params, rtol=1e-6)
    close(res.bse, fisher.bse, rtol=1e-6)
    close(res.null_deviance, fisher.null_deviance, rtol=1e-10)
    close(res.llf, fisher.llf, rtol=1e-10)


def test_guards_and_formulas_are_those_of_fisher_scoring():
    sites = v6_sites("binomial")
    with pytest.raises(glm.PrivacyError, match="GLM_MINIMUM_ROWS"):
        glm.fit(ADMIT, sites, family="binomial", method="gradient", cluster="inprocess",
                guards={"minimum_rows": 1000})
    with pytest.raises(glm.FormulaError, match="not allowed"):
        glm.fit("admit ~ open('f')", sites, family="binomial", method="gradient",
                cluster="inprocess")
    formula = "admit ~ scale(gre) + center(gpa) + C(rank, Treatment(reference=4))"
    fisher = glm.fit(formula, sites, family="binomial", cluster="inprocess", tol=1e-12)
    res = glm.fit(formula, sites, family="binomial", method="gradient", cluster="inprocess")
    assert list(res.params.index) == list(fisher.params.index)
    close(res.params, fisher.params, rtol=1e-6)


def test_arguments_are_checked():
    sites = v6_sites("binomial")
    with pytest.raises(ValueError, match="'fisher' or 'gradient'"):
        glm.fit(ADMIT, sites, family="binomial", method="newton", cluster="inprocess")
    with pytest.raises(ValueError, match="max_iter"):
        glm.fit(ADMIT, sites, family="binomial", method="gradient", max_iter=0)
    with pytest.raises(ValueError, match="n_sites"):
        aia.start(glm.GradientDescent(ADMIT, family="binomial"),
                  lambda pid: glm.Site(sites[pid - 1]) if pid else None,
                  {"tol": 1e-8}, cluster=3, synchronous=False, verbose=0)


def test_site_score_is_the_gradient_of_the_deviance():
    """-dev/2 differentiated numerically along each coefficient, at a point away from the
    estimate: the score the sites send."""
    site = glm.Site(v6_sites("poisson")[0])
    design = glm.Design.make(AWARDS, "poisson")
    beta = np.array([-4.0, -1.0, -0.5, 0.06])
    got = gradient.site_score(site, design, glm.GradientQuery(1, beta))
    h, numeric = 1e-6, []
    for j in range(len(beta)):
        e = np.zeros_like(beta)
        e[j] = h
        up = gradient.site_score(site, design, glm.GradientQuery(1, beta + e)).deviance
        down = gradient.site_score(site, design, glm.GradientQuery(1, beta - e)).deviance
        numeric.append(-(up - down) / (4 * h))
    assert got.valid
    close(got.score, numeric, rtol=1e-6, atol=1e-6)
    bad = gradient.site_score(site, design, glm.GradientQuery(2, np.array([800.0, 0, 0, 0])))
    assert not bad.valid and bad.score is None


def test_asynchronous_from_a_start_with_steps_outside_the_range(glm_cluster):
    sites = v6_sites("gaussian")
    sync = glm.fit("Volume ~ Girth", sites, family="inverse_gaussian", method="gradient",
                   cluster="inprocess", start=[0.001, 0.0])
    res = glm.fit("Volume ~ Girth", sites, family="inverse_gaussian", method="gradient",
                  cluster=glm_cluster, synchronous=False, start=[0.001, 0.0])
    assert res.converged
    close(res.params, sync.params, rtol=1e-6)
    close(res.bse, sync.bse, rtol=1e-6)


def test_a_stalled_line_search_is_reported(monkeypatch):
    from algorithms.glm import gradient_linesearch

    # any step is now "too short": where the step's floor is read and where it is checked
    monkeypatch.setattr(gradient, "T_MIN", 10.0)
    monkeypatch.setattr(gradient_linesearch, "T_MIN", 10.0)
    with pytest.warns(ConvergenceWarning):
        res = glm.fit(ADMIT, v6_sites("binomial"), family="binomial", method="gradient",
                      cluster="inprocess")
    assert not res.converged
    assert any("stalled" in note for note in res.notes)


def test_progress_bar_and_values(capsys):
    glm.fit(ADMIT, v6_sites("binomial"), family="binomial", method="gradient",
            cluster="inprocess", verbose=2)
    err = capsys.readouterr().err
    assert "deviance" in err and "criterion" in err and "step" in err


def test_the_final_check_sends_the_descent_on():
    """From a start where exp(eta) is 20 times the counts, the metric overstates the
    curvature: its criterion passes first, the exact one (with X'WX at the estimate) does
    not, and the descent goes on to a second final round."""
    sites = v6_sites("poisson")
    alg = glm.GradientDescent(AWARDS, family="poisson", start=[3.0, 0.0, 0.0, 0.0])
    aia.start(alg, lambda pid: glm.SiteGroup([glm.Site(p) for p in sites]),
              {"tol": 1e-8, "maxit": 1000}, pids=[0], verbose=0)
    assert alg.converged and alg.matrix_rounds == 3 and alg.criterion_exact < 1e-8
    ref = reference(AWARDS, sites, sm.families.Poisson())
    close(alg.beta, ref.params, rtol=1e-6)
    close(np.sqrt(np.diag(alg.cov_unscaled)), ref.bse, rtol=1e-6)
