"""Secure aggregation (`algorithms.glm.secure`): the same fits as in clear, from masked sums.

Real worker processes (the session's three workers, or a temporary cluster of four for the
site that dies), real data (the v6-glm sites), a real synced folder with ``aia-glm site``
processes. Over Ray: tests/aia/test_ray.py (its module's runtime).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from algorithms import glm
from algorithms.glm import secure
from algorithms.glm.design import Design, SiteError
from algorithms.glm.fisher import FisherScoring
from algorithms.glm.gradient import GradientDescent
from algorithms.glm.messages import Query
from algorithms.glm.site import Site

from .conftest import read, survival_frames, v6_sites

fit_module = sys.modules["algorithms.glm.fit"]  # the module (glm.fit is the function)

ADMIT = "admit ~ gre + gpa + C(rank)"
CASES = {
    "binomial": ("binomial", ADMIT, "binomial", None),
    "poisson": ("poisson", "num_awards ~ C(prog) + math", "poisson", None),
    "gaussian": ("survival", "eventtime ~ age + sex", "gaussian", None),
    "gamma": ("survival", "eventtime ~ age + sex", "gamma", "log"),
}


def assert_same_fit(a, b, rtol=1e-10):
    """Two fits equal to ``rtol`` relative: coefficients, standard errors, deviances, llf."""
    np.testing.assert_allclose(b.params, a.params, rtol=rtol, atol=0)
    np.testing.assert_allclose(b.bse, a.bse, rtol=rtol, atol=0)
    for key in ("deviance", "null_deviance", "llf", "scale"):
        np.testing.assert_allclose(getattr(b, key), getattr(a, key), rtol=rtol, atol=0,
                                   err_msg=key)
    assert (b.nobs, b.df_resid, b.converged) == (a.nobs, a.df_resid, a.converged)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case,method", [(c, "fisher") for c in CASES]
                         + [("binomial", "gradient"), ("poisson", "gradient")])
def test_secure_fits_equal_the_plain_fits(case, method, glm_cluster):
    data, formula, family, link = CASES[case]
    sites = v6_sites(data)
    args = dict(family=family, link=link, method=method, cluster=glm_cluster)
    plain = glm.fit(formula, sites, **args)
    masked = glm.fit(formula, sites, secure=True, **args)
    assert_same_fit(plain, masked)


def _count_site_sums(monkeypatch) -> list:
    """The methods of the `SiteSum` passes glm.fit makes from here on, in order."""
    sums = []

    class Counted(secure.SiteSum):
        def __init__(self, method, *args, **kw):
            sums.append(method)
            super().__init__(method, *args, **kw)

    monkeypatch.setattr(fit_module, "SiteSum", Counted)
    return sums


class NoSaturated(FisherScoring):
    """Fisher scoring that never asks for the saturated log-likelihood."""

    ask_saturated = property(lambda self: False, lambda self, value: None)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["binomial", "poisson"])
def test_the_log_likelihood_needs_no_pass_of_its_own(case, glm_cluster, monkeypatch):
    """Binomial and Poisson: the saturated log-likelihood comes masked with the first
    round, so the secure fit makes no log-likelihood pass over the rows; its llf is R's."""
    sums = _count_site_sums(monkeypatch)
    data, formula, family, link = CASES[case]
    plain = glm.fit(formula, v6_sites(data), family=family, cluster=glm_cluster)
    masked = glm.fit(formula, v6_sites(data), family=family, secure=True, cluster=glm_cluster)
    assert sums == []
    assert_same_fit(plain, masked)
    monkeypatch.setattr(fit_module, "FisherScoring", NoSaturated)
    masked = glm.fit(formula, v6_sites(data), family=family, secure=True, cluster=glm_cluster)
    assert sums == ["loglike"]  # the check above can fail: without it, a pass of its own
    assert_same_fit(plain, masked)


@pytest.mark.timeout(120)
def test_secure_relative_survival_with_its_null_model_fit(glm_cluster):
    """Relative survival: R's null deviance comes from a second (intercept-only) fit, and
    the log-likelihood from a pass over the sites: both run securely too."""
    frames = survival_frames()
    args = dict(family="relative_survival", expected="dstar", cluster=glm_cluster)
    plain = glm.fit("status ~ sex + age", frames, **args)
    masked = glm.fit("status ~ sex + age", frames, secure=True, **args)
    assert_same_fit(plain, masked)


