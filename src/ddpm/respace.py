"""Respacing: a K-step process on a subsequence of the T steps, [ND21] Sec. 4.

Given steps 1 <= tau_1 < ... < tau_K <= T of a process with cumulative products alpha_bar_t, the
respaced process keeps the marginals q(x_{tau_k} | x_0) and is a DDPM in its own right:

    alpha_bar'_k = alpha_bar_{tau_k},   alpha_bar'_0 = alpha_bar_{tau_0} = 1,
    beta'_k = 1 - alpha_bar_{tau_k} / alpha_bar_{tau_{k-1}}                       [ND21] Sec. 4
            = -expm1(sum_{t = tau_{k-1}+1 .. tau_k} log(1 - beta_t))   (no cancellation)

with its own posterior variance beta_tilde'_k and the same decoder-variance convention at its
first step as every ``NoiseSchedule`` (``sigma2_small``). The network is still called with the
original step tau_k, so the respaced value's time map is the original one evaluated at tau_k
(composed with an existing time map: respacing a foreign model's process works too). With the
variance 'learned', the interpolation between beta'_k and beta_tilde'_k follows from the new
schedule, as in [ND21]'s code.

Which steps: ``space_timesteps(T, K)`` has the semantics of improved-diffusion's
``space_timesteps(T, [K])`` (one section): K indices evenly spaced over 0..T-1 including both
ends, stride (T - 1) / (K - 1) accumulated in floating point and rounded with Python's
``round`` (halves to even). improved-diffusion numbers its steps 0..T-1 where our t runs 1..T,
so its index i is our step t = i + 1 (its alphas_cumprod[i] is our alpha_bar[i + 1]).

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import torch

from ddpm.diffusion import Diffusion, identity_time_map
from ddpm.errors import ConfigError
from ddpm.schedule import NoiseSchedule


def space_timesteps(T: int, K: int) -> list[int]:
    """The K steps tau_1 < ... < tau_K (1-based, in 1..T) of improved-diffusion's
    ``space_timesteps(T, [K])``: 0-based indices round(k * (T - 1) / (K - 1)), k = 0..K-1, the
    stride summed step by step as there, each index i returned as our step i + 1. K = 1 keeps
    step 1 only (improved-diffusion's index 0)."""
    for name, v in (("T", T), ("K", K)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name} must be an integer >= 1 (got {v!r})")
    if K > T:
        raise ConfigError(f"cannot respace {T} steps into {K}: choose --steps between 1 and {T}")
    stride = 1.0 if K == 1 else (T - 1) / (K - 1)
    steps, idx = [], 0.0
    for _ in range(K):
        steps.append(round(idx) + 1)  # 0-based index -> our 1-based step
        idx += stride
    return sorted(set(steps))


def respaced_schedule(schedule: NoiseSchedule, tau: list[int]) -> NoiseSchedule:
    """The schedule of the process on steps tau (1-based, increasing): beta'_k as in the
    module docstring, float64, so that alpha_bar'_k = alpha_bar_{tau_k}."""
    log_alpha_bar = torch.cumsum(torch.log1p(-schedule.beta), dim=0)  # [T+1], entry 0 = 0
    idx = torch.tensor([0, *tau], dtype=torch.long)
    log_alpha = log_alpha_bar[idx[1:]] - log_alpha_bar[idx[:-1]]  # log(ab_tau_k / ab_tau_{k-1})
    beta = -torch.expm1(log_alpha)
    return NoiseSchedule(torch.cat([torch.zeros(1, dtype=torch.float64), beta]))


def respace(diffusion: Diffusion, K: int) -> Diffusion:
    """The K-step process of [ND21] Sec. 4 on the steps ``space_timesteps(T, K)``: same
    parameterisation, respaced schedule, and time map k -> the original network time at tau_k.
    ``respace(d, d.T)`` is d itself (same betas, identity time map)."""
    tau = space_timesteps(diffusion.T, K)
    original = diffusion.time_map
    if original is None:
        original = identity_time_map(diffusion.T)
    time_map = original[torch.tensor([0, *tau], dtype=torch.long, device=original.device)]
    return Diffusion(respaced_schedule(diffusion.schedule, tau), diffusion.param, time_map)
