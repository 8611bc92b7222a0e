"""The continuous-time extension of the schedules, against the discrete schedules, the defining
derivative beta = -d log alpha_bar / ds, and Gaussian conditioning."""

from __future__ import annotations

import pytest
import torch

from ddpm.data import GaussianMixture
from ddpm.errors import ConfigError
from ddpm.process.continuous import (
    ContinuousMixtureOracle,
    ContinuousSchedule,
    gaussian_flow_marginal,
)
from ddpm.process.diffusion import Diffusion
from ddpm.process.forward import x0_from_eps_at
from ddpm.process.schedule import BETA_MAX, NoiseSchedule

F64 = torch.float64


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_beta_is_minus_the_derivative_of_log_alpha_bar(name):
    cs = ContinuousSchedule.of(name, NoiseSchedule.from_name(name, 1000))
    s = torch.linspace(0.0, cs.s_end, 101, dtype=F64).requires_grad_(True)
    (grad,) = torch.autograd.grad(cs.log_alpha_bar(s).sum(), s)
    torch.testing.assert_close(-grad, cs.beta(s.detach()), rtol=1e-12, atol=0)
    assert float(cs.alpha_bar(torch.zeros((), dtype=F64))) == 1.0


def test_linear_ends_are_T_times_the_discrete_ends():
    for T in (10, 1000):
        s = NoiseSchedule.linear(T)
        cs = ContinuousSchedule.of("linear", s)
        ends = cs.beta(torch.tensor([0.0, 1.0], dtype=F64))
        torch.testing.assert_close(ends, T * s.beta[[1, T]], rtol=1e-15, atol=0)
        assert cs.s_end == 1.0


def test_linear_alpha_bar_is_within_its_derivation_of_the_discrete_one():
    """log alpha_bar_t = sum_i log(1 - beta_i) and log alpha_bar(t/T) = -int_0^{t/T} beta(s) ds
    differ by at most |sum_i beta_i - int beta| + sum_i beta_i^2 (as 0 <= -log(1-b) - b <= b^2
    for b <= 1/2); the sum against the integral of the linear beta(s) is exact arithmetic."""
    T = 1000
    s = NoiseSchedule.linear(T)
    cs = ContinuousSchedule.of("linear", s)
    t = torch.arange(1, T + 1)
    cont = cs.log_alpha_bar(t.to(F64) / T)
    disc = s.alpha_bar[1:].log()
    beta = s.beta[1:]
    integral = -cont  # int_0^{t/T} beta(s) ds
    bound = (beta.cumsum(0) - integral).abs() + (beta**2).cumsum(0)
    assert bool(((cont - disc).abs() <= bound * (1 + 1e-9)).all())


def test_cosine_alpha_bar_is_the_discrete_one_at_every_uncapped_step():
    T = 50
    s = NoiseSchedule.cosine(T)
    cs = ContinuousSchedule.of("cosine", s)
    capped = (s.beta[1:] >= BETA_MAX).nonzero().flatten() + 1
    assert capped.tolist() == [T]  # only the last step is capped, so s_end = 1 - 1/T
    t = torch.arange(0, T)
    torch.testing.assert_close(cs.alpha_bar(t.to(F64) / T), s.alpha_bar[t], rtol=1e-12, atol=0)
    assert cs.s_end == 1 - 1 / T


def test_one_minus_alpha_bar_keeps_precision_near_zero():
    cs = ContinuousSchedule.of("linear", NoiseSchedule.linear(1000))  # b0 = 0.1
    s = torch.tensor([1e-12, 1e-9], dtype=F64)
    torch.testing.assert_close(cs.one_minus_alpha_bar(s), 0.1 * s, rtol=1e-6, atol=0)


def test_levels_are_at_s_equal_t_over_T_in_the_data_dtype():
    cs = ContinuousSchedule.of("cosine", NoiseSchedule.cosine(20))
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float32)
    ab, omab = cs.levels(torch.tensor([0.5, 7.25, 19.0], dtype=F64), x)
    assert ab.shape == (3, 1, 1, 1) and ab.dtype == torch.float32
    expected = cs.alpha_bar(torch.tensor([0.5, 7.25, 19.0], dtype=F64) / 20)
    torch.testing.assert_close(ab.flatten(), expected.float())
    torch.testing.assert_close(omab.flatten(), (1 - expected).float())


def test_bad_continuous_schedules():
    with pytest.raises(ConfigError, match="unknown schedule 'sigmoid'"):
        ContinuousSchedule("sigmoid", 10)
    with pytest.raises(ConfigError, match="0 < b0 <= b1"):
        ContinuousSchedule("linear", 10, 0.0, 20.0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_mixture_oracle_with_one_component_is_the_gaussian_posterior(prediction):
    """For x_0 ~ N(m, s^2) per dimension: E[eps | x_s] = sqrt(1-ab) (x - sqrt(ab) m) /
    (ab s^2 + 1 - ab), and x0 / v follow from it by the identities of x_s = sqrt(ab) x0 + ..."""
    cs = ContinuousSchedule.of("linear", NoiseSchedule.linear(100))
    m, sd = torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([0.5, 0.1], dtype=F64)
    mix = GaussianMixture(torch.ones(1, dtype=F64), m[None], torch.diag(sd**2)[None])
    oracle = ContinuousMixtureOracle(cs, mix, prediction=prediction)
    t = torch.tensor([0.1, 3.5, 50.0, 99.9], dtype=F64)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ab = cs.alpha_bar(t / 100)[:, None]
    eps = (1 - ab).sqrt() * (x - ab.sqrt() * m) / (ab * sd**2 + 1 - ab)
    x0 = x0_from_eps_at(ab, 1 - ab, x, eps)
    expected = {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[prediction]
    torch.testing.assert_close(oracle(x, t), expected, rtol=1e-9, atol=1e-12)


def test_gaussian_flow_marginal_of_standard_normal_data_is_standard_normal():
    cs = ContinuousSchedule.of("linear", NoiseSchedule.linear(1000))
    M, V = gaussian_flow_marginal(cs, torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), 1e-3, 1)
    torch.testing.assert_close(M, torch.zeros(3, dtype=F64))
    torch.testing.assert_close(V, torch.ones(3, dtype=F64))


def test_net_t_interpolates_a_time_map_for_continuous_steps():
    s = NoiseSchedule.linear(10)
    foreign = Diffusion(s, time_map=torch.arange(11) - 1)  # a 0-based network
    torch.testing.assert_close(
        foreign.net_t(torch.tensor([3.5, 1.0, 10.0], dtype=F64)),
        torch.tensor([2.5, 0.0, 9.0], dtype=F64),
    )
    assert foreign.net_t(torch.tensor([4])).tolist() == [3]  # integer steps index as before
    t = torch.tensor([0.25], dtype=F64)
    assert Diffusion(s).net_t(t) is t
