"""Held-out validation during training, best weights, early stopping, lr schedule, presets."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math

import numpy as np
import pytest
import torch

from ddpm.cli.main import main
from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ddpm.data import load_dataset
from ddpm.errors import CheckpointError, ConfigError
from ddpm.likelihood.elbo import elbo_mc, elbo_terms, log_strata
from ddpm.likelihood.evaluate import mean_se
from ddpm.loader import load
from ddpm.model import Model
from ddpm.process.rng import KeyedNoise
from ddpm.runs import run as runs
from ddpm.runs.checkpoint import load_checkpoint, load_tensors
from ddpm.runs.logs import run_best_step
from ddpm.training.loop import Trainer, lr_at, train
from ddpm.training.presets import PRESETS, apply_preset
from ddpm.training.validation import (
    ValidationEstimate,
    ValidationState,
    estimate_neg_elbo,
    validation_split,
)


def _tiny(steps: int, val_every: int = 4, patience: int = 0, **train_kw) -> RunConfig:
    return RunConfig(
        diffusion=DiffusionConfig(T=5),
        model=ModelConfig(channels=8, attn_resolutions=()),
        data=DataConfig(name="digits"),
        train=TrainConfig(
            steps=steps, batch_size=16, warmup=3, log_every=2, checkpoint_every=0,
            num_samples=4, val_every=val_every, patience=patience, val_timesteps=4, **train_kw,
        ),
    )  # fmt: skip


# --- the split ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n,fraction", [(1500, 0.1), (10, 0.5), (2, 0.9), (7, 0.01)])
def test_validation_split_is_fixed_disjoint_and_complete(n, fraction):
    keep, held = validation_split(n, fraction)
    assert len(held) == min(max(1, round(fraction * n)), n - 1)
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(n))
    again = validation_split(n, fraction)
    assert np.array_equal(again[0], keep) and np.array_equal(again[1], held)


def test_trainer_trains_only_on_the_kept_examples():
    cfg = _tiny(2)
    data = load_dataset(cfg.data)
    trainer = Trainer(cfg, data, torch.device("cpu"))
    keep, held = validation_split(data.train.shape[0], cfg.train.val_fraction)
    assert torch.equal(trainer.train_x[torch.arange(len(keep))], data.train[keep])
    assert torch.equal(trainer.val_x, data.train[held])
    assert len(held) == 150  # 10% of the 1500 digits training examples


# --- the estimate ------------------------------------------------------------------------------


def test_validation_estimate_is_the_stratified_elbo_in_bits_per_dim():
    cfg = _tiny(2)
    data = load_dataset(cfg.data)
    trainer = Trainer(cfg, data, torch.device("cpu"))
    ema = Model(trainer.diffusion, trainer.ema, data.spec, clip=trainer.clip)
    est = estimate_neg_elbo(ema, trainer.val_x, 4, 0)
    nelbo = elbo_mc(
        Model(trainer.diffusion, trainer.ema.eval(), data.spec, clip=trainer.clip),
        trainer.val_x, 4, KeyedNoise(0, torch.arange(trainer.val_x.shape[0])),
        strata=log_strata(5, 4),
    )  # fmt: skip
    mean, se = mean_se(nelbo)
    assert est.neg_elbo == pytest.approx(mean, rel=1e-12)
    assert est.neg_elbo_se == pytest.approx(se, rel=1e-12)
    assert est.bits_per_dim == pytest.approx(mean / (64 * math.log(2)), rel=1e-12)
    # the same noise every time: a second estimate of the same weights is identical
    again = estimate_neg_elbo(ema, trainer.val_x, 4, 0)
    assert again.neg_elbo == est.neg_elbo


def test_stratified_estimate_has_a_much_smaller_standard_error_than_uniform_t():
    # An untrained network on gmm8 at T = 1000: the terms of small t dominate the sum.
    cfg = RunConfig(data=DataConfig(name="gmm8", n_train=600, n_test=10))
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    diffusion, net = runs.build(cfg, data.spec)
    model = Model(diffusion, net, data.spec)
    x = data.train[:500]
    noise = KeyedNoise(1)
    with torch.no_grad():
        uniform = elbo_mc(model, x, 16, noise)
        strat = elbo_mc(model, x, 16, noise, strata=log_strata(1000, 16))
        exact = elbo_terms(model, x[:100], KeyedNoise(2)).total()
    (_, se_u), (ms, se_s), (me, se_e) = mean_se(uniform), mean_se(strat), mean_se(exact)
    assert se_s < se_u / 3
    assert abs(ms - me) < 4 * math.hypot(se_s, se_e)  # and it estimates the same -ELBO


# --- the state ---------------------------------------------------------------------------------


def _est(step: int, value: float) -> ValidationEstimate:
    return ValidationEstimate(step, value, 0.1, value / 2, 0.05, 0.0)


def test_validation_state_tracks_the_best_and_runs_out_of_patience():
    s = ValidationState()
    assert not s.out_of_patience(2)
    for step, value in [(1, 3.0), (2, 2.0), (3, 2.5), (4, 2.0)]:  # a tie is no improvement
        s = s.after(_est(step, value))
    assert (s.best, s.best_step, s.since_best, s.best_bpd) == (2.0, 2, 2, 1.0)
    assert s.out_of_patience(2) and not s.out_of_patience(3) and not s.out_of_patience(0)
    s = s.after(_est(5, 1.5))
    assert (s.best_step, s.since_best) == (5, 0)
    assert ValidationState.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    fresh = ValidationState.from_dict(json.loads(json.dumps(ValidationState().to_dict())))
    assert fresh.best == math.inf and fresh.best_step == -1
    with pytest.raises(CheckpointError, match="validation state"):
        ValidationState.from_dict({"best": 1.0})


# --- training with validation ------------------------------------------------------------------


def test_training_logs_validations_and_keeps_the_best_weights(tmp_path, capsys):
    out = tmp_path / "run"
    res = train(_tiny(12), out, progress=False)
    vals = [r for r in map(json.loads, (out / runs.LOG).open()) if "val_neg_elbo" in r]
    assert [r["step"] for r in vals] == [4, 8, 12]
    best = min(vals, key=lambda r: r["val_neg_elbo"])
    assert res.validation.best == pytest.approx(best["val_neg_elbo"], abs=1e-6)
    assert res.validation.best_step == best["step"]
    ckpt = load_checkpoint(out / runs.CHECKPOINT)
    assert ckpt.has_best and ckpt.meta["validation"]["best_step"] == best["step"]
    model = load(out)
    assert model.source.step == best["step"]
    for name, p in model.net.state_dict().items():
        assert torch.equal(p, ckpt.tensors[f"best.{name}"])
    # re-estimating the loaded weights gives the logged best value
    data = load_dataset(model.data_config())
    _, held = validation_split(data.train.shape[0], 0.1)
    est = estimate_neg_elbo(model, data.train[held], 4, 0)
    assert est.neg_elbo == pytest.approx(best["val_neg_elbo"], abs=1e-5)
    # ddpm evaluate says which weights it scored, on the terminal and in its JSON
    capsys.readouterr()
    assert main(["evaluate", str(out), "-n", "4"]) == 0
    words = f"EMA weights of step {best['step']}, the best by held-out validation"
    assert f"weights scored: {words} (trained to step 12)" in capsys.readouterr().out
    assert json.loads((out / "eval_test.json").read_text())["weights"].startswith(words)


def test_a_run_without_validation_has_no_best_weights(tmp_path):
    out = tmp_path / "run"
    res = train(_tiny(4, val_every=0), out, progress=False)
    assert res.validation is None
    assert not load_checkpoint(out / runs.CHECKPOINT).has_best
    assert run_best_step(out) == -1
    assert load(out).source.weights == "EMA weights of step 4"
    assert load(out, weights="raw").source.weights == "training weights (not the EMA) of step 4"


def test_resume_with_validation_equals_training_in_one_go(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(_tiny(12), straight, progress=False)
    train(_tiny(6), split, progress=False)
    train(_tiny(12), split, resume=True, progress=False)
    a, meta_a = load_tensors(straight / runs.CHECKPOINT)
    b, meta_b = load_tensors(split / runs.CHECKPOINT)
    assert a.keys() == b.keys() and any(k.startswith("best.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads(meta_a["validation"]) == json.loads(meta_b["validation"])


def test_patience_stops_training_and_a_resume_respects_it(tmp_path, monkeypatch):
    values = iter([3.0, 2.0, 2.5, 2.6, 2.7, 1.0, 2.0, 2.0, 2.0])

    def fake(model, x_val, K, step, info=None, max_batch=4096):
        return _est(step, next(values))

    monkeypatch.setattr(importlib.import_module("ddpm.training.loop"), "estimate_neg_elbo", fake)
    out = tmp_path / "run"
    res = train(_tiny(40, val_every=2, patience=2), out, progress=False)
    # validations at 2, 4 (best), 6, 8: two without improvement -> stop at step 8
    assert res.steps == 8 and res.validation.stopped_early and res.validation.best_step == 4
    assert load_checkpoint(out / runs.CHECKPOINT).step == 8
    again = train(_tiny(40, val_every=2, patience=2), out, resume=True, progress=False)
    assert again.steps == again.start_step == 8  # nothing to do
    more = train(_tiny(40, val_every=2, patience=3), out, resume=True, progress=False)
    # a larger patience continues: 10 (2.7, third miss) -> stop
    assert more.steps == 10 and more.validation.stopped_early and more.validation.since_best == 3


def test_patience_without_validation_is_refused():
    with pytest.raises(ConfigError, match="add val_every N"):
        TrainConfig(patience=3)
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig(val_every=10, val_fraction=1.0)


# --- the learning-rate schedule ----------------------------------------------------------------


def test_cosine_learning_rate_decays_from_the_warm_up_to_zero():
    assert lr_at(0, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, "cosine", 110) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, "cosine", 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, "cosine", 110) == pytest.approx(0.5)
    assert lr_at(110, 1.0, 10, "cosine", 110) == pytest.approx(0.0, abs=1e-15)
    assert lr_at(500, 1.0, 10, "constant", 110) == 1.0
    with pytest.raises(ConfigError, match="lr schedule"):
        TrainConfig(lr_schedule="step")


def test_resuming_a_cosine_run_to_more_steps_is_refused(tmp_path):
    cfg = _tiny(4, val_every=0, lr_schedule="cosine")
    out = tmp_path / "run"
    train(cfg, out, progress=False)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=8))
    with pytest.raises(CheckpointError, match="steps"):
        train(longer, out, resume=True, progress=False)


# --- presets -----------------------------------------------------------------------------------


def test_likelihood_preset_sets_its_values_and_flags_override_them(tmp_path, capsys):
    cfg = apply_preset("likelihood")
    for section, values in PRESETS["likelihood"].items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown preset 'fast'.*likelihood"):
        apply_preset("fast")
    out = tmp_path / "run"
    args = ["train", "--preset", "likelihood", "--data", "gmm8", "--n-train", "400",
            "--n-test", "50", "--max-steps", "4", "--val-every", "2", "--hidden", "16",
            "--batch-size", "32", "--num-samples", "4", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    saved = json.loads((out / runs.CONFIG).read_text())["config"]
    assert saved["diffusion"]["loss"] == "vlb" and saved["diffusion"]["variance"] == "learned"
    assert saved["model"]["hidden"] == 16 and saved["train"]["val_every"] == 2  # flags win
    assert "validation: best -ELBO" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0  # the preset matches the saved run
    assert main(["train", "--preset", "fast", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset" in capsys.readouterr().err
