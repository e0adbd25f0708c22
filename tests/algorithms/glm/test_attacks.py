"""A curious analyst against sites with default guards: every way of reading rows out of
the sums that the project knows of is refused, with an error that names the guard and
never a data value, and a valid model still fits afterwards.

The sites hold synthetic rows with an identifier, a continuous covariate, a rare diagnosis
code and a numeric age, the columns such attacks need. Most attacks run on real worker
processes (one per site); the fake-sites and folder attacks on real ``aia-glm site``
processes are in test_hostile_folder.py.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from algorithms import glm

from .conftest import separated_sites
from algorithms.glm import PrivacyError
from algorithms.glm.audit import Audit
from algorithms.glm.disclosure import max_leverage, minority

RARE = "Z99-RARE"


def site_frame(i: int, n: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(10 + i)
    codes = rng.choice(["A10", "B20", "C30"], size=n).astype(object)  # room for RARE
    codes[5] = RARE
    x = rng.normal(size=n)
    return pd.DataFrame({"id": np.arange(n) + 1000 * i, "x": x,
                         "age": rng.integers(30, 40, size=n), "diag": codes,
                         "y": rng.normal(size=n) + 3 + x,
                         "b": (rng.uniform(size=n) < 1 / (1 + np.exp(-x))).astype(int)})


@pytest.fixture(scope="module")
def frames():
    return [site_frame(i) for i in range(3)]


def secret_values(frames) -> list:
    """Strings of values an attack aims at: no error may quote them."""
    f = frames[0]
    return [RARE, repr(float(f.loc[17, "y"])), f"{f.loc[17, 'y']:.4f}",
            repr(float(f["x"].max()))]


def refusal(formula, frames, family="gaussian", cluster="inprocess", **kwargs) -> PrivacyError:
    with pytest.raises(PrivacyError) as info:
        glm.fit(formula, frames, family=family, cluster=cluster, **kwargs)
    message = str(info.value)
    for secret in secret_values(frames):
        assert secret not in message.replace(formula, ""), (formula, secret)
    return info.value


# -- singling rows out through the design --------------------------------------------------
@pytest.mark.parametrize("formula", [
    "y ~ I(id == 17)",                          # an indicator of one row
    "y ~ I(id == 17) + I(id == 18) + I(id == 19)",
    "y ~ I((id == 17) * 5)",                    # the same, scaled
    "y ~ I((id == 17) + 2 * (id == 18))",       # two rows, one value each: not binary
    "y ~ I(x * (id == 17))",                    # a row's own value, elsewhere zero
    "y ~ x + I(id == 17):x",                    # through an interaction
    "y ~ I(exp(20 * (id == 17)))",              # a spike
    "y ~ I(id > 98)",                           # a threshold on any column
    "y ~ I(id < 1.5) + x",
])
def test_columns_that_pick_out_rows_are_refused(frames, formula):
    err = refusal(formula, frames)
    assert err.guard == "GLM_MIN_ROWS_PER_CATEGORY_LEVEL" and err.threshold == 3


@pytest.mark.parametrize("formula", [
    "y ~ x + I(x + (id == 17))",                # an indicator hidden in a continuous column
    "y ~ x + I(x + 0.001 * (id == 17))",        # ... however small
    "y ~ I(x * 1e-9 + (id == 17))",             # an indicator blurred on every row
])
def test_a_design_whose_span_isolates_a_row_is_refused(frames, formula):
    err = refusal(formula, frames)
    assert err.guard == "GLM_MAX_LEVERAGE"


@pytest.mark.parametrize("formula", [
    # each, minus the sums of y ~ 1 or y ~ x (which pass), is row 17's values
    "I(y * (1 + (id == 17))) ~ 1",
    "I(y + y * (id == 17)) ~ x",
    "y ~ I(x + (id == 17))",
    "y ~ I(x * (1 + 1e-6 * (id == 17)))",
    "y ~ I(x + exp(-1000 * (id - 17) ** 2))",       # an indicator in all but name
    "y ~ I(x + 1 / (1 + 1e6 * (id - 17) ** 2))",    # a spike: leverage 1 beside an intercept
    "I(y * (1 + 1 / (1 + 1e6 * (id - 17) ** 2))) ~ 1",
    "y ~ I(x + 0 * (id > 98.5))",                  # the rows themselves, by a threshold
])
def test_intermediate_values_that_single_rows_out_are_refused(frames, formula):
    """Differencing across fits: a column or response that is acceptable on its own but
    carries an indicator of a row; every sub-expression is checked as a column."""
    err = refusal(formula, frames)
    assert err.guard in ("GLM_MIN_ROWS_PER_CATEGORY_LEVEL", "GLM_MAX_LEVERAGE")
    assert "inside the formula" in str(err)


def test_intermediate_values_of_honest_formulas_pass(frames):
    res = glm.fit("I(y * (x > 0) + y) ~ I(x ** 2) + I((x > 0) * x) + np.log(age) + I(age > 34)",
                  frames, cluster="inprocess")
    assert res.converged and len(res.params) == 5


def test_threshold_on_the_largest_value_is_refused(frames):
    t = float(np.sort(frames[0]["x"])[-2])  # only the largest row above
    err = refusal(f"y ~ I(x > {t!r})", frames)
    assert err.guard == "GLM_MIN_ROWS_PER_CATEGORY_LEVEL"


# -- through the response, weights and offset ----------------------------------------------
@pytest.mark.parametrize("formula,family", [
    (f"I(1 * (diag == '{RARE}')) ~ 1", "binomial"),   # a rare code counted through y
    ("I(diag > 'Y') ~ 1", "binomial"),                 # string comparisons find it
    (f"y ~ I(diag == '{RARE}')", "gaussian"),
    ("y ~ diag", "gaussian"),                          # a text column, encoded
    ("I(id == 17) ~ x", "binomial"),                   # a row through the response
])
def test_rare_values_through_the_response_or_a_text_column_are_refused(frames, formula, family):
    err = refusal(formula, frames, family)
    assert err.guard == "GLM_MIN_ROWS_PER_CATEGORY_LEVEL"
    assert RARE not in str(err)


def test_binary_weights_and_offsets_follow_the_same_rule(frames):
    with_columns = [f.assign(w=np.where(f["id"] % 1000 == 17, 2.0, 1.0),
                             off=np.where(f["id"] % 1000 == 17, 1.0, 0.0)) for f in frames]
    assert refusal("y ~ x", with_columns, weights="w").guard == \
        "GLM_MIN_ROWS_PER_CATEGORY_LEVEL"
    assert "prior weights" in str(refusal("y ~ x", with_columns, weights="w"))
    assert "offset" in str(refusal("y ~ x", with_columns, offset="off"))


def test_a_zero_weight_cannot_hide_rows_from_the_rule(frames):
    """Rows with a zero prior weight do not enter the sums: an indicator that looks
    common over all rows but isolates one row among the weighted ones is refused."""
    hidden = []
    for f in frames:
        w = np.where(f["id"] % 1000 < 50, 0.0, 1.0)
        flag = ((f["id"] % 1000 == 77) | (f["id"] % 1000 < 10)).astype(float)
        hidden.append(f.assign(w=w, flag=flag))
    err = refusal("y ~ flag", hidden, weights="w")
    assert err.guard == "GLM_MIN_ROWS_PER_CATEGORY_LEVEL"


# -- level names ---------------------------------------------------------------------------
def test_numeric_level_names_need_the_sites_consent(frames, monkeypatch):
    monkeypatch.setenv("GLM_ALLOW_NUMERIC_LEVELS", "0")
    err = refusal("y ~ C(age)", frames)
    assert err.guard == "GLM_ALLOW_NUMERIC_LEVELS" and "'age'" in str(err)
    for age in range(30, 40):
        assert f"[T.{age}]" not in str(err)
    monkeypatch.setenv("GLM_ALLOW_NUMERIC_LEVELS", "1")
    res = glm.fit("y ~ C(age)", frames, cluster="inprocess")
    assert "C(age)[T.31]" in res.params.index


def test_too_many_levels_for_the_rows_are_refused(frames, monkeypatch):
    """DataSHIELD's nfilter.levels.density and nfilter.levels.max."""
    # 33 levels of 3 rows each over 99 rows: each level passes, the density 1/3 > 0.33 does
    # not (with GLM_MIN_ROWS_PER_CATEGORY_LEVEL=3 it is the only density past it)
    many = [f.iloc[:99].assign(code=[f"c{k % 33}" for k in range(99)]) for f in frames]
    err = refusal("y ~ code", many)
    assert err.guard == "GLM_MAX_LEVELS_DENSITY"
    monkeypatch.setenv("GLM_MAX_LEVELS", "3")
    glm.fit("y ~ diag", [f[f["diag"] != RARE] for f in frames], cluster="inprocess")  # 3 pass
    few = [f.assign(code=[f"c{k % 4}" for k in range(len(f))]) for f in frames]
    assert refusal("y ~ code", few).guard == "GLM_MAX_LEVELS"


