"""Noise schedules beta_1..beta_T and the quantities derived from them.

Index convention (used everywhere in the package): t runs 1..T as in [Ho20]; every array has
length T + 1 and entry 0 stands for t = 0, so ``alpha_bar[t]`` is alpha_bar_t and
``alpha_bar[0] = 1``. Timestep tensors ``t`` are int64 of shape [B]. All arrays are float64 and
cast to the data's dtype and device where they are used (``NoiseSchedule.at``).

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpm.errors import ConfigError, require_choice
from ddpm.memory import check_steps

BETA_MAX = 0.999  # cap that keeps alpha_t > 0 for every T [ND21, Sec. 3.2]
SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """beta_t for t = 1..T and everything derived from it, as float64 arrays of length T + 1."""

    beta: Tensor  # [T+1], beta[0] = 0

    def __post_init__(self) -> None:
        b = self.beta
        if b.dtype != torch.float64 or b.ndim != 1 or b.numel() < 2:
            raise ConfigError("a schedule needs a float64 vector beta of length T + 1 >= 2")
        if b[0] != 0 or not bool(((b[1:] > 0) & (b[1:] < 1)).all()):
            raise ConfigError("beta[0] must be 0 and every beta_t for t >= 1 must lie in (0, 1)")

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int) -> NoiseSchedule:
        """[Ho20] Sec. 4: beta from 1e-4 to 0.02 at T = 1000; for other T both ends are scaled
        by 1000 / T (so that alpha_bar_T stays near zero for T >= ~20), then capped at BETA_MAX.
        With T = 1 the single step has beta_1 = 0.1 (the start of the scaled range)."""
        _check_T(T)
        scale = 1000.0 / T
        beta = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
        return cls(_with_t0(beta.clamp(max=BETA_MAX)))

    @classmethod
    def cosine(cls, T: int, s: float = 0.008) -> NoiseSchedule:
        """[ND21] eq. (17): alpha_bar_t = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) * pi/2)^2,
        beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, capped at BETA_MAX."""
        _check_T(T)
        steps = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        beta = 1 - alpha_bar[1:] / alpha_bar[:-1]
        return cls(_with_t0(beta.clamp(max=BETA_MAX)))

    @classmethod
    def from_name(cls, name: str, T: int) -> NoiseSchedule:
        require_choice("schedule", name, SCHEDULES)
        return cls.linear(T) if name == "linear" else cls.cosine(T)

    # --- derived quantities (float64, length T + 1) -------------------------------------------
    @property
    def T(self) -> int:
        return self.beta.numel() - 1

    @property
    def alpha(self) -> Tensor:
        return 1 - self.beta

    @property
    def alpha_bar(self) -> Tensor:
        """alpha_bar_t = prod_{s<=t} alpha_s, [Ho20] eq. (4); alpha_bar_0 = 1."""
        return torch.cumprod(self.alpha, dim=0)

    @property
    def one_minus_alpha_bar(self) -> Tensor:
        # 1 - prod(1 - beta) computed as -expm1(sum log1p(-beta)): exact for tiny beta.
        return -torch.expm1(torch.cumsum(torch.log1p(-self.beta), dim=0))

    @property
    def beta_tilde(self) -> Tensor:
        """Posterior variance beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t,
        [Ho20] eq. (7); beta_tilde_1 = 0 and entry 0 is 0."""
        omab = self.one_minus_alpha_bar
        out = torch.zeros_like(self.beta)
        out[1:] = omab[:-1] / omab[1:] * self.beta[1:]
        return out

    @property
    def posterior_coef_x0(self) -> Tensor:
        """Coefficient of x_0 in the posterior mean, [Ho20] eq. (7)."""
        out = torch.zeros_like(self.beta)
        out[1:] = self.alpha_bar[:-1].sqrt() * self.beta[1:] / self.one_minus_alpha_bar[1:]
        return out

    @property
    def posterior_coef_xt(self) -> Tensor:
        """Coefficient of x_t in the posterior mean, [Ho20] eq. (7)."""
        omab = self.one_minus_alpha_bar
        out = torch.zeros_like(self.beta)
        out[1:] = self.alpha[1:].sqrt() * omab[:-1] / omab[1:]
        return out

    @property
    def sigma2_small(self) -> Tensor:
        """Reverse variance sigma_t^2 = beta_tilde_t ('small', [Ho20] Sec. 3.2).

        Departure from the paper at t = 1: beta_tilde_1 = 0 would make the decoder p(x_0|x_1) a
        point mass, so t = 1 uses beta_tilde_2 (the convention of [ND21]'s code, which also
        clips the log-variance there). With T = 1 there is no beta_tilde_2 and beta_1 is used.
        """
        out = self.beta_tilde.clone()
        out[1] = out[2] if self.T >= 2 else self.beta[1]
        return out

    @property
    def sigma2_large(self) -> Tensor:
        """Reverse variance sigma_t^2 = beta_t ('large', [Ho20] Sec. 3.2); at t = 1 the same
        decoder variance as sigma2_small (beta_tilde_2), as in [ND21]'s code."""
        out = self.beta.clone()
        out[1] = self.sigma2_small[1]
        return out

    # --- helpers -------------------------------------------------------------------------------
    def at(self, arr: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """arr[t] cast to like's dtype and device, shaped [B, 1, ..., 1] to broadcast over like."""
        vals = arr.to(device=t.device)[t].to(dtype=like.dtype, device=like.device)
        return vals.reshape(-1, *([1] * (like.ndim - 1)))

    def to_dict(self) -> dict:
        return {"T": self.T, "beta": self.beta.tolist()}


def _check_T(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ConfigError(f"T must be an integer >= 1 (got {T!r})")
    check_steps(T, "noise schedule")


def _with_t0(beta: Tensor) -> Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.float64), beta])
