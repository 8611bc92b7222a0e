"""Bayes-optimal denoisers whose likelihoods are known: the ground truth for every estimator.

For data x_0 ~ q(x_0) and x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps [Ho20] eq. (4),
the network output that minimises every term of -ELBO [Ho20] eq. (5) with fixed variances is
the posterior mean: x0_hat(x_t, t) = E[x_0 | x_t], so mu_theta = mu_tilde_t(x_t, E[x_0|x_t])
[Ho20] eqs. (7), (11). Its eps- and v-forms follow linearly:
    E[eps | x_t] = (x_t - sqrt(alpha_bar_t) E[x_0 | x_t]) / sqrt(1 - alpha_bar_t),
    E[v | x_t]   = sqrt(alpha_bar_t) E[eps | x_t] - sqrt(1 - alpha_bar_t) E[x_0 | x_t]   [SH22].
``GaussianOracle`` (data N(m, diag s^2)) and ``MixtureOracle`` (a ``GaussianMixture``) are plain
``nn.Module`` denoisers, evaluated by the same code as a trained network.

Gaussian data, per dimension (all dimensions are independent):
    x_t ~ N(sqrt(ab) m, ab s^2 + 1 - ab),                       ab = alpha_bar_t
    E[x_0 | x_t] = gain_t x_t + offset_t,
        gain_t = sqrt(ab) s^2 / (ab s^2 + 1 - ab),  offset_t = (1 - ab) m / (ab s^2 + 1 - ab)  (G1)
so mu_theta(x_t, t) = a_t x_t + b_t is affine [Ho20] eq. (7):
    a_t = c0_t gain_t + c1_t,  b_t = c0_t offset_t,   c0, c1 = posterior_coef_x0, posterior_coef_xt
and with fixed sigma_t^2 the reverse chain is linear-Gaussian, x_{t-1} = a_t x_t + b_t + sigma_t z.
Its marginal p_theta(x_0) = N(M_0, V_0) follows from p(x_T) = N(0, 1) by              (G2)
    M_T = 0, V_T = 1;   M_{t-1} = a_t M_t + b_t,   V_{t-1} = a_t^2 V_t + sigma_t^2   (t = T..1),
where t = 1 is the continuous decoder p_theta(x_0 | x_1) = N(mu_theta(x_1, 1), sigma_1^2).
Every ELBO term depends on x_{1:T} only through a residual Delta_t that is affine in (x_0, eps):
    t >= 2: Delta_t = mu_tilde_t - mu_theta = c0_t x_0 + c1_t x_t - a_t x_t - b_t  [Ho20] eq. (7)
    t = 1:  Delta_1 = x_0 - mu_theta(x_1, 1)
    => Delta_t = u_t x_0 + v_t eps + w_t,  u = k + (l - a) sqrt(ab), v = (l - a) sqrt(1 - ab),
       w = -b, with (k, l) = (c0_t, c1_t) for t >= 2 and (1, 0) for t = 1.              (G3)
If x_0 has mean mu and variance nu (x_0 fixed: (x_0, 0); x_0 ~ q: (m, s^2)), then with the
Gaussian KL of [Ho20] eq. (5) the expected terms are                                      (G4)
    E[Delta_t^2] = (u mu + w)^2 + u^2 nu + v^2
    E[L_{t-1}] = KL(N(0, beta_tilde_t) || N(0, sigma_t^2)) + E[Delta_t^2] / (2 sigma_t^2)
    E[L_0]     = 0.5 log(2 pi sigma_1^2) + E[Delta_1^2] / (2 sigma_1^2)
    E[L_T]     = KL(N(sqrt(ab_T) mu, 1 - ab_T) || N(0, 1)) + ab_T nu / 2.

The 'optimal' variance [BLZ22]. Given x_t, x_{t-1} = c_t x_0 + l_t x_t + sqrt(beta_tilde_t) z
under q(x_{t-1} | x_t, x_0) [Ho20] eqs. (6)-(7), so by the law of total variance
    Var(x_{t-1} | x_t) = beta_tilde_t + c_t^2 Var(x_0 | x_t),   c_t = posterior_coef_x0[t]   (G5)
      = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t),
and the diagonal Gaussian p(x_{t-1} | x_t) that minimises E KL(q(x_{t-1}|x_t) || p) matches
E[x_{t-1} | x_t] (the oracle's mean) and this variance, per x_t and per dimension. At t = 1,
c_1 = 1 and beta_tilde_1 = 0: the decoder variance is Var(x_0 | x_1). The oracles emit it as
the log sigma_t^2 block of the 'optimal' layout (``ddpm.process.reverse``). For Gaussian data
    Var(x_0 | x_t) = (1 - ab) s^2 / (ab s^2 + 1 - ab),                                       (G6)
constant in x_t: every reverse step is then the true q(x_{t-1} | x_t), so the chain (G2)-(G4)
holds with sigma_t^2 per dimension, p_theta(x_{0:T}) = p(x_T) prod_t q(x_{t-1} | x_t) and
    KL(q(x_{0:T}) || p_theta(x_{0:T})) = KL(q(x_T) || p(x_T))
                                       = KL(N(sqrt(ab_T) m, ab_T s^2 + 1 - ab_T) || N(0, 1)).
With any variance the oracle's mean is the true E[x_{t-1} | x_t], so only variances differ and
the joint KL splits over the true reverse kernels (``ddpm.likelihood.joint_kl``) as       (G7)
    KL_joint = KL(q(x_T) || p(x_T)) + sum_t sum_d KL(N(0, v_t) || N(0, sigma_t^2)),
    v_t = beta_tilde_t + c_t^2 Var(x_0 | x_t)   (v_1 = Var(x_0 | x_1): the decoder),
a sum of non-negative terms with no cancellation; it equals E[-ELBO] - H(q(x_0)) of (G4).

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [SH22] Salimans, Ho. Progressive Distillation for Fast Sampling of Diffusion Models.
           arXiv:2202.00512 (the v-parameterisation)
    [BLZ22] Bao, Li, Zhu, Zhang. Analytic-DPM: an Analytic Estimate of the Optimal Reverse
            Variance in Diffusion Probabilistic Models. arXiv:2201.06503
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

import torch
from torch import Tensor, nn

from ddpm.config import Prediction
from ddpm.errors import ConfigError, require_choice
from ddpm.likelihood.elbo import ElboTerms
from ddpm.process.diffusion import Parameterisation
from ddpm.process.forward import eps_from_x0, v_from_x0_eps
from ddpm.process.gaussian import LOG_2PI, gaussian_log_prob, normal_kl
from ddpm.process.schedule import NoiseSchedule

if TYPE_CHECKING:  # only the mixture's posterior_mean_x0 is used; no import of the data package
    from ddpm.data import GaussianMixture

ORACLE_VARIANCES = ("small", "large", "optimal")  # 'learned' is a network's interpolation


def prediction_from_x0(
    s: NoiseSchedule, prediction: str, xt: Tensor, t: Tensor, x0_hat: Tensor
) -> Tensor:
    """The network output for ``prediction`` that corresponds to the estimate x0_hat of x_0."""
    if prediction == "x0":
        return x0_hat
    eps_hat = eps_from_x0(s, xt, t, x0_hat)
    return eps_hat if prediction == "eps" else v_from_x0_eps(s, x0_hat, t, eps_hat)


def gaussian_denoiser_coefficients(
    alpha_bar: Tensor, one_minus_alpha_bar: Tensor, mean: Tensor, std: Tensor
) -> tuple[Tensor, Tensor]:
    """(gain, offset) with E[x_0 | x_t] = gain * x_t + offset for x_0 ~ N(mean, std^2), (G1).

    Arguments broadcast (e.g. alpha_bar [B, 1] against mean [D]); 1 - alpha_bar is passed
    separately so that it keeps full precision for alpha_bar near 1.
    """
    var = std**2
    den = alpha_bar * var + one_minus_alpha_bar
    return alpha_bar.sqrt() * var / den, one_minus_alpha_bar * mean / den


def gaussian_posterior_var(alpha_bar: Tensor, one_minus_alpha_bar: Tensor, std: Tensor) -> Tensor:
    """Var(x_0 | x_t) for x_0 ~ N(mean, std^2), (G6); arguments broadcast as in
    ``gaussian_denoiser_coefficients``."""
    var = std**2
    return one_minus_alpha_bar * var / (alpha_bar * var + one_minus_alpha_bar)


def optimal_var(beta_tilde: Tensor, coef_x0: Tensor, var_x0: Tensor) -> Tensor:
    """sigma_t^2 = beta_tilde_t + c_t^2 Var(x_0 | x_t), the exact Var(x_{t-1} | x_t), (G5)
    [BLZ22]; c_t = posterior_coef_x0[t] (1 at t = 1, where beta_tilde_1 = 0). Broadcasts."""
    return beta_tilde + coef_x0**2 * var_x0


def oracle_output(
    s: NoiseSchedule,
    param: Parameterisation,
    xt: Tensor,
    t: Tensor,
    x0_hat: Tensor,
    var_x0: Callable[[], Tensor],
) -> Tensor:
    """The output of a Bayes-optimal model in ``param``'s layout: the prediction for x0_hat
    = E[x_0 | x_t], followed for variance 'optimal' by log sigma_t^2 of (G5) from
    var_x0() = Var(x_0 | x_t) [B, D] (only called then)."""
    out = prediction_from_x0(s, param.prediction, xt, t, x0_hat)
    if param.variance != "optimal":
        return out
    var = optimal_var(s.at(s.beta_tilde, t, xt), s.at(s.posterior_coef_x0, t, xt), var_x0())
    return torch.cat([out, var.log()], dim=1)


def _oracle_param(prediction: str, variance: str) -> Parameterisation:
    require_choice("variance of a Bayes-optimal model", variance, ORACLE_VARIANCES)
    return Parameterisation(prediction, variance)  # type: ignore[arg-type]


class GaussianOracle(nn.Module):
    """Bayes-optimal denoiser for data x_0 ~ N(mean, diag(std^2)): returns E[eps | x_t]
    (or E[x_0 | x_t], E[v | x_t]) in closed form, (G1), and with variance 'optimal' also
    log sigma_t^2 of (G5)-(G6). Inputs x_t [B, D] (or any shape the data-shaped mean and std
    broadcast against), t int64 [B] in 1..T; computed in x_t's dtype."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        mean: Tensor,
        std: Tensor,
        prediction: Prediction = "eps",
        variance: str = "small",
    ) -> None:
        super().__init__()
        require_choice("prediction", prediction, get_args(Prediction))
        mean, std = _check_mean_std(mean, std)
        self.schedule, self.param = schedule, _oracle_param(prediction, variance)
        self.prediction = prediction
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, xt: Tensor, t: Tensor) -> Tensor:
        s = self.schedule
        ab, omab = s.at(s.alpha_bar, t, xt), s.at(s.one_minus_alpha_bar, t, xt)
        mean, std = (v.to(dtype=xt.dtype, device=xt.device) for v in (self.mean, self.std))
        gain, offset = gaussian_denoiser_coefficients(ab, omab, mean, std)
        var_x0 = lambda: gaussian_posterior_var(ab, omab, std).expand_as(xt)  # noqa: E731
        return oracle_output(s, self.param, xt, t, gain * xt + offset, var_x0)