# -- coefficients chosen to single rows out ------------------------------------------------
@pytest.mark.parametrize("family,slope", [("binomial", 80.0), ("poisson", 40.0)])
def test_coefficients_that_concentrate_the_weights_get_no_sums(frames, family, slope):
    """Working weights vanish away from a point the central chooses (a logistic bump, a
    Poisson exponential): at such coefficients X'WX and X'Wz are one row's values."""
    x_max = float(frames[0]["x"].max())
    start = [-slope * (x_max + 0.01), slope]
    err = refusal("b ~ x", frames, family, start=start, max_iter=1)
    assert err.guard == "GLM_MAX_LEVERAGE" and "withheld" in str(err)


def test_a_separated_fit_stops_where_the_sums_would_single_out_rows():
    """An honest fit that diverges (complete separation) concentrates its weights too: the
    sites withhold the sums that would, and the fit ends at the last estimate before, with
    R's separation warning."""
    frames = separated_sites()
    with pytest.warns(Warning, match="separation"):
        res = glm.fit("y ~ x", frames, family="binomial", cluster="inprocess")
    assert not res.converged and any("withheld" in n for n in res.notes)
    assert np.all(np.isfinite(res.params))


# -- the guards on real worker processes, then a valid model --------------------------------
def test_attacks_on_worker_processes_then_a_valid_model_fits(frames):
    with pytest.raises(PrivacyError, match="GLM_MIN_ROWS_PER_CATEGORY_LEVEL"):
        glm.fit("y ~ I(id == 17)", frames, cluster=3)
    with pytest.raises(PrivacyError, match="GLM_MAX_LEVERAGE"):
        glm.fit("y ~ x + I(x + (id == 17))", frames, cluster=3)
    res = glm.fit("y ~ x", frames, cluster=3)
    pooled = pd.concat(frames)
    slope = np.polyfit(pooled["x"], pooled["y"], 1)[0]
    assert res.params["x"] == pytest.approx(slope, rel=1e-9)


