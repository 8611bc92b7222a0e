"""A run folder: everything needed to rebuild, resume, sample from and evaluate a trained model.

Its files (config.json, checkpoint.safetensors, log.jsonl, samples.png / .npy) and their
encoding are defined in ``ddpm.runs.checkpoint``. Every file is written atomically (temp file +
os.replace); nothing is ever unpickled. Training randomness is a function of (seed, rank, step)
(``ddpm.process.rng``), so a checkpoint needs no RNG state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

from ddpm.config import RunConfig
from ddpm.data import DataSpec
from ddpm.errors import require_choice
from ddpm.model import UNIT_RANGE, Model, Source
from ddpm.nets import build_model
from ddpm.process.continuous import ContinuousSchedule
from ddpm.process.diffusion import Diffusion
from ddpm.runs import config as runconfig
from ddpm.runs.checkpoint import (
    CHECKPOINT,
    CONFIG,
    LOG,
    SAMPLES,
    load_checkpoint,
)
from ddpm.runs.config import (  # noqa: F401  (re-exported: what a run folder holds)
    RESUMABLE,
    RESUMABLE_TOP,
    config_difference,
    holds_run,
    load_config,
    save_config,
)

__all__ = ["CHECKPOINT", "CONFIG", "LOG", "SAMPLES", "Weights", "load_run_model"]

Weights = Literal["ema", "raw"]  # the EMA of the weights (the best by validation) or the raw ones


def build(cfg: RunConfig, spec: DataSpec) -> tuple[Diffusion, nn.Module]:
    """The diffusion and a freshly initialised network for cfg on data spec."""
    diffusion = Diffusion.of(cfg.diffusion)
    model = build_model(cfg.model, tuple(spec.shape), out_mult=diffusion.param.out_mult)
    return diffusion, model


def load_run_model(
    run_dir: str | Path, device: torch.device | str = "cpu", weights: Weights = "ema"
) -> Model:
    """The model of a run folder: the EMA weights by default, and of those the best by held-out
    validation when the run validated (``ddpm.training.validation``); weights='raw': the
    training weights of the last step."""
    require_choice("weights", weights, get_args(Weights))
    run_dir = Path(run_dir)
    cfg, spec, _ = runconfig.saved_config(run_dir)  # from the checkpoint; config.json agrees
    diffusion, net = build(cfg, spec)
    ckpt = load_checkpoint(run_dir / CHECKPOINT, device)
    ema = weights == "ema"
    best = ema and ckpt.has_best
    ckpt.load_weights(net, ema=ema, best=best)
    net.to(device).eval()
    best_step = int(ckpt.meta["validation"]["best_step"]) if best else None
    clip = UNIT_RANGE if spec.discrete and cfg.diffusion.clip_x0 else None
    source = Source(
        "ddpm", run_dir, weights_in_words(ckpt.step, best_step, ema),
        best_step if best_step is not None else ckpt.step, cfg.data,
    )  # fmt: skip
    continuous = ContinuousSchedule.of(cfg.diffusion.schedule, diffusion.schedule)
    return Model(diffusion, net, spec, clip, continuous, source)


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
