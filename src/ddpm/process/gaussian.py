"""Diagonal Gaussians: KL divergence, log density, and the discretized decoder likelihood.

All functions work elementwise and broadcast; callers sum over data dimensions.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Gaussian:
    """N(mean, exp(log_var)) with a diagonal covariance; log_var broadcasts against mean."""

    mean: Tensor
    log_var: Tensor

    @property
    def var(self) -> Tensor:
        return self.log_var.exp()


def normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element, in nats."""
    return 0.5 * (
        log_var2
        - log_var1
        - 1.0
        + torch.exp(log_var1 - log_var2)
        + (mean1 - mean2) ** 2 * torch.exp(-log_var2)
    )


def gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x; mean, var) per element, in nats."""
    return -0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 - exp(d)) for d <= 0, accurate at both ends (Maechler 2012)."""
    return torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def log_normal_interval(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (Phi: standard normal CDF)."""
    # In the upper tail use the mirror image Phi(-a) - Phi(-b), so that log_ndtr never has to
    # resolve a difference of two numbers close to 1.
    upper = (a + b) > 0
    lo = torch.where(upper, -b, a)
    hi = torch.where(upper, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + _log1mexp(torch.special.log_ndtr(lo) - log_hi)


def discretized_gaussian_log_prob(
    x: Tensor, mean: Tensor, log_var: Tensor, bin_width: float
) -> Tensor:
    """log P(x) per element for data on an evenly spaced grid in [-1, 1], [Ho20] eq. (13).

    The probability of a value is the Gaussian mass of its bin [x - w/2, x + w/2]; the edge bins
    reach to -inf (x = -1) and +inf (x = 1) so that the probabilities of all levels sum to one.
    """
    inv_std = torch.exp(-0.5 * log_var)
    half = 0.5 * bin_width
    a = (x - half - mean) * inv_std
    b = (x + half - mean) * inv_std
    edge = 1e-3 * bin_width
    a = torch.where(x < -1 + edge, torch.full_like(a, -math.inf), a)
    b = torch.where(x > 1 - edge, torch.full_like(b, math.inf), b)
    return log_normal_interval(a, b)