# -- formulas that would hold a site's CPU or memory ----------------------------------------
@pytest.mark.parametrize("formula", [
    "y ~ (a+b+c+d+e+f+g+h)**8",
    "y ~ a*b*c*d*e*f*g*h",
    "y ~ I(x + 0 * 9 ** 9 ** 9)",
    "y ~ I('a' * 3000000000)",
    "y ~ I(x ** 100000)",
    "y ~ I(x + 1e300 * x)",
    "y ~ I(" + "x + " * 300 + "x)",
    "y ~ " + " + ".join(f"x{i}" for i in range(300)),
])
def test_formulas_are_bounded_before_they_are_evaluated(formula):
    import time  # noqa: PLC0415

    t0 = time.perf_counter()
    with pytest.raises(glm.FormulaError):
        glm.inspect_formula(formula)
    assert time.perf_counter() - t0 < 1.0


def test_a_wide_design_is_refused_before_it_is_built(frames, monkeypatch):
    monkeypatch.setenv("GLM_MAX_PCT_VARS_VS_OBS", "100")
    wide = [f.assign(**{f"g{k}": [f"l{(j * (k + 3)) % 30}" for j in range(len(f))]
                        for k in range(5)}) for f in frames]
    monkeypatch.setenv("GLM_MAX_LEVELS_DENSITY", "1")
    with pytest.raises(glm.SiteError, match="more than 5000 columns"):
        glm.fit("y ~ g0:g1:g2:g3:g4", wide, cluster="inprocess")