class MixtureOracle(nn.Module):
    """Bayes-optimal denoiser for data from a Gaussian mixture: E[x_0 | x_t] is the
    responsibility-weighted average of the per-component posterior means
    (``GaussianMixture.posterior_x0`` at alpha_bar_t of each example), returned as
    E[eps | x_t], E[x_0 | x_t] or E[v | x_t]; with variance 'optimal' also log sigma_t^2 of
    (G5) from the diagonal of Cov(x_0 | x_t). x_t: [B, D]; t: int64 [B] in 1..T. With the same
    variance no network attains a lower expected -ELBO on this data."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        mixture: GaussianMixture,
        prediction: Prediction = "eps",
        variance: str = "small",
    ) -> None:
        super().__init__()
        require_choice("prediction", prediction, get_args(Prediction))
        self.schedule, self.mixture = schedule, mixture
        self.param, self.prediction = _oracle_param(prediction, variance), prediction

    def forward(self, xt: Tensor, t: Tensor) -> Tensor:
        s = self.schedule
        alpha_bar = s.alpha_bar.to(t.device)[t]  # [B] float64
        x0_hat, var_x0 = self.mixture.posterior_x0(xt, alpha_bar)
        return oracle_output(s, self.param, xt, t, x0_hat.to(xt.dtype), lambda: var_x0.to(xt.dtype))


@dataclass(frozen=True, eq=False)
class GaussianAnalysis:
    """Closed-form likelihood analysis of ``GaussianOracle`` with fixed variances, in nats per
    example, float64. Scalars are expectations over x_0 ~ q = N(mean, diag(std^2))."""

    schedule: NoiseSchedule
    variance: str  # 'small' | 'large' | 'optimal'
    mean: Tensor  # [D] m
    std: Tensor  # [D] s
    a: Tensor  # [T+1, D] mu_theta(x_t, t) = a_t x_t + b_t (row 0 unused)
    b: Tensor  # [T+1, D]
    sigma2: Tensor  # [T+1, D] sigma_t^2 of p_theta(x_{t-1} | x_t); row 1 is the decoder's
    p_mean: Tensor  # [D] M_0 of p_theta(x_0) = N(M_0, V_0), (G2)
    p_var: Tensor  # [D] V_0
    prior_kl: float  # E_q[L_T]
    per_timestep: Tensor  # [T] E_q of L_0 (entry 0) and L_{t-1} (entry t-1, t >= 2)
    neg_elbo: float  # E_q[-ELBO] = prior_kl + per_timestep.sum()
    entropy: float  # H(q(x_0)) = sum_d 0.5 log(2 pi e s_d^2)
    neg_log_likelihood: float  # E_q[-log p_theta(x_0)]
    kl_marginal: float  # KL(q(x_0) || p_theta(x_0))
    kl_joint: float  # KL(q(x_{0:T}) || p_theta(x_{0:T})) = neg_elbo - entropy, via (G7)
    kl_prior_marginal: float  # KL(q(x_T) || p(x_T)): all of kl_joint when each step is exact
    reverse_kl: Tensor  # [T] E KL(q(x_{t-1} | x_t) || p_theta(x_{t-1} | x_t)), entry t-1: step t

    @property
    def posterior_gap(self) -> float:
        """E_q[KL(q(x_{1:T}|x_0) || p_theta(x_{1:T}|x_0))] = kl_joint - kl_marginal, the
        expected gap between -ELBO and -log p_theta(x_0)."""
        return self.kl_joint - self.kl_marginal


def gaussian_analysis(
    schedule: NoiseSchedule, mean: Tensor, std: Tensor, variance: str = "small"
) -> GaussianAnalysis:
    """Every ELBO term, the exact marginal p_theta(x_0) and the KL chain for ``GaussianOracle``
    on N(mean, diag(std^2)) data (mean, std: [D]) with sigma_t^2 from ``variance`` (small, large
    or the exact 'optimal' of (G5)-(G6)); see (G1)-(G4). The decoder is the continuous Gaussian
    N(mu_theta(x_1, 1), sigma_1^2) (levels = None)."""
    require_choice("variance", variance, ORACLE_VARIANCES)
    s = schedule
    mean, std = (v.to(s.beta.device) for v in _check_mean_std(mean, std))
    if mean.ndim != 1:
        raise ConfigError(f"gaussian_analysis needs vectors mean, std [D] (got {mean.ndim}-D)")
    ab, omab = s.alpha_bar[:, None], s.one_minus_alpha_bar[:, None]
    gain, offset = gaussian_denoiser_coefficients(ab, omab, mean, std)
    # Var(x_{t-1} | x_t) of the true reverse kernels, (G5)-(G6); row 0 (t = 0) is 0 and unused
    true_var = optimal_var(
        s.beta_tilde[:, None], s.posterior_coef_x0[:, None], gaussian_posterior_var(ab, omab, std)
    )
    if variance == "optimal":
        sigma2 = true_var
    else:
        fixed = s.sigma2_small if variance == "small" else s.sigma2_large
        sigma2 = fixed[:, None].expand(-1, mean.numel())
    a = s.posterior_coef_x0[:, None] * gain + s.posterior_coef_xt[:, None]
    b = s.posterior_coef_x0[:, None] * offset
    # (G2) unrolled from p(x_T) = N(0, I) down to the decoder at t = 1: with
    # A_t = prod_{s<t} a_s, M_0 = sum_t A_t b_t and V_0 = sum_t A_t^2 sigma_t^2 + A_{T+1}^2.
    A = torch.cat([torch.ones_like(a[:1]), torch.cumprod(a[1:], dim=0)])  # row t-1: A_t
    p_mean = (A[:-1] * b[1:]).sum(dim=0)
    p_var = (A[:-1] ** 2 * sigma2[1:]).sum(dim=0) + A[-1] ** 2
    terms = _expected_terms(s, a, b, sigma2, mean, std**2)
    neg_elbo = terms.total().item()
    entropy = (0.5 * (LOG_2PI + 1 + 2 * std.log())).sum().item()
    nll = _expected_nll(p_mean, p_var, mean, std**2).sum().item()
    kl_marginal = normal_kl(mean, 2 * std.log(), p_mean, p_var.log()).sum().item()
    ab_T, omab_T = s.alpha_bar[s.T], s.one_minus_alpha_bar[s.T]
    q_T_var = ab_T * std**2 + omab_T  # q(x_T) = N(sqrt(ab_T) m, ab_T s^2 + 1 - ab_T)
    zero = torch.zeros_like(mean)
    kl_prior = normal_kl(ab_T.sqrt() * mean, q_T_var.log(), zero, zero).sum().item()
    log_v, log_sigma2 = true_var[1:].log(), sigma2[1:].log()
    reverse_kl = normal_kl(zero, log_v, zero, log_sigma2).sum(dim=-1)  # (G7), [T]
    return GaussianAnalysis(
        schedule=s,
        variance=variance,
        mean=mean,
        std=std,
        a=a,
        b=b,
        sigma2=sigma2,
        p_mean=p_mean,
        p_var=p_var,
        prior_kl=terms.prior_kl.item(),
        per_timestep=terms.per_timestep[0],
        neg_elbo=neg_elbo,
        entropy=entropy,
        neg_log_likelihood=nll,
        kl_marginal=kl_marginal,
        kl_joint=kl_prior + reverse_kl.sum().item(),
        kl_prior_marginal=kl_prior,
        reverse_kl=reverse_kl,
    )


def gaussian_log_likelihood(analysis: GaussianAnalysis, x0: Tensor) -> Tensor:
    """Exact log p_theta(x_0) = log N(x_0; M_0, V_0) per example [B] in nats, (G2). x0: [B, D];
    float64 on x0's device."""
    p_mean, p_var = (v.to(x0.device) for v in (analysis.p_mean, analysis.p_var))
    return gaussian_log_prob(x0.to(torch.float64), p_mean, p_var.log()).sum(dim=-1)


