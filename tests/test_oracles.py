"""Bayes-optimal oracles and the closed-form Gaussian analysis, against independent derivations
(Gaussian conditioning, matrix KLs, grids) and the generic Monte Carlo evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.data import DataSpec, GaussianMixture
from ddpm.data.toys import gmm8
from ddpm.errors import ConfigError
from ddpm.likelihood.elbo import elbo_mc, elbo_terms
from ddpm.likelihood.oracles import (
    GaussianOracle,
    MixtureOracle,
    gaussian_analysis,
    gaussian_elbo_terms,
    gaussian_log_likelihood,
)
from ddpm.model import Model, p_mean_var
from ddpm.process.diffusion import Diffusion
from ddpm.process.reverse import Parameterisation, p_from_output
from ddpm.process.schedule import NoiseSchedule

K_SE = 4  # Monte Carlo tolerance in standard errors
VARIANCES = ["small", "large", "optimal"]
F64 = torch.float64


def gaussian_data(d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of a d-dimensional diagonal Gaussian used throughout (d <= 3)."""
    return (
        torch.tensor([0.3, -1.0, 2.0], dtype=F64)[:d],
        torch.tensor([0.5, 1.5, 0.1], dtype=F64)[:d],
    )


def p_theta(diffusion: Diffusion, denoiser, d: int) -> Model:
    """The model of ``denoiser`` under ``diffusion`` on continuous data in R^d."""
    return Model(diffusion, denoiser, DataSpec(name="x", shape=(d,), levels=None))


def draw(mean: torch.Tensor, std: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    return mean + std * torch.randn(n, mean.numel(), generator=g, dtype=F64)


def assert_mc(samples: torch.Tensor, expected, dim: int = 0) -> None:
    """Mean of samples along dim within K_SE standard errors of expected."""
    n = samples.shape[dim]
    mean, se = samples.mean(dim), samples.std(dim) / math.sqrt(n)
    z = (mean - torch.as_tensor(expected, dtype=F64)) / se
    assert bool((z.abs() < K_SE).all()), f"z-scores {z.tolist()}"


# --- the oracle denoisers -------------------------------------------------------------------


def test_gaussian_oracle_is_the_conditional_mean_of_the_joint():
    """E[x_0|x_t], E[eps|x_t], E[v|x_t] from Cov(Y, x_t) / Var(x_t), in numpy float64."""
    s = NoiseSchedule.cosine(T=20)
    m, sd = gaussian_data(3)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 2, 7, 13, 20])
    xt = torch.randn(5, 3, generator=g, dtype=F64) * 2
    ab = s.alpha_bar[t].numpy()[:, None]
    mn, var, x = m.numpy(), sd.numpy() ** 2, xt.numpy()
    var_xt, r = ab * var + 1 - ab, x - np.sqrt(ab) * mn
    cov = {  # Cov(Y, x_t) and E[Y] for x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps
        "x0": (np.sqrt(ab) * var, mn),
        "eps": (np.sqrt(1 - ab), 0 * mn),
        "v": (np.sqrt(ab * (1 - ab)) * (1 - var), -np.sqrt(1 - ab) * mn),
    }
    for prediction, (c, e_y) in cov.items():
        expected = e_y + c / var_xt * r
        got = GaussianOracle(s, m, sd, prediction=prediction)(xt, t).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_predictions_give_the_same_reverse_process():
    s = NoiseSchedule.linear(T=30)
    m, sd = gaussian_data(3)
    xt = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.arange(1, 31)
    means = []
    for prediction in ("eps", "x0", "v"):
        oracle = GaussianOracle(s, m, sd, prediction=prediction)
        means.append(
            p_from_output(Diffusion(s, Parameterisation(prediction)), oracle(xt, t), xt, t).mean
        )
    torch.testing.assert_close(means[1], means[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(means[2], means[0], rtol=1e-10, atol=1e-12)


def test_oracles_compute_in_the_input_dtype():
    s = NoiseSchedule.linear(T=10)
    m, sd = gaussian_data(2)
    xt = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1, 4, 7, 10])
    mix = GaussianMixture(torch.ones(1, dtype=F64), m[None], torch.diag_embed(sd**2)[None])
    for oracle in (GaussianOracle(s, m, sd), MixtureOracle(s, mix)):
        out = oracle(xt, t)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), oracle(xt.double(), t), rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise_config_errors():
    s = NoiseSchedule.linear(T=10)
    m, sd = gaussian_data(2)
    with pytest.raises(ConfigError, match="unknown variance 'learned'"):
        gaussian_analysis(s, m, sd, "learned")
    with pytest.raises(ConfigError, match="variance of a Bayes-optimal model 'learned'"):
        GaussianOracle(s, m, sd, variance="learned")
    with pytest.raises(ConfigError, match="same data shape"):
        GaussianOracle(s, m, sd[:1])
    with pytest.raises(ConfigError, match="> 0"):
        gaussian_analysis(s, m, -sd)
    with pytest.raises(ConfigError, match=r"needs vectors mean, std \[D\]"):
        gaussian_analysis(s, m[None], sd[None])
    with pytest.raises(ConfigError, match="unknown prediction 'score'"):
        GaussianOracle(s, m, sd, prediction="score")


