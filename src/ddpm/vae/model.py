"""A VAE baseline beside the DDPM: a learned Gaussian encoder q_phi(z|x), the prior
p(z) = N(0, I), and the decoder family of the DDPM's L_0 (discretized Gaussian for data on a
grid of ``levels`` values, Gaussian density for continuous data).

    -ELBO(x) = KL(q_phi(z|x) || p(z))  +  E_{q_phi(z|x)}[-log p_theta(x|z)]      [KW14] eq. (3)
             =        rate             +          distortion                     [Ale18] eq. (6)

    L_K(x) = log (1/K) sum_k p_theta(x|z_k) p(z_k) / q_phi(z_k|x),  z_k ~ q_phi(z|x)
           <= log p_theta(x),  rising with K                                     [BGS16] eq. (8)

A DDPM is the same object with T latents and an encoder without parameters: its rate is L_T plus the
diffusion KLs and its distortion L_0 (view 3 of ``ddpm.likelihood.theory``). Rate is in closed form;
distortion and the log-weights are Monte Carlo over reparameterised draws z = mu + sigma * eps.
Log-densities are accumulated in float64, in nats per example.

References:
    [KW14] Kingma, Welling. Auto-Encoding Variational Bayes. arXiv:1312.6114
    [BGS16] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519
    [Ale18] Alemi et al. Fixing a Broken ELBO. arXiv:1711.00464
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddpm.errors import ConfigError
from ddpm.likelihood.bounds import IwEstimate
from ddpm.likelihood.elbo import decoder_log_prob
from ddpm.process.gaussian import Gaussian, gaussian_log_prob, normal_kl
from ddpm.vae.config import (  # noqa: F401 (the configuration's names, where they were)
    NO_VAL_TIMESTEPS,
    DecoderVariance,
    VaeConfig,
    VaeNet,
    VaeRunConfig,
)

# --- networks ---------------------------------------------------------------------------------


def _mlp(d_in: int, d_out: int, hidden: int, depth: int) -> nn.Sequential:
    """depth x (Linear -> SiLU) then Linear; depth 0 is one Linear map."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.SiLU()]
    layers.append(nn.Linear(hidden if depth else d_in, d_out))
    return nn.Sequential(*layers)


