"""Forward process q of a DDPM: the fixed Markov chain that turns data x_0 into noise x_T.

    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)                      [Ho20] eq. (2)
    q(x_t | x_0)     = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)             [Ho20] eq. (4)
    q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I)                        [Ho20] eqs. (6)-(7)

and the identities between (x_0, eps, v) given
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [SH22] Salimans, Ho. Progressive Distillation for Fast Sampling of Diffusion Models.
           arXiv:2202.00512 (the v-parameterisation)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpm.process.gaussian import Gaussian
from ddpm.process.schedule import NoiseSchedule


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise with x's shape, dtype and device, drawn from generator."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def q_marginal(s: NoiseSchedule, x0: Tensor, t: Tensor) -> Gaussian:
    """q(x_t | x_0), [Ho20] eq. (4). x0: [B, ...]; t: [B] in 0..T."""
    mean = s.at(s.alpha_bar, t, x0).sqrt() * x0
    log_var = s.at(s.one_minus_alpha_bar, t, x0).log().expand_as(x0)
    return Gaussian(mean=mean, log_var=log_var)


def q_sample(
    s: NoiseSchedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) as sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
    eps = randn_like(x0, generator) if noise is None else noise
    return s.at(s.alpha_bar, t, x0).sqrt() * x0 + s.at(s.one_minus_alpha_bar, t, x0).sqrt() * eps


def q_step(
    s: NoiseSchedule,
    x_prev: Tensor,
    t: int,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw x_t ~ q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I), [Ho20] eq. (2)."""
    eps = randn_like(x_prev, generator) if noise is None else noise
    alpha_t = float(s.alpha[t])
    return alpha_t**0.5 * x_prev + (1 - alpha_t) ** 0.5 * eps


def q_posterior(s: NoiseSchedule, x0: Tensor, xt: Tensor, t: Tensor) -> Gaussian:
    """q(x_{t-1} | x_t, x_0), [Ho20] eqs. (6)-(7). x0, xt: [B, ...]; t: [B] in 1..T.

    At t = 1 the posterior is a point mass at x_0 (beta_tilde_1 = 0, log_var = -inf).
    """
    mean = s.at(s.posterior_coef_x0, t, x0) * x0 + s.at(s.posterior_coef_xt, t, xt) * xt
    log_var = s.at(s.beta_tilde, t, xt).log().expand_as(xt)
    return Gaussian(mean=mean, log_var=log_var)


def x0_from_eps(s: NoiseSchedule, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), inverting [Ho20] eq. (4)."""
    return x0_from_eps_at(s.at(s.alpha_bar, t, xt), s.at(s.one_minus_alpha_bar, t, xt), xt, eps)


def eps_from_x0(s: NoiseSchedule, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    return eps_from_x0_at(s.at(s.alpha_bar, t, xt), s.at(s.one_minus_alpha_bar, t, xt), xt, x0)


def v_from_x0_eps(s: NoiseSchedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0, [SH22] Sec. 4."""
    return v_from_x0_eps_at(s.at(s.alpha_bar, t, x0), s.at(s.one_minus_alpha_bar, t, x0), x0, eps)


def x0_from_v(s: NoiseSchedule, xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v, [SH22] Sec. 4."""
    return x0_from_v_at(s.at(s.alpha_bar, t, xt), s.at(s.one_minus_alpha_bar, t, xt), xt, v)


# The same identities at given noise levels: alpha_bar and one_minus_alpha_bar broadcast against
# the data ([B, 1, ..., 1]); used by the discrete helpers above and by continuous time.


def x0_from_eps_at(
    alpha_bar: Tensor, one_minus_alpha_bar: Tensor, xt: Tensor, eps: Tensor
) -> Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
    return (xt - one_minus_alpha_bar.sqrt() * eps) / alpha_bar.sqrt()


def eps_from_x0_at(
    alpha_bar: Tensor, one_minus_alpha_bar: Tensor, xt: Tensor, x0: Tensor
) -> Tensor:
    """eps = (x_t - sqrt(alpha_bar) x_0) / sqrt(1 - alpha_bar)."""
    return (xt - alpha_bar.sqrt() * x0) / one_minus_alpha_bar.sqrt()


def v_from_x0_eps_at(
    alpha_bar: Tensor, one_minus_alpha_bar: Tensor, x0: Tensor, eps: Tensor
) -> Tensor:
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0, [SH22] Sec. 4."""
    return alpha_bar.sqrt() * eps - one_minus_alpha_bar.sqrt() * x0


def x0_from_v_at(alpha_bar: Tensor, one_minus_alpha_bar: Tensor, xt: Tensor, v: Tensor) -> Tensor:
    """x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v, [SH22] Sec. 4."""
    return alpha_bar.sqrt() * xt - one_minus_alpha_bar.sqrt() * v
