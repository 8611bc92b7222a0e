"""A run folder: everything needed to rebuild, resume, sample from and evaluate a trained model.

    config.json              RunConfig + DataSpec + package version (JSON)
    checkpoint.safetensors   model.*, ema.* weights, optim.* AdamW state, sampler.* timestep-
                             sampler state; metadata: step, optimizer groups, config (JSON)
    log.jsonl                one JSON line per logged step (step, loss, lr, grad_norm, seconds)
    samples.png / .npy       the sample grid written at the end of training

Every file is written atomically (temp file + os.replace); nothing is ever unpickled. Training
randomness is a function of (seed, rank, step) (``ddpm.rng``), so a checkpoint needs no RNG state.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ddpm import __version__, runconfig
from ddpm.checkpoint import load_json, load_module_tensors, load_tensors, save_json, save_tensors
from ddpm.config import RunConfig
from ddpm.data import DataSpec
from ddpm.errors import CheckpointError
from ddpm.nets import build_model
from ddpm.reverse import Parameterisation
from ddpm.schedule import NoiseSchedule

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
LOG = "log.jsonl"
SAMPLES = "samples.png"
# train.* fields a resume may change; everything else must match the saved run
RESUMABLE = ("steps", "log_every", "sample_every", "checkpoint_every", "num_samples")


@dataclass(frozen=True)
class Run:
    """A model loaded from a run folder, ready for sampling and evaluation."""

    run_dir: Path
    config: RunConfig
    spec: DataSpec
    schedule: NoiseSchedule
    param: Parameterisation
    model: nn.Module
    step: int

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
    """Read config.json of a run folder (CheckpointError when missing or invalid)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(
            f"{run_dir}: no such run folder; train one with `ddpm train --out DIR`"
        )
    if not (run_dir / CONFIG).exists():
        raise CheckpointError(f"{run_dir}: no {CONFIG} here, so this is not a ddpm run folder")
    doc = load_json(run_dir / CONFIG)
    try:
        return RunConfig.from_dict(doc["config"]), DataSpec.from_dict(doc["data_spec"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{run_dir / CONFIG}: missing entry {e}; the file is damaged") from e


def build(cfg: RunConfig, spec: DataSpec) -> tuple[NoiseSchedule, Parameterisation, nn.Module]:
    """Schedule, parameterisation and a freshly initialised network for cfg on data spec."""
    schedule = NoiseSchedule.from_name(cfg.diffusion.schedule, cfg.diffusion.T)
    param = Parameterisation.of(cfg.diffusion)
    model = build_model(cfg.model, tuple(spec.shape), out_mult=param.out_mult)
    return schedule, param, model


def state_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    save_tensors(run_dir / CHECKPOINT, tensors, {k: json.dumps(v) for k, v in meta.items()})


def load_checkpoint(run_dir: Path, device: torch.device | str = "cpu"):
    """(tensors, metadata) of checkpoint.safetensors; metadata values decoded from JSON."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the run never saved a checkpoint, train it again")
    tensors, meta = load_tensors(path, device=device)
    try:
        return tensors, {k: json.loads(v) for k, v in meta.items()}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupted metadata ({e}); re-run training") from e


def load_state(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, where: Path):
    """Load the ``prefix.*`` tensors into module; mismatches become a CheckpointError."""
    state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    load_module_tensors(module, state, f"{where} ({prefix} weights)")


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", ema: bool = True) -> Run:
    """Load a trained model (EMA weights by default) from a run folder."""
    run_dir = Path(run_dir)
    cfg, spec, _ = runconfig.saved_config(run_dir)  # from the checkpoint; config.json agrees
    schedule, param, model = build(cfg, spec)
    tensors, meta = load_checkpoint(run_dir, device)
    load_state(model, tensors, "ema" if ema else "model", run_dir / CHECKPOINT)
    model.to(device).eval()
    return Run(run_dir, cfg, spec, schedule, param, model, int(meta.get("step", 0)))


def _first_difference(a: RunConfig, b: RunConfig) -> str:
    for part in dataclasses.fields(a):
        x, y = getattr(a, part.name), getattr(b, part.name)
        for f in dataclasses.fields(x):
            if getattr(x, f.name) != getattr(y, f.name):
                return f"{part.name}.{f.name}: {getattr(x, f.name)!r} vs {getattr(y, f.name)!r}"
    return "no difference"


def config_difference(saved: RunConfig, requested: RunConfig) -> str | None:
    """First difference that makes requested incompatible with a saved run, else None.

    Only the length of training and how often it logs, samples and saves may change on resume.
    """
    keep = {f: getattr(saved.train, f) for f in RESUMABLE}
    aligned = dataclasses.replace(requested, train=dataclasses.replace(requested.train, **keep))
    if aligned == saved:
        return None
    return _first_difference(saved, aligned)
