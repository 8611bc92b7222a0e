"""KL(q(x_{0:T}) || p_theta(x_{0:T})) step by step, for data whose density q(x_0) is known.

The joint KL splits over the reverse steps, each against the TRUE reverse kernel
q(x_{t-1} | x_t) = q(x_t | x_{t-1}) q_{t-1}(x_{t-1}) / q_t(x_t) (Bayes' rule, q_t the law of x_t):

    KL(q(x_{0:T}) || p_theta(x_{0:T})) = KL(q_T || p(x_T))
        + sum_{t=1..T} E_{q_t(x_t)} KL(q(x_{t-1} | x_t) || p_theta(x_{t-1} | x_t)).      (J1)

Each step term is estimated from pairs x_{t-1} ~ q_{t-1}, x_t ~ q(x_t | x_{t-1}) [Ho20] eq. (2)
by the log-ratio

    r_t = log q(x_t | x_{t-1}) + log q_{t-1}(x_{t-1}) - log q_t(x_t) - log p_theta(x_{t-1} | x_t),

whose mean is the step's KL. It vanishes pointwise where p_theta is the true reverse kernel, so
its variance shrinks with the KL itself: where -ELBO - H(q) (``evaluate``'s kl_joint) carries the
noise of every x_t draw given x_0, this estimator resolves joint KLs of 0.01 nats from a few
hundred examples. The mean of (J1) equals E[-ELBO] - H(q(x_0)). The diffused densities q_t are
exact for Gaussian mixtures (``GaussianMixture.diffused_log_prob``); the decoder p_theta(x_0|x_1)
is the continuous Gaussian (data without ``levels``), all in model space and float64.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [SSDK21] Sohl-Dickstein, Weiss, Maheswaranathan, Ganguli. Deep Unsupervised Learning using
             Nonequilibrium Thermodynamics. arXiv:1503.03585 (the reverse kernels of q)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ddpm.errors import ConfigError
from ddpm.model import Model
from ddpm.process.diffusion import denoise
from ddpm.process.forward import q_sample, randn_like
from ddpm.process.gaussian import gaussian_log_prob
from ddpm.process.reverse import p_from_output

if TYPE_CHECKING:  # only its diffused_log_prob is used; no import of the data package
    from ddpm.data import GaussianMixture


@dataclass(frozen=True)
class JointKl:
    """(J1) with standard errors over examples, in nats per example."""

    n: int
    T: int
    total: float  # KL(q(x_{0:T}) || p_theta(x_{0:T}))
    total_se: float
    prior: float  # KL(q_T || p(x_T)), estimated from the same x_T draws
    prior_se: float
    per_timestep: list[float]  # entry t-1: E KL(q(x_{t-1} | x_t) || p_theta(x_{t-1} | x_t))
    per_timestep_se: list[float]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _sum_dims(x: Tensor) -> Tensor:
    return x.flatten(1).sum(dim=1)


@torch.no_grad()
def step_log_ratios(
    model: Model,
    density: GaussianMixture,
    x0: Tensor,
    t: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """r_t of (J1) per example [B] (float64) for x0 [B, D] ~ q(x_0) and steps t [B] in 1..T;
    the network is called in x0's dtype, everything else is float64."""
    diffusion = model.diffusion
    s, dtype = diffusion.schedule, x0.dtype  # the network sees its data dtype
    x0 = x0.double()
    x_prev = q_sample(s, x0, t - 1, noise=randn_like(x0, generator))  # x_0 itself at t = 1
    alpha, beta = s.at(s.alpha, t, x0), s.at(s.beta, t, x0)
    xt = alpha.sqrt() * x_prev + beta.sqrt() * randn_like(x0, generator)  # [Ho20] eq. (2)
    out = denoise(diffusion, model.net, xt.to(dtype), t).double()
    p = p_from_output(diffusion, out, xt, t, clip=model.clip)
    log_q_step = _sum_dims(gaussian_log_prob(xt, alpha.sqrt() * x_prev, beta.log()))
    ab = s.alpha_bar.to(t.device)
    log_q_prev = density.diffused_log_prob(x_prev, ab[t - 1])
    log_q_t = density.diffused_log_prob(xt, ab[t])
    log_p = _sum_dims(gaussian_log_prob(x_prev, p.mean, p.log_var))
    return log_q_step + log_q_prev - log_q_t - log_p


def joint_kl(
    model: Model,
    density: GaussianMixture,
    x0: Tensor,
    generator: torch.Generator | None = None,
    max_batch: int = 4096,
) -> JointKl:
    """(J1) for the model on examples x0 [N, D] drawn from ``density`` (a GaussianMixture in
    model space): one (x_{t-1}, x_t) pair per example and step, and one x_T for the prior term.
    At most ``max_batch`` inputs per network call."""
    N, T = x0.shape[0], model.T
    if N < 2 or x0.ndim != 2:
        raise ConfigError(f"joint_kl needs x0 of shape [N >= 2, D] (got {tuple(x0.shape)})")
    s = model.diffusion.schedule
    per_t = torch.empty(N, T, dtype=torch.float64, device=x0.device)
    chunk = max(1, max_batch // N)
    for start in range(0, N, max_batch):  # examples in slices when N > max_batch
        xs = x0[start : start + max_batch]
        for t0 in range(1, T + 1, chunk):
            ts = torch.arange(t0, min(t0 + chunk, T + 1), device=x0.device)
            r = step_log_ratios(
                model, density, xs.repeat(len(ts), 1), ts.repeat_interleave(len(xs)),
                generator,
            )  # fmt: skip
            per_t[start : start + len(xs), t0 - 1 : t0 - 1 + len(ts)] = r.reshape(len(ts), -1).T
    x_T = q_sample(
        s, x0.double(), torch.full((N,), T, device=x0.device), randn_like(x0.double(), generator)
    )
    zero = torch.zeros_like(x_T)
    prior = density.diffused_log_prob(x_T, s.alpha_bar[T].item()) - _sum_dims(
        gaussian_log_prob(x_T, zero, zero)
    )
    total = prior + per_t.sum(dim=1)
    se = lambda v: float(v.std(dim=0) / math.sqrt(N))  # noqa: E731
    return JointKl(
        n=N,
        T=T,
        total=float(total.mean()),
        total_se=se(total),
        prior=float(prior.mean()),
        prior_se=se(prior),
        per_timestep=per_t.mean(dim=0).tolist(),
        per_timestep_se=(per_t.std(dim=0) / math.sqrt(N)).tolist(),
    )
