"""Training losses and timestep samplers.

    L_simple = E_{t, x_0, eps} || target - f_theta(x_t, t) ||^2       [Ho20] eq. (14)
        (target eps, x_0 or v by the parameterisation; mean over dimensions)
    L_vlb    = L_T + term_t / p(t),  t ~ p(t)          [Ho20] eq. (5), [ND21] Sec. 3.3
        an unbiased one-sample estimate of the full -ELBO (uniform p(t) = 1/T, or importance
        sampling), reported in bits/dim as in [ND21]
    L_hybrid = L_simple + lambda * L_vlb, with the mean of p_theta detached inside L_vlb so that
        L_vlb trains only the variance                               [ND21] eq. (16)

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpm.config import DiffusionConfig
from ddpm.errors import ConfigError
from ddpm.likelihood.elbo import prior_kl, vb_term_from_output
from ddpm.model import Model
from ddpm.process.diffusion import Diffusion, Parameterisation, denoise
from ddpm.process.forward import q_sample, randn_like, v_from_x0_eps
from ddpm.process.reverse import split_output


@dataclass(frozen=True)
class LossOutput:
    """One training loss evaluation; every field is per example [B]."""

    loss: Tensor  # what is minimised (mean over the batch)
    mse: Tensor | None  # L_simple part
    vb: Tensor | None  # the term of step t in nats (no gradient), for importance sampling


class UniformSampler:
    """t ~ U{1..T}."""

    def __init__(self, T: int) -> None:
        self.T = T

    def sample(
        self, n: int, generator: torch.Generator | None, device: torch.device | str
    ) -> tuple[Tensor, Tensor]:
        """(t int64 [n] in 1..T, p(t) float64 [n])."""
        t = torch.randint(1, self.T + 1, (n,), generator=generator, device=device)
        return t, torch.full((n,), 1.0 / self.T, dtype=torch.float64, device=device)

    def update(self, t: Tensor, terms: Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


class ImportanceSampler(UniformSampler):
    """p(t) proportional to sqrt(E[L_t^2]) over the last ``history`` terms of each t, mixed with
    a little uniform mass; uniform until every t has a full history ([ND21] Sec. 3.3, eq. 18).
    Any p(t) > 0 keeps L_T + term_t / p(t) unbiased for the full -ELBO."""

    def __init__(self, T: int, history: int = 10, uniform_mix: float = 0.001) -> None:
        super().__init__(T)
        self.uniform_mix = uniform_mix
        self.terms = torch.zeros(T, history, dtype=torch.float64)
        self.counts = torch.zeros(T, dtype=torch.long)

    def probs(self) -> Tensor:
        """p(t) for t = 1..T, float64 [T]."""
        if bool((self.counts < self.terms.shape[1]).any()):
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        w = self.terms.pow(2).mean(dim=1).sqrt()
        w = w / w.sum()
        return w * (1 - self.uniform_mix) + self.uniform_mix / self.T

    def sample(
        self, n: int, generator: torch.Generator | None, device: torch.device | str
    ) -> tuple[Tensor, Tensor]:
        p = self.probs().to(device)
        idx = torch.multinomial(p, n, replacement=True, generator=generator)
        return idx + 1, p[idx]

    def update(self, t: Tensor, terms: Tensor) -> None:
        """Record term values (nats) observed at timesteps t (in order)."""
        for ti, li in zip(t.tolist(), terms.detach().double().cpu().tolist(), strict=True):
            row = ti - 1
            self.terms[row] = torch.roll(self.terms[row], -1)
            self.terms[row, -1] = li
            self.counts[row] += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {"terms": self.terms.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.terms = state["terms"].to("cpu", torch.float64).clone()  # kept on the CPU
        self.counts = state["counts"].to("cpu", torch.long).clone()


def make_sampler(cfg: DiffusionConfig) -> UniformSampler:
    if cfg.timestep_sampler == "importance":
        return ImportanceSampler(cfg.T)
    return UniformSampler(cfg.T)


def simple_target(diffusion: Diffusion, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """What the mean head regresses onto in L_simple: eps, x_0 or v."""
    prediction = diffusion.param.prediction
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return v_from_x0_eps(diffusion.schedule, x0, t, eps)


def training_loss(
    model: Model,
    cfg: DiffusionConfig,
    x0: Tensor,
    t: Tensor,
    p_t: Tensor,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Per-example training loss at timesteps t drawn with probabilities p_t (see module doc).

    cfg supplies the loss (and lambda); the parameterisation is the diffusion's, which must be
    the one cfg describes."""
    diffusion, param = model.diffusion, model.diffusion.param
    if param != Parameterisation.of(cfg):
        raise ConfigError(
            f"the diffusion predicts {param.prediction!r} with variance {param.variance!r} but "
            f"the config says {cfg.prediction!r} / {cfg.variance!r}: build both from one config"
        )
    eps = randn_like(x0, generator) if noise is None else noise
    xt = q_sample(diffusion.schedule, x0, t, noise=eps)
    out = denoise(diffusion, model.net, xt, t)
    num_dims = x0[0].numel()
    mse = None
    if cfg.loss in ("simple", "hybrid"):
        head, _ = split_output(param, out, xt)
        mse = (head - simple_target(diffusion, x0, t, eps)).pow(2).flatten(1).mean(dim=1)
        if cfg.loss == "simple":
            return LossOutput(loss=mse, mse=mse, vb=None)
    term = vb_term_from_output(model, out.double(), x0, xt, t, detach_mean=cfg.loss == "hybrid")
    # One-sample estimate of -ELBO in bits/dim; E_t[term_t / p(t)] = sum_t term_t.
    vlb = (prior_kl(diffusion.schedule, x0) + term / p_t) / (num_dims * math.log(2))
    if cfg.loss == "vlb":
        return LossOutput(loss=vlb.to(x0.dtype), mse=None, vb=term.detach())
    loss = mse + cfg.hybrid_lambda * vlb.to(x0.dtype)
    return LossOutput(loss=loss, mse=mse, vb=term.detach())
