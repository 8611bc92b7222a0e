"""Ancestral sampling from p_theta, [Ho20] Algorithm 2:

    x_T ~ N(0, I);  for t = T..1:  x_{t-1} = mu_theta(x_t, t) + sigma_t z,  z ~ N(0, I),
    with z = 0 at t = 1.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpm.model import Model, p_mean_var
from ddpm.process.forward import randn_like
from ddpm.process.reverse import PTheta


@dataclass(frozen=True)
class Samples:
    """Samples x_0 [N, ...] and, when asked for, x_t and x0_hat at the captured steps."""

    x0: Tensor
    steps: list[int]  # captured t, descending
    xt: Tensor | None  # [K, N, ...] x_t at each captured step
    x0_hat: Tensor | None  # [K, N, ...] predicted x_0 at each captured step


def p_sample(
    model: Model,
    xt: Tensor,
    t: int,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, PTheta]:
    """One reverse step: x_{t-1} ~ p_theta(x_{t-1} | x_t). Returns (x_prev, p_theta)."""
    tt = torch.full((xt.shape[0],), t, dtype=torch.long, device=xt.device)
    p = p_mean_var(model, xt, tt)
    if t == 1:
        return p.mean, p  # the decoder's mean is the sample [Ho20] Alg. 2, line 4 (z = 0)
    z = randn_like(xt, generator) if noise is None else noise
    return p.mean + (0.5 * p.log_var).exp() * z, p


@torch.no_grad()
def sample(
    model: Model,
    n: int,
    generator: torch.Generator | None = None,
    capture: Sequence[int] = (),
    on_step: Callable[[int], None] | None = None,
) -> Samples:
    """Draw n samples of the model's example shape by ancestral sampling, on its device.

    capture: timesteps t at which x_t and the predicted x_0 are kept (t in 1..T; T captures
    the starting noise x_T).
    """
    return reverse_chain(p_sample, model, n, generator, capture, on_step)


# step(model, x_t, t, generator=...) -> (x_{t-1}, p_theta at t)
Step = Callable[..., tuple[Tensor, PTheta]]


def reverse_chain(
    step: Step,
    model: Model,
    n: int,
    generator: torch.Generator | None = None,
    capture: Sequence[int] = (),
    on_step: Callable[[int], None] | None = None,
) -> Samples:
    """x_T ~ N(0, I), then x_{t-1} = step(x_t, t) for t = T..1: the loop shared by ancestral
    sampling (``p_sample``) and other samplers over the same steps (DDIM, ``ddpm.sampling.ddim``).
    The draws are made on the model's device."""
    x = torch.randn((n, *model.shape), generator=generator, device=model.device)
    T = model.T
    steps = sorted({int(c) for c in capture if 1 <= int(c) <= T}, reverse=True)
    xs, x0s = [], []
    for t in range(T, 0, -1):
        x_prev, p = step(model, x, t, generator=generator)
        if t in steps:
            xs.append(x)
            x0s.append(p.x0_hat)
        x = x_prev
        if on_step is not None:
            on_step(t)
    stack = (lambda v: torch.stack(v)) if steps else (lambda v: None)
    return Samples(x0=x, steps=steps, xt=stack(xs), x0_hat=stack(x0s))
