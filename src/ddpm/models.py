"""One loader for every folder a trained model can come in: ``load_model(path)``.

A ddpm run folder (``ddpm train``) and a diffusers ``DDPMPipeline.save_pretrained`` folder both
become a ``LoadedModel``: the process as a ``Diffusion``, a network with ``model(x, t)`` and the
per-example shape. Sampling and evaluation take it without asking where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ddpm.config import DataConfig
from ddpm.data import BUILTIN_NAMES, DataSpec
from ddpm.diffusion import Diffusion
from ddpm.errors import CheckpointError, ConfigError, DataError
from ddpm.foreign import diffusers as foreign_diffusers


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A trained model ready for sampling and evaluation, whatever folder it came from."""

    path: Path
    source: str  # 'ddpm' (run folder) or 'diffusers' (DDPMPipeline folder)
    diffusion: Diffusion
    model: nn.Module
    spec: DataSpec  # shape and levels of one example; diffusers: 8-bit images in [-1, 1]
    data: DataConfig | None  # the data it was trained on; None when the folder does not say
    clip: tuple[float, float] | None  # range predicted x_0 is clipped to while sampling
    schedule_name: str | None = None  # 'linear' / 'cosine' of a ddpm run (its continuous form)
    weights: str = ""  # which weights were loaded, in words (for reports)

    @property
    def name(self) -> str:
        return self.path.name

    def data_config(self, data: str | None = None) -> DataConfig:
        """The data to score it on: ``data`` (a name or path) if given, else its own data."""
        if data is None:
            if self.data is None:
                raise ConfigError(
                    f"{self.path} is a {self.source} folder, which holds no data: "
                    "give the data to evaluate on with --data NAME|PATH"
                )
            return self.data
        folder = data not in BUILTIN_NAMES and Path(data).expanduser().is_dir()
        if folder and self.spec.is_image:  # resize and convert images to what the model takes
            c, h, w = self.spec.shape
            if h != w:
                raise DataError(f"--data {data}: image folders are cropped square; {h}x{w} is not")
            return DataConfig(name=data, image_size=h, grayscale=c == 1)
        return DataConfig(name=data)

    def check_data(self, spec: DataSpec) -> None:
        """The data's shape must be the one the network takes."""
        if tuple(spec.shape) != tuple(self.spec.shape):
            raise DataError(
                f"data {spec.name!r} has examples of shape {tuple(spec.shape)} but {self.path} "
                f"takes {tuple(self.spec.shape)}; give data of that shape with --data"
            )


def load_model(
    path: str | Path, device: torch.device | str = "cpu", ema: bool = True
) -> LoadedModel:
    """Load a trained model from a ddpm run folder (EMA weights by default) or a diffusers
    DDPMPipeline folder (model_index.json, unet/, scheduler/)."""
    from ddpm import rundir

    path = Path(path)
    rundir.recover_interrupted(path)  # a run a killed --overwrite left in its backup
    if foreign_diffusers.is_diffusers_folder(path):
        d = foreign_diffusers.load_diffusers(path, device)
        spec = DataSpec.from_levels(path.name or "diffusers", d.shape, 256)
        return LoadedModel(
            path, "diffusers", d.diffusion, d.model, spec, None, d.clip,
            weights="the diffusers folder's UNet2DModel",
        )  # fmt: skip
    if path.is_dir() and not (path / "config.json").exists():
        raise CheckpointError(
            f"{path}: neither a ddpm run folder (config.json) nor a diffusers folder "
            "(model_index.json); give the folder `ddpm train` or save_pretrained wrote"
        )
    from ddpm import runs

    run = runs.load_run(path, device=device, ema=ema)
    cfg = run.config
    weights = runs.weights_in_words(run.step, run.best_step, ema)
    return LoadedModel(
        path, "ddpm", run.diffusion, run.model, run.spec, cfg.data, run.clip,
        cfg.diffusion.schedule, weights,
    )  # fmt: skip