class Recording(secure.SecureAggregation):
    """Keeps, at the central, every masked answer and the query it answered."""

    seen: list = []

    def sync_central_step(self, answers, workers, problem):
        if self._phase == "sums" and isinstance(self._inner_query, Query):
            Recording.seen.append((self._inner_query, self.inner.design, list(answers)))
        return super().sync_central_step(answers, workers, problem)


def _plain_bytes(site: Site, design, query, n_sites: int) -> bytes:
    """What the site would send unmasked: its true sums, encoded in the same ring."""
    plain = site.contribution(design, query)
    values, _, _ = secure._pack(plain)
    return secure.to_bytes(secure.encode(values, n_sites, site.name))


@pytest.mark.timeout(120)
def test_the_central_sees_only_uniform_bytes(glm_cluster, monkeypatch):
    Recording.seen = []
    monkeypatch.setattr(fit_module, "SecureAggregation", Recording)
    frames = read(v6_sites("binomial"))
    names = ["a", "b", "c"]
    glm.fit(ADMIT, dict(zip(names, frames)), family="binomial", secure=True,
            cluster=glm_cluster)
    assert len(Recording.seen) >= 4  # the Fisher rounds (the log-likelihood's pass too)
    masked_bytes, plain_bytes = bytearray(), bytearray()
    for query, design, answers in Recording.seen:
        for name, frame, a in zip(names, frames, answers):
            assert isinstance(a, secure.MaskedAnswer) and a.site == name
            true = _plain_bytes(Site(frame, name), design, query, 3)
            assert len(a.payload) == len(true)
            masked = secure.from_bytes(a.payload)
            # No entry of the masked vector is the site's true entry.
            assert not any(m == t for m, t in zip(masked, secure.from_bytes(true)))
            masked_bytes += a.payload
            plain_bytes += true
    chi2 = stats.chisquare(np.bincount(np.frombuffer(bytes(masked_bytes), np.uint8),
                                       minlength=256))
    assert chi2.pvalue > 1e-6, chi2
    # The test has power: the unmasked encodings are far from uniform.
    chi2 = stats.chisquare(np.bincount(np.frombuffer(bytes(plain_bytes), np.uint8),
                                       minlength=256))
    assert chi2.pvalue < 1e-6


class DiesInRound3(secure.SecureAggregation):
    """Site d's process dies while it computes the masked sums of round 3. The central
    keeps the queries it sends: (phase, round, number of sites)."""

    central: list = []
    queries: list = []

    def initialize(self, problem):
        DiesInRound3.central.append(self)
        return super().initialize(problem)

    def _sums_query(self):
        q = super()._sums_query()
        DiesInRound3.queries.append((q.phase, q.round, len(q.roster)))
        return q

    def _after_sums(self, answers, workers, problem):
        q = super()._after_sums(answers, workers, problem)
        if q.phase == "unmask":
            DiesInRound3.queries.append((q.phase, q.round, len(self._roster)))
        return q

    def answer(self, q, problem):
        if q.phase == "sums" and q.round == 3 and problem.name == "d":
            os._exit(3)
        return super().answer(q, problem)


def _four_sites(data: str) -> dict:
    a, b, c = read(v6_sites(data))
    half = len(c) // 2
    return {"a": a, "b": b, "c": c.iloc[:half], "d": c.iloc[half:]}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["binomial", "gamma"])
def test_a_site_dying_mid_round_leaves_the_fit_of_the_others(case, monkeypatch):
    DiesInRound3.central, DiesInRound3.queries = [], []
    monkeypatch.setattr(fit_module, "SecureAggregation", DiesInRound3)
    data, formula, family, link = CASES[case]
    sites = _four_sites(data)
    # R's standard errors come from X'WX at the iteration before the last: the paths differ
    # (the first rounds count site d), so both fits go to a tolerance where that is moot.
    args = dict(family=family, link=link, tol=1e-13)
    res = glm.fit(formula, sites, secure=True, resilience=1, **args)
    others = {k: v for k, v in sites.items() if k != "d"}
    plain = glm.fit(formula, others, cluster="inprocess", **args)
    alg = DiesInRound3.central[0]
    assert alg.redone_rounds == 1
    # Round 3 (the sums of four sites, one missing) was never unmasked: no round's sum
    # short of one site was ever decodable; round 4 asked the same query of the other three.
    sent = DiesInRound3.queries[:DiesInRound3.queries.index(("sums", 4, 3)) + 2]
    assert sent[-4:] == [("unmask", 2, 4), ("sums", 3, 4), ("sums", 4, 3), ("unmask", 4, 3)]
    assert ("unmask", 3, 4) not in DiesInRound3.queries
    assert res.sites == ["a", "b", "c"]
    # The counts, the null deviance, the dispersion and llf are the three sites' too.
    assert_same_fit(plain, res, rtol=1e-7)