# --- the closed forms against the generic evaluator -----------------------------------------


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("T", [5, 30])
@pytest.mark.parametrize("d", [1, 3])
def test_elbo_terms_of_the_oracle_match_the_closed_form(d, T, schedule, variance):
    """elbo_terms and elbo_mc on GaussianOracle: every E_q term and E_q[-ELBO] within K_SE."""
    s = NoiseSchedule.from_name(schedule, T)
    m, sd = gaussian_data(d)
    an = gaussian_analysis(s, m, sd, variance)
    g = torch.Generator().manual_seed(1000 * d + T)
    x0 = draw(m, sd, 2000, g)
    param, oracle = Parameterisation("eps", variance), GaussianOracle(s, m, sd, variance=variance)
    model = p_theta(Diffusion(s, param), oracle, d)
    terms = elbo_terms(model, x0, generator=g)
    assert_mc(terms.per_timestep, an.per_timestep)
    assert_mc(terms.prior_kl, an.prior_kl)
    assert_mc(terms.total(), an.neg_elbo)
    mc = elbo_mc(model, x0, K=3, generator=g)
    assert_mc(mc, an.neg_elbo)
    diff = mc - terms.total()  # the same x0: the paired difference has mean zero
    assert_mc(diff, 0.0)


@pytest.mark.parametrize("variance", VARIANCES)
def test_conditional_expected_terms_match_monte_carlo_for_fixed_x0(variance):
    s = NoiseSchedule.cosine(T=20)
    m, sd = gaussian_data(2)
    an = gaussian_analysis(s, m, sd, variance)
    x0 = torch.tensor([[0.3, -1.0], [1.2, 2.0], [-2.5, -5.0]], dtype=F64)  # incl. an outlier
    closed = gaussian_elbo_terms(an, x0)
    g = torch.Generator().manual_seed(3)
    n = 3000
    param = Parameterisation("eps", variance)
    terms = elbo_terms(
        p_theta(Diffusion(s, param), GaussianOracle(s, m, sd, variance=variance), 2),
        x0.repeat(n, 1),
        generator=g,
    )
    per_t = terms.per_timestep.reshape(n, 3, s.T)
    assert_mc(per_t, closed.per_timestep)
    assert_mc(terms.total().reshape(n, 3), closed.total())
    torch.testing.assert_close(terms.prior_kl[:3], closed.prior_kl, rtol=1e-12, atol=1e-12)


def test_closed_form_terms_sum_to_their_totals():
    s = NoiseSchedule.linear(T=12)
    m, sd = gaussian_data(3)
    an = gaussian_analysis(s, m, sd, "large")
    assert an.neg_elbo == pytest.approx(an.prior_kl + an.per_timestep.sum().item(), rel=1e-12)
    assert an.kl_joint == pytest.approx(an.neg_elbo - an.entropy, rel=1e-12)
    assert an.kl_marginal == pytest.approx(an.neg_log_likelihood - an.entropy, rel=1e-10)
    # averaging the conditional closed forms over q(x_0) gives the unconditional ones
    x0 = draw(m, sd, 20000, torch.Generator().manual_seed(4))
    assert_mc(gaussian_elbo_terms(an, x0).total(), an.neg_elbo)
    assert_mc(-gaussian_log_likelihood(an, x0), an.neg_log_likelihood)


# --- the exact marginal p_theta(x_0) ----------------------------------------------------------


@pytest.mark.parametrize("variance", VARIANCES)
def test_marginal_matches_ancestral_samples_of_the_reverse_chain(variance):
    """Run p_theta with the oracle (decoder noise included) and compare the moments of x_0."""
    s = NoiseSchedule.linear(T=20)
    m, sd = gaussian_data(2)
    an = gaussian_analysis(s, m, sd, variance)
    param, oracle = Parameterisation("eps", variance), GaussianOracle(s, m, sd, variance=variance)
    model = p_theta(Diffusion(s, param), oracle, 2)
    g = torch.Generator().manual_seed(5)
    n = 20_000
    x = torch.randn(n, 2, generator=g, dtype=F64)
    for t in range(s.T, 0, -1):
        p = p_mean_var(model, x, torch.full((n,), t))
        x = p.mean + (0.5 * p.log_var).exp() * torch.randn(n, 2, generator=g, dtype=F64)
    assert_mc(x, an.p_mean)
    sample_var = x.var(dim=0)
    se_var = an.p_var * math.sqrt(2 / (n - 1))  # SE of a Gaussian sample variance
    assert bool(((sample_var - an.p_var).abs() < K_SE * se_var).all())
    # E_p[log p_theta(x_0)] = -H(p_theta) = -sum 0.5 log(2 pi e V_0)
    neg_entropy_p = -(0.5 * (math.log(2 * math.pi * math.e) + an.p_var.log())).sum()
    assert_mc(gaussian_log_likelihood(an, x), neg_entropy_p)