def test_a_hold_query_cannot_put_a_site_to_sleep(frames):
    import time  # noqa: PLC0415

    alg = glm.FisherScoring("y ~ x", n_sites=1)
    site = glm.Site(frames[0], "s")
    alg.answer(glm.Query(0), site)
    t0 = time.perf_counter()
    alg.answer(glm.Query(0, hold=1e9), site)
    alg.answer(glm.Query(0, hold=float("nan")), site)
    assert time.perf_counter() - t0 < 1.0


# -- the budget and the audit log ----------------------------------------------------------
def test_the_budget_of_models_per_session_counts_distinct_models(frames, tmp_path):
    env = {"GLM_MAX_MODELS_PER_SESSION": "2", "GLM_AUDIT_LOG": str(tmp_path / "audit.jsonl")}
    site = glm.Site(frames[0], "s", environ=env)
    for formula in ("y ~ x", "y ~ x", "y ~ 1", "y ~ 1"):  # the same again is free
        site.describe(glm.Design.make(formula))
    with pytest.raises(PrivacyError) as info:
        site.describe(glm.Design.make("y ~ age"))
    assert info.value.guard == "GLM_MAX_MODELS_PER_SESSION"
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    models = [r for r in records if r["event"] == "model"]
    assert [r["formula"] for r in models] == ["y ~ x", "y ~ 1"]
    assert all(r["rows"] == 100 and r["family"] == "Gaussian" for r in models)
    assert records[-1]["event"] == "refused" and \
        records[-1]["guard"] == "GLM_MAX_MODELS_PER_SESSION"


def test_the_daily_budget_is_kept_in_the_log_across_site_processes(frames, tmp_path):
    env = {"GLM_MAX_MODELS_PER_DAY": "2", "GLM_AUDIT_LOG": str(tmp_path / "audit.jsonl")}
    glm.Site(frames[0], "s", environ=env).describe(glm.Design.make("y ~ x"))
    again = glm.Site(frames[0], "s", environ=env)  # a site started again
    again.describe(glm.Design.make("y ~ x"))  # seen today already: not counted twice
    again.describe(glm.Design.make("y ~ 1"))
    with pytest.raises(PrivacyError, match="GLM_MAX_MODELS_PER_DAY"):
        glm.Site(frames[0], "s", environ=env).describe(glm.Design.make("y ~ age"))


def test_the_audit_log_lists_every_level_sent(frames, tmp_path):
    log = tmp_path / "audit.jsonl"
    site = glm.Site(frames[0][frames[0]["diag"] != RARE], "s",
                    environ={"GLM_AUDIT_LOG": str(log), "GLM_ALLOW_NUMERIC_LEVELS": "1"})
    site.describe(glm.Design.make("y ~ diag + C(age)"))
    sent = [json.loads(line) for line in log.read_text().splitlines()
            if '"levels sent"' in line][0]["levels"]
    assert sent["diag"] == ["A10", "B20", "C30"] and sent["age"] == list(range(30, 40))


def test_the_query_budget_of_a_model(frames):
    site = glm.Site(frames[0], "s", environ={"GLM_MAX_QUERIES_PER_MODEL": "3"})
    design = glm.Design.make("y ~ x")
    site.build(design)
    site.contribution(design, glm.Query(0))
    site.contribution(design, glm.Query(1, np.zeros(2)))
    with pytest.raises(PrivacyError, match="GLM_MAX_QUERIES_PER_MODEL"):
        site.contribution(design, glm.Query(2, np.ones(2)))


# -- the pieces ----------------------------------------------------------------------------
def test_minority_and_leverage():
    assert minority(np.r_[np.zeros(98), 1, 2], 3) == 2
    assert minority(np.r_[np.zeros(97), 1, 1, 1], 3) == 3
    assert minority(np.arange(10.0), 3) == 3
    rng = np.random.default_rng(0)
    X = np.c_[np.ones(50), rng.normal(size=50)]
    assert max_leverage(X) < 0.5
    assert max_leverage(np.c_[X, X[:, 1] + (np.arange(50) == 7)]) == pytest.approx(1.0)
    assert max_leverage(np.c_[X, 2 * X[:, 1]]) == pytest.approx(max_leverage(X))  # aliased