def gaussian_elbo_terms(analysis: GaussianAnalysis, x0: Tensor) -> ElboTerms:
    """E_{x_{1:T} ~ q(x_{1:T}|x_0)} of every -ELBO term for each fixed x_0 [B, D], (G3)-(G4).

    Same layout as ``elbo_terms`` (float64, on x0's device); ``total()`` is E[-ELBO | x_0] >=
    -log p_theta(x_0). Computed where the analysis lives (the schedule's device).
    """
    an = analysis
    mu = x0.to(dtype=torch.float64, device=an.a.device)
    terms = _expected_terms(an.schedule, an.a, an.b, an.sigma2, mu, torch.zeros_like(mu))
    return ElboTerms(*(v.to(x0.device) for v in (terms.prior_kl, terms.kl, terms.decoder_nll)))


def _expected_terms(
    s: NoiseSchedule, a: Tensor, b: Tensor, sigma2: Tensor, mu: Tensor, nu: Tensor
) -> ElboTerms:
    """Expectations of L_T, L_{t-1}, L_0 (as ElboTerms, batch B; B = 1 for mu [D]) for the
    chain mu_theta = a_t x_t + b_t [T+1, D] with variances sigma2 [T+1, D], x_0 of mean mu [B, D]
    and variance nu [B, D], and x_{1:T} ~ q(x_{1:T}|x_0); (G3)-(G4)."""
    mu, nu = mu.reshape(-1, 1, mu.shape[-1]), nu.reshape(-1, 1, nu.shape[-1])  # [B, 1, D]
    k, l = s.posterior_coef_x0.clone(), s.posterior_coef_xt.clone()
    k[1], l[1] = 1.0, 0.0  # the decoder residual x_0 - mu_theta(x_1, 1)
    k, l = k[1:, None], l[1:, None]  # [T, 1]
    sqrt_ab, sqrt_omab = s.alpha_bar[1:, None].sqrt(), s.one_minus_alpha_bar[1:, None].sqrt()
    a, b = a[1:], b[1:]  # [T, D]
    u, v, w = k + (l - a) * sqrt_ab, (l - a) * sqrt_omab, -b  # (G3)
    delta2 = (u * mu + w) ** 2 + u**2 * nu + v**2  # (G4), [B, T, D]
    var = sigma2[1:]  # [T, D]
    # KL(N(mu_tilde, beta_tilde) || N(mu_theta, sigma^2)) = KL(N(0, beta_tilde)||N(0, sigma^2))
    # + Delta^2 / (2 sigma^2); at t = 1 beta_tilde_1 = 0, so that row is replaced by L_0 below.
    log_bt = s.beta_tilde[1:, None].clamp(min=1e-300).log()
    kl = normal_kl(torch.zeros_like(var), log_bt, torch.zeros_like(var), var.log())
    per_t = kl + 0.5 * delta2 / var
    per_t[:, 0] = 0.5 * (LOG_2PI + var[0].log() + delta2[:, 0] / var[0])
    ab_T, omab_T = s.alpha_bar[s.T], s.one_minus_alpha_bar[s.T]
    zero = torch.zeros_like(mu)
    prior = normal_kl(ab_T.sqrt() * mu, omab_T.log(), zero, zero) + 0.5 * ab_T * nu
    per_t = per_t.sum(dim=-1)  # [B, T]
    return ElboTerms(prior_kl=prior.sum(dim=(-2, -1)), kl=per_t[:, 1:], decoder_nll=per_t[:, 0])


