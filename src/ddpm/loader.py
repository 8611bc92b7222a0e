"""One loader for every folder a trained model can come in: ``load(path)`` returns a ``Model``.

Each source is a pair (recognise, load) in ``SOURCES``, tried in order: a diffusers
``DDPMPipeline.save_pretrained`` folder (model_index.json), then a ddpm run folder
(config.json + checkpoint). A new foreign format adds its pair here and returns a ``Model``;
nothing downstream asks where a model came from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ddpm.errors import CheckpointError
from ddpm.foreign import diffusers as foreign_diffusers
from ddpm.model import Model
from ddpm.runs import folder as rundir
from ddpm.runs.run import CONFIG, Weights, load_run_model

# (name, does this path hold that source?, load it) in the order they are tried
Source = tuple[str, Callable[[Path], bool], Callable[[Path, torch.device | str, Weights], Model]]
SOURCES: list[Source] = [
    (
        "diffusers",
        foreign_diffusers.is_diffusers_folder,
        lambda path, device, weights: foreign_diffusers.load_model(path, device),
    ),
    ("ddpm", lambda path: (path / CONFIG).exists() or not path.is_dir(), load_run_model),
]


def load(path: str | Path, device: torch.device | str = "cpu", weights: Weights = "ema") -> Model:
    """The model stored at ``path``: a ddpm run folder (``weights`` 'ema', the default: its EMA
    weights, the best by validation where it validated; 'raw': the training weights) or a
    diffusers DDPMPipeline folder (model_index.json, unet/, scheduler/)."""
    path = Path(path)
    rundir.recover_interrupted(path)  # a run a killed --overwrite left in its backup
    for _, recognises, load_source in SOURCES:
        if recognises(path):
            return load_source(path, device, weights)
    raise CheckpointError(
        f"{path}: not a ddpm run folder (no config.json) nor a diffusers folder (no "
        "model_index.json); give the folder ddpm train or save_pretrained wrote"
    )


__all__ = ["SOURCES", "load"]
