"""Respacing [ND21] Sec. 4: step selection, the respaced schedule, its time map and its ELBO."""

from __future__ import annotations

import pytest
import torch

from ddpm.diffusion import Diffusion, identity_time_map
from ddpm.elbo import elbo_terms
from ddpm.errors import ConfigError
from ddpm.evaluate import mean_se
from ddpm.oracles import GaussianOracle, gaussian_analysis, gaussian_elbo_terms
from ddpm.respace import respace, space_timesteps
from ddpm.reverse import Parameterisation, p_from_output
from ddpm.schedule import NoiseSchedule


@pytest.mark.parametrize(
    "T, K, expected",
    [
        # 0-based indices round(k (T-1)/(K-1)), then + 1 (our steps are 1-based)
        (10, 3, [1, 5, 10]),  # stride 4.5: 0, 4.5 -> 4 (half to even), 9
        (6, 3, [1, 3, 6]),  # stride 2.5: 0, 2.5 -> 2, 5
        (8, 3, [1, 5, 8]),  # stride 3.5: 0, 3.5 -> 4, 7
        (6, 5, [1, 2, 3, 5, 6]),  # stride 1.25: 0, 1.25, 2.5 -> 2, 3.75 -> 4, 5
        (4, 3, [1, 3, 4]),  # stride 1.5: 0, 1.5 -> 2, 3
        (1000, 3, [1, 501, 1000]),  # stride 499.5: 499.5 -> 500
        (1000, 4, [1, 334, 667, 1000]),  # stride 333
        (1000, 10, [1 + 111 * k for k in range(10)]),  # stride 111
        (5, 1, [1]),  # one section of one step keeps index 0
        (7, 7, [1, 2, 3, 4, 5, 6, 7]),
    ],
)
def test_space_timesteps_matches_hand_derived_cases(T, K, expected):
    assert space_timesteps(T, K) == expected


@pytest.mark.parametrize("T, K", [(10, 11), (10, 0), (0, 1)])
def test_space_timesteps_rejects_impossible_counts(T, K):
    with pytest.raises(ConfigError, match="steps|must be an integer"):
        space_timesteps(T, K)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respace_to_T_is_the_same_process(name):
    d = Diffusion(NoiseSchedule.from_name(name, 1000), Parameterisation("v", "learned"))
    r = respace(d, 1000)
    assert torch.allclose(r.schedule.beta, d.schedule.beta, rtol=0, atol=1e-12)
    assert torch.equal(r.time_map, identity_time_map(1000))
    t = torch.arange(1, 1001)
    assert torch.equal(r.net_t(t), t)
    assert r.param == d.param


@pytest.mark.parametrize("name, K", [("linear", 10), ("linear", 37), ("cosine", 50)])
def test_respaced_alpha_bar_is_the_original_at_tau(name, K):
    d = Diffusion(NoiseSchedule.from_name(name, 1000))
    tau = torch.tensor(space_timesteps(1000, K))
    r = respace(d, K)
    assert r.T == K
    ab, ab_r = d.schedule.alpha_bar, r.schedule.alpha_bar
    # A schedule stores beta, so alpha'_k = 1 - beta'_k carries a relative rounding error of
    # about eps / alpha'_k (large only where the cosine schedule nearly ends in one step).
    eps = torch.finfo(torch.float64).eps
    rtol = 1e-13 + 4 * eps * (1 / r.schedule.alpha[1:]).sum()
    assert ((ab_r[1:] / ab[tau] - 1).abs() <= rtol).all()
    assert ab_r[0] == 1
    # beta'_k = 1 - alpha_bar_{tau_k} / alpha_bar_{tau_{k-1}}, alpha_bar_{tau_0} = 1
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[tau[:-1]]])
    assert torch.allclose(r.schedule.beta[1:], 1 - ab[tau] / prev, rtol=1e-10, atol=0)
    # its own posterior variance and the usual decoder-variance convention at k = 1
    bt = (1 - prev[1:]) / (1 - ab[tau[1:]]) * r.schedule.beta[2:]
    assert torch.allclose(r.schedule.beta_tilde[2:], bt, rtol=1e-10, atol=0)
    assert r.schedule.sigma2_small[1] == r.schedule.beta_tilde[2]
    # the network still sees the original step
    assert torch.equal(r.net_t(torch.arange(1, K + 1)), tau)


def test_respace_composes_with_an_existing_time_map():
    """A foreign model numbering its steps 0..T-1: the respaced process calls it at tau_k - 1."""
    T = 50
    d = Diffusion(NoiseSchedule.linear(T), time_map=torch.arange(-1, T))
    r = respace(d, 8)
    tau = torch.tensor(space_timesteps(T, 8))
    assert torch.equal(r.net_t(torch.arange(1, 9)), tau - 1)
    twice = respace(r, 3)  # respacing a respaced process picks among its K steps
    picked = tau[torch.tensor(space_timesteps(8, 3)) - 1]
    assert torch.equal(twice.net_t(torch.arange(1, 4)), picked - 1)
    assert torch.allclose(twice.schedule.alpha_bar[1:], d.schedule.alpha_bar[picked], rtol=1e-12)


def test_learned_variance_interpolates_between_the_respaced_beta_and_beta_tilde():
    """[ND21] eq. (15) on the respaced schedule: u = 1 gives beta'_k, u = 0 beta_tilde'_k."""
    r = respace(Diffusion(NoiseSchedule.linear(200), Parameterisation("eps", "learned")), 10)
    s = r.schedule
    t = torch.arange(2, 11)
    xt = torch.zeros(len(t), 1, dtype=torch.float64)
    for u, target in ((1.0, s.beta), (-1.0, s.beta_tilde)):
        out = torch.cat([torch.zeros_like(xt), torch.full_like(xt, u)], dim=1)
        p = p_from_output(r, out, xt, t)
        assert torch.allclose(p.log_var[:, 0], target[t].log(), rtol=1e-12)


@pytest.mark.parametrize("variance, K", [("small", 10), ("large", 6)])
def test_respaced_elbo_of_gaussian_oracle_matches_the_closed_form(variance, K):
    """The full process's Bayes-optimal denoiser, called at the original steps tau_k, is the
    Bayes-optimal denoiser of the respaced process: its K-step -ELBO (Monte Carlo over x_t)
    matches gaussian_analysis on the respaced schedule within 4 standard errors."""
    g = torch.Generator().manual_seed(0)
    full = NoiseSchedule.linear(400)
    m = torch.tensor([0.5, -0.3], dtype=torch.float64)
    sd = torch.tensor([0.5, 0.2], dtype=torch.float64)
    r = respace(Diffusion(full, Parameterisation("eps", variance)), K)
    oracle = GaussianOracle(full, m, sd)
    an = gaussian_analysis(r.schedule, m, sd, variance)
    x0 = m + sd * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    terms = elbo_terms(r, oracle, x0, levels=None, generator=g)
    assert terms.kl.shape == (4000, K - 1)
    mean, se = mean_se(terms.total())
    assert abs(mean - an.neg_elbo) < 4 * se
    # Paired with E[-ELBO | x_0] in closed form, only the x_t draws are left in the SE: the
    # respaced closed form matches, the full process's (a different bound) does not.
    diff, diff_se = mean_se(terms.total() - gaussian_elbo_terms(an, x0).total())
    assert abs(diff) < 4 * diff_se
    other = gaussian_elbo_terms(gaussian_analysis(full, m, sd, variance), x0).total()
    assert abs(mean_se(terms.total() - other)[0]) > 8 * diff_se
