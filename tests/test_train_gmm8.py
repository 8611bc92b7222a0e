"""Training learns: a gmm8 run of 3000 steps lowers its loss, samples every mode, stays near the
Bayes-optimal model of its family and evaluates with the KL chain. Its own file, so that the
test processes (pytest-xdist, one file each at a time) share the long run out evenly."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from ddpm.config import DataConfig, DiffusionConfig, RunConfig, TrainConfig
from ddpm.data import load_dataset
from ddpm.jobs.evaluate import evaluate_run
from ddpm.likelihood.theory import theory_run
from ddpm.loader import load
from ddpm.process.rng import seeded_generator
from ddpm.requests import EvaluationRequest, TheoryRequest
from ddpm.runs import run as runs
from ddpm.sampling.ancestral import sample
from ddpm.training.loop import train
from ddpm.training.losses import training_loss


def gmm8_config(steps: int, **diffusion) -> RunConfig:
    return RunConfig(
        diffusion=DiffusionConfig(T=100, **diffusion),
        data=DataConfig(name="gmm8", n_train=4000, n_test=500),
        train=TrainConfig(steps=steps, batch_size=256, warmup=100, log_every=100, num_samples=16),
    )


@pytest.fixture(scope="session")  # trained once per process, kept while other modules run
def gmm8_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gmm8") / "run"
    train(gmm8_config(3000), out, progress=False)
    return out


def test_training_on_gmm8_lowers_the_loss_and_samples_land_on_the_modes(gmm8_run):
    log = [json.loads(line) for line in (gmm8_run / runs.LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(100, 3001, 100))
    first, last = log[0]["loss"], sum(r["loss"] for r in log[-5:]) / 5
    assert last < first
    model = load(gmm8_run)
    config, spec = runs.load_config(gmm8_run)
    # the same loss (same x0, t, noise) for the fresh network and the trained one
    fresh = runs.build(config, spec)[1]
    data = load_dataset(config.data).test
    cfg = config.diffusion
    t = torch.randint(1, cfg.T + 1, (len(data),), generator=seeded_generator(2))
    p_t = torch.full((len(data),), 1 / cfg.T, dtype=torch.float64)
    with torch.no_grad():
        losses = [
            training_loss(m, cfg, data, t, p_t, None, generator=seeded_generator(3))
            .loss.mean()
            .item()
            for m in (dataclasses.replace(model, net=fresh), model)
        ]
    assert losses[1] < 0.5 * losses[0]  # measured: about 0.22 vs 1.0
    x = sample(model, 2000, seeded_generator(1)).x0
    angles = torch.arange(8) * 2 * math.pi / 8
    modes = 2 * torch.stack([angles.cos(), angles.sin()], dim=1)
    dist_to_mode = torch.cdist(x, modes).min(dim=1).values
    assert (dist_to_mode < 3 * 0.1).float().mean() >= 0.9  # within 3 std of a mode
    # every mode is visited (no mode collapse): at least 5% of samples per mode
    nearest = torch.cdist(x, modes).argmin(dim=1)
    assert torch.bincount(nearest, minlength=8).min() >= 0.05 * 2000
    assert (gmm8_run / "samples.png").stat().st_size > 0


def test_trained_gmm8_model_against_the_bayes_optimal_one(gmm8_run):
    """theory_run pairs the trained model and the oracle on the same x_0 and x_t draws: the
    oracle's ELBO is the best in the model family, so the paired gap is >= 0 (within SE)."""
    res = theory_run(load(gmm8_run), TheoryRequest(n=400, iw=(1,)))
    gap, se = res.gap_to_oracle()
    assert gap > -4 * se
    assert se < 0.5 * res.subject.neg_elbo_se  # pairing removes most of the data variance
    assert res.oracle.entropy == res.subject.entropy  # same examples
    assert res.to_dict()["gap_to_oracle"] == gap


def test_evaluate_run_reports_the_kl_chain_on_known_density(gmm8_run, tmp_path):
    res = evaluate_run(gmm8_run, EvaluationRequest(n=200, iw=(1, 4)), out_dir=tmp_path)
    ev = res.evaluation
    assert (
        ev.log_likelihood_exact is False and ev.neg_log_likelihood == ev.iw[-1].neg_log_likelihood
    )
    assert ev.entropy is not None and ev.kl_joint == pytest.approx(ev.neg_elbo - ev.entropy)
    assert ev.kl_joint + 4 * ev.kl_joint_se > ev.kl_marginal > -4 * ev.kl_marginal_se
    doc = json.loads(res.json_path.read_text())
    assert doc["kl_marginal"] == ev.kl_marginal and "per_example" not in doc
    assert res.per_timestep_path.exists()
