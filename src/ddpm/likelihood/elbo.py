"""The evidence lower bound of a DDPM, term by term, [Ho20] eq. (5):

    -ELBO(x_0) = L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || p(x_T)),          p(x_T) = N(0, I)           (``prior_kl``)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)),  x_t ~ q(x_t | x_0)   (``kl``)
    L_0     = -log p_theta(x_0 | x_1),  x_1 ~ q(x_1 | x_0)                    (``decoder_nll``)

L_T and every KL are closed-form Gaussian KLs; the only randomness is the draw of x_t, one per
(example, t). L_0 is a Gaussian density for continuous data and the discretized Gaussian of
[Ho20] Sec. 3.3 for data on a grid of ``levels`` values in [-1, 1]. All terms are in nats per
example, accumulated in float64. ``vb_term`` evaluates "the term at step t" (L_0 at t = 1,
L_{t-1} for t >= 2), which is also what the L_vlb training loss uses.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpm.model import Model
from ddpm.process.diffusion import denoise
from ddpm.process.forward import q_marginal, q_posterior, q_sample, randn_like
from ddpm.process.gaussian import discretized_gaussian_log_prob, gaussian_log_prob, normal_kl
from ddpm.process.reverse import PTheta, p_from_output
from ddpm.process.rng import STREAM_MC, Noise, normal, rows, uniform_t
from ddpm.process.schedule import NoiseSchedule


@dataclass(frozen=True)
class ElboTerms:
    """Negative ELBO per example, split as in [Ho20] eq. (5); in nats (float64)."""

    prior_kl: Tensor  # [B] L_T = KL(q(x_T|x_0) || p(x_T))
    kl: Tensor  # [B, T-1] L_{t-1} for t = 2..T
    decoder_nll: Tensor  # [B] L_0 = -log p_theta(x_0|x_1)
    # Prediction errors at the same x_t draws (``elbo_terms`` only), mean over data dimensions:
    eps_mse: Tensor | None = None  # [B, T] column t-1: |eps_hat(x_t, t) - eps|^2 / D
    x0_mse: Tensor | None = None  # [B, T] column t-1: |x0_hat(x_t, t) - x_0|^2 / D

    FIELDS = ("prior_kl", "kl", "decoder_nll", "eps_mse", "x0_mse")

    def total(self) -> Tensor:
        """-ELBO per example [B], in nats."""
        return self.prior_kl + self.kl.sum(dim=-1) + self.decoder_nll

    @property
    def per_timestep(self) -> Tensor:
        """[B, T]: column t-1 is the term of step t (L_0 at t = 1, L_{t-1} for t >= 2)."""
        return torch.cat([self.decoder_nll[:, None], self.kl], dim=-1)


def bits_per_dim(nats: Tensor | float, num_dims: int) -> Tensor | float:
    """Convert nats per example into bits per dimension: nats / (D ln 2)."""
    return nats / (num_dims * math.log(2))


def _sum_dims(x: Tensor) -> Tensor:
    return x.flatten(1).sum(dim=1)


def decoder_log_prob(x0: Tensor, mean: Tensor, log_var: Tensor, levels: int | None) -> Tensor:
    """log p_theta(x_0 | x_1) per example [B]: discretized over ``levels`` values in [-1, 1]
    ([Ho20] eq. (13)), or a Gaussian density when levels is None (continuous data)."""
    if levels is None:
        return _sum_dims(gaussian_log_prob(x0, mean, log_var))
    return _sum_dims(discretized_gaussian_log_prob(x0, mean, log_var, 2.0 / (levels - 1)))


def prior_kl(s: NoiseSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example [B], closed form, float64."""
    x0 = x0.double()
    q = q_marginal(s, x0, torch.full(x0.shape[:1], s.T, dtype=torch.long, device=x0.device))
    return _sum_dims(normal_kl(q.mean, q.log_var, torch.zeros_like(x0), torch.zeros_like(x0)))


def vb_term_from_output(
    model: Model, out: Tensor, x0: Tensor, xt: Tensor, t: Tensor, detach_mean: bool = False
) -> Tensor:
    """The term of step t per example [B] in nats, given the network output at (x_t, t):
    L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)) for t >= 2 and L_0 for t = 1.

    Computed in out's dtype (float64 for evaluation). Gradients flow into ``out``.
    detach_mean: no gradient through the mean (the L_vlb part of L_hybrid, [ND21] Sec. 3.1).
    """
    x0, xt = x0.to(out.dtype), xt.to(out.dtype)
    p = p_from_output(model.diffusion, out, xt, t, clip=model.clip, detach_mean=detach_mean)
    return _vb_term_of(model.diffusion.schedule, p, x0, xt, t, model.levels)