class DiesInRound1(secure.SecureAggregation):
    """Site d's process dies in the masked sums of R's starting round."""

    def answer(self, q, problem):
        if q.phase == "sums" and q.round == 1 and problem.name == "d":
            os._exit(3)
        return super().answer(q, problem)


@pytest.mark.timeout(120)
def test_a_site_dying_in_the_first_round_leaves_the_others_log_likelihood(monkeypatch):
    """Poisson (a saturated log-likelihood that is not 0): the starting round redone among
    the others carries theirs, and llf is the three sites' own, with no pass of its own."""
    monkeypatch.setenv("GLM_MAX_PCT_VARS_VS_OBS", "100")  # site b's half: 32 rows
    monkeypatch.setattr(fit_module, "SecureAggregation", DiesInRound1)
    sums = _count_site_sums(monkeypatch)
    _, formula, family, _ = CASES["poisson"]
    a, b, c = read(v6_sites("poisson"))
    sites = {"a": a, "b": b.iloc[::2], "c": c, "d": b.iloc[1::2]}
    res = glm.fit(formula, sites, family=family, secure=True, resilience=1, tol=1e-13)
    plain = glm.fit(formula, {k: sites[k] for k in "abc"}, family=family, tol=1e-13,
                    cluster="inprocess")
    assert res.sites == ["a", "b", "c"] and sums == []
    assert abs(plain.llf) > 100  # the saturated part is far from 0
    assert_same_fit(plain, res, rtol=1e-7)


class DiesInGradient(secure.SecureAggregation):
    """Site d's process dies while it computes the masked sums of the round ``when`` picks
    out of gradient descent's: the first (the metric, at R's starting values), a score
    round, or the final one (X'WX at the estimate)."""

    when = "score"
    central: list = []
    queries: list = []

    def initialize(self, problem):
        DiesInGradient.central.append(self)
        return super().initialize(problem)

    def _sums_query(self):
        q = super()._sums_query()
        if isinstance(self.inner, GradientDescent):  # not the log-likelihood's sum after
            DiesInGradient.queries.append((q.round, len(q.roster), q.inner.full))
        return q

    def answer(self, q, problem):
        if q.phase == "sums" and problem.name == "d" and self._dies_at(q):
            os._exit(3)
        return super().answer(q, problem)

    def _dies_at(self, q) -> bool:
        if not isinstance(self.inner, GradientDescent):
            return False
        if self.when == "metric":
            return q.round == 1
        if self.when == "score":
            return q.round == 3
        return q.round > 1 and q.inner.full  # the final round


@pytest.mark.timeout(180)
@pytest.mark.parametrize("when", ["metric", "score", "final"])
def test_gradient_descent_goes_on_among_the_others_when_a_site_dies(when, monkeypatch):
    DiesInGradient.central, DiesInGradient.queries = [], []
    monkeypatch.setattr(DiesInGradient, "when", when)
    monkeypatch.setattr(fit_module, "SecureAggregation", DiesInGradient)
    data, formula, family, link = CASES["binomial"]
    sites = _four_sites(data)
    args = dict(family=family, link=link, tol=1e-10, method="gradient")
    res = glm.fit(formula, sites, secure=True, resilience=1, **args)
    others = {k: v for k, v in sites.items() if k != "d"}
    plain = glm.fit(formula, others, cluster="inprocess", **args)
    assert DiesInGradient.central[0].redone_rounds == 1
    assert res.sites == ["a", "b", "c"] and res.converged
    # After the failed round, every round is among the three others, and the next one
    # is a full round (their metric) unless the failure came in the first round already.
    rounds = DiesInGradient.queries
    failed = next(i for i, (_, n, _) in enumerate(rounds) if n == 3) - 1
    assert rounds[failed][1] == 4 and all(n == 3 for _, n, _ in rounds[failed + 1:])
    assert rounds[failed + 1][2]  # full: X'WX, X'Wz, deviance, counts of the three
    # The estimate, its standard errors, counts, deviances, llf are the three sites' own.
    assert_same_fit(plain, res, rtol=1e-6)