def test_the_analyst_cannot_loosen_the_new_guards(frames, monkeypatch):
    monkeypatch.setenv("GLM_ALLOW_NUMERIC_LEVELS", "0")
    err = refusal("y ~ C(age)", frames, guards={"allow_numeric_levels": True,
                                                "max_leverage": 1.0})
    assert err.guard == "GLM_ALLOW_NUMERIC_LEVELS"
    assert refusal("y ~ x", frames, guards={"max_leverage": 0.01}).guard == "GLM_MAX_LEVERAGE"


def test_audit_log_unreadable_lines_do_not_reset_the_budget(tmp_path):
    log = tmp_path / "a.jsonl"
    audit = Audit(log)
    audit.write({"event": "model", "model": "m1"})
    with open(log, "a") as f:
        f.write('{"torn')
    assert Audit(log)._models_today() == {"m1"}


# -- steep coefficients, passes at coefficients of their own, folds of their own -----------
def _site(frame, formula, family, audit_log=None, link=None):
    from algorithms.glm.site import Site

    site = Site(frame, "a", audit_log=audit_log)
    design = glm.Design.make(formula, family, link)
    site.describe(design)
    site.build(design)
    return site, design


@pytest.mark.parametrize("slope", [1e8, 1e3])
def test_a_step_of_fitted_values_gets_no_sums(frames, slope):
    """Coefficients so steep that mu is 0 or 1 either side of a point the central chooses:
    every working weight is the same tiny number (the weighted leverages are the design's)
    and X'Wz - X'WX beta is x'y less the sum of x past the point; two such rounds either
    side of a row give it. Refused, at either steepness."""
    t = float(np.median(frames[0]["x"]))
    err = refusal("b ~ x", frames, "binomial", start=[-slope * t, slope], max_iter=1)
    assert err.guard == "GLM_MAX_LEVERAGE" and "withheld" in str(err)


@pytest.mark.parametrize("family,beta", [("binomial", lambda t: [-1e3 * t, 1e3]),
                                         ("poisson", lambda t: [-40.0 * t, 40.0])])
def test_a_gradient_round_at_steep_coefficients_gets_no_score(frames, family, beta, tmp_path):
    """A score round has no gram to check leverages against: steep coefficients (a step of
    fitted values; a Poisson mean carried by the largest row) get no score, honest ones do,
    and the refusal is in the site's audit log."""
    from algorithms.glm.gradient_messages import GradientQuery, site_score

    log = tmp_path / "audit.jsonl"
    site, design = _site(frames[0], "b ~ x", family, audit_log=log)
    steep = np.asarray(beta(float(frames[0]["x"].max()) if family == "poisson"
                            else float(np.median(frames[0]["x"]))))
    assert not site_score(site, design, GradientQuery(1, steep)).valid
    assert site_score(site, design, GradientQuery(2, np.array([0.1, 0.5]))).valid
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["guard"] for e in events if e["event"] == "refused"] == ["GLM_MAX_LEVERAGE"]


def test_passes_besides_the_rounds_take_only_coefficients_a_round_would_pass(frames):
    """The log-likelihood, the sandwich's meat and glm.nb's theta sums at coefficients the
    central picks for them alone would skip the rounds' guards (two steep cuts either side
    of a row: the meat's difference is x x' of that row): at coefficients of no answered
    round the site checks the round's guards first (a site started again since its rounds
    answers an honest estimate), and refuses steep ones."""
    from algorithms.glm.messages import Query

    site, design = _site(frames[0], "b ~ x", "binomial")
    t = float(np.median(frames[0]["x"]))
    for slope in (1e8, 1e3):
        steep = np.array([-slope * t, slope])
        with pytest.raises(glm.SiteError, match="sent only at coefficients whose round"):
            site.meat(design, steep, "rows")
        with pytest.raises(glm.SiteError, match="sent only at coefficients whose round"):
            site.loglike(design, steep, 1.0)
    beta = np.array([0.2, 0.7])
    assert np.isfinite(site.loglike(design, beta, 1.0))  # not answered: checked, then sent
    assert site.contribution(design, Query(1, beta)).valid
    assert site.meat(design, beta, "rows")["meat"].shape == (2, 2)


