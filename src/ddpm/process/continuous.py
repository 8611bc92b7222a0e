"""The continuous-time extension of the discrete schedules: alpha_bar(s) for s in [0, 1].

Step t of a DDPM with T steps sits at s = t / T. In the limit T -> infinity the forward chain
[Ho20] eq. (2) becomes the variance-preserving SDE [Song21] eq. (11)

    dx = -1/2 beta(s) x ds + sqrt(beta(s)) dW,                                        (C1)

whose marginals are q(x_s | x_0) = N(sqrt(alpha_bar(s)) x_0, (1 - alpha_bar(s)) I) with

    alpha_bar(s) = exp(-int_0^s beta(u) du),   beta(s) = -d log alpha_bar(s) / ds.      (C2)

(The mean m obeys m' = -1/2 beta m and the variance v' = -beta v + beta, v(0) = 0.)

linear ([Song21] Appendix C): beta(s) = b0 + (b1 - b0) s with b0 = T beta_1 and b1 = T beta_T of
    the discrete schedule, so alpha_bar(s) = exp(-(b0 s + (b1 - b0) s^2 / 2)). It differs from
    the discrete alpha_bar_t at s = t / T by O(1 / T) in log alpha_bar (the sum of beta_t against
    the integral of beta(s), and -log(1 - beta_t) against beta_t). Here s_end = 1.
cosine ([ND21] eq. (17) at continuous s): alpha_bar(s) = f(s) / f(0), f(s) = cos(phi(s))^2,
    phi(s) = (s + c) / (1 + c) pi / 2, c = 0.008, so beta(s) = pi / (1 + c) tan(phi(s)). It equals
    the discrete alpha_bar_t at s = t / T for every t before the last (whose beta_T is capped at
    0.999). alpha_bar(1) = 0 and beta(s) -> infinity as s -> 1, so the process is used on
    [0, s_end] with s_end = 1 - 1 / T, the last step at which the two agree.

``ContinuousMixtureOracle`` is the Bayes-optimal denoiser of a Gaussian mixture at continuous s
(network time t = s T, a float); ``gaussian_flow_marginal`` is the closed-form law that the
probability-flow ODE (``ddpm.likelihood.ode``) gives Gaussian data under its Bayes-optimal denoiser.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [Song21] Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole. Score-Based Generative Modeling
             through Stochastic Differential Equations. arXiv:2011.13456
    [SH22] Salimans, Ho. Progressive Distillation for Fast Sampling of Diffusion Models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

import torch
from torch import Tensor, nn

from ddpm.config import Prediction
from ddpm.errors import ConfigError, require_choice
from ddpm.process.forward import eps_from_x0_at, v_from_x0_eps_at
from ddpm.process.schedule import SCHEDULES, NoiseSchedule

if TYPE_CHECKING:
    from ddpm.data import GaussianMixture

COSINE_OFFSET = 0.008  # c of [ND21] eq. (17), as in NoiseSchedule.cosine


@dataclass(frozen=True)
class ContinuousSchedule:
    """alpha_bar(s) and beta(s) on s in [0, s_end] (module docstring, (C2)); float64.

    T: steps of the discrete schedule it extends (process step t = s T).
    beta_start, beta_end: b0 = T beta_1 and b1 = T beta_T (linear only).
    """

    name: str  # 'linear' | 'cosine'
    T: int
    beta_start: float = 0.0
    beta_end: float = 0.0

    def __post_init__(self) -> None:
        require_choice("schedule", self.name, SCHEDULES)
        if self.T < 1:
            raise ConfigError(f"T must be >= 1 (got {self.T})")
        if self.name == "linear" and not 0 < self.beta_start <= self.beta_end:
            raise ConfigError(
                f"linear schedule needs 0 < b0 <= b1 (got {self.beta_start}, {self.beta_end})"
            )

    @classmethod
    def of(cls, name: str, schedule: NoiseSchedule) -> ContinuousSchedule:
        """The continuous extension named ``name`` of the discrete ``schedule`` (its T; for
        linear its beta_1 and beta_T)."""
        T = schedule.T
        return cls(name, T, T * float(schedule.beta[1]), T * float(schedule.beta[T]))

    @property
    def s_end(self) -> float:
        """End of the process: 1 (linear), 1 - 1/T (cosine, where beta(s) is still finite)."""
        return 1.0 if self.name == "linear" else 1.0 - 1.0 / self.T

    def _phi(self, s: Tensor) -> Tensor:
        return (s + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2

    def log_alpha_bar(self, s: Tensor) -> Tensor:
        """log alpha_bar(s), (C2); s: float64 tensor in [0, s_end]."""
        if self.name == "linear":
            return -(self.beta_start * s + (self.beta_end - self.beta_start) * s**2 / 2)
        phi0 = self._phi(torch.zeros((), dtype=s.dtype, device=s.device))
        return 2 * (self._phi(s).cos().log() - phi0.cos().log())

    def alpha_bar(self, s: Tensor) -> Tensor:
        return self.log_alpha_bar(s).exp()

    def one_minus_alpha_bar(self, s: Tensor) -> Tensor:
        """1 - alpha_bar(s) as -expm1(log alpha_bar(s)): exact for s near 0."""
        return -torch.expm1(self.log_alpha_bar(s))

    def beta(self, s: Tensor) -> Tensor:
        """beta(s) = -d log alpha_bar(s) / ds, (C2)."""
        if self.name == "linear":
            return self.beta_start + (self.beta_end - self.beta_start) * s
        return math.pi / (1 + COSINE_OFFSET) * self._phi(s).tan()

    def levels(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_bar, 1 - alpha_bar) at process steps t ([B], float, 0..T; s = t / T), shaped
        [B, 1, ..., 1] in like's dtype and device."""
        s = t.to(dtype=torch.float64) / self.T
        shape = (-1, *([1] * (like.ndim - 1)))
        return tuple(
            v.reshape(shape).to(dtype=like.dtype, device=like.device)
            for v in (self.alpha_bar(s), self.one_minus_alpha_bar(s))
        )


