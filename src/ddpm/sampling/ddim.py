"""DDIM sampling [SME21]: a family of samplers with the marginals q(x_t | x_0) of the DDPM,
indexed by eta, over the steps of any ``Diffusion`` (a respaced one for fewer steps).

One step from x_t to x_{t-1}, with x0_hat and eps_hat the network's predictions at (x_t, t)
(Song et al.'s alpha_t is our alpha_bar_t):

    x_{t-1} = sqrt(alpha_bar_{t-1}) x0_hat + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps_hat
              + sigma_t z,   z ~ N(0, I)                                       [SME21] eq. (12)
    sigma_t^2 = eta^2 (1 - ab_{t-1}) / (1 - ab_t) (1 - ab_t / ab_{t-1})   (ab = alpha_bar)
              = eta^2 beta_tilde_t                                              [SME21] eq. (16)

eta = 0 is deterministic given x_T. eta = 1 is ancestral sampling with sigma_t^2 = beta_tilde_t
(variance 'small'): with eps_hat = (x_t - sqrt(alpha_bar_t) x0_hat) / sqrt(1 - alpha_bar_t) the
mean of eq. (12) equals the posterior mean mu_tilde_t(x_t, x0_hat) of [Ho20] eq. (7). As in
[ND21]'s code, the network's variance head (variance 'learned') is not used. At t = 1,
beta_tilde_1 = 0 and alpha_bar_0 = 1, so the last step returns x0_hat for every eta.

References:
    [SME21] Song, Meng, Ermon. Denoising Diffusion Implicit Models. arXiv:2010.02502
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from ddpm.errors import ConfigError
from ddpm.model import Model, p_mean_var
from ddpm.process.forward import randn_like
from ddpm.process.reverse import PTheta
from ddpm.sampling.ancestral import Samples, reverse_chain


def check_eta(eta: float) -> float:
    """eta in [0, 1]: beyond 1 the coefficient of eps_hat in eq. (12) has no square root."""
    if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0 and math.isfinite(eta)):
        raise ConfigError(f"eta must lie in [0, 1] (got {eta!r}): 0 deterministic, 1 ancestral")
    return float(eta)


def ddim_step(
    model: Model,
    xt: Tensor,
    t: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, PTheta]:
    """One DDIM step x_t -> x_{t-1}, [SME21] eqs. (12), (16). Returns (x_prev, p_theta at t)."""
    s = model.diffusion.schedule
    tt = torch.full((xt.shape[0],), t, dtype=torch.long, device=xt.device)
    p = p_mean_var(model, xt, tt)
    sigma2 = eta**2 * s.at(s.beta_tilde, tt, xt)  # eq. (16)
    omab_prev = s.at(s.one_minus_alpha_bar, tt - 1, xt)
    direction = (omab_prev - sigma2).clamp(min=0).sqrt()  # "direction pointing to x_t"
    x_prev = s.at(s.alpha_bar, tt - 1, xt).sqrt() * p.x0_hat + direction * p.eps_hat
    if t == 1 or eta == 0:  # sigma_t = 0: nothing to draw
        return x_prev, p
    z = randn_like(xt, generator) if noise is None else noise
    return x_prev + sigma2.sqrt() * z, p


@torch.no_grad()
def ddim_sample(
    model: Model,
    n: int,
    generator: torch.Generator | None = None,
    capture: Sequence[int] = (),
    on_step: Callable[[int], None] | None = None,
    eta: float = 0.0,
) -> Samples:
    """n samples by DDIM over the T steps of the model's process, x_T ~ N(0, I); the arguments
    of ``ddpm.sampling.ancestral.sample`` plus eta. The draws come in the order of ``sample``
    (x_T, then one z per step t >= 2), so eta = 1 with the same generator reproduces its
    samples for the variance 'small'."""
    step = partial(ddim_step, eta=check_eta(eta))
    return reverse_chain(step, model, n, generator, capture, on_step)