class Truncates(secure.SecureAggregation):
    """Site b sends a masked vector one entry short."""

    def answer(self, q, problem):
        a = super().answer(q, problem)
        if q.phase == "sums" and problem.name == "b" and a.payload:
            from dataclasses import replace
            a = replace(a, payload=a.payload[:-secure.ENTRY_BYTES])
        return a


@pytest.mark.timeout(60)
def test_a_malformed_masked_vector_names_the_site(glm_cluster, monkeypatch):
    monkeypatch.setattr(fit_module, "SecureAggregation", Truncates)
    frames = read(v6_sites("binomial"))
    with pytest.raises(secure.SecureAggregationError, match="site b: malformed masked vector"):
        glm.fit(ADMIT, dict(zip("abc", frames)), family="binomial", secure=True,
                cluster=glm_cluster)


def _no_process(*args, **kwargs):
    raise AssertionError("a process was started")


@pytest.mark.parametrize("kwargs,message", [
    (dict(n=2), "at least 3 sites, got 2"),
    (dict(resilience=1), "could fall to 2"),
    (dict(synchronous=False), "synchronous=True"),
    (dict(cluster="inprocess"), "one worker per site"),
    (dict(secure=False, resilience=1), "only with secure=True"),
    (dict(cov_type="cluster", groups="rank"), "digests of its cluster ids"),
])
def test_bad_secure_input_is_refused_before_any_process(monkeypatch, kwargs, message):
    monkeypatch.setattr("aia.LocalCluster.__init__", _no_process)
    frames = read(v6_sites("binomial"))[:kwargs.pop("n", 3)]
    args = {"family": "binomial", "secure": True, **kwargs}
    with pytest.raises(ValueError, match=message):
        glm.fit(ADMIT, frames, **args)


def _worker_site(name: str, frame: pd.DataFrame, design, roster_size: int):
    """A site and its side of the protocol, in this process (the worker's code)."""
    site = Site(frame, name)
    alg = secure.SecureAggregation(FisherScoring(design))
    session = b"s" * 16
    key = alg.answer(secure.SecureQuery("keys", session), site).public_key
    others = [(f"other{i}", secure._raw(secure.X25519PrivateKey.generate().public_key()))
              for i in range(roster_size - 1)]
    return site, alg, session, key, others


def test_a_site_unmasks_one_set_of_sites_per_coefficients():
    frame = read(v6_sites("binomial"))[0]
    design = Design.make("admit ~ gre + gpa", "binomial")
    site, alg, session, key, others = _worker_site("a", frame, design, 4)
    query = Query(1, np.array([-3.0, 0.002, 0.7]))
    four = tuple([("a", key)] + others)
    alg.answer(secure.SecureQuery("sums", session, 1, four, query), site)
    assert alg.answer(secure.SecureQuery("unmask", session, 1), site).round == 1
    # The same coefficients again, for the same sites: nothing new, answered.
    alg.answer(secure.SecureQuery("sums", session, 2, four, query), site)
    alg.answer(secure.SecureQuery("unmask", session, 2), site)
    # For three of them: the difference would be the fourth's sums. Masked sums are sent
    # (a round may be redone when a site fails before its sums arrive), never unmasked.
    three = four[:3]
    alg.answer(secure.SecureQuery("sums", session, 3, three, query), site)
    with pytest.raises(SiteError, match="refused to unmask"):
        alg.answer(secure.SecureQuery("unmask", session, 3), site)
    # Other coefficients for three sites: fine.
    other = Query(2, np.array([-3.1, 0.002, 0.7]))
    alg.answer(secure.SecureQuery("sums", session, 4, three, other), site)
    alg.answer(secure.SecureQuery("unmask", session, 4), site)
    with pytest.raises(SiteError, match="over 2 sites"):
        alg.answer(secure.SecureQuery("sums", session, 5, four[:2], other), site)


