"""The VAE baseline's configuration: typed, JSON round trip, no torch (so that the command line
builds its parser without loading torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ddpm.config import DataConfig, TrainConfig, _Serialisable
from ddpm.errors import ConfigError, require_choice

VaeNet = Literal["auto", "mlp", "conv"]
DecoderVariance = Literal["learned", "fixed"]


@dataclass(frozen=True)
class VaeConfig(_Serialisable):
    """The VAE: latent size, networks ('auto': conv for images, MLP for vectors), decoder variance.

    decoder_variance 'learned': one log-variance per data dimension, trained, starting at
    ``decoder_log_var``; 'fixed': exp(decoder_log_var) throughout. depth 0 makes the MLP encoder
    and decoder linear (factor analysis when the variance is learned).
    """

    latent_dim: int = 8
    net: VaeNet = "auto"
    hidden: int = 128  # MLP width
    depth: int = 2  # hidden layers of the MLP encoder and of the MLP decoder
    channels: int = 32  # conv width (the second stage has twice as many)
    decoder_variance: DecoderVariance = "learned"
    decoder_log_var: float = -2.0

    def __post_init__(self) -> None:
        require_choice("VAE net", self.net, get_args(VaeNet))
        require_choice("decoder variance", self.decoder_variance, get_args(DecoderVariance))
        for name in ("latent_dim", "hidden", "channels"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"vae: {name} must be >= 1 (got {getattr(self, name)})")
        if self.depth < 0:
            raise ConfigError(f"vae: depth must be >= 0 (got {self.depth}); 0 means linear")
        if not math.isfinite(self.decoder_log_var):
            raise ConfigError(f"vae: decoder_log_var must be finite (got {self.decoder_log_var})")


@dataclass(frozen=True)
class VaeRunConfig(_Serialisable):
    """Everything needed to rebuild a VAE run: saved as config.json beside the weights.

    train: the options of ``ddpm train``, all applied alike, except val_timesteps (the DDPM's
    timesteps per validation example): a VAE's validation is its own -ELBO, so a value other
    than the default is refused and none is recorded. cpu_minutes: stop training once the
    process has used this much CPU time (time.process_time, summed over resumes), or at
    train.steps, whichever comes first; None: steps only.
    """

    vae: VaeConfig = field(default_factory=VaeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cpu_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.cpu_minutes is not None and not self.cpu_minutes > 0:
            raise ConfigError(f"cpu_minutes must be > 0 (got {self.cpu_minutes})")
        if self.train.val_timesteps != TrainConfig.val_timesteps:
            raise ConfigError(NO_VAL_TIMESTEPS, params=("val_timesteps",))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        del d["train"]["val_timesteps"]  # a DDPM's option: never recorded for a VAE
        return d


NO_VAL_TIMESTEPS = (
    "val_timesteps is the DDPM's timesteps per validation example; a VAE has "
    "none (its validation estimates its own -ELBO): leave it out"
)


__all__ = ["NO_VAL_TIMESTEPS", "DecoderVariance", "VaeConfig", "VaeNet", "VaeRunConfig"]
