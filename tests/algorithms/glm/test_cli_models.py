"""``aia-glm fit`` with the options of issue 13's models: ``--family negative_binomial``,
``--freq-weights``, ``--missing``; and the folder central refusing what its sites cannot do
yet, before anything starts."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms import glm
from algorithms.glm import cli

from .conftest import r_frame, split3

QUINE = "Days ~ Eth + Sex + Age + Lrn"


@pytest.fixture(autouse=True)
def _small_sites(monkeypatch):
    monkeypatch.setenv("GLM_MAX_PCT_VARS_VS_OBS", "50")


def _files(tmp_path, frames) -> list:
    paths = []
    for i, frame in enumerate(frames):
        paths.append(str(tmp_path / f"site{i + 1}.csv"))
        frame.to_csv(paths[-1], index=False)
    return paths


@pytest.mark.timeout(120)
def test_fit_negative_binomial_with_freq_weights_and_missing(tmp_path, capsys):
    d = r_frame("quine").assign(f=lambda d: 1 + np.arange(len(d)) % 2)
    d.loc[[4, 9], "Days"] = np.nan
    paths = _files(tmp_path, split3(d))
    expected = glm.fit(QUINE, split3(d), "negative_binomial", freq_weights="f",
                       cluster="inprocess")
    assert cli.main(["fit", QUINE, *paths, "--family", "negative_binomial",
                     "--freq-weights", "f", "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert f"Negative Binomial({expected.theta:.4g})" in out
    assert f"Theta:         {expected.theta:>12.6g}" in out
    assert "(2 observations deleted due to missingness)" in out
    assert f"{expected.nobs}" in out and expected.nobs == d.f.sum() - d.f[[4, 9]].sum()
    with pytest.raises(glm.SiteError, match=r"missing values in column\(s\) \['Days'\]"):
        cli.main(["fit", QUINE, *paths, "--missing", "raise", "--family", "poisson",
                  "--verbose", "0"])


def test_cli_refuses_bad_values_before_any_process(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit", QUINE, "a.csv", "--missing", "omit"])
    assert "invalid choice: 'omit'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="link: the negative_binomial family"):
        cli.main(["fit", QUINE, "a.csv", "--family", "negative_binomial", "--link", "logit"])


@pytest.mark.parametrize("kwargs", [{"family": "negative_binomial"}])
def test_folder_central_refuses_what_its_sites_cannot_do(tmp_path, kwargs):
    with pytest.raises(TypeError, match="not over a folder"):
        cli.fit_folder(QUINE, tmp_path, ["a", "b", "c"], **kwargs)
