"""Fewer steps from the command line: `--respacing K` for sample, evaluate and theory, DDIM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli.main import main
from ddpm.data import load_dataset
from ddpm.errors import DataError
from ddpm.jobs.evaluate import evaluate_steps_run
from ddpm.jobs.sample import sample_run
from ddpm.likelihood.evaluate import evaluate
from ddpm.loader import load
from ddpm.model import Model
from ddpm.process.respace import respace
from ddpm.process.rng import KeyedNoise
from ddpm.requests import EvaluationRequest, SamplingRequest

TINY = ["--diffusion-steps", "12", "--max-steps", "3", "--batch-size", "16",
        "--channels", "8", "--quiet"]  # fmt: skip


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def run12(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("respace") / "digits"
    assert run_cli("train", "--out", out, *TINY, "--num-samples", "4") == 0
    return out


def test_evaluate_steps_reports_one_exact_elbo_per_K(run12, tmp_path, capsys):
    assert run_cli("evaluate", run12, "--respacing", "12", "3", "-n", "6", "--out", tmp_path) == 0
    printed = capsys.readouterr().out
    doc = json.loads((tmp_path / "eval_test_steps.json").read_text())
    assert [r["K"] for r in doc["steps"]] == [3, 12] and doc["T"] == 12
    assert [r["T"] for r in doc["steps"]] == [3, 12]
    assert [len(r["per_timestep"]) for r in doc["steps"]] == [3, 12]
    assert Image.open(tmp_path / "eval_test_steps.png").size[0] > 0
    for r in doc["steps"]:  # the table shows the reported numbers
        assert f"{r['bits_per_dim']:.4f}" in printed
    # K = T is the run's own process: the same number as a plain evaluation with that seed
    assert run_cli("evaluate", run12, "-n", "6", "--out", tmp_path, "--json") == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["neg_elbo"] == pytest.approx(doc["steps"][1]["neg_elbo"], rel=1e-12)
    # K = 3 is the run's network in the respaced process, evaluated with the same seed
    model = load(run12)
    x0 = load_dataset(model.data_config()).test[:6]
    noise = KeyedNoise(0, torch.arange(6))  # evaluation noise is keyed by (seed, example, t)
    respaced = Model(respace(model.diffusion, 3), model.net, model.spec, clip=model.clip)
    ev = evaluate(respaced, x0, generator=noise)
    assert doc["steps"][0]["neg_elbo"] == pytest.approx(ev.neg_elbo, rel=1e-12)
    assert doc["steps"][0]["neg_elbo"] != pytest.approx(plain["neg_elbo"], rel=1e-3)


def test_evaluate_steps_json_to_stdout(run12, tmp_path, capsys):
    res = evaluate_steps_run(run12, EvaluationRequest(n=3, steps=("4",)), out_dir=tmp_path)
    assert (
        run_cli("evaluate", run12, "--respacing", "4", "-n", "3", "--out", tmp_path, "--json") == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["steps"][0]["bits_per_dim"] == pytest.approx(res.evaluations[0].bits_per_dim)


def test_ddim_eta_one_reproduces_ancestral_samples_of_the_respaced_run(run12, tmp_path):
    a = sample_run(run12, SamplingRequest(n=5, steps="4"), out=tmp_path / "a.png")
    ddim = SamplingRequest(n=5, steps="4", sampler="ddim", eta=1.0)
    b = sample_run(run12, ddim, out=tmp_path / "b.png")
    assert torch.allclose(a.x0, b.x0, rtol=0, atol=1e-5)
    ddim = SamplingRequest(n=5, steps="4", sampler="ddim", eta=0.0)
    c = sample_run(run12, ddim, out=tmp_path / "c.png")
    assert not torch.allclose(a.x0, c.x0, atol=1e-3)


def test_sample_cli_with_steps_and_ddim(run12, tmp_path, capsys):
    assert run_cli("sample", run12, "-n", "4", "--respacing", "5", "--sampler", "ddim") == 0
    out = run12 / "samples_seed0_K5_ddim_eta0.png"
    assert str(out) in capsys.readouterr().out
    assert np.load(out.with_suffix(".npy")).shape == (4, 1, 8, 8)


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "{run}", "--eta", "0.5"], "--eta applies to the --sampler 'ddim'"),
        (["sample", "{run}", "--sampler", "ddpm"], "sampler"),
        (["sample", "{run}", "--respacing", "13"], "cannot respace 12 steps into 13"),
        (["sample", "{run}", "--sampler", "ddim", "--eta", "2"], "--eta must lie in [0, 1]"),
        (["evaluate", "{run}", "--respacing", "0", "-n", "2"], "K must be an integer >= 1"),
        (["theory", "gmm8", "--respacing", "5"], "--respacing applies to `ddpm theory gaussian`"),
        (
            ["sample", "{run}", "--respacing", "3,3", "--timestep-spacing", "leading"],
            "--timestep-spacing 'leading' applies to one count K, not to '3,3'",
        ),
        (
            ["sample", "{run}", "--timestep-spacing", "leading"],
            "--timestep-spacing 'leading' applies to a respaced process; give --respacing",
        ),
        (
            ["sample", "{run}", "--respacing", "ddim5"],
            "ddim5: no integer stride takes exactly 5 of 12",
        ),
        (["sample", "{run}", "--respacing", "5x"], "--respacing '5x': give a count K ('50')"),
        (
            ["sample", "{run}", "--respacing", "3", "--timestep-spacing", "mid"],
            "unknown --timestep-spacing 'mid'",
        ),
        (
            ["evaluate", "{run}", "--timestep-spacing", "linspace"],
            "--timestep-spacing 'linspace' applies to",
        ),
        (
            ["evaluate", "{run}", "--respacing", "ddim4", "2,2"],
            "both give K = 4 but keep different",
        ),
        (
            ["theory", "gaussian", "--timestep-spacing", "leading"],
            "--timestep-spacing 'leading' applies to",
        ),
    ],
)
def test_bad_step_options_give_one_clear_line(run12, capsys, args, message):
    assert run_cli(*(a.format(run=run12) for a in args)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evaluate_records_each_spelling_and_spacing(run12, tmp_path, capsys):
    argv = ["evaluate", run12, "--respacing", "3,2", "ddim4", "-n", "3", "--out", tmp_path,
            "--json"]  # fmt: skip
    assert run_cli(*argv) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = [(r["K"], r["steps"], r["spacing"], r["tau"]) for r in doc["steps"]]
    # T = 12: ddim4 is stride 3 (indices 0, 3, 6, 9); "3,2" two sections of 6 steps, stride 2.5
    # in the first (0, 2, 5) and 5 in the second (6, 11); our t = index + 1
    assert rows == [(4, "ddim4", None, [1, 4, 7, 10]), (5, "3,2", None, [1, 3, 6, 7, 12])]
    assert [len(r["per_timestep"]) for r in doc["steps"]] == [4, 5]
    model = load(run12)
    x0 = load_dataset(model.data_config()).test[:3]
    noise = KeyedNoise(0, torch.arange(3))
    respaced = Model(respace(model.diffusion, "ddim4"), model.net, model.spec, clip=model.clip)
    ev = evaluate(respaced, x0, generator=noise)
    assert doc["steps"][0]["neg_elbo"] == pytest.approx(ev.neg_elbo, rel=1e-12)
    argv = ["evaluate", run12, "--respacing", "4", "--timestep-spacing", "trailing", "-n", "3"]
    assert run_cli(*argv, "--out", tmp_path, "--json") == 0
    row = json.loads(capsys.readouterr().out)["steps"][0]
    assert (row["steps"], row["spacing"], row["tau"]) == ("4", "trailing", [3, 6, 9, 12])


def test_sample_cli_with_a_spacing_is_the_library_call(run12, tmp_path, capsys):
    assert (
        run_cli("sample", run12, "-n", "3", "--respacing", "6", "--timestep-spacing", "trailing")
        == 0
    )
    out = run12 / "samples_seed0_K6_trailing.png"
    assert str(out) in capsys.readouterr().out
    drawn = np.load(out.with_suffix(".npy"))
    lib = sample_run(
        run12, SamplingRequest(n=3, steps="6", spacing="trailing"), out=tmp_path / "t.png"
    )
    assert np.array_equal(drawn, np.load(lib.array_path))
    # other steps, same noise
    default = sample_run(run12, SamplingRequest(n=3, steps="6"), out=tmp_path / "d.png")
    assert not np.allclose(drawn, np.load(default.array_path), atol=1e-3)
    assert run_cli("sample", run12, "-n", "2", "--respacing", "3,2") == 0
    assert (run12 / "samples_seed0_K3-2.png").is_file()


def test_theory_gaussian_records_the_spelling_and_spacing(tmp_path, capsys):
    argv = ["theory", "gaussian", "--diffusion-steps", "12", "--respacing", "4",
            "--timestep-spacing", "leading"]  # fmt: skip
    assert run_cli(*argv, "-n", "50", "--iw", "1", "--out", tmp_path, "--json") == 0
    cf = json.loads(capsys.readouterr().out)["closed_form"]
    assert cf["steps"] == 4 and len(cf["per_timestep"]) == 4
    assert cf["respacing"] == {"steps": "4", "spacing": "leading", "tau": [1, 4, 7, 10]}


def test_theory_gaussian_steps_uses_the_respaced_closed_form(tmp_path, capsys):
    argv = ["theory", "gaussian", "--diffusion-steps", "100", "--respacing", "8", "-n", "2000",
            "--iw", "1"]  # fmt: skip
    assert run_cli(*argv, "--out", tmp_path, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    cf = doc["closed_form"]
    assert cf["steps"] == 8 and doc["T"] == 8 and len(cf["per_timestep"]) == 8
    assert abs(doc["neg_elbo"] - cf["neg_elbo"]) < 4 * doc["neg_elbo_se"]
    full = ["theory", "gaussian", "--diffusion-steps", "100", "-n", "2000", "--iw", "1",
            "--out", tmp_path]  # fmt: skip
    assert run_cli(*full, "--json") == 0
    assert json.loads(capsys.readouterr().out)["closed_form"]["neg_elbo"] < cf["neg_elbo"]


def test_steps_figure_plots_the_bounds_sorted_by_K():
    from ddpm.report.plots import steps_figure

    fig = steps_figure([1000, 10, 50], [3.0, 4.5, 3.6], [0.02, 0.03, 0.025])
    ax = fig.axes[0]
    k, v = ax.lines[0].get_data()
    assert list(k) == [10, 50, 1000] and list(v) == [4.5, 3.6, 3.0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    assert steps_figure([10, 1000], [204.0, 3.0], [4.0, 0.02]).axes[0].get_yscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["4.500", "3.600", "3.000"]
    with pytest.raises(DataError, match="one non-zero length"):
        steps_figure([10, 20], [1.0], [0.1])
