"""A run folder: everything needed to rebuild, resume, sample from and evaluate a trained model.

Its files (config.json, checkpoint.safetensors, log.jsonl, samples.png / .npy) and their
encoding are defined in ``ddpm.checkpoint``. Every file is written atomically (temp file +
os.replace); nothing is ever unpickled. Training randomness is a function of (seed, rank, step)
(``ddpm.rng``), so a checkpoint needs no RNG state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ddpm import __version__, runconfig, rundir
from ddpm.checkpoint import (
    CHECKPOINT,
    CONFIG,
    LOG,
    SAMPLES,
    load_checkpoint,
    load_json,
    save_json,
)
from ddpm.config import RunConfig
from ddpm.data import DataSpec
from ddpm.diffusion import Diffusion
from ddpm.errors import CheckpointError
from ddpm.nets import build_model

__all__ = ["CHECKPOINT", "CONFIG", "LOG", "SAMPLES", "Run", "load_run"]

# train.* fields a resume may change; everything else must match the saved run
RESUMABLE = ("steps", "log_every", "sample_every", "checkpoint_every", "num_samples", "patience")
# top-level fields a resume may change: the CPU budget of a VAE run (VaeRunConfig)
RESUMABLE_TOP = ("cpu_minutes",)


@dataclass(frozen=True)
class Run:
    """A model loaded from a run folder, ready for sampling and evaluation."""

    run_dir: Path
    config: RunConfig
    spec: DataSpec
    diffusion: Diffusion
    model: nn.Module
    step: int
    best_step: int | None = None  # the loaded weights are the best by validation, from this step

    @property
    def clip(self) -> tuple[float, float] | None:
        """Range to clip predicted x_0 to while sampling: [-1, 1] for discrete data."""
        return (-1.0, 1.0) if self.spec.discrete and self.config.diffusion.clip_x0 else None


def holds_run(run_dir: Path) -> bool:
    """A folder holds a run once the run has written its first checkpoint."""
    return (run_dir / CHECKPOINT).exists()


def save_config(run_dir: Path, cfg: RunConfig, spec: DataSpec) -> None:
    doc = {"ddpm_version": __version__, "config": cfg.to_dict(), "data_spec": spec.to_dict()}
    save_json(run_dir / CONFIG, doc)


def load_config(run_dir: Path) -> tuple[RunConfig, DataSpec]:
    """Read config.json of a run folder (CheckpointError when missing or invalid), after
    restoring a run that a killed ``--overwrite`` left in its backup."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(
            f"{run_dir}: a file, not a run folder; give the folder `ddpm train --out` wrote"
        )
    if not run_dir.is_dir():
        raise CheckpointError(
            f"{run_dir}: no such run folder; train one with `ddpm train --out DIR`"
        )
    rundir.recover_interrupted(run_dir)
    if not (run_dir / CONFIG).exists():
        raise CheckpointError(f"{run_dir}: no {CONFIG} here, so this is not a ddpm run folder")
    doc = load_json(run_dir / CONFIG)
    try:
        return RunConfig.from_dict(doc["config"]), DataSpec.from_dict(doc["data_spec"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{run_dir / CONFIG}: missing entry {e}; the file is damaged") from e


def build(cfg: RunConfig, spec: DataSpec) -> tuple[Diffusion, nn.Module]:
    """The diffusion and a freshly initialised network for cfg on data spec."""
    diffusion = Diffusion.of(cfg.diffusion)
    model = build_model(cfg.model, tuple(spec.shape), out_mult=diffusion.param.out_mult)
    return diffusion, model


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", ema: bool = True) -> Run:
    """Load a trained model from a run folder: the EMA weights by default, and of those the
    best by held-out validation when the run validated (``ddpm.validation``)."""
    run_dir = Path(run_dir)
    cfg, spec, _ = runconfig.saved_config(run_dir)  # from the checkpoint; config.json agrees
    diffusion, model = build(cfg, spec)
    ckpt = load_checkpoint(run_dir / CHECKPOINT, device)
    best = ema and ckpt.has_best
    ckpt.load_weights(model, ema=ema, best=best)
    model.to(device).eval()
    best_step = int(ckpt.meta["validation"]["best_step"]) if best else None
    return Run(run_dir, cfg, spec, diffusion, model, ckpt.step, best_step)


def weights_in_words(step: int, best_step: int | None, ema: bool = True) -> str:
    """Which weights of a run trained to ``step`` were loaded, in words (reports, JSON)."""
    if not ema:
        return f"training weights (not the EMA) of step {step}"
    if best_step is not None:
        return (
            f"EMA weights of step {best_step}, the best by held-out validation "
            f"(trained to step {step})"
        )
    return f"EMA weights of step {step}"


def _first_difference(a, b) -> str:
    for part in dataclasses.fields(a):
        x, y = getattr(a, part.name), getattr(b, part.name)
        if not dataclasses.is_dataclass(x):  # a top-level value (a VAE's cpu_minutes)
            if x != y:
                return f"{part.name}: {x!r} vs {y!r}"
            continue
        for f in dataclasses.fields(x):
            if getattr(x, f.name) != getattr(y, f.name):
                return f"{part.name}.{f.name}: {getattr(x, f.name)!r} vs {getattr(y, f.name)!r}"
    return "no difference"


def config_difference(saved, requested) -> str | None:
    """First difference that makes requested incompatible with a saved run, else None.

    saved, requested: RunConfig, or VaeRunConfig (``ddpm vae train``: the same rules). Only the
    length of training (RESUMABLE_TOP too) and how often it logs, samples and saves may change
    on resume; the horizon of a cosine learning-rate schedule is --steps, so it stays.
    """
    if type(saved) is not type(requested):
        return f"kind of run: {type(saved).__name__} vs {type(requested).__name__}"
    resumable = RESUMABLE
    if saved.train.lr_schedule != "constant":  # the schedule's horizon is --steps
        resumable = tuple(f for f in RESUMABLE if f != "steps")
    keep = {f: getattr(saved.train, f) for f in resumable}
    top = {f: getattr(saved, f) for f in RESUMABLE_TOP if hasattr(saved, f)}
    train = dataclasses.replace(requested.train, **keep)
    aligned = dataclasses.replace(requested, train=train, **top)
    if aligned == saved:
        return None
    return _first_difference(saved, aligned)
