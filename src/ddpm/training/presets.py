"""Named training recipes: a preset is a set of config values applied before the flags.

``likelihood`` is the recipe that gave the best held-out -ELBO per CPU-minute in the
measurements of ``benchmarks/likelihood_recipe.py`` (README, "A likelihood recipe"): train
the bound itself, L_vlb [Ho20] eq. (5), with importance-sampled timesteps and learned variances
[ND21] sec. 3, a cosine learning-rate decay, and the best weights chosen on held-out data
(``ddpm.training.validation``). The plain defaults (L_simple, fixed variance) remain the recipe for
samples.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ddpm.config import RunConfig
from ddpm.errors import ConfigError

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "likelihood": {
        "diffusion": {"variance": "learned", "loss": "vlb", "timestep_sampler": "importance"},
        "model": {"hidden": 256, "dropout": 0.1},
        "train": {
            "lr": 1e-3,
            "lr_schedule": "cosine",
            "ema_decay": 0.999,
            "val_every": 500,
        },
    },
}


def apply_preset(name: str, base: RunConfig | None = None) -> RunConfig:
    """base (default: the defaults) with the values of preset ``name`` set."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets are {', '.join(PRESETS)}")
    base = base or RunConfig()
    parts = {
        section: dataclasses.replace(getattr(base, section), **values)
        for section, values in PRESETS[name].items()
    }
    return dataclasses.replace(base, **parts)
