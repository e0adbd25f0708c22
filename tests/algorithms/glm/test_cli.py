"""``aia-glm site`` / ``aia-glm central``: the distribglm workflow over a synced folder, with
real processes on a real temporary folder."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm

from algorithms import glm
from algorithms.glm import cli

from .conftest import v6_sites

FORMULA = "num_awards ~ C(prog) + math"
POLL = "0.02"
pytestmark = pytest.mark.timeout(90)


# A central that skips its own formula checks (the sites must not rely on them).
HOSTILE_CENTRAL = """
import sys
import algorithms.glm.design as design
checked = design.inspect_formula
design.inspect_formula = lambda formula: checked("num_awards ~ math")
from algorithms.glm import cli
sys.exit(cli.main(sys.argv[1:]))
"""


class Processes:
    """Site and central processes of one test, all stopped at its end."""

    def __init__(self, folder: Path):
        self.folder = folder
        # Each site's own place, outside the shared folder: its audit log.
        self.private = Path(tempfile.mkdtemp(prefix="aia-site-"))
        self.data = dict(zip("abc", v6_sites("poisson")))
        self.procs: list = []
        self.sites: dict = {}

    def _spawn(self, args: list, log: Path, env=None, program=("-m", "algorithms.glm.cli")
               ) -> subprocess.Popen:
        with open(log, "ab") as out:
            p = subprocess.Popen([sys.executable, *program, *args],
                                 stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {})})
        self.procs.append(p)
        return p

    def site(self, name: str, env=None, named: bool = True) -> subprocess.Popen:
        """A site; ``named``: told the model's name, so that it also exits if the model
        ends before it joins (a site that looks for any open model would wait for another)."""
        extra = ["--session", "awards"] if named else []
        p = self._spawn(["site", "--folder", str(self.folder), "--site", name, "--data",
                         str(self.data[name]), "--audit-log",
                         str(self.private / f"{name}.audit.jsonl"), "--poll", POLL, "--timeout", "80", *extra],
                        self.folder / f"site-{name}.log", env)
        self.sites[name] = p
        return p

    def central(self, *extra, poll: str = POLL, sites: str = "a,b,c",
                formula: str = FORMULA, hostile: bool = False) -> subprocess.Popen:
        program = ("-c", HOSTILE_CENTRAL) if hostile else ("-m", "algorithms.glm.cli")
        return self._spawn(["central", "--folder", str(self.folder), "--sites", sites,
                            "--formula", formula, "--family", "poisson", "--poll", poll,
                            "--session", "awards", "--timeout", "60",
                            "--output", str(self.folder / "result.json"), *extra],
                           self.folder / "central.log", program=program)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def result(self) -> dict:
        return json.loads((self.folder / "result.json").read_text())

    def run_dir(self, number: int) -> Path:
        runs = sorted((self.folder / "awards" / "runs").glob(f"r{number:04d}-*"))
        return runs[0] if runs else self.folder / "missing"

    def wait_for(self, path_of, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while not path_of().exists():
            assert time.monotonic() < deadline, f"{path_of()} never appeared"
            time.sleep(0.01)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        shutil.rmtree(self.private, ignore_errors=True)


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def reference():
    """The same model fitted in process."""
    return glm.fit(FORMULA, v6_sites("poisson"), family="poisson", cluster="inprocess")


def _check_same_fit(result: dict, ref) -> None:
    for name in ("params", "bse", "pvalues"):
        got = np.array([result[name][k] for k in ref.params.index])
        np.testing.assert_allclose(got, getattr(ref, name).to_numpy(), rtol=1e-8, atol=0)
    for name in ("deviance", "null_deviance", "llf", "aic"):
        assert result[name] == pytest.approx(getattr(ref, name), rel=1e-8)
    assert result["iterations"] == ref.iterations and result["converged"] is True
    assert result["nobs"] == 200 and result["df_resid"] == 196


def test_three_sites_and_a_central_fit_the_model_of_glm_fit(procs, reference):
    for name in "abc":
        procs.site(name, named=False)  # each finds the model that names it
    central = procs.central()
    assert central.wait(60) == 0, procs.log("central")
    _check_same_fit(procs.result(), reference)
    out = procs.log("central")
    assert "C(prog)[T.Vocational]" in out and "yes, 6 iterations" in out  # the summary
    assert "Fisher scoring" in out and "100%" in out  # progress
    assert [procs.sites[n].wait(20) for n in "abc"] == [0, 0, 0]  # the model finished
    site_log = procs.log("site-a")
    assert "joined model awards" in site_log and "answered query" in site_log
    assert "finished; exiting" in site_log
    # statsmodels on the pooled rows agrees too.
    rows = sm.GLM.from_formula(FORMULA, data=__import__("pandas").concat(
        __import__("pandas").read_csv(p) for p in v6_sites("poisson")),
        family=sm.families.Poisson()).fit()
    np.testing.assert_allclose(procs.result()["params"]["math"], rows.params["math"],
                               rtol=1e-8)


def test_the_timeout_names_the_site_that_never_answered(procs):
    procs.site("a")
    procs.site("b")
    central = procs.central("--timeout", "5")
    assert central.wait(60) == 1
    err = procs.log("central")
    assert "c (never joined the session" in err and "within the timeout of 5 s" in err
    assert "a (" not in err and "b (" not in err
    # The model stays open for a new central; --cancel ends it and the sites exit.
    assert procs.sites["a"].poll() is None
    cancel = subprocess.run([sys.executable, "-m", "algorithms.glm.cli", "central", "--folder",
                             str(procs.folder), "--sites", "a,b,c", "--session", "awards",
                             "--cancel"], capture_output=True, text=True, timeout=60)
    assert cancel.returncode == 0, cancel.stderr
    assert procs.sites["a"].wait(20) == 0 and procs.sites["b"].wait(20) == 0
    assert "cancelled; exiting" in procs.log("site-a")


def test_a_site_killed_and_restarted_mid_run_picks_the_run_up(procs, reference):
    for name in "abc":
        procs.site(name)
    central = procs.central(poll="0.2")  # a slow central: time to kill a site mid-run
    fisher = lambda: procs.run_dir(3) / "b" / "a-000001.npz"  # noqa: E731
    procs.wait_for(fisher)
    first_answer = os.stat(fisher()).st_ino
    procs.sites["b"].kill()
    procs.sites["b"].wait(10)
    procs.wait_for(lambda: procs.run_dir(3) / "b" / "q-000002.npz")
    time.sleep(0.3)  # the central waits for b
    assert central.poll() is None
    procs.site("b")
    assert central.wait(60) == 0, procs.log("central")
    _check_same_fit(procs.result(), reference)
    assert os.stat(fisher()).st_ino == first_answer  # not answered twice
    assert procs.log("site-b").count("joined model awards") == 2
    assert [procs.sites[n].wait(20) for n in "abc"] == [0, 0, 0]


def test_a_central_killed_and_restarted_resumes_from_the_last_complete_iteration(
        procs, reference):
    for name in "abc":
        procs.site(name)
    first = procs.central(poll="0.2")
    last = lambda: procs.run_dir(3) / "c" / "a-000003.npz"  # noqa: E731
    procs.wait_for(last)
    first.kill()
    first.wait(10)
    recorded = {p: os.stat(p).st_ino for p in procs.folder.glob("awards/runs/*/*/a-*.npz")}
    assert len(recorded) >= 3 * 5
    again = procs.central()
    assert again.wait(60) == 0, procs.log("central")
    _check_same_fit(procs.result(), reference)
    # Every answer recorded before the crash was reused, none asked for again.
    assert {p: os.stat(p).st_ino for p in recorded} == recorded
    # No run opened twice: describe, build, fit (a Poisson fit's log-likelihood is the
    # saturated one, sent with the build, minus half the deviance: no fourth pass).
    assert len(list(procs.folder.glob("awards/runs/r*"))) == 3
    assert [procs.sites[n].wait(20) for n in "abc"] == [0, 0, 0]


def _answer_files(procs) -> dict:
    return {p: os.stat(p).st_ino for p in procs.folder.glob("awards/runs/*/*/a-*.npz")}


def test_a_site_guard_refusal_leaves_the_model_open_and_the_same_call_resumes(
        procs, reference):
    procs.site("a")
    procs.site("b", {"GLM_MINIMUM_ROWS": "1000"})
    procs.site("c")
    with pytest.raises(glm.PrivacyError, match="b refused: GLM_MINIMUM_ROWS \\(threshold 1000"):
        cli.fit_folder(FORMULA, procs.folder, list("abc"), "poisson", session="awards",
                       poll=float(POLL), timeout=60)
    time.sleep(0.3)
    assert [procs.sites[n].poll() for n in "abc"] == [None, None, None]  # the model is open
    recorded = _answer_files(procs)
    refusal = procs.run_dir(1) / "b" / "a-000001.npz"
    assert refusal in recorded
    # b's operator fixes its guard: the same call resumes, b's refusal is asked again (not
    # replayed), a's and c's recorded answers are reused.
    procs.sites["b"].kill()
    procs.sites["b"].wait(10)
    procs.site("b")
    res = cli.fit_folder(FORMULA, procs.folder, list("abc"), "poisson", session="awards",
                         poll=float(POLL), timeout=60)
    np.testing.assert_allclose(res.params, reference.params, rtol=1e-10)
    np.testing.assert_allclose(res.bse, reference.bse, rtol=1e-10)
    again = _answer_files(procs)
    assert again[refusal] != recorded[refusal]
    assert {p: again[p] for p in recorded if p != refusal} == \
        {p: i for p, i in recorded.items() if p != refusal}
    assert [procs.sites[n].wait(20) for n in "abc"] == [0, 0, 0]  # finished: they exit


def test_a_site_with_the_wrong_data_file_is_fixed_and_the_same_command_resumes(
        procs, reference, tmp_path):
    # A missing --data file: the site fails at once, before any model.
    with pytest.raises(SystemExit, match="no data file"):
        cli.main(["site", "--folder", str(procs.folder), "--site", "b", "--data",
                  str(tmp_path / "nope.csv")])
    wrong = procs.private / "b.csv"  # another study's table: no num_awards, no prog
    shutil.copy(Path(cli.__file__).parent / "data" / "admissions_b.csv", wrong)
    procs.data["b"] = wrong
    for name in "abc":
        procs.site(name)
    first = procs.central()
    assert first.wait(60) == 1, procs.log("central")
    out = procs.log("central")
    assert "site b" in out and "stays open" in out and "--cancel" in out, out[-3000:]
    assert procs.sites["a"].poll() is None and procs.sites["b"].poll() is None
    procs.sites["b"].kill()
    procs.sites["b"].wait(10)
    procs.data["b"] = v6_sites("poisson")[1]
    procs.site("b")
    again = procs.central()  # the same command
    assert again.wait(60) == 0, procs.log("central")
    _check_same_fit(procs.result(), reference)
    assert [procs.sites[n].wait(20) for n in "abc"] == [0, 0, 0]


@pytest.mark.parametrize("formula", [
    "num_awards ~ I(__import__('os').system('touch PWNED'))",   # code
    "num_awards ~ math + I(math * (math == 57))",              # a few rows' own values
    "num_awards ~ " + " * ".join(f"I(math ** {k})" for k in range(1, 12)),  # 2^11 columns
])
def test_a_hostile_formula_is_refused_and_the_sites_stay_well(procs, formula):
    for name in "abc":
        procs.site(name)
    central = procs.central(formula=formula, hostile=True)
    assert central.wait(60) != 0
    out = procs.log("central")
    # a site said no, and why
    assert re.search(r"error: (site [abc] raised [\w.]+Error|[abc] refused: GLM_)", out), out[-3000:]
    assert not list(procs.folder.rglob("PWNED")) and not Path("PWNED").exists()
    # The sites are well: still serving the open model, until it is cancelled.
    assert [procs.sites[n].poll() for n in "abc"] == [None, None, None], procs.log("site-a")
    _cancel(procs.folder, "a,b,c")
    assert [procs.sites[n].wait(20) for n in "abc"] == [0, 0, 0], procs.log("site-a")


def _cancel(folder: Path, sites: str) -> None:
    cancel = subprocess.run([sys.executable, "-m", "algorithms.glm.cli", "central", "--folder",
                             str(folder), "--sites", sites, "--session", "awards",
                             "--cancel"], capture_output=True, text=True, timeout=60)
    assert cancel.returncode == 0, cancel.stderr


def test_sites_refuse_a_model_with_fewer_sites_than_their_minimum(procs):
    procs.site("a")
    procs.site("b")
    with pytest.raises(RuntimeError, match="takes part only in runs with at least 3 sites"):
        cli.fit_folder(FORMULA, procs.folder, ["a", "b"], "poisson", min_sites=2,
                       session="awards", poll=float(POLL), timeout=60)
    assert procs.sites["a"].poll() is None  # the model stays open (as after a timeout)
    _cancel(procs.folder, "a,b")
    assert procs.sites["a"].wait(20) == 0 and procs.sites["b"].wait(20) == 0


def test_the_central_refuses_fewer_sites_than_its_minimum(tmp_path):
    out = subprocess.run([sys.executable, "-m", "algorithms.glm.cli", "central", "--folder",
                          str(tmp_path), "--sites", "a,b", "--formula", FORMULA],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "min_sites (threshold 3)" in out.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_gradient_descent_over_the_folder_is_glm_fit_method_gradient(procs):
    for name in "abc":
        procs.site(name)
    res = cli.fit_folder(FORMULA, procs.folder, list("abc"), "poisson", method="gradient",
                         session="awards", poll=float(POLL), timeout=60)
    ref = glm.fit(FORMULA, v6_sites("poisson"), family="poisson", method="gradient",
                  cluster="inprocess")
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-12)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=1e-12)
    assert res.iterations == ref.iterations and res.converged and res.method == "gradient"
    assert [procs.sites[n].wait(20) for n in "abc"] == [0, 0, 0]


def test_a_design_travels_as_plain_data():
    d = cli.with_token(glm.Design.make("y ~ x + C(g)", sm.families.Binomial(
        link=sm.families.links.Probit()), weights="w", guards={"minimum_rows": 20}))
    d = d.with_shared({"g": ("p", "q")}, {})
    again = cli.design_from(cli.design_params(d))
    assert cli.design_params(again) == cli.design_params(d)
    assert type(again.family.sm.link).__name__ == "Probit"
    assert again.guards.minimum_rows == 20
    with pytest.raises(TypeError, match="by name"):
        cli.design_params(glm.Design.make("y ~ x", sm.families.Tweedie()))
    with pytest.raises(glm.FormulaError):  # a site checks the formula's whitelist
        cli.design_from({**cli.design_params(d), "formula": "y ~ __import__('os').system('x')"})


def test_glmnet_over_the_folder_is_glm_glmnet_on_local_workers(procs):
    """``aia-glm central --method glmnet``: the sites' sums through the folder, the path of
    glm.glmnet on local workers (the same sites' files), with a penalty factor."""
    for name in "abc":
        procs.site(name)
    central = procs.central("--method", "glmnet", "--alpha", "0.5", "--nlambda", "30",
                            "--penalty-factor", "C(prog)=0.5")
    assert central.wait(60) == 0, procs.log("central")
    got = procs.result()
    ref = glm.glmnet(FORMULA, v6_sites("poisson"), family="poisson", alpha=0.5, nlambda=30,
                     penalty_factor={"C(prog)": 0.5}, cluster=3)
    assert got["method"] == "glmnet" and got["family"] == "poisson"
    np.testing.assert_allclose(got["lambdas"], ref.lambdas, rtol=1e-12)
    assert list(got["coefs"]) == list(ref.coefs.columns)
    for term in ref.coefs.columns:
        np.testing.assert_allclose(got["coefs"][term], ref.coefs[term], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["dev_ratio"], ref.dev_ratio, rtol=1e-9)
    assert got["df"] == [int(v) for v in ref.df] and max(got["df"]) == 3
    assert "glmnet path: poisson, alpha 0.5" in procs.log("central")
    assert [procs.sites[n].wait(20) for n in "abc"] == [0, 0, 0]


def test_glmnet_on_local_workers_from_the_command_line(capsys):
    sites = [str(p) for p in v6_sites("poisson")]
    assert cli.main(["fit", FORMULA, *sites, "--family", "poisson", "--method", "glmnet",
                     "--alpha", "0.5", "--nlambda", "10", "--csv", "--verbose", "0"]) == 0
    table = __import__("pandas").read_csv(__import__("io").StringIO(capsys.readouterr().out),
                                          index_col=0)
    ref = glm.glmnet(FORMULA, sites, family="poisson", alpha=0.5, nlambda=10,
                     cluster="inprocess")
    np.testing.assert_allclose(table.index.to_numpy(), ref.lambdas, rtol=1e-12)
    np.testing.assert_allclose(table[list(ref.coefs.columns)].to_numpy(),
                               ref.coefs.to_numpy(), rtol=1e-9, atol=1e-12)
    assert list(table["df"]) == list(ref.df)
    with pytest.raises(SystemExit, match="--exposure is not an option of --method glmnet"):
        cli.main(["fit", FORMULA, *sites, "--method", "glmnet", "--exposure", "math"])