def test_out_of_range_and_non_finite_sums_are_errors_at_the_site():
    with pytest.raises(SiteError, match="site x: a sum is out of the range"):
        secure.encode(np.array([1.0, 2.0 ** 94]), 3, "x")
    with pytest.raises(SiteError, match="site x: a sum is not finite"):
        secure.encode(np.array([1.0, np.inf]), 3, "x")
    # In range, the encoding is exact for doubles above 2^-44, and sums exactly.
    values = np.array([0.1, -2.5e10, 3.0 ** 20, -1e-13, 2.0 ** 90])
    ring = [sum(t) % secure.MODULUS for t in zip(*(secure.encode(values, 3, "x"),) * 3)]
    np.testing.assert_array_equal(secure.decode(ring), 3 * values)


def _start_sums(path, name: str, formula: str, family: str) -> np.ndarray:
    """Site ``name``'s true X'WX at R's starting values (version 0), as a fit computes it."""
    from algorithms.glm.design import merge_levels, merge_moments

    paths = v6_sites("poisson")
    design = Design.make(formula, family)
    described = [Site(p, n).describe(design) for p, n in zip(paths, "abc")]
    design = design.with_shared(merge_levels([d["levels"] for d in described]),
                                merge_moments([d["moments"] for d in described]))
    return Site(path, name).contribution(design, Query(0)).xtwx


def _blobs(folder: Path) -> list:
    """The bytes of every file under ``folder``, and of every base64 text inside them."""
    import base64
    import re

    out = []
    for f in folder.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            out.append(data)
            out += [base64.b64decode(m) for m in re.findall(rb'"(?:\$bytes|base64)": ?"([^"]+)"',
                                                            data)]
    return out


@pytest.mark.timeout(150)
def test_a_secure_fit_over_a_synced_folder(tmp_path):
    """``aia-glm site`` processes and a central over a real folder: the same fit, and the
    answer files hold no site's true X'WX (found in those of a plain run)."""
    from algorithms.glm import cli

    from .test_cli import FORMULA, POLL, Processes

    needle = _start_sums(v6_sites("poisson")[0], "a", FORMULA, "poisson").tobytes()
    procs = Processes(tmp_path)
    sites = {}
    try:
        for session in ("plain", "secure"):  # all six sites start at once
            for name in "abc":
                sites[session, name] = procs._spawn(
                    ["site", "--folder", str(tmp_path), "--site", name, "--data",
                     str(procs.data[name]), "--audit-log",
                     str(procs.private / f"{session}-{name}.audit.jsonl"), "--poll", POLL,
                     "--timeout", "80", "--session", session],
                    tmp_path / f"site-{session}-{name}.log")
        args = dict(poll=float(POLL), timeout=60)
        with pytest.warns(Warning, match="converge"):  # one iteration holds the sums
            cli.fit_folder(FORMULA, tmp_path, list("abc"), "poisson", session="plain",
                           max_iter=1, **args)
        res = cli.fit_folder(FORMULA, tmp_path, list("abc"), "poisson", session="secure",
                             secure=True, **args)
        assert [p.wait(20) for p in sites.values()] == [0] * 6
    finally:
        procs.stop()
    assert any(needle in blob for blob in _blobs(tmp_path / "plain"))
    secure_blobs = _blobs(tmp_path / "secure")
    assert not any(needle[:64] in blob for blob in secure_blobs)  # not even its first row
    plain = glm.fit(FORMULA, v6_sites("poisson"), family="poisson", cluster="inprocess")
    assert_same_fit(plain, res)


