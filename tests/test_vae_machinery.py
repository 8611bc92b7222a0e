"""`ddpm vae train` on the machinery of `ddpm train`: each training option changes what happens
(learning-rate schedule, held-out validation with patience and the best weights, autocast,
compile), the option a VAE cannot have is refused in one line, the resume rules and run-folder
safety are the DDPM's, and every command takes --threads."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import pytest
import torch

from ddpm.cli.main import _parser, main
from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ddpm.data import load_dataset
from ddpm.errors import CheckpointError, ConfigError
from ddpm.process.rng import seeded_generator
from ddpm.runs import folder as rundir
from ddpm.runs import run as runs
from ddpm.runs.checkpoint import load_checkpoint, load_tensors
from ddpm.training.loop import lr_at, train
from ddpm.training.validation import VALIDATION_SEED, ValidationEstimate, validation_split
from ddpm.vae.evaluate import evaluate_vae
from ddpm.vae.model import VaeConfig, VaeRunConfig
from ddpm.vae.train import VaeTrainer, load_vae_run, train_vae

DATA = DataConfig(name="gmm8", n_train=256, n_test=64)
TINY_FLAGS = ["--data", "gmm8", "--n-train", "256", "--n-test", "64", "--hidden", "16",
              "--latent-dim", "2", "--batch-size", "32", "--warmup", "2", "--log-every", "1",
              "--num-samples", "8", "--quiet"]  # fmt: skip


def tiny(steps: int, cpu_minutes: float | None = None, **train_kw) -> VaeRunConfig:
    train_kw = {"batch_size": 32, "warmup": 2, "log_every": 1, "num_samples": 8, **train_kw}
    return VaeRunConfig(
        vae=VaeConfig(hidden=16, latent_dim=2),
        data=DATA,
        train=TrainConfig(steps=steps, **train_kw),
        cpu_minutes=cpu_minutes,
    )


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / runs.LOG).read_text().splitlines()]


def _est(step: int, value: float) -> ValidationEstimate:
    return ValidationEstimate(step, value, 0.1, value / 2, 0.05, 0.0)


# --- --threads on every command ------------------------------------------------------------------


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every parser that runs a command, found independently of
    the code that adds --threads."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaves(sub, (*path, name))


def test_every_command_accepts_threads():
    leaves = list(_leaves(_parser()))
    names = {" ".join(path) for path, _ in leaves}
    assert {"train", "evaluate", "vae train", "vae evaluate", "vae compare"} <= names
    for path, parser in leaves:
        positionals = []
        for a in parser._actions:
            if not a.option_strings and a.nargs not in ("*", "?"):
                positionals += ["1"] * (a.nargs if isinstance(a.nargs, int) else 1)
        args = _parser().parse_args([*path, *positionals, "--threads", "1"])
        assert args.threads == 1, path


def test_vae_train_takes_threads(tmp_path, capsys):
    out = tmp_path / "vae"
    args = ["vae", "train", *TINY_FLAGS, "--max-steps", "2", "--out", str(out), "--threads", "1"]
    assert main(args) == 0
    assert "(1 thread)" in capsys.readouterr().out
    assert load_vae_run(out).step == 2


# --- each training option changes what happens -------------------------------------------------


def test_lr_schedule_sets_the_logged_learning_rate(tmp_path):
    train_vae(tiny(6, lr_schedule="cosine"), tmp_path / "cos", progress=False)
    train_vae(tiny(6), tmp_path / "const", progress=False)
    cos = [r["lr"] for r in records(tmp_path / "cos")]
    const = [r["lr"] for r in records(tmp_path / "const")]
    lr = TrainConfig().lr
    assert cos == [lr_at(k, lr, 2, "cosine", 6) for k in range(6)]  # step k + 1 logs step k's
    assert const == [lr_at(k, lr, 2) for k in range(6)]
    assert cos[-1] < const[-1] / 4  # the cosine decays towards 0 at --max-steps


def test_validation_logs_the_held_out_elbo_and_keeps_the_best_weights(tmp_path, capsys):
    out = tmp_path / "run"
    res = train_vae(tiny(6, val_every=3, val_fraction=0.25), out, progress=False)
    vals = [r for r in records(out) if "val_neg_elbo" in r]
    assert [r["step"] for r in vals] == [3, 6]
    best = min(vals, key=lambda r: r["val_neg_elbo"])
    assert res.validation.best_step == best["step"] and res.validation.best == pytest.approx(
        best["val_neg_elbo"], abs=1e-6
    )
    ckpt = load_checkpoint(out / runs.CHECKPOINT)
    assert ckpt.has_best and ckpt.meta["validation"]["best_step"] == best["step"]
    run = load_vae_run(out)
    assert run.best_step == best["step"] and "the best by held-out validation" in run.weights
    for name, p in run.model.state_dict().items():
        assert torch.equal(p, ckpt.tensors[f"best.{name}"])
    # the logged value is the VAE's own -ELBO on the held-out examples, re-estimated
    data = load_dataset(DATA)
    _, held = validation_split(len(data.train_examples), 0.25)
    x_val = data.train_examples[held]
    ev = evaluate_vae(run.model, x_val, run.spec, generator=seeded_generator(VALIDATION_SEED))
    assert ev.neg_elbo == pytest.approx(best["val_neg_elbo"], abs=1e-5)
    # the trainer trains on the other examples only
    trainer = VaeTrainer(tiny(1, val_every=3, val_fraction=0.25), data, torch.device("cpu"))
    assert len(trainer.train_x) + len(trainer.val_x) == len(data.train_examples)
    # vae evaluate scores the best weights and says so
    capsys.readouterr()
    assert main(["vae", "evaluate", str(out), "-n", "8", "--iw", "1"]) == 0
    words = f"EMA weights of step {best['step']}, the best by held-out validation"
    assert words in capsys.readouterr().out
    assert json.loads((out / "eval_test.json").read_text())["weights"].startswith(words)
    assert "eval_test.json" in rundir.read_manifest(out)


def test_patience_stops_training_and_a_resume_respects_it(tmp_path, monkeypatch):
    values = iter([3.0, 2.0, 2.5, 2.6, 2.7, 1.0])
    monkeypatch.setattr(VaeTrainer, "estimate", lambda self: _est(self.step, next(values)))
    out = tmp_path / "run"
    res = train_vae(tiny(40, val_every=2, patience=2), out, progress=False)
    # validations at 2, 4 (best), 6, 8: two without improvement -> stop at step 8
    assert res.steps == 8 and res.validation.stopped_early and res.validation.best_step == 4
    assert load_checkpoint(out / runs.CHECKPOINT).step == 8
    assert load_vae_run(out).best_step == 4
    again = train_vae(tiny(40, val_every=2, patience=2), out, resume=True, progress=False)
    assert again.steps == again.start_step == 8  # nothing to do
    more = train_vae(tiny(40, val_every=2, patience=3), out, resume=True, progress=False)
    assert more.steps == 10 and more.validation.since_best == 3  # a larger patience goes on


def test_autocast_bf16_trains_in_reduced_precision(tmp_path):
    train_vae(tiny(3), tmp_path / "fp32", progress=False)
    train_vae(tiny(3, autocast="bf16"), tmp_path / "bf16", progress=False)
    fp32, bf16 = records(tmp_path / "fp32"), records(tmp_path / "bf16")
    assert all(math.isfinite(r["loss"]) for r in bf16)
    assert bf16[0]["loss"] != fp32[0]["loss"]  # the same batch and noise, another precision
    assert bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=0.05, abs=0.05)


def test_compile_compiles_the_networks_the_loss_calls(tmp_path, monkeypatch):
    compiled = []

    def spy(fn, *args, **kwargs):
        compiled.append(fn)
        return real(fn, *args, **kwargs)

    real = torch.compile
    monkeypatch.setattr(torch, "compile", spy)
    train_vae(tiny(3, compile=True), tmp_path / "compiled", progress=False)
    assert len(compiled) == 2  # the encoder and the decoder
    monkeypatch.undo()
    train_vae(tiny(3), tmp_path / "plain", progress=False)
    a, b = records(tmp_path / "compiled"), records(tmp_path / "plain")
    assert all(math.isfinite(r["loss"]) for r in a)
    # step 1 starts from the same weights: the compiled networks compute the same loss
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-5)
    assert load_vae_run(tmp_path / "compiled").model.state_dict().keys() == (
        load_vae_run(tmp_path / "plain").model.state_dict().keys()
    )


# --- what a VAE cannot have is refused ---------------------------------------------------------


def test_val_timesteps_is_refused_and_never_recorded(tmp_path, capsys):
    with pytest.raises(ConfigError, match="val_timesteps"):
        VaeRunConfig(train=TrainConfig(val_timesteps=4))
    cfg = tiny(2, val_every=1)
    assert "val_timesteps" not in cfg.to_dict()["train"]
    assert VaeRunConfig.from_dict(cfg.to_dict()) == cfg
    for value in ("4", "16"):
        capsys.readouterr()
        code = main(["vae", "train", "--val-timesteps", value, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("ddpm vae: error: --val-timesteps") and "a VAE has none" in err
    assert not (tmp_path / "x").exists()
    parsers = {" ".join(path): parser for path, parser in _leaves(_parser())}
    assert "--val-timesteps" not in parsers["vae train"].format_help()  # offered only to a DDPM
    assert "--val-timesteps" in parsers["train"].format_help()


# --- the resume rules and run-folder safety of ddpm train ---------------------------------------


@pytest.mark.parametrize("kind", ["ddpm", "vae"])
def test_a_changed_architecture_on_resume_is_refused_alike(kind, tmp_path, capsys):
    out = tmp_path / kind
    if kind == "ddpm":
        cfg = RunConfig(
            diffusion=DiffusionConfig(T=5), model=ModelConfig(hidden=16, depth=1), data=DATA,
            train=TrainConfig(steps=2, batch_size=32, warmup=1, log_every=1, num_samples=4),
        )  # fmt: skip
        train(cfg, out, progress=False)
        args = ["train", "--out", str(out), "--resume", "--hidden", "24", "--quiet"]
    else:
        train_vae(tiny(2), out, progress=False)
        args = ["vae", "train", "--out", str(out), "--resume", "--hidden", "24", "--quiet"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    section = "model" if kind == "ddpm" else "vae"
    expected = (
        f"{out}: the requested configuration does not match the saved run ({section}.hidden: "
        "16 vs 24); resume with the run's own settings or train into a new --out"
    )
    assert len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize("cfg", [RunConfig(), VaeRunConfig()], ids=["ddpm", "vae"])
def test_the_resume_rules_are_one_rule(cfg):
    def changed(**kw):
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **kw))

    for free in runs.RESUMABLE:  # what may change
        kw = {free: getattr(cfg.train, free) + 1}
        if free == "patience":
            kw["val_every"] = 1
            assert runs.config_difference(changed(val_every=1), changed(**kw)) is None
        else:
            assert runs.config_difference(cfg, changed(**kw)) is None, free
    for fixed in ("lr", "batch_size", "val_every", "warmup"):  # what must match
        diff = runs.config_difference(cfg, changed(**{fixed: getattr(cfg.train, fixed) * 2 + 1}))
        assert diff is not None and diff.startswith(f"train.{fixed}: ")
    cosine = changed(lr_schedule="cosine")  # its horizon is --max-steps
    assert runs.config_difference(cosine, changed(lr_schedule="cosine", steps=9)) is not None
    if isinstance(cfg, VaeRunConfig):
        assert runs.config_difference(cfg, dataclasses.replace(cfg, cpu_minutes=2.0)) is None


def test_a_cpu_budget_that_is_spent_leaves_nothing_to_do_until_raised(tmp_path):
    out = tmp_path / "run"
    res = train_vae(tiny(1000, cpu_minutes=1e-9), out, progress=False)
    assert res.steps == 1 and res.cpu_seconds > 1e-9 * 60
    again = train_vae(tiny(1000, cpu_minutes=1e-9), out, resume=True, progress=False)
    assert again.steps == again.start_step == 1
    more = train_vae(tiny(3, cpu_minutes=60.0), out, resume=True, progress=False)
    assert more.steps == 3 and more.cpu_seconds > res.cpu_seconds
    log = records(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    assert load_checkpoint(out / runs.CHECKPOINT).meta["cpu_seconds"] == more.cpu_seconds


def test_a_failed_overwrite_brings_the_old_run_back_and_a_locked_run_is_refused(
    tmp_path, monkeypatch
):
    out = tmp_path / "run"
    train_vae(tiny(2), out, progress=False)
    before, _ = load_tensors(out / runs.CHECKPOINT)
    manifest = rundir.read_manifest(out)
    assert rundir.written_by(out)[runs.CHECKPOINT] == "vae train"

    def fail(self):
        raise ConfigError("training diverged")

    monkeypatch.setattr(VaeTrainer, "train_step", fail)
    with pytest.raises(ConfigError, match="diverged"):
        train_vae(tiny(4), out, overwrite=True, progress=False)
    after, _ = load_tensors(out / runs.CHECKPOINT)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert rundir.read_manifest(out) == manifest and not (out / rundir.BACKUP).exists()
    with pytest.raises(CheckpointError, match="already holds a run; pass resume"):
        train_vae(tiny(4), out, progress=False)
    with rundir.locked(out, "other"):
        with pytest.raises(rundir.RunLockedError, match="in use by another ddpm process"):
            train_vae(tiny(4), out, resume=True, progress=False)