def test_glmnet_sums_only_over_the_folds_the_site_checked(frames):
    """Every glmnet query names its folds, which the moments query checked. A central
    that asks the moments over honest folds, then sums over a fold of one row each
    (k = n), would read the rows as differences: the folds are checked then too, and
    refused; the checked folds answer, and so do honest folds the site meets first in a
    sums query (a site started again since the moments)."""
    from algorithms.glm.glmnet_site import Folds, GlmnetQuery, glmnet_answer

    site, design = _site(frames[0], "y ~ x", "gaussian")
    honest = Folds(k=3)
    glmnet_answer(site, design, GlmnetQuery(0, "moments", folds=honest))
    one_row = Folds(k=len(frames[0]))
    B = np.zeros((1, 2))
    with pytest.raises(PrivacyError, match="fewer rows than the minimum"):
        glmnet_answer(site, design, GlmnetQuery(1, "heldout", betas=((0, B),), folds=one_row))
    answer = glmnet_answer(site, design, GlmnetQuery(2, "heldout", betas=((0, B),),
                                                     folds=honest))
    assert len(answer.parts) == 1
    again, design = _site(frames[0], "y ~ x", "gaussian")
    assert len(glmnet_answer(again, design, GlmnetQuery(3, "heldout", betas=((0, B),),
                                                        folds=Folds(k=4))).parts) == 1


def test_the_moments_the_central_sends_are_checked_and_fixed_per_model(frames):
    """The central sends the mean and sd of scale(): a mean put on one row's value and a
    tiny sd make exp(-scale(x) ** 2) a spike at that row (evaluated with those moments, it
    is refused); moving the moments a little between two fits of one formula would
    difference the rows between (one set of moments per model)."""
    from algorithms.glm.site import Site

    f = frames[0]
    base = glm.Design.make("y ~ x + I(exp(-scale(x) ** 2))", "gaussian")
    spike = base.with_shared({}, {"x": (float(f["x"].iloc[17]), 1e-4)})
    site = Site(f, "a")
    site.describe(base)
    with pytest.raises(PrivacyError):
        site.build(spike)
    site = Site(f, "b")
    mean, sd = float(f["x"].mean()), float(f["x"].std())
    site.build(base.with_shared({}, {"x": (mean, sd)}))
    with pytest.raises(PrivacyError, match="other moments"):
        site.build(base.with_shared({}, {"x": (mean + 1e-3, sd)}))


def test_a_poisson_fit_whose_exposures_span_orders_of_magnitude_is_not_refused():
    """Fitted values 1e-9 of the largest on most rows are no sign of steep coefficients
    in a Poisson fit (small exposures beside large ones): it fits, as statsmodels."""
    import statsmodels.api as sm

    rng = np.random.default_rng(5)
    frames = []
    for _ in range(3):
        n = 60
        exposure = np.where(np.arange(n) < 36, 1e-5, 1e4 * rng.uniform(0.5, 2.0, n))
        x = rng.normal(size=n)
        frames.append(pd.DataFrame({"x": x, "logE": np.log(exposure),
                                    "y": rng.poisson(exposure * np.exp(0.3 * x))}))
    res = glm.fit("y ~ x", frames, "poisson", offset="logE", cluster="inprocess")
    pooled = pd.concat(frames)
    ref = sm.GLM(pooled["y"], sm.add_constant(pooled["x"]), family=sm.families.Poisson(),
                 offset=pooled["logE"]).fit()
    assert res.converged
    np.testing.assert_allclose(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-6)


def test_a_binomial_with_numbers_of_trials_from_one_to_millions_is_not_refused():
    """Each row's weight is its number of trials times mu(1 - mu): against the largest
    number of trials, rows of a few trials looked pinned at the edge at flat coefficients
    (rates of 1e-7 in populations from 1e3 to 3e8)."""
    rng = np.random.default_rng(11)
    frames = []
    for _ in range(3):
        pop = np.exp(rng.uniform(np.log(1e3), np.log(1e7), 70)).round()
        pop[0] = 3e8
        x = rng.normal(size=70)
        cases = rng.binomial(pop.astype(np.int64), 1e-7 * np.exp(0.2 * x))
        frames.append(pd.DataFrame({"x": x, "cases": cases, "rest": pop - cases}))
    res = glm.fit("cbind(cases, rest) ~ x", frames, "binomial", cluster="inprocess")
    assert res.converged and not any("withheld" in n for n in res.notes)