def _conv_encoder(c: int, h: int, w: int, ch: int, z2: int) -> nn.Sequential:
    """[B, C, H, W] -> two stride-2 stages -> [B, z2]."""
    return nn.Sequential(
        nn.Conv2d(c, ch, 3, padding=1), nn.SiLU(),
        nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(2 * ch, 2 * ch, 4, stride=2, padding=1), nn.SiLU(),
        nn.Flatten(), nn.Linear(2 * ch * (h // 4) * (w // 4), z2),
    )  # fmt: skip


def _conv_decoder(c: int, h: int, w: int, ch: int, z: int) -> nn.Sequential:
    """[B, z] -> two stride-2 transposed stages -> [B, C, H, W]."""
    return nn.Sequential(
        nn.Linear(z, 2 * ch * (h // 4) * (w // 4)), nn.SiLU(),
        nn.Unflatten(1, (2 * ch, h // 4, w // 4)),
        nn.ConvTranspose2d(2 * ch, 2 * ch, 4, stride=2, padding=1), nn.SiLU(),
        nn.ConvTranspose2d(2 * ch, ch, 4, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(ch, c, 3, padding=1),
    )  # fmt: skip


class Vae(nn.Module):
    """Encoder q_phi(z|x) = N(mu_phi(x), diag sigma_phi^2(x)) and decoder mean mu_theta(z) with
    a log-variance per data dimension; x: [B, *shape], z: [B, latent_dim]."""

    def __init__(self, cfg: VaeConfig, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape, self.latent_dim = tuple(int(s) for s in shape), cfg.latent_dim
        kind = cfg.net if cfg.net != "auto" else ("conv" if len(self.shape) == 3 else "mlp")
        d, z = math.prod(self.shape), cfg.latent_dim
        if kind == "mlp":
            self.encoder = nn.Sequential(nn.Flatten(), _mlp(d, 2 * z, cfg.hidden, cfg.depth))
            self.decoder = nn.Sequential(
                _mlp(z, d, cfg.hidden, cfg.depth), nn.Unflatten(1, self.shape)
            )
        else:
            if len(self.shape) != 3 or self.shape[1] % 4 or self.shape[2] % 4:
                raise ConfigError(
                    f"vae: the conv net needs images (C, H, W) with H and W divisible by 4 "
                    f"(got shape {self.shape}); use vae_net mlp",
                    params=("vae_net",),
                )
            c, h, w = self.shape
            self.encoder = _conv_encoder(c, h, w, cfg.channels, 2 * z)
            self.decoder = _conv_decoder(c, h, w, cfg.channels, z)
        log_var = torch.full(self.shape, float(cfg.decoder_log_var))
        if cfg.decoder_variance == "learned":
            self.decoder_log_var = nn.Parameter(log_var)
        else:
            self.register_buffer("decoder_log_var", log_var)

    def encode(self, x: Tensor) -> Gaussian:
        """q_phi(z|x): mean and log-variance [B, latent_dim]."""
        out = self.encoder(x)
        return Gaussian(mean=out[:, : self.latent_dim], log_var=out[:, self.latent_dim :])

    def decode(self, z: Tensor) -> Gaussian:
        """p_theta(x|z) before discretization: mean [B, *shape], log-variance [*shape]."""
        return Gaussian(mean=self.decoder(z), log_var=self.decoder_log_var)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def sized_like(cfg: VaeConfig, shape: tuple[int, ...], target: int) -> VaeConfig:
    """cfg with the width (MLP hidden, or conv channels) whose parameter count is closest to
    ``target``: the count grows with the width, so a bisection finds it."""
    key = "channels" if (cfg.net == "conv" or (cfg.net == "auto" and len(shape) == 3)) else "hidden"

    def count(width: int) -> int:
        with torch.device("meta"):
            c = VaeConfig(**{**cfg.to_dict(), key: width})
            return num_parameters(Vae(c, shape))

    lo, hi = 1, 1
    while count(hi) < target and hi < 1 << 16:
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda wd: abs(count(wd) - target))
    return VaeConfig(**{**cfg.to_dict(), key: best})


# --- bounds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VaeTerms:
    """-ELBO per example split into rate and distortion, in nats (float64)."""

    rate: Tensor  # [B] KL(q_phi(z|x) || N(0, I)), closed form
    distortion: Tensor  # [B] E_q[-log p_theta(x|z)], mean over the draws

    def total(self) -> Tensor:
        """-ELBO per example [B]."""
        return self.rate + self.distortion


def rate(q: Gaussian) -> Tensor:
    """KL(q_phi(z|x) || N(0, I)) per example [B] in closed form, float64."""
    mean, log_var = q.mean.double(), q.log_var.double()
    zero = torch.zeros_like(mean)
    return normal_kl(mean, log_var, zero, zero).sum(dim=-1)


def q_phi_sample(q: Gaussian, samples: int, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) [KW14] eq. (10): [samples, B, latent_dim], q's dtype."""
    shape = (samples, *q.mean.shape)
    eps = torch.randn(shape, generator=generator, device=q.mean.device, dtype=q.mean.dtype)
    return q.mean + (0.5 * q.log_var).exp() * eps


def _decoder_log_prob(model: Vae, x: Tensor, z: Tensor, levels: int | None) -> Tensor:
    """log p_theta(x|z) [S, B] for z [S, B, Z]: each x against each of its S draws, float64."""
    S, B = z.shape[:2]
    p = model.decode(z.reshape(S * B, -1))
    x_rep = x.double().repeat(S, *([1] * (x.ndim - 1)))
    lp = decoder_log_prob(x_rep, p.mean.double(), p.log_var.double(), levels)
    return lp.reshape(S, B)


def vae_elbo_terms(
    model: Vae,
    x: Tensor,
    levels: int | None,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> VaeTerms:
    """Rate (closed form) and distortion (mean over ``samples`` reparameterised draws) per
    example of x [B, *shape]. Gradients flow to the encoder and decoder (training loss)."""
    q = model.encode(x)
    z = q_phi_sample(q, samples, generator)
    return VaeTerms(rate=rate(q), distortion=-_decoder_log_prob(model, x, z, levels).mean(dim=0))


def _log_standard_normal(z: Tensor) -> Tensor:
    return gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)).sum(dim=-1)


@torch.no_grad()
def vae_iw_log_weights(
    model: Vae,
    x: Tensor,
    levels: int | None,
    K: int,
    generator: torch.Generator | None = None,
    max_batch: int = 4096,
) -> Tensor:
    """log p_theta(x|z_k) + log p(z_k) - log q_phi(z_k|x) for K draws per example: [K, B],
    float64 nats. Draws are made in groups so that one decoder call sees at most max(B,
    max_batch) inputs; each example is encoded once."""
    if not isinstance(K, int) or K < 1:
        raise ConfigError(f"the number of importance samples K must be an integer >= 1 (got {K})")
    q = model.encode(x)
    q64 = Gaussian(q.mean.double(), q.log_var.double())
    group = max(1, max_batch // x.shape[0])
    out = []
    for start in range(0, K, group):
        z = q_phi_sample(q, min(group, K - start), generator)  # [k, B, Z], the network's dtype
        z64 = z.double()  # densities of exactly the z the decoder sees
        log_q = gaussian_log_prob(z64, q64.mean, q64.log_var).sum(dim=-1)
        out.append(_decoder_log_prob(model, x, z, levels) + _log_standard_normal(z64) - log_q)
    return torch.cat(out, dim=0)


def vae_iw_curve(
    model: Vae,
    x: Tensor,
    levels: int | None,
    Ks: Sequence[int] = (1, 10, 100, 1000),
    generator: torch.Generator | None = None,
    max_batch: int = 4096,
) -> list[IwEstimate]:
    """-L_K per example for each K in Ks (ascending) [BGS16] eq. (8). max(Ks) draws are made
    once and L_K uses the first K, so every L_K is a valid bound and their differences are
    paired. Examples are processed in slices of max_batch."""
    Ks = sorted(set(Ks))
    if not Ks or not all(isinstance(k, int) and k >= 1 for k in Ks):
        raise ConfigError(f"Ks must be a non-empty sequence of integers >= 1 (got {Ks})")
    log_w = torch.cat(
        [
            vae_iw_log_weights(model, x[i : i + max_batch], levels, Ks[-1], generator, max_batch)
            for i in range(0, x.shape[0], max_batch)
        ],
        dim=1,
    )
    return [IwEstimate.of(K, math.log(K) - torch.logsumexp(log_w[:K], dim=0)) for K in Ks]


@torch.no_grad()
def vae_sample(
    model: Vae, n: int, generator: torch.Generator | None = None, mean_only: bool = False
) -> Tensor:
    """x ~ p_theta(x) by ancestral sampling: z ~ N(0, I), x ~ N(mu_theta(z), sigma^2)
    (mean_only: the decoder mean, as shown for images). [n, *shape] in model space."""
    w = next(model.parameters())
    z = torch.randn((n, model.latent_dim), generator=generator, device=w.device, dtype=w.dtype)
    p = model.decode(z)
    if mean_only:
        return p.mean
    eps = torch.randn(p.mean.shape, generator=generator, device=w.device, dtype=w.dtype)
    return p.mean + (0.5 * p.log_var).exp() * eps


__all__ = [
    "Vae",
    "VaeConfig",
    "VaeRunConfig",
    "VaeTerms",
    "num_parameters",
    "q_phi_sample",
    "rate",
    "sized_like",
    "vae_elbo_terms",
    "vae_iw_curve",
    "vae_iw_log_weights",
    "vae_sample",
]
