"""The diffusion process a model is scored and sampled under: one value for the whole process.

``Diffusion`` bundles what every likelihood, loss and sampling function needs besides the network:
the noise schedule (beta_1..beta_T, float64), the parameterisation of p_theta (prediction and
variance) and the time map: the network input that stands for process step t. A respaced
process ([ND21] Sec. 4), a foreign model's 0-based timesteps or a continuous-time process are new
values of this type, never new code paths.

    net_t = time_map[t]   (length T + 1, entry 0 unused); identity when time_map is None
                          (a floating t in [0, T] interpolates the map linearly)

``denoise(diffusion, model, x_t, t)`` is the one place a network is called: it feeds the mapped
time and returns the output in the project's convention ([B, out_mult * C, ...]).

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

import torch
from torch import Tensor

from ddpm.config import DiffusionConfig, Prediction
from ddpm.errors import ConfigError, require_choice
from ddpm.process.schedule import NoiseSchedule

# The variances of p_theta (see ``ddpm.process.reverse``). DiffusionConfig.variance, for trained
# networks, is the subset without 'optimal': the log sigma_t^2 that a model supplies itself,
# which only a model that knows its posterior variance can (the Bayes-optimal oracles).
ReverseVariance = Literal["small", "large", "learned", "optimal"]


class Denoiser(Protocol):
    """Any callable (usually an nn.Module) mapping (x_t [B, ...], t int64 [B]) to its output."""

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Parameterisation:
    """How network outputs become p_theta: what the mean head predicts and which variance."""

    prediction: Prediction = "eps"
    variance: ReverseVariance = "small"

    def __post_init__(self) -> None:
        require_choice("prediction", self.prediction, get_args(Prediction))
        require_choice("variance", self.variance, get_args(ReverseVariance))

    @property
    def out_mult(self) -> int:
        """Output channels per data channel: 2 when the network also emits the variance."""
        return 2 if self.variance in ("learned", "optimal") else 1

    @classmethod
    def of(cls, cfg: DiffusionConfig) -> Parameterisation:
        return cls(prediction=cfg.prediction, variance=cfg.variance)


@dataclass(frozen=True, eq=False)
class Diffusion:
    """Schedule + parameterisation + time map of a DDPM (see module docstring)."""

    schedule: NoiseSchedule
    param: Parameterisation = field(default_factory=Parameterisation)
    time_map: Tensor | None = None  # [T+1] network time for process step t; None: identity

    def __post_init__(self) -> None:
        m = self.time_map
        if m is not None and (m.ndim != 1 or m.numel() != self.schedule.T + 1):
            raise ConfigError(
                f"time_map must have length T + 1 = {self.schedule.T + 1} (got {tuple(m.shape)})"
            )

    @property
    def T(self) -> int:
        return self.schedule.T

    @classmethod
    def of(cls, cfg: DiffusionConfig) -> Diffusion:
        """The process a DiffusionConfig describes (identity time map)."""
        return cls(NoiseSchedule.from_name(cfg.schedule, cfg.T), Parameterisation.of(cfg))

    def net_t(self, t: Tensor) -> Tensor:
        """Network time input for process steps t ([B], 1..T).

        A floating t (continuous time, 0 <= t <= T, see ``ddpm.process.continuous``) reads the time
        map by linear interpolation between neighbouring steps; without a time map it passes as is.
        """
        if self.time_map is None:
            return t
        m = self.time_map.to(t.device)
        if not t.is_floating_point():
            return m[t]
        lo = t.detach().floor().long().clamp(0, self.T - 1)
        m = m.to(t.dtype)
        return m[lo] + (t - lo) * (m[lo + 1] - m[lo])


def denoise(diffusion: Diffusion, model: Denoiser, xt: Tensor, t: Tensor) -> Tensor:
    """The network's output at (x_t, process step t), with t mapped to the network's time."""
    return model(xt, diffusion.net_t(t))


def identity_time_map(T: int) -> Tensor:
    """0, 1, ..., T as int64: the network sees the process step itself."""
    return torch.arange(T + 1, dtype=torch.long)