# --- the KL chain, checked by conditioning the joint Gaussians as matrices -------------------


def linear_chain(mean0: float, var0: float, coef, offset, noise_var):
    """Mean [n+1] and covariance [n+1, n+1] of y_0 ~ N(mean0, var0),
    y_{i+1} = coef[i] y_i + offset[i] + sqrt(noise_var[i]) z_i, written as y = mean + L z."""
    n = len(coef)
    L = torch.zeros(n + 1, n + 1, dtype=F64)
    mean = torch.zeros(n + 1, dtype=F64)
    L[0, 0], mean[0] = math.sqrt(var0), mean0
    for i in range(n):
        L[i + 1] = coef[i] * L[i]
        L[i + 1, i + 1] = math.sqrt(noise_var[i])
        mean[i + 1] = coef[i] * mean[i] + offset[i]
    return mean, L @ L.T


def posterior_kl_by_matrices(an, x0: torch.Tensor) -> torch.Tensor:
    """KL(q(x_{1:T}|x_0) || p_theta(x_{1:T}|x_0)) per example [B], and its mean over q(x_0)
    as the last entry, from T-dimensional Gaussians (one per data dimension)."""
    s, T = an.schedule, an.schedule.T
    sqrt_alpha, beta = s.alpha[1:].sqrt().tolist(), s.beta[1:].tolist()
    # q: x_0 fixed; x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z   [Ho20] eq. (2)
    coef_q, cov_q = linear_chain(1.0, 0.0, sqrt_alpha, [0.0] * T, beta)
    coef_q, cov_q = coef_q[1:], cov_q[1:, 1:]  # E[x_t|x_0] = coef_q x_0; order x_1..x_T
    out = torch.zeros(x0.shape[0] + 1, dtype=F64)
    for d in range(x0.shape[1]):
        # p: x_T ~ N(0, 1); x_{t-1} = a_t x_t + b_t + sigma_t z for t = T..1; order x_T..x_0
        a, b = an.a[1:, d].flip(0).tolist(), an.b[1:, d].flip(0).tolist()
        mean_p, cov = linear_chain(0.0, 1.0, a, b, an.sigma2[1:, d].flip(0).tolist())
        k = cov[:T, T] / cov[T, T]  # condition on x_0 (last variable)
        cov_p = (cov[:T, :T] - torch.outer(k, cov[T, :T])).flip(0, 1)  # order x_1..x_T
        coef_p, const_p = k.flip(0), (mean_p[:T] - k * mean_p[T]).flip(0)
        prec = torch.linalg.inv(cov_p)
        A, c = coef_q - coef_p, -const_p  # E_q - E_p = A x_0 + c
        base = 0.5 * (torch.trace(prec @ cov_q) - T + torch.logdet(cov_p) - torch.logdet(cov_q))
        delta = x0[:, d : d + 1] * A + c  # [B, T]
        out[:-1] += base + 0.5 * ((delta @ prec) * delta).sum(-1)
        m, sd = an.mean[d], an.std[d]
        out[-1] += base + 0.5 * ((m * A + c) @ prec @ (m * A + c) + sd**2 * A @ prec @ A)
    return out


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize(("schedule", "T"), [("cosine", 6), ("linear", 8)])
def test_kl_chain_and_posterior_gap(schedule, T, variance):
    """kl_joint >= kl_marginal >= 0, and kl_joint - kl_marginal = E_q KL(q(x_{1:T}|x_0) ||
    p_theta(x_{1:T}|x_0)) = E_q[log p_theta(x_0)] - E_q[ELBO]; per example too."""
    s = NoiseSchedule.from_name(schedule, T)
    m, sd = gaussian_data(2)
    an = gaussian_analysis(s, m, sd, variance)
    assert an.kl_joint >= an.kl_marginal >= 0
    x0 = torch.tensor([[0.3, -1.0], [1.0, 2.0], [-3.0, 6.0]], dtype=F64)
    kl = posterior_kl_by_matrices(an, x0)
    assert an.posterior_gap == pytest.approx(kl[-1].item(), rel=1e-7)
    assert an.neg_elbo - an.neg_log_likelihood == pytest.approx(an.posterior_gap, rel=1e-10)
    gap = gaussian_elbo_terms(an, x0).total() + gaussian_log_likelihood(an, x0)
    torch.testing.assert_close(gap, kl[:-1], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_negative_elbo_bounds_negative_log_likelihood(schedule, variance):
    s = NoiseSchedule.from_name(schedule, 25)
    m, sd = gaussian_data(3)
    an = gaussian_analysis(s, m, sd, variance)
    x0 = 4 * draw(m, sd, 500, torch.Generator().manual_seed(6))  # includes far tails
    neg_elbo = gaussian_elbo_terms(an, x0).total()
    assert bool((neg_elbo >= -gaussian_log_likelihood(an, x0)).all())
    assert an.neg_elbo >= an.neg_log_likelihood >= an.entropy


# --- the mixture oracle -----------------------------------------------------------------------


def test_mixture_oracle_matches_a_grid_posterior_in_1d():
    """E[eps|x_t] from q(x_0|x_t) proportional to q(x_0) N(x_t; sqrt(ab) x_0, 1 - ab) on a grid."""
    s = NoiseSchedule.linear(T=50)
    w, mu, sd = [0.3, 0.7], [-1.0, 1.5], [0.3, 0.6]
    mix = GaussianMixture(
        torch.tensor(w, dtype=F64),
        torch.tensor(mu, dtype=F64)[:, None],
        torch.tensor(sd, dtype=F64)[:, None, None] ** 2,
    )
    grid = np.linspace(-6, 6, 240_001)
    q0 = sum(
        wk * np.exp(-0.5 * ((grid - mk) / sk) ** 2) / sk
        for wk, mk, sk in zip(w, mu, sd, strict=True)
    )
    xs = np.linspace(-3, 3, 13)
    for t in (1, 5, 20, 50):
        ab = s.alpha_bar[t].item()
        lik = np.exp(-0.5 * (xs[:, None] - math.sqrt(ab) * grid) ** 2 / (1 - ab))
        post = q0 * lik
        x0_mean = (post * grid).sum(1) / post.sum(1)
        eps = (xs - math.sqrt(ab) * x0_mean) / math.sqrt(1 - ab)
        tt = torch.full((13,), t)
        got = MixtureOracle(s, mix)(torch.tensor(xs, dtype=F64)[:, None], tt)[:, 0].numpy()
        np.testing.assert_allclose(got, eps, rtol=1e-7, atol=1e-7)


def test_one_component_mixture_oracle_is_the_gaussian_oracle():
    s = NoiseSchedule.cosine(T=15)
    m, sd = gaussian_data(3)
    mix = GaussianMixture(torch.ones(1, dtype=F64), m[None], torch.diag_embed(sd**2)[None])
    xt = torch.randn(45, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    t = torch.arange(1, 16).repeat(3)
    for prediction in ("eps", "x0", "v"):
        got = MixtureOracle(s, mix, prediction)(xt, t)
        expected = GaussianOracle(s, m, sd, prediction)(xt, t)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def moment_matched_gaussian(mix: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and per-dimension std of the mixture (the best single diagonal Gaussian)."""
    mean = mix.weights @ mix.means
    second = torch.einsum("k,kdd->d", mix.weights, mix.covs) + mix.weights @ mix.means**2
    return mean, (second - mean**2).sqrt()


def test_mixture_oracle_on_gmm8_beats_a_wrong_denoiser_and_the_entropy_bound():
    s = NoiseSchedule.linear(T=30)
    mix = gmm8()
    g = torch.Generator().manual_seed(8)
    x0 = mix.sample(2000, generator=g)
    param = Parameterisation("eps", "small")
    oracle = MixtureOracle(s, mix)
    wrong = GaussianOracle(s, *moment_matched_gaussian(mix))
    # the same seed draws the same x_t for both denoisers: a paired comparison
    best = elbo_terms(
        p_theta(Diffusion(s, param), oracle, 2), x0, generator=torch.Generator().manual_seed(9)
    )
    worse = elbo_terms(
        p_theta(Diffusion(s, param), wrong, 2), x0, generator=torch.Generator().manual_seed(9)
    )
    diff = worse.total() - best.total()
    assert diff.mean() > K_SE * diff.std() / math.sqrt(diff.numel())
    # E[-ELBO] >= H(q): the gap is KL(q(x_{0:T}) || p_theta(x_{0:T})) >= 0
    entropy = mix.entropy_mc(20_000, generator=g)
    neg_elbo = best.total()
    se = math.hypot(neg_elbo.std().item() / math.sqrt(neg_elbo.numel()), entropy.se)
    assert neg_elbo.mean().item() - entropy.value > -K_SE * se
