"""Checkpoints as safetensors + JSON, written atomically, never unpickled; the run folder format.

A run folder (see ``ddpm.runs.run``) holds these files, named here and nowhere else:

    config.json              RunConfig + DataSpec + package version (JSON)
    checkpoint.safetensors   tensors model.*, ema.* (weights), best.* (the EMA weights of the
                             best validation, when validating), optim.* (optimizer moments),
                             sampler.* (timestep-sampler state); metadata, each value JSON:
                             step, optimizer (JSON of the rest of its state_dict), config,
                             cpu_seconds (training CPU time, summed over resumes),
                             validation (ddpm.training.validation.ValidationState, when validating)
    log.jsonl                one JSON line per logged step
    samples.png / .npy       the sample grid written at the end of training

Every file is written to a temporary file in its destination folder, flushed to disk and moved
into place with ``os.replace``, so a crash leaves either the old file or the new one, never half
of one. Weights and optimizer moments are stored with safetensors; everything else (configs,
optimizer hyper-parameters, counters) is JSON. Nothing here calls ``torch.load`` or ``pickle``,
so loading a checkpoint cannot run code.

Every safetensors file written here carries a SHA-256 digest of each tensor's bytes and of its
other metadata (metadata key ``checksums``); loading verifies them, so flipped bytes anywhere in
the file are reported instead of read as weights. Files without the key (written before it
existed, or by other programs) load unchecked. A checkpoint whose floating tensors hold NaN or
inf (a diverged run) is refused at load.

Any unreadable, truncated, damaged or mismatched file raises :class:`ddpm.errors.CheckpointError`
with a one-line message: which file, what is wrong, what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddpm.errors import CheckpointError
from ddpm.storage import (  # noqa: F401  (re-exported: the run folder's file formats)
    _RESTORE_HINT,
    atomic_write_bytes,
    check_finite,
    load_json,
    load_module_tensors,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_json,
    save_tensors,
)

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "LOG",
    "SAMPLES",
    "Checkpoint",
    "atomic_write_bytes",
    "check_finite",
    "load_checkpoint",
    "load_json",
    "load_module_tensors",
    "load_tensors",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "save_checkpoint",
    "save_json",
    "save_tensors",
]


# ---------------------------------------------------------------------------------------------
# The run folder format: file names, key prefixes, metadata encoding
# ---------------------------------------------------------------------------------------------

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
LOG = "log.jsonl"
SAMPLES = "samples.png"
SAMPLES_ARRAY = "samples.npy"
MODEL, EMA, BEST, OPTIM, SAMPLER = "model", "ema", "best", "optim", "sampler"  # name prefixes


def _prefixed(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v.detach() for k, v in tensors.items()}


@dataclass(frozen=True, eq=False)
class TrainingState:
    """What a checkpoint holds of training: the weights, their EMA and the best EMA weights by
    validation, the optimizer, the timestep sampler's state and the step (None: left out)."""

    model: nn.Module
    ema: nn.Module | None = None
    best: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    sampler_state: Mapping[str, Tensor] | None = None
    step: int = 0


def save_checkpoint(
    path: str | os.PathLike,
    state: TrainingState,
    config: Mapping[str, Any] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a training state, the run's config as a dict and any ``extra_meta`` JSON values to
    one safetensors file, atomically."""
    tensors = _prefixed(MODEL, state.model.state_dict())
    meta: dict[str, Any] = {**(extra_meta or {}), "step": int(state.step)}
    if state.ema is not None:
        tensors |= _prefixed(EMA, state.ema.state_dict())
    if state.best is not None:
        tensors |= _prefixed(BEST, state.best.state_dict())
    if state.optimizer is not None:
        opt_tensors, meta["optimizer"] = optimizer_to_tensors(state.optimizer.state_dict())
        tensors |= _prefixed(OPTIM, opt_tensors)
    if state.sampler_state is not None:
        tensors |= _prefixed(SAMPLER, state.sampler_state)
    if config is not None:
        meta["config"] = dict(config)
    return save_tensors(path, tensors, {k: json.dumps(v) for k, v in meta.items()})


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A checkpoint read by ``load_checkpoint``: tensors by prefixed name and decoded metadata."""

    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def config(self) -> dict[str, Any] | None:
        """The run's config as saved with the weights (a dict), or None for older files."""
        return self.meta.get("config")

    def part(self, prefix: str) -> dict[str, Tensor]:
        """The tensors stored under ``prefix.`` with the prefix removed."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    @property
    def has_best(self) -> bool:
        """True when training kept the best EMA weights by held-out validation."""
        return any(k.startswith(BEST + ".") for k in self.tensors)

    def load_weights(self, module: nn.Module, ema: bool = False, best: bool = False) -> None:
        """Load the model (with ema, the EMA; with best, the best-by-validation EMA) weights
        into module; mismatches are named."""
        prefix = BEST if best else EMA if ema else MODEL
        load_module_tensors(module, self.part(prefix), f"{self.path} ({prefix} weights)")

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore the optimizer's state (tensors move to its parameters as torch does)."""
        if "optimizer" not in self.meta:
            raise CheckpointError(
                f"{self.path}: not an optimizer checkpoint (no optimizer state saved); "
                "resume from a checkpoint written by `ddpm train`"
            )
        state = optimizer_from_tensors(self.part(OPTIM), self.meta["optimizer"])
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"{self.path}: optimizer state does not match the model's parameters ({detail}); "
                "the checkpoint was written by a different model or optimizer configuration"
            ) from None

    def sampler_state(self) -> dict[str, Tensor]:
        return self.part(SAMPLER)


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    metadata_only: bool = False,
    verify: bool = True,
) -> Checkpoint:
    """Read a file written by ``save_checkpoint``; tensors on device, metadata decoded.
    metadata_only: read the header alone (step, config, ...), no tensors. verify: check the
    stored checksums (``load_tensors``) and that every floating tensor is finite."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the run never saved a checkpoint, train it again")
    tensors, meta = load_tensors(path, device=device, metadata_only=metadata_only, verify=verify)
    if verify:
        check_finite(tensors, str(path))
    try:
        decoded = {k: json.loads(v) for k, v in meta.items()}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupted metadata ({e}); re-run training") from None
    return Checkpoint(path, tensors, decoded)