# A folder site whose code raises in the masked sums of round 3: it answers with an error
# (a folder site that merely stops is waited for, not counted as failed).
FAILING_SITE = """
import sys
from algorithms.glm import cli, secure
answer = secure.SecureAggregation.answer
def failing(self, q, problem):
    if q.phase == "sums" and q.round == 3:
        raise RuntimeError("site d lost its disk")
    return answer(self, q, problem)
secure.SecureAggregation.answer = failing
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.timeout(150)
def test_a_secure_fit_over_a_folder_goes_on_when_a_site_fails(tmp_path, capsys):
    """``aia-glm central --secure --resilience 1`` over four ``aia-glm site`` processes of
    a real folder, site d raising in round 3: the fit of the other three, and site d asked
    nothing after its failure."""
    from algorithms.glm import cli

    from .test_cli import POLL, Processes

    data, formula, family, _ = CASES["binomial"]
    frames = _four_sites(data)
    procs = Processes(tmp_path)
    folder = tmp_path / "shared"
    folder.mkdir()
    try:
        for name, frame in frames.items():
            data = procs.private / f"{name}.csv"
            frame.to_csv(data, index=False)
            procs._spawn(["site", "--folder", str(folder), "--site", name, "--data",
                          str(data), "--poll", POLL, "--timeout", "80", "--session", "s"],
                         tmp_path / f"site-{name}.log",
                         program=("-c", FAILING_SITE) if name == "d" else ("-m",
                                                                            "algorithms.glm.cli"))
        out = tmp_path / "result.json"
        code = cli.main(["central", "--folder", str(folder), "--sites", "a,b,c,d",
                         "--formula", formula, "--family", family, "--secure",
                         "--resilience", "1", "--tol", "1e-13", "--session", "s",
                         "--poll", POLL, "--timeout", "60", "--verbose", "0",
                         "--output", str(out)])
        assert code == 0, capsys.readouterr().err
        assert [p.wait(20) for p in procs.procs[:3]] == [0] * 3
    finally:
        procs.stop()
    import json
    got = json.loads(out.read_text())
    plain = glm.fit(formula, {k: frames[k] for k in "abc"}, family=family, tol=1e-13,
                    cluster="inprocess")
    assert got["sites"] == ["a", "b", "c"] and got["nobs"] == plain.nobs
    np.testing.assert_allclose(list(got["params"].values()), plain.params, rtol=1e-7)
    np.testing.assert_allclose(list(got["bse"].values()), plain.bse, rtol=1e-7)
    for key in ("deviance", "null_deviance", "llf"):
        np.testing.assert_allclose(got[key], getattr(plain, key), rtol=1e-7, err_msg=key)
    # Site d is asked nothing after the run it failed in (the log-likelihood's secure sum
    # comes after it): every later run's queries go to a, b and c only.
    runs_dir = folder / "s" / "runs"
    runs = sorted(p.name for p in runs_dir.iterdir())
    asked = {r: sorted(p.name for p in (runs_dir / r).iterdir()
                       if p.is_dir() and any(p.glob("q-*"))) for r in runs}
    failed_in = max(i for i, r in enumerate(runs) if "d" in asked[r])
    assert runs[failed_in + 1:] and all(asked[r] == ["a", "b", "c"]
                                        for r in runs[failed_in + 1:]), asked


def test_the_command_line_takes_secure(capsys):
    from algorithms.glm import cli

    args = cli.parser().parse_args(["central", "--folder", "f", "--sites", "a,b,c",
                                    "--formula", "y ~ x", "--secure"])
    assert args.secure is True
    assert "glm.secure" in cli.SITE_ALGORITHMS
    two = [str(p) for p in v6_sites("binomial")[:2]]
    with pytest.raises(ValueError, match="at least 3 sites, got 2"):
        cli.main(["fit", "admit ~ gre", *two, "--family", "binomial", "--secure"])
    three = [str(p) for p in v6_sites("binomial")]
    with pytest.raises(ValueError, match="3 sites could fall to 2"):
        cli.main(["fit", "admit ~ gre", *three, "--family", "binomial", "--secure",
                  "--resilience", "1"])
    with pytest.raises(ValueError, match="resilience: only with secure=True"):
        cli.main(["fit", "admit ~ gre", *three, "--family", "binomial", "--resilience", "1"])


@pytest.mark.timeout(60)
def test_a_sum_out_of_range_is_an_error_at_its_site(glm_cluster):
    frames = read(v6_sites("binomial"))
    frames[1] = frames[1].assign(gpa=frames[1]["gpa"] * 1e30)  # X'Wz beyond 2^95 / 3
    with pytest.raises(Exception, match="site b: a sum is out of the range"):
        glm.fit("gpa ~ gre", dict(zip("abc", frames)), secure=True, cluster=glm_cluster)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", ["gaussian"])
def test_secure_glmnet_path_equals_the_plain_one(family, glm_cluster):
    frames = read(v6_sites("binomial"))
    formula = "admit ~ gre + gpa + C(rank)" if family == "binomial" else \
        "gpa ~ gre + admit + C(rank)"
    args = dict(family=family, alpha=0.7, nlambda=20, cluster=glm_cluster)
    plain = glm.glmnet(formula, frames, **args)
    masked = glm.glmnet(formula, frames, secure=True, **args)
    np.testing.assert_allclose(masked.lambdas, plain.lambdas, rtol=1e-10)
    np.testing.assert_allclose(masked.coefs, plain.coefs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(masked.dev_ratio, plain.dev_ratio, rtol=1e-10)
