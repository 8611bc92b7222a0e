"""`ddpm evaluate` on run folders: sharded over processes, per-example output, the same
p_theta (clipped or not) as `ddpm sample`, the Monte Carlo estimate alone, and the requests
recorded beside the results."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_run
from torch import nn

from ddpm.cli.main import main
from ddpm.jobs.evaluate import evaluate_run
from ddpm.jobs.sample import sample_run
from ddpm.loader import load
from ddpm.requests import EvaluationRequest, SamplingRequest

TINY = ["--diffusion-steps", "5", "--max-steps", "3", "--batch-size", "16",
        "--channels", "8", "--quiet"]  # fmt: skip
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def gmm8_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "gmm8"
    args = ["--data", "gmm8", "--n-train", "200", "--n-test", "50", "--num-samples", "8"]
    assert run_cli("train", "--out", out, *args, *TINY) == 0
    return out


@pytest.fixture(scope="module")
def digits_run(digits_tiny_run, tmp_path_factory) -> Path:
    """A copy of the session's run trained with TINY and --num-samples 4."""
    return copy_run(digits_tiny_run, tmp_path_factory.mktemp("eval") / "digits")


def _numbers(doc: dict, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON report, by its path (timings and file names left out)."""
    out = {}
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for k, v in items:
        key = f"{prefix}.{k}"
        if k in ("seconds", "processes", "per_example_file", "name"):
            continue
        if isinstance(v, dict | list):
            out |= _numbers(v, key)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def test_two_processes_give_the_single_process_result(gmm8_run, tmp_path):
    """torchrun with 2 Gloo processes: each evaluates half of the examples; the gathered
    report and per-example -ELBO equal one process's to 1e-9."""
    # -n: torchrun's own parser would take a long --n for an abbreviation of its options
    args = ["-n", "24", "--iw", "1", "2", "--mc", "3", "--estimator", "both", "--max-batch", "4",
            "--device", "cpu"]  # fmt: skip
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
        "-m", "ddpm", "evaluate", str(gmm8_run), *args, "--json",
        "--out", str(tmp_path / "two"), "--per-example", str(tmp_path / "two.npy"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout)  # printed once, by rank 0
    assert two["processes"] == 2 and two["n"] == 24
    out = tmp_path / "one"
    assert run_cli("evaluate", gmm8_run, *args, "--out", out, "--per-example", out / "e.npy") == 0
    one = json.loads((out / "eval_test.json").read_text())
    assert one["processes"] == 1
    a, b = _numbers(one), _numbers(two)
    assert a.keys() == b.keys() and len(a) > 40
    assert all(abs(a[k] - b[k]) <= 1e-9 for k in a), [(k, a[k], b[k]) for k in a if a[k] != b[k]]
    per_one, per_two = np.load(out / "e.npy"), np.load(tmp_path / "two.npy")
    assert per_one.shape == (24,) and np.abs(per_one - per_two).max() <= 1e-9
    assert np.mean(per_one) == pytest.approx(one["neg_elbo"], rel=1e-12)


def test_per_example_values_do_not_depend_on_n_or_max_batch(gmm8_run, tmp_path):
    files = []
    for n, max_batch in (("10", "4096"), ("30", "7")):
        f = tmp_path / f"{n}.npy"
        args = ["-n", n, "--max-batch", max_batch, "--mc", "3", "--estimator", "both",
                "--per-example", f]  # fmt: skip
        assert run_cli("evaluate", gmm8_run, *args, "--out", tmp_path / n) == 0
        files.append(np.load(f))
    assert files[1].shape == (30,)
    np.testing.assert_allclose(files[0], files[1][:10], rtol=1e-9, atol=0)


def test_evaluate_scores_the_p_theta_that_sample_draws_from(digits_run, tmp_path, capsys):
    assert load(digits_run).clip == (-1.0, 1.0)  # discrete data: sampling clips x0_hat
    capsys.readouterr()
    assert run_cli("evaluate", digits_run, "-n", "6", "--out", tmp_path / "a") == 0
    assert "p_theta scored: x0_hat clipped to [-1, 1]" in capsys.readouterr().out
    clipped = json.loads((tmp_path / "a" / "eval_test.json").read_text())
    assert clipped["clip"] == [-1.0, 1.0]
    assert (
        run_cli("evaluate", digits_run, "-n", "6", "--no-clip-denoised", "--out", tmp_path / "b")
        == 0
    )
    assert "p_theta scored: x0_hat not clipped" in capsys.readouterr().out
    unclipped = json.loads((tmp_path / "b" / "eval_test.json").read_text())
    assert unclipped["clip"] is None and unclipped["neg_elbo"] != clipped["neg_elbo"]
    explicit = tmp_path / "c"
    assert run_cli("evaluate", digits_run, "-n", "6", "--clip-denoised", "--out", explicit) == 0
    assert json.loads((explicit / "eval_test.json").read_text())["neg_elbo"] == clipped["neg_elbo"]
    # sampling: the default is the clipped chain, --no-clip another one
    drawn = {}
    for flag in ("", "--clip-denoised", "--no-clip-denoised"):
        path = tmp_path / f"s{flag}.png"
        assert (
            run_cli("sample", digits_run, "-n", "4", "--out", path, *[f for f in [flag] if f]) == 0
        )
        drawn[flag] = np.load(path.with_suffix(".npy"))
    assert np.array_equal(drawn[""], drawn["--clip-denoised"])
    assert not np.array_equal(drawn[""], drawn["--no-clip-denoised"])


def test_bad_clip_and_per_example_requests(gmm8_run, tmp_path, capsys):
    capsys.readouterr()
    assert run_cli("evaluate", gmm8_run, "-n", "4", "--clip-denoised", "--out", tmp_path) == 2
    err = capsys.readouterr().err
    assert (
        "continuous data" in err
        and "drop --clip-denoised" in err
        and len(err.strip().splitlines()) == 1
    )
    assert (
        run_cli("sample", gmm8_run, "-n", "4", "--clip-denoised", "--out", tmp_path / "s.png") == 2
    )
    assert "drop --clip-denoised" in capsys.readouterr().err
    args = ["-n", "4", "--per-example", tmp_path / "e.txt", "--out", tmp_path]
    assert run_cli("evaluate", gmm8_run, *args) == 2
    assert "give a path ending in .npy" in capsys.readouterr().err


# --- the Monte Carlo estimate alone ------------------------------------------------------------


class CountingNet(nn.Module):
    """The network it wraps, counting the examples passed through it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.examples = 0

    def forward(self, x, t):
        self.examples += x.shape[0]
        return self.net(x, t)


def test_evaluate_mc_alone_reports_the_monte_carlo_estimate(gmm8_run, tmp_path, capsys):
    capsys.readouterr()
    args = ["-n", "8", "--mc", "3", "--json"]
    assert run_cli("evaluate", gmm8_run, *args, "--out", tmp_path / "mc") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["estimator"] == "mc" and doc["mc_timesteps"] == 3
    assert doc["neg_elbo"] == doc["neg_elbo_mc"] and doc["neg_elbo_se"] == doc["neg_elbo_mc_se"]
    assert doc["terms"] == {} and doc["per_timestep"] == []
    assert doc["request"]["estimator"] == "mc" and doc["request"]["mc_timesteps"] == 3
    assert json.loads((tmp_path / "mc" / "eval_test.json").read_text())["estimator"] == "mc"
    assert not (tmp_path / "mc" / "eval_test_per_timestep.png").exists()
    assert not (tmp_path / "mc" / "eval_test_mse.png").exists()
    # --estimator both: the same Monte Carlo estimate (keyed noise) beside the exact -ELBO
    assert run_cli("evaluate", gmm8_run, *args, "--estimator", "both", "--out", tmp_path) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["estimator"] == "exact" and len(both["per_timestep"]) == 5
    assert both["neg_elbo_mc"] == doc["neg_elbo_mc"] and both["neg_elbo"] != doc["neg_elbo"]
    assert (tmp_path / "eval_test_per_timestep.png").exists()


def test_evaluate_mc_alone_calls_the_network_k_over_t_as_often(gmm8_run, tmp_path):
    model = load(gmm8_run)
    n, K = 8, 3
    counts, evaluations = {}, {}
    for estimator, mc in (("exact", None), ("mc", K)):
        net = CountingNet(model.net)
        request = EvaluationRequest(n=n, estimator=estimator, mc_timesteps=mc)
        res = evaluate_run(
            dataclasses.replace(model, net=net), request, out_dir=tmp_path / estimator
        )
        counts[estimator], evaluations[estimator] = net.examples, res.evaluation
    assert counts["exact"] == n * model.T
    mc = evaluations["mc"]
    assert mc.estimator == "mc" and mc.mc_timesteps == K and mc.neg_elbo == mc.neg_elbo_mc
    assert counts["mc"] * model.T == counts["exact"] * K  # K / T of the exact loop's calls
    assert evaluations["exact"].neg_elbo_mc is None and evaluations["exact"].estimator == "exact"


# --- the request recorded beside the result ----------------------------------------------------


def test_eval_json_holds_the_request_and_the_model(gmm8_run, tmp_path):
    request = EvaluationRequest(
        n=6, estimator="both", mc_timesteps=2, iw=(1, 2), seed=3, max_batch=7
    )
    res = evaluate_run(gmm8_run, request, out_dir=tmp_path)
    doc = json.loads(res.json_path.read_text())
    assert EvaluationRequest.from_dict(doc["request"]) == request
    assert doc["model"] == load(gmm8_run).describe()
    assert doc["model"]["source"] == "ddpm" and doc["model"]["path"] == str(gmm8_run)
    assert doc["model"]["T"] == 5 and doc["model"]["clip"] is None
    assert doc["n"] == 6 and [b["K"] for b in doc["iw"]] == [1, 2]


def test_sample_run_writes_the_request_beside_the_samples(gmm8_run, tmp_path):
    request = SamplingRequest(n=4, seed=2, sampler="ddim", eta=0.5, steps="3", trajectory=True,
                              frames=3)  # fmt: skip
    res = sample_run(gmm8_run, request, out=tmp_path / "s.png")
    assert res.request_path == tmp_path / "s_request.json"
    doc = json.loads(res.request_path.read_text())
    assert SamplingRequest.from_dict(doc["request"]) == request
    assert doc["model"] == load(gmm8_run).respaced("3").describe()
    assert doc["model"]["T"] == 3