def _expected_nll(p_mean: Tensor, p_var: Tensor, mu: Tensor, nu: Tensor) -> Tensor:
    """E[-log N(x; p_mean, p_var)] for x with mean mu and variance nu, per element."""
    return 0.5 * (LOG_2PI + p_var.log() + ((mu - p_mean) ** 2 + nu) / p_var)


def _check_mean_std(mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    mean = torch.as_tensor(mean, dtype=torch.float64)
    std = torch.as_tensor(std, dtype=torch.float64, device=mean.device)
    if mean.shape != std.shape or mean.ndim < 1:
        raise ConfigError(
            f"Gaussian data needs mean and std of the same data shape (got {tuple(mean.shape)} "
            f"and {tuple(std.shape)})"
        )
    if not bool((std > 0).all()) or not bool(torch.isfinite(mean).all()):
        raise ConfigError("Gaussian data needs finite means and standard deviations > 0")
    return mean, std


__all__ = [
    "GaussianAnalysis",
    "GaussianOracle",
    "MixtureOracle",
    "gaussian_analysis",
    "gaussian_denoiser_coefficients",
    "gaussian_elbo_terms",
    "gaussian_log_likelihood",
    "gaussian_posterior_var",
    "optimal_var",
    "oracle_output",
    "prediction_from_x0",
]