@pytest.mark.parametrize("method", ["fisher", "gradient"])
def test_a_log_link_step_at_the_floor_gets_no_sums(frames, method):
    """A Gamma fit's log-link weights are 1 on every row, whatever the coefficients: no
    leverage check sees a step. At coefficients that pin every row but the largest at
    R's floor mu = eps, the sums are x'y / eps less the others'; moved past the largest
    row, two rounds gave it. Refused (the rows at the floor are counted)."""
    from algorithms.glm.gradient_messages import GradientQuery, site_score
    from algorithms.glm.messages import Query

    f = frames[0].assign(g=np.exp(frames[0]["y"] / 3))
    site, design = _site(f, "g ~ x", "gamma", link="log")
    site2, _ = _site(f, "g ~ x", "gamma", link="log")
    gap = float(np.diff(np.sort(f["x"]))[-1])
    t = float(f["x"].max()) - gap / 2
    steep = np.array([-100 / gap * t, 100 / gap])
    if method == "fisher":
        got = site.contribution(design, Query(1, steep))
        assert not got.valid and got.withheld
    else:
        assert not site_score(site, design, GradientQuery(1, steep)).valid
    honest = glm.fit("g ~ x", [f], "gamma", link="log", cluster="inprocess")
    assert site2.contribution(design, Query(1, honest.params.to_numpy())).valid


def test_moments_merged_in_another_order_are_the_same_moments(frames):
    """The mean and sd of the same rows merged in another order differ in their last bits:
    the same model, not other moments."""
    from algorithms.glm.site import Site

    f = frames[0]
    base = glm.Design.make("y ~ x + I(exp(-scale(x) ** 2))", "gaussian")
    mean, sd = float(f["x"].mean()), float(f["x"].std())
    site = Site(f, "a")
    site.build(base.with_shared({}, {"x": (mean, sd)}))
    site.build(base.with_shared({}, {"x": (mean * (1 + 4e-16), sd * (1 - 4e-16))}))


def test_a_separated_gradient_fit_says_the_sites_withheld_their_scores():
    """Gradient descent's line search steps back from coefficients whose score the sites
    withhold; the fit ends unconverged and says which sites withheld, as Fisher scoring."""
    with pytest.warns(Warning, match="separation"):
        res = glm.fit("y ~ x", separated_sites(), family="binomial", cluster="inprocess",
                      method="gradient")
    assert not res.converged and any("withheld" in n for n in res.notes)
    assert np.all(np.isfinite(res.params))


@pytest.mark.parametrize("case", ["rare_in_many_trials", "cauchit", "tiny_gamma"])
def test_honest_fits_near_the_edges_are_not_pinned(case):
    """What the check of pinned rows must let through: events of 1e-10 in 1e12 trials a
    row (each row's expected count is 100), a cauchit fit of a prevalence of 5e-4 (its
    working weight falls as |eta|^-3), a Gamma-log fit of values near 1e-15 (above R's
    floor eps)."""
    rng = np.random.default_rng(21)
    frames = []
    for _ in range(3):
        x = rng.normal(size=80)
        if case == "rare_in_many_trials":
            n = np.full(80, 1e12)
            k = rng.poisson(n * 1e-10 * np.exp(0.2 * x)).astype(float)
            frames.append(pd.DataFrame({"x": x, "k": k, "rest": n - k}))
        elif case == "cauchit":  # 20000 rows a site: some 10 events in each
            x = rng.normal(size=20000)
            frames.append(pd.DataFrame({"x": x, "b": (rng.uniform(size=20000) < 5e-4 * np.exp(
                0.3 * x)).astype(int)}))
        else:
            frames.append(pd.DataFrame({"x": x, "g": 1e-15 * rng.gamma(5.0, 0.2 * np.exp(
                0.3 * x))}))
    if case == "rare_in_many_trials":
        res = glm.fit("cbind(k, rest) ~ x", frames, "binomial", cluster="inprocess")
    elif case == "cauchit":
        res = glm.fit("b ~ x", frames, "binomial", link="cauchit", cluster="inprocess")
    else:
        res = glm.fit("g ~ x", frames, "gamma", link="log", cluster="inprocess")
    assert not any("withheld" in n for n in res.notes), res.notes
    assert np.all(np.isfinite(res.params))
