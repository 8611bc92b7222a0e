"""Slow float64 references, written line by line from the papers, for testing the fast code.

Everything here loops over timesteps, examples and dimensions with Python floats, so that each
line can be checked against one equation. Nothing here imports ``ddpm``: the fast code is tested
against these functions, never against itself.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [SH22] Salimans, Ho. Progressive Distillation for Fast Sampling of Diffusion Models.
           arXiv:2202.00512
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

BETA_MAX = 0.999  # [ND21] Sec. 3.2
SQRT2 = math.sqrt(2.0)

# --- schedules --------------------------------------------------------------------------------


def linear_betas(T: int) -> list[float]:
    """[0, beta_1, ..., beta_T]: [Ho20] Sec. 4, 1e-4 .. 0.02 at T = 1000, both ends scaled by
    1000 / T for other T (one point, the start, when T = 1 as in numpy.linspace), capped."""
    lo, hi = 1e-4 * 1000 / T, 0.02 * 1000 / T
    betas = [0.0]
    for t in range(1, T + 1):
        b = lo if T == 1 else lo + (hi - lo) * (t - 1) / (T - 1)
        betas.append(min(b, BETA_MAX))
    return betas


def cosine_f(t: float, T: int, s: float = 0.008) -> float:
    """f(t) = cos((t / T + s) / (1 + s) * pi / 2)^2, [ND21] eq. (17)."""
    return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(T: int, s: float = 0.008) -> list[float]:
    """[0, beta_1, ..., beta_T] with beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, [ND21] eq. (17),
    alpha_bar_t = f(t) / f(0), capped at 0.999."""
    betas = [0.0]
    for t in range(1, T + 1):
        betas.append(min(1 - cosine_f(t, T, s) / cosine_f(t - 1, T, s), BETA_MAX))
    return betas


class Schedule:
    """Every derived quantity of [Ho20] as Python float lists indexed by t = 0..T."""

    def __init__(self, betas: Sequence[float]) -> None:
        self.beta = [float(b) for b in betas]
        self.T = len(self.beta) - 1
        T = self.T
        self.alpha = [1 - b for b in self.beta]
        self.alpha_bar = [1.0] * (T + 1)  # [Ho20] eq. (4)
        # 1 - alpha_bar_t by the recursion 1 - ab_t = (1 - ab_{t-1}) + ab_{t-1} beta_t, which
        # never subtracts two numbers close to one.
        self.one_minus_alpha_bar = [0.0] * (T + 1)
        for t in range(1, T + 1):
            self.alpha_bar[t] = self.alpha_bar[t - 1] * self.alpha[t]
            self.one_minus_alpha_bar[t] = (
                self.one_minus_alpha_bar[t - 1] + self.alpha_bar[t - 1] * self.beta[t]
            )
        self.beta_tilde = [0.0] * (T + 1)  # [Ho20] eq. (7)
        self.coef_x0 = [0.0] * (T + 1)
        self.coef_xt = [0.0] * (T + 1)
        for t in range(1, T + 1):
            omab_prev, omab = self.one_minus_alpha_bar[t - 1], self.one_minus_alpha_bar[t]
            self.beta_tilde[t] = omab_prev / omab * self.beta[t]
            self.coef_x0[t] = math.sqrt(self.alpha_bar[t - 1]) * self.beta[t] / omab
            self.coef_xt[t] = math.sqrt(self.alpha[t]) * omab_prev / omab
        # Decoder variance at t = 1: beta_tilde_2 ([ND21]'s clipped posterior variance), and
        # beta_1 when T = 1.
        self.decoder_var = self.beta_tilde[2] if T >= 2 else self.beta[1]

    def posterior_mean(self, x0: float, xt: float, t: int) -> float:
        """mu_tilde_t(x_t, x_0), [Ho20] eq. (7)."""
        return self.coef_x0[t] * x0 + self.coef_xt[t] * xt

    def fixed_var(self, variance: str, t: int) -> float:
        """sigma_t^2 = beta_tilde_t ('small') or beta_t ('large'); the decoder variance at t=1."""
        if t == 1:
            return self.decoder_var
        return self.beta_tilde[t] if variance == "small" else self.beta[t]


# --- p_theta(x_{t-1} | x_t) ---------------------------------------------------------------------


def p_mean_var(
    sched: Schedule,
    prediction: str,
    variance: str,
    out: Sequence[float],
    xt: Sequence[float],
    t: int,
) -> tuple[list[float], list[float]]:
    """Mean and variance of p_theta(x_{t-1} | x_t) for one example, per dimension.

    out: the network output for this example, [D] or [2 D] (second half: variance head).
    """
    D = len(xt)
    beta, alpha = sched.beta[t], sched.alpha[t]
    ab, omab = sched.alpha_bar[t], sched.one_minus_alpha_bar[t]
    means, variances = [], []
    for i in range(D):
        head = out[i]
        if prediction == "x0":
            mean = sched.posterior_mean(head, xt[i], t)  # [Ho20] eq. (7) with x0_hat
        else:
            if prediction == "eps":
                eps_hat = head
            else:  # v = sqrt(ab) eps - sqrt(1 - ab) x_0  =>  eps = sqrt(ab) v + sqrt(1 - ab) x_t
                eps_hat = math.sqrt(ab) * head + math.sqrt(omab) * xt[i]
            mean = (xt[i] - beta / math.sqrt(omab) * eps_hat) / math.sqrt(alpha)  # eq. (11)
        if variance == "learned":
            # [ND21] eq. (15); at t = 1 from the decoder variance beta_tilde_2 up to beta_1.
            u = (out[D + i] + 1) / 2
            log_hi = math.log(beta)
            log_lo = math.log(sched.decoder_var if t == 1 else sched.beta_tilde[t])
            var = math.exp(u * log_hi + (1 - u) * log_lo)
        else:
            var = sched.fixed_var(variance, t)
        means.append(mean)
        variances.append(var)
    return means, variances


# --- Gaussians ----------------------------------------------------------------------------------


def normal_kl(m1: float, v1: float, m2: float, v2: float) -> float:
    """KL(N(m1, v1) || N(m2, v2)) in nats."""
    return 0.5 * (math.log(v2 / v1) - 1 + v1 / v2 + (m1 - m2) ** 2 / v2)


def gaussian_log_prob(x: float, mean: float, var: float) -> float:
    return -0.5 * math.log(2 * math.pi * var) - (x - mean) ** 2 / (2 * var)


def log_ndtr(z: float) -> float:
    """log Phi(z) from erfc; below z = -35 (where erfc underflows) the asymptotic series
    Phi(z) = phi(z) / |z| (1 - 1/z^2 + 3/z^4 - 15/z^6 + 105/z^8 - ...), relative error < 1e-13."""
    if z > 0:
        return math.log1p(-0.5 * math.erfc(z / SQRT2))
    if z > -35:
        return math.log(0.5 * math.erfc(-z / SQRT2))
    z2 = z * z
    series = 1 - 1 / z2 + 3 / z2**2 - 15 / z2**3 + 105 / z2**4
    return -0.5 * z2 - math.log(-z) - 0.5 * math.log(2 * math.pi) + math.log(series)


def log_interval_prob(a: float, b: float) -> float:
    """log(Phi(b) - Phi(a)) for a < b (a may be -inf, b may be +inf)."""
    if a > 0:  # upper tail: Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
        return log_interval_prob(-b, -a)
    if a == -math.inf:
        return 0.0 if b == math.inf else log_ndtr(b)
    if b == math.inf:
        return log_ndtr(-a)
    if b < -5:  # both in the lower tail: factor out Phi(b)
        lb, la = log_ndtr(b), log_ndtr(a)
        return lb + math.log1p(-math.exp(la - lb))
    return math.log(0.5 * (math.erfc(-b / SQRT2) - math.erfc(-a / SQRT2)))


def discretized_log_prob(x: float, mean: float, var: float, levels: int) -> float:
    """log P(x) for x on the grid of ``levels`` values in [-1, 1], [Ho20] eq. (13): the mass of
    [x - w/2, x + w/2], with the first bin reaching to -inf and the last to +inf."""
    w = 2 / (levels - 1)
    std = math.sqrt(var)
    a = -math.inf if x < -1 + w / 2 else (x - w / 2 - mean) / std
    b = math.inf if x > 1 - w / 2 else (x + w / 2 - mean) / std
    return log_interval_prob(a, b)


# --- the ELBO -----------------------------------------------------------------------------------


def elbo_terms(
    sched: Schedule,
    prediction: str,
    variance: str,
    model_row: Callable[[list[float], int], list[float]],
    x0: Sequence[Sequence[float]],
    noise: Callable[[int, int], Sequence[float]],
    levels: int | None,
) -> tuple[list[float], list[list[float]], list[float]]:
    """-ELBO of [Ho20] eq. (5) term by term for each example, in nats.

    model_row(x_t, t) is the network for one example; noise(t, b) is the eps used to draw
    x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps for example b. Returns (L_T [B],
    [L_{t-1} for t = 2..T] [B][T-1], L_0 [B]).
    """
    T = sched.T
    ab_T = sched.alpha_bar[T]
    prior, kls, decoder = [], [], []
    for b, x0_b in enumerate(x0):
        # L_T = KL(N(sqrt(ab_T) x_0, 1 - ab_T) || N(0, 1)) per dimension
        #     = (ab_T x_0^2 + (1 - ab_T) - 1 - log(1 - ab_T)) / 2, written without cancellation
        prior.append(sum(0.5 * (ab_T * x * x - ab_T - math.log1p(-ab_T)) for x in x0_b))
        kl_b = []
        for t in range(1, T + 1):
            eps = noise(t, b)
            ab, omab = sched.alpha_bar[t], sched.one_minus_alpha_bar[t]
            xt = [math.sqrt(ab) * x + math.sqrt(omab) * e for x, e in zip(x0_b, eps, strict=True)]
            mean, var = p_mean_var(sched, prediction, variance, model_row(xt, t), xt, t)
            if t == 1:  # L_0 = -log p_theta(x_0 | x_1)
                nll = 0.0
                for i in range(len(x0_b)):
                    if levels is None:
                        nll -= gaussian_log_prob(x0_b[i], mean[i], var[i])
                    else:
                        nll -= discretized_log_prob(x0_b[i], mean[i], var[i], levels)
                decoder.append(nll)
                continue
            # L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))
            term = 0.0
            for i in range(len(x0_b)):
                post_mean = sched.posterior_mean(x0_b[i], xt[i], t)
                term += normal_kl(post_mean, sched.beta_tilde[t], mean[i], var[i])
            kl_b.append(term)
        kls.append(kl_b)
    return prior, kls, decoder


# --- a stand-in network -------------------------------------------------------------------------


class LinearDenoiser:
    """A fixed random affine map in float64 standing in for a network:
    out = W x_t + (t / T) c + d, with out_mult * D outputs. Callable on tensors (the network
    protocol: x [B, D], t [B] -> [B, out_mult * D]) and, with ``row``, on one example."""

    def __init__(self, dim: int, out_mult: int, T: int, seed: int, scale: float = 0.5) -> None:
        rng = np.random.default_rng(seed)
        self.T = T
        self.W = rng.normal(size=(out_mult * dim, dim)) * scale / math.sqrt(dim)
        self.c = rng.normal(size=out_mult * dim) * scale
        self.d = rng.normal(size=out_mult * dim) * scale

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        W, c, d = (torch.from_numpy(a).to(x.device) for a in (self.W, self.c, self.d))
        frac = (t.to(torch.float64) / self.T)[:, None]
        return (x.to(torch.float64) @ W.T + frac * c + d).to(x.dtype)

    def row(self, x: Sequence[float], t: int) -> list[float]:
        out = []
        for j in range(self.W.shape[0]):
            acc = 0.0
            for i in range(len(x)):
                acc += float(self.W[j, i]) * x[i]
            out.append(acc + t / self.T * float(self.c[j]) + float(self.d[j]))
        return out


# --- a linear-Gaussian reverse chain ------------------------------------------------------------


def gaussian_data_posterior_x0(sched: Schedule, m: float, s2: float, t: int) -> tuple[float, float]:
    """E[x_0 | x_t] = k x_t + c for data x_0 ~ N(m, s2): Gaussian conditioning of
    (x_0, x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps). Returns (k, c)."""
    ab, omab = sched.alpha_bar[t], sched.one_minus_alpha_bar[t]
    k = math.sqrt(ab) * s2 / (ab * s2 + omab)
    return k, m - k * math.sqrt(ab) * m


def gaussian_chain_marginal(
    sched: Schedule, m: float, s2: float, variance: str, decoder_noise: bool
) -> tuple[float, float]:
    """Mean and variance of x_0 from the reverse chain with the Bayes-optimal mean for data
    N(m, s2): mu_theta(x_t) = coef_x0 E[x_0|x_t] + coef_xt x_t = a_t x_t + b_t, so
    mean_{t-1} = a_t mean_t + b_t, var_{t-1} = a_t^2 var_t + sigma_t^2, from x_T ~ N(0, 1).
    decoder_noise: add sigma_1^2 at t = 1 (the likelihood model); [Ho20] Alg. 2 adds none."""
    mean, var = 0.0, 1.0
    for t in range(sched.T, 0, -1):
        k, c = gaussian_data_posterior_x0(sched, m, s2, t)
        a = sched.coef_x0[t] * k + sched.coef_xt[t]
        b = sched.coef_x0[t] * c
        mean = a * mean + b
        var = a * a * var + (sched.fixed_var(variance, t) if t > 1 or decoder_noise else 0.0)
    return mean, var


class TimeOnlyDenoiser:
    """x_0 prediction that ignores x_t: out = [x0_hat(t), var_out(t)] with fixed random
    functions of t. Every ELBO term is then a deterministic function of (x_0, t): the draw of
    x_t cancels from mu_tilde_t - mu_theta = coef_x0[t] (x_0 - x0_hat(t))."""

    def __init__(self, dim: int, out_mult: int, T: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.T = T
        self.table = rng.uniform(-1, 1, size=(T + 1, out_mult * dim))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.table).to(device=x.device, dtype=x.dtype)[t]

    def row(self, x: Sequence[float], t: int) -> list[float]:
        return [float(v) for v in self.table[t]]


class GaussianOracle:
    """The Bayes-optimal network for 1-D data x_0 ~ N(m, s2): from E[x_0 | x_t] = k_t x_t + c_t
    (``gaussian_data_posterior_x0``) it returns x0_hat, eps_hat = (x_t - sqrt(ab) x0_hat) /
    sqrt(1 - ab) or v_hat = sqrt(ab) eps_hat - sqrt(1 - ab) x0_hat, as asked."""

    def __init__(self, sched: Schedule, m: float, s2: float, prediction: str) -> None:
        T = sched.T
        k, c = np.zeros(T + 1), np.zeros(T + 1)
        for t in range(1, T + 1):
            k[t], c[t] = gaussian_data_posterior_x0(sched, m, s2, t)
        self.k, self.c = torch.from_numpy(k), torch.from_numpy(c)
        self.sqrt_ab = torch.tensor([math.sqrt(a) for a in sched.alpha_bar], dtype=torch.float64)
        self.sqrt_omab = torch.tensor(
            [math.sqrt(a) for a in sched.one_minus_alpha_bar], dtype=torch.float64
        )
        self.prediction = prediction

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xd = x.to(torch.float64)
        k, c = self.k[t][:, None], self.c[t][:, None]
        sa, so = self.sqrt_ab[t][:, None], self.sqrt_omab[t][:, None]
        x0_hat = k * xd + c
        eps_hat = (xd - sa * x0_hat) / so
        out = {"x0": x0_hat, "eps": eps_hat, "v": sa * eps_hat - so * x0_hat}[self.prediction]
        return out.to(x.dtype)
