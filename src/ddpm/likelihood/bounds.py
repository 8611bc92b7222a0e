"""Importance-weighted bounds on log p_theta(x_0): the maximum-likelihood view of a DDPM.

With the forward process as proposal, q(x_{1:T} | x_0) = q(x_T | x_0) prod_{t=2..T}
q(x_{t-1} | x_t, x_0) [Ho20] eqs. (4), (6)-(7), each chain x_{1:T}^k gives the log-weight

    log w_k = log p(x_T) - log q(x_T | x_0)
              + sum_{t=2..T} [log p_theta(x_{t-1} | x_t) - log q(x_{t-1} | x_t, x_0)]
              + log p_theta(x_0 | x_1),

and the importance-weighted bound [BGS16] eq. (8) with K independent chains is

    L_K(x_0) = log (1/K) sum_k w_k  <=  log p_theta(x_0).

E[L_1] is the ELBO [Ho20] eq. (5); E[L_K] rises with K and tends to log p_theta(x_0) [BGS16]
Thm. 1. The decoder is ``elbo.decoder_log_prob`` (discretized for ``levels``, Gaussian for None).
All log-weights are accumulated in float64, in nats.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [BGS16] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpm.errors import ConfigError
from ddpm.likelihood.elbo import decoder_log_prob
from ddpm.model import Model
from ddpm.process.diffusion import denoise
from ddpm.process.forward import q_marginal, q_posterior
from ddpm.process.gaussian import Gaussian, gaussian_log_prob
from ddpm.process.reverse import p_from_output
from ddpm.process.rng import STREAM_IW, Noise, normal, rows


@dataclass(frozen=True)
class IwEstimate:
    """-L_K per example and its mean over examples with the standard error; in nats."""

    K: int
    nll: Tensor  # [B] -L_K(x_0) per example, float64
    nll_nats: float  # mean over examples
    se_nats: float  # standard error of the mean over examples (std / sqrt(B))

    @classmethod
    def of(cls, K: int, nll: Tensor) -> IwEstimate:
        n = nll.numel()
        se = nll.std().item() / math.sqrt(n) if n > 1 else math.nan
        return cls(K=K, nll=nll, nll_nats=nll.mean().item(), se_nats=se)


def _log_density(g: Gaussian, x: Tensor) -> Tensor:
    """log N(x; g) summed over data dimensions: [B]."""
    return gaussian_log_prob(x, g.mean, g.log_var).flatten(1).sum(dim=1)


@torch.no_grad()
def _chain_log_weights(
    model: Model,
    x0: Tensor,
    generator: Noise,
    example: Tensor,
    chain: Tensor,
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """log w [N] of one chain per row of x0 [N, ...] drawn from q(x_{1:T}|x_0) (module doc);
    row r is chain[r] of example[r] (the keys of ``KeyedNoise``; x_s is drawn with key t = s)."""
    model_dtype, x0 = x0.dtype, x0.double()
    diffusion, s, N = model.diffusion, model.diffusion.schedule, x0.shape[0]

    def t_of(t: int) -> Tensor:
        return torch.full((N,), t, dtype=torch.long, device=x0.device)

    def z(t: int) -> Tensor:
        return normal(generator, x0, example, t, chain, stream=STREAM_IW)

    q_T = q_marginal(s, x0, t_of(s.T))  # [Ho20] eq. (4)
    xt = q_T.mean + (0.5 * q_T.log_var).exp() * z(s.T)
    zero = torch.zeros_like(x0)
    log_w = _log_density(Gaussian(zero, zero), xt) - _log_density(q_T, xt)  # p(x_T) = N(0, I)
    for t in range(s.T, 0, -1):
        tt = t_of(t)
        out = denoise(diffusion, model.net, xt.to(model_dtype), tt).double()
        p = p_from_output(diffusion, out, xt, tt, clip=model.clip)
        if on_step is not None:
            on_step(1)
        if t == 1:  # the decoder p_theta(x_0 | x_1) [Ho20] eq. (13) or its Gaussian form
            log_w += decoder_log_prob(x0, p.mean, p.log_var, model.levels)
            break
        post = q_posterior(s, x0, xt, tt)  # [Ho20] eqs. (6)-(7)
        x_prev = post.mean + (0.5 * post.log_var).exp() * z(t - 1)
        log_w += _log_density(Gaussian(p.mean, p.log_var), x_prev) - _log_density(post, x_prev)
        xt = x_prev
    return log_w


def iw_log_weights(
    model: Model,
    x0: Tensor,
    K: int,
    generator: Noise = None,
    max_batch: int = 4096,
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """log p_theta(x_{0:T}^k) - log q(x_{1:T}^k | x_0) for K independent chains per example:
    [K, B] float64 nats. x0: [B, ...]. Chains are run in groups of max(1, max_batch // B)
    chains (examples in slices of max_batch), so one network call sees at most max_batch
    inputs. With a ``KeyedNoise`` chain k of an example draws x_t with key
    (seed, example index, t, k), whatever the grouping."""
    if not isinstance(K, int) or K < 1:
        raise ConfigError(f"the number of importance samples K must be an integer >= 1 (got {K})")
    B = x0.shape[0]
    if B > max_batch:  # more examples than one call may see: slice them
        parts = [
            iw_log_weights(model, x0[i : i + max_batch], K, rows(generator, i, i + max_batch),
                           max_batch, on_step)
            for i in range(0, B, max_batch)
        ]  # fmt: skip
        return torch.cat(parts, dim=1)
    group = max(1, max_batch // B)
    log_w = []
    for start in range(0, K, group):
        k = min(group, K - start)
        x0_rep = x0.repeat(k, *([1] * (x0.ndim - 1)))  # row j is chain j // B of example j % B
        example = torch.arange(B, device=x0.device).repeat(k)
        chain = torch.arange(start, start + k, device=x0.device).repeat_interleave(B)
        lw = _chain_log_weights(model, x0_rep, generator, example, chain, on_step)
        log_w.append(lw.reshape(k, B))
    return torch.cat(log_w, dim=0)


def iw_log_likelihood(
    model: Model, x0: Tensor, K: int, generator: Noise = None, max_batch: int = 4096
) -> Tensor:
    """The importance-weighted bound L_K(x_0) = logsumexp_k log w_k - log K per example [B],
    float64 nats, [BGS16] eq. (8). K = 1 is a one-sample unbiased estimate of the ELBO."""
    log_w = iw_log_weights(model, x0, K, generator, max_batch)
    return torch.logsumexp(log_w, dim=0) - math.log(K)


def iw_curve(
    model: Model,
    x0: Tensor,
    Ks: Sequence[int] = (1, 4, 16, 64),
    generator: Noise = None,
    max_batch: int = 4096,
    on_step: Callable[[int], None] | None = None,
) -> list[IwEstimate]:
    """-L_K for each K in Ks (ascending), as IwEstimate with the SE over examples.

    The bounds are nested: max(Ks) chains are drawn once and L_K uses the first K of them,
    so each L_K is a valid K-sample bound and differences between K are paired (low noise).
    """
    Ks = sorted(set(Ks))
    if not Ks or not all(isinstance(k, int) and k >= 1 for k in Ks):
        raise ConfigError(f"Ks must be a non-empty sequence of integers >= 1 (got {Ks})")
    log_w = iw_log_weights(model, x0, Ks[-1], generator, max_batch, on_step=on_step)
    return [IwEstimate.of(K, math.log(K) - torch.logsumexp(log_w[:K], dim=0)) for K in Ks]


__all__ = ["IwEstimate", "iw_curve", "iw_log_likelihood", "iw_log_weights"]