def _vb_term_of(
    s: NoiseSchedule, p: PTheta, x0: Tensor, xt: Tensor, t: Tensor, levels: int | None
) -> Tensor:
    """The term of step t per example [B] for p_theta(x_{t-1} | x_t) = p."""
    is_decoder = t == 1
    post = q_posterior(s, x0, xt, t)
    # beta_tilde_1 = 0: give the (unused) t = 1 posterior a finite log-variance so the KL
    # and its gradient stay finite before torch.where discards them.
    mask = is_decoder.reshape(-1, *([1] * (x0.ndim - 1)))
    post_log_var = torch.where(mask, torch.zeros_like(post.log_var), post.log_var)
    kl = _sum_dims(normal_kl(post.mean, post_log_var, p.mean, p.log_var))
    if not bool(is_decoder.any()):
        return kl
    nll = -decoder_log_prob(x0, p.mean, p.log_var, levels)
    return torch.where(is_decoder, nll, kl)


@torch.no_grad()
def vb_term(
    model: Model,
    x0: Tensor,
    t: Tensor,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw x_t ~ q(x_t|x_0) and return the term of step t per example [B], float64 nats."""
    return vb_step(model, x0, t, noise, generator)[0]


@torch.no_grad()
def vb_step(
    model: Model,
    x0: Tensor,
    t: Tensor,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``vb_term`` and, at the same x_t, the prediction errors of improved-diffusion's
    likelihood loop: (term [B], |eps_hat - eps|^2 / D [B], |x0_hat - x_0|^2 / D [B]), float64."""
    eps = (randn_like(x0, generator) if noise is None else noise).double()
    dtype, x0 = x0.dtype, x0.double()  # the network sees the data's dtype
    diffusion = model.diffusion
    xt = q_sample(diffusion.schedule, x0, t, noise=eps)
    out = denoise(diffusion, model.net, xt.to(dtype), t).double()
    p = p_from_output(diffusion, out, xt, t, clip=model.clip)
    term = _vb_term_of(diffusion.schedule, p, x0, xt, t, model.levels)
    return term, _mean_dims((p.eps_hat - eps) ** 2), _mean_dims((p.x0_hat - x0) ** 2)


def _mean_dims(x: Tensor) -> Tensor:
    return x.flatten(1).mean(dim=1)


def elbo_terms(
    model: Model,
    x0: Tensor,
    generator: Noise = None,
    max_batch: int = 4096,
    on_chunk: Callable[[int], None] | None = None,
) -> ElboTerms:
    """Every term of -ELBO for each example of x0 [B, ...], one x_t draw per (example, t).

    Timesteps (and, when B > max_batch, examples) are batched in chunks so that one network
    call sees at most ``max_batch`` inputs. on_chunk(n) is called with the number of timesteps
    done in each chunk, as a fraction when examples are sliced (for progress bars).

    generator: a ``ddpm.process.rng.KeyedNoise`` draws the noise of x_t for (seed, example index, t)
    from its own key, so an example's terms do not depend on the other examples in x0, on
    max_batch or on how the examples are split over calls or processes; a torch.Generator
    (or None, the global one) draws in order instead.
    """
    B, T = x0.shape[0], model.T
    if B > max_batch:  # more examples than one call may see: evaluate them in slices
        parts = [
            elbo_terms(
                model, x0[i : i + max_batch], rows(generator, i, i + max_batch), max_batch,
                None if on_chunk is None else _scaled(on_chunk, min(max_batch, B - i) / B),
            )
            for i in range(0, B, max_batch)
        ]  # fmt: skip
        return ElboTerms(*(torch.cat([getattr(p, f) for p in parts]) for f in ElboTerms.FIELDS))
    per_t, eps_mse, x0_mse = torch.empty(3, B, T, dtype=torch.float64, device=x0.device)
    chunk = max(1, max_batch // B)
    example = torch.arange(B, device=x0.device)
    for start in range(1, T + 1, chunk):
        ts = torch.arange(start, min(start + chunk, T + 1), device=x0.device)
        t = ts.repeat_interleave(B)
        x0_rep = x0.repeat(len(ts), *([1] * (x0.ndim - 1)))
        eps = normal(generator, x0_rep, example.repeat(len(ts)), t)
        step = vb_step(model, x0_rep, t, noise=eps)
        for dest, value in zip((per_t, eps_mse, x0_mse), step, strict=True):
            dest[:, start - 1 : start - 1 + len(ts)] = value.reshape(len(ts), B).T
        if on_chunk is not None:
            on_chunk(len(ts))
    prior = prior_kl(model.diffusion.schedule, x0)
    return ElboTerms(prior, per_t[:, 1:], per_t[:, 0], eps_mse=eps_mse, x0_mse=x0_mse)


def _scaled(fn: Callable[[float], None], factor: float) -> Callable[[float], None]:
    return lambda n: fn(n * factor)


def log_strata(T: int, K: int) -> Tensor:
    """Edges 1 = e_0 < e_1 < ... < e_S = T + 1 of S <= K strata [e_j, e_{j+1}) of 1..T whose
    widths grow geometrically (rounded edges of geomspace(1, T + 1, K + 1), duplicates
    dropped), so the small t, where the terms are largest and change fastest, get strata of
    their own (int64 [S + 1])."""
    edges = torch.tensor([1.0, T + 1.0], dtype=torch.float64).log()
    grid = torch.linspace(float(edges[0]), float(edges[1]), K + 1, dtype=torch.float64).exp()
    return torch.unique(grid.round().long().clamp(1, T + 1))


def elbo_mc(
    model: Model,
    x0: Tensor,
    K: int,
    generator: Noise = None,
    max_batch: int = 4096,
    strata: Tensor | None = None,
) -> Tensor:
    """Unbiased estimate of -ELBO per example [B] from K random timesteps per example. Its
    expectation is ``elbo_terms(...).total()``.

    strata None: L_T + (T / K) sum_k term(t_k), t_k ~ U{1..T}. strata (edges e_0..e_K of K
    strata of 1..T, e.g. ``log_strata``): one t_k ~ U[e_k, e_{k+1}) per stratum,
    L_T + sum_k (e_{k+1} - e_k) term(t_k) (stratified sampling: much less variance when the
    terms vary over orders of magnitude, as they do at small t; K is then the number of strata).

    Network calls see at most max_batch inputs (groups of max_batch // B draws per example;
    examples in slices of max_batch). With a ``KeyedNoise`` the k-th timestep of an example
    and its x_t are keyed by (seed, example index, k), independent of the batching."""
    B, T = x0.shape[0], model.T
    if strata is not None:
        strata = strata.to(x0.device)
        K = len(strata) - 1
        assert int(strata[0]) == 1 and int(strata[-1]) == T + 1, "strata must cover 1..T"
    if B > max_batch:
        parts = [
            elbo_mc(model, x0[i : i + max_batch], K, rows(generator, i, i + max_batch),
                    max_batch, strata)
            for i in range(0, B, max_batch)
        ]  # fmt: skip
        return torch.cat(parts)
    group = max(1, max_batch // B)
    total = torch.zeros(B, dtype=torch.float64, device=x0.device)
    for start in range(0, K, group):
        k = min(group, K - start)
        example = torch.arange(B, device=x0.device).repeat(k)
        chain = torch.arange(start, start + k, device=x0.device).repeat_interleave(B)
        if strata is None:
            t, weight = uniform_t(generator, T, example, chain), T / K
        else:
            lo, width = strata[chain], (strata[chain + 1] - strata[chain])
            # r uniform on 0..2^53-1 (keyed like t); floor(r * width / 2^53) is uniform on
            # 0..width-1 to within 2^-53 (r * width < 2^63: exact in int64)
            r = uniform_t(generator, 1 << 53, example, chain) - 1
            t, weight = lo + ((r * width) >> 53), width.double()
        x0_rep = x0.repeat(k, *([1] * (x0.ndim - 1)))
        eps = normal(generator, x0_rep, example, t, chain, stream=STREAM_MC)
        terms = vb_term(model, x0_rep, t, noise=eps)
        total += (weight * terms).reshape(k, B).sum(dim=0)
    return prior_kl(model.diffusion.schedule, x0) + total