def prediction_at(
    prediction: str, alpha_bar: Tensor, one_minus_alpha_bar: Tensor, xt: Tensor, x0_hat: Tensor
) -> Tensor:
    """The output for ``prediction`` (eps / x0 / v) that corresponds to the estimate x0_hat at
    noise level alpha_bar (broadcast against xt)."""
    if prediction == "x0":
        return x0_hat
    eps_hat = eps_from_x0_at(alpha_bar, one_minus_alpha_bar, xt, x0_hat)
    if prediction == "eps":
        return eps_hat
    return v_from_x0_eps_at(alpha_bar, one_minus_alpha_bar, x0_hat, eps_hat)


class ContinuousMixtureOracle(nn.Module):
    """Bayes-optimal denoiser for data from a Gaussian mixture at continuous time: at network
    time t (float [B], the process step s T) it returns E[eps | x_s] (or E[x_0 | x_s], E[v | x_s])
    with alpha_bar = alpha_bar(t / T), via ``GaussianMixture.posterior_mean_x0``. x_t: [B, D].
    A Gaussian N(m, diag(s^2)) is the mixture with one component."""

    def __init__(
        self,
        schedule: ContinuousSchedule,
        mixture: GaussianMixture,
        prediction: Prediction = "eps",
    ) -> None:
        super().__init__()
        require_choice("prediction", prediction, get_args(Prediction))
        self.schedule, self.mixture, self.prediction = schedule, mixture, prediction

    def forward(self, xt: Tensor, t: Tensor) -> Tensor:
        alpha_bar, one_minus_alpha_bar = self.schedule.levels(t, xt)
        x0_hat = self.mixture.posterior_mean_x0(xt, alpha_bar.to(torch.float64).flatten())
        return prediction_at(self.prediction, alpha_bar, one_minus_alpha_bar, xt, x0_hat.to(xt))


def gaussian_flow_marginal(
    schedule: ContinuousSchedule, mean: Tensor, std: Tensor, s_min: float, s_end: float
) -> tuple[Tensor, Tensor]:
    """(M, V): the law N(M, V) (per dimension, float64) at s_min of the probability-flow ODE
    started from N(0, I) at s_end, for data N(mean, diag(std^2)) and its Bayes-optimal denoiser.

    Each dimension diffuses to q_s = N(sqrt(ab(s)) m, v(s)), v(s) = ab(s) std^2 + 1 - ab(s), and
    the flow of ``ddpm.likelihood.ode`` (F1) with eps_hat = sqrt(1 - ab) (x - sqrt(ab) m) / v(s) is
    the affine map x_s = sqrt(ab(s)) m + sqrt(v(s) / v(s')) (x_s' - sqrt(ab(s')) m). Check: with
    z = x - sqrt(ab) m the map gives dx/ds = -1/2 beta sqrt(ab) m + v' / (2 v) z, (F1) gives
    -1/2 beta (sqrt(ab) m + z (v - 1) / v), and v' = -beta ab (std^2 - 1) = -beta (v - 1).
    Pulling N(0, 1) at s_end back through it gives
        V = v(s_min) / v(s_end),   M = sqrt(ab(s_min)) m - sqrt(V ab(s_end)) m.
    """
    s = torch.tensor([s_min, s_end], dtype=torch.float64)
    ab, omab = schedule.alpha_bar(s), schedule.one_minus_alpha_bar(s)
    mean, std = (torch.as_tensor(v, dtype=torch.float64) for v in (mean, std))
    v_min, v_end = (ab[i] * std**2 + omab[i] for i in (0, 1))
    V = v_min / v_end
    return ab[0].sqrt() * mean - (V * ab[1]).sqrt() * mean, V


__all__ = [
    "ContinuousMixtureOracle",
    "ContinuousSchedule",
    "gaussian_flow_marginal",
    "prediction_at",
]
