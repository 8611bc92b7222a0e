"""One loader for every place a trained model can come from: ``load(path)`` returns a ``Model``.

Each source is an entry (name, recognise, load) in ``SOURCES``. Without ``source`` they are tried
in order: a diffusers ``DDPMPipeline.save_pretrained`` folder (model_index.json), then a ddpm run
folder (config.json + checkpoint). A checkpoint file of another library says nothing about the
model it holds, so it is loaded by naming its source (``source='improved-diffusion'``) and giving
the settings it was trained with (``flags``, in that library's own spelling). A new foreign format
adds its entry here and returns a ``Model``; nothing downstream asks where a model came from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ddpm.errors import CheckpointError, ConfigError, require_choice
from ddpm.foreign import denoising_diffusion_pytorch, improved_diffusion
from ddpm.foreign import diffusers as foreign_diffusers
from ddpm.model import Model
from ddpm.runs import folder as rundir
from ddpm.runs.run import CONFIG, Weights, load_run_model

# load(path, device, weights, flags): flags is the source's own settings string, or None
LoadSource = Callable[[Path, torch.device | str, Weights, str | None], Model]


def _without_flags(name: str, load_source: Callable[..., Model]) -> LoadSource:
    """A source whose files say everything: flags are refused, not ignored."""

    def load_it(path: Path, device: torch.device | str, weights: Weights, flags: str | None):
        if flags is not None:
            raise ConfigError(
                f"{path}: a {name} model records its own settings; drop flags", params=("flags",)
            )
        return load_source(path, device, weights)

    return load_it


# (name, does this path hold that source? (None: only when named), load it), tried in order
Source = tuple[str, Callable[[Path], bool] | None, LoadSource]
SOURCES: list[Source] = [
    (
        "diffusers",
        foreign_diffusers.is_diffusers_folder,
        _without_flags("diffusers", lambda p, device, w: foreign_diffusers.load_model(p, device)),
    ),
    (
        "ddpm",
        lambda path: (path / CONFIG).exists() or not path.is_dir(),
        _without_flags("ddpm", load_run_model),
    ),
    ("improved-diffusion", None, improved_diffusion.load_checkpoint),
    ("denoising-diffusion-pytorch", None, denoising_diffusion_pytorch.load_checkpoint),
]


def source_names() -> tuple[str, ...]:
    """The names ``load(..., source=NAME)`` accepts."""
    return tuple(name for name, _, _ in SOURCES)


def _named_only() -> tuple[str, ...]:
    """The sources read only when named: checkpoint files, which do not say what they hold."""
    return tuple(name for name, recognises, _ in SOURCES if recognises is None)


def load(
    path: str | Path,
    device: torch.device | str = "cpu",
    weights: Weights = "ema",
    source: str | None = None,
    flags: str | None = None,
) -> Model:
    """The model stored at ``path``: a ddpm run folder (``weights`` 'ema', the default: its EMA
    weights, the best by validation where it validated; 'raw': the training weights), a diffusers
    DDPMPipeline folder (model_index.json, unet/, scheduler/), or, with ``source`` naming the
    library that wrote it, another library's checkpoint file with ``flags``, the settings it was
    trained with in that library's spelling."""
    path = Path(path)
    if source is not None:
        require_choice("source", source, source_names())
        if not path.exists():
            raise CheckpointError(f"{path}: no such file or folder; check the path")
        load_source = next(entry[2] for entry in SOURCES if entry[0] == source)
        return load_source(path, device, weights, flags)
    rundir.recover_interrupted(path)  # a run a killed --overwrite left in its backup
    for _, recognises, load_source in SOURCES:
        if recognises is not None and recognises(path):
            return load_source(path, device, weights, flags)
    raise CheckpointError(
        f"{path}: not a ddpm run folder (no config.json) nor a diffusers folder (no "
        "model_index.json); give the folder ddpm train or save_pretrained wrote, or name the "
        f"library of a checkpoint file with source ({', '.join(_named_only()) or 'none'})",
        params=("source",),
    )


__all__ = ["SOURCES", "load", "source_names"]
