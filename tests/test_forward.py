"""Forward process: q(x_t|x_0) vs the iterated chain, the posterior vs Gaussian conditioning,
and the (x_0, eps, v) identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.process.forward import (
    eps_from_x0,
    q_marginal,
    q_posterior,
    q_sample,
    q_step,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from ddpm.process.schedule import NoiseSchedule

SCHEDULES = ("linear", "cosine")


def full_t(value: int, n: int) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.long)


@pytest.mark.parametrize("name", SCHEDULES)
def test_q_sample_matches_iterated_forward_chain(name):
    T, n, x_start = 50, 200_000, 0.7
    s = NoiseSchedule.from_name(name, T)
    g = torch.Generator().manual_seed(0)
    x = torch.full((n,), x_start, dtype=torch.float64)
    for t in range(1, T + 1):
        x = q_step(s, x, t, generator=g)  # q(x_t | x_{t-1}), [Ho20] eq. (2)
    direct = q_sample(s, torch.full((n,), x_start, dtype=torch.float64), full_t(T, n), generator=g)
    mean, var = float(s.alpha_bar[T].sqrt()) * x_start, float(1 - s.alpha_bar[T])  # eq. (4)
    for draws in (x, direct):
        se_mean = math.sqrt(var / n)
        assert abs(float(draws.mean()) - mean) < 4 * se_mean
        # SE of the sample variance of Gaussian draws: var * sqrt(2 / (n - 1))
        se_var = var * math.sqrt(2 / (n - 1))
        assert abs(float(draws.var()) - var) < 4 * se_var


def test_q_step_and_q_sample_with_pinned_noise():
    s = NoiseSchedule.cosine(20)
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)
    eps = torch.linspace(2, -2, 7, dtype=torch.float64)
    t = 13
    a, ab = float(s.alpha[t]), float(s.alpha_bar[t])
    torch.testing.assert_close(
        q_step(s, x, t, noise=eps), math.sqrt(a) * x + math.sqrt(1 - a) * eps, rtol=1e-14, atol=0
    )
    torch.testing.assert_close(
        q_sample(s, x, full_t(t, 7), noise=eps),
        math.sqrt(ab) * x + math.sqrt(1 - ab) * eps,
        rtol=1e-14,
        atol=1e-15,
    )


def test_q_marginal_moments_and_t0():
    s = NoiseSchedule.linear(100)
    x0 = torch.tensor([[0.5, -1.0], [0.25, 1.0]], dtype=torch.float64)
    q = q_marginal(s, x0, torch.tensor([0, 100]))
    torch.testing.assert_close(q.mean[0], x0[0], rtol=0, atol=0)
    assert bool(torch.isneginf(q.log_var[0]).all())  # q(x_0|x_0) is a point mass
    ab = float(s.alpha_bar[100])
    torch.testing.assert_close(q.mean[1], math.sqrt(ab) * x0[1], rtol=1e-14, atol=0)
    torch.testing.assert_close(q.var[1], torch.full((2,), 1 - ab, dtype=torch.float64))


def conditioning_of_joint(beta: np.ndarray, t: int, x0: np.ndarray, xt: np.ndarray):
    """Mean and variance of x_{t-1} | x_t, x_0 by conditioning the joint Gaussian of
    (x_{t-1}, x_t) given x_0, built from beta alone in numpy float64."""
    ab_prev = np.prod(1 - beta[1:t])  # alpha_bar_{t-1}
    alpha_t = 1 - beta[t]
    mu1 = np.sqrt(ab_prev) * x0  # x_{t-1} | x_0
    v11 = 1 - ab_prev
    mu2 = np.sqrt(alpha_t) * mu1  # x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) e
    v12 = np.sqrt(alpha_t) * v11
    v22 = alpha_t * v11 + beta[t]
    return mu1 + v12 / v22 * (xt - mu2), v11 - v12**2 / v22


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", (10, 1000))
def test_q_posterior_matches_gaussian_conditioning(name, T):
    s = NoiseSchedule.from_name(name, T)
    beta = s.beta.numpy()
    rng = np.random.default_rng(1)
    ts = sorted({1, 2, 3, T // 2, T - 1, T})
    x0 = rng.uniform(-1, 1, size=(len(ts), 5))
    xt = rng.normal(size=(len(ts), 5))
    post = q_posterior(s, torch.from_numpy(x0), torch.from_numpy(xt), torch.tensor(ts))
    for i, t in enumerate(ts):
        mean, var = conditioning_of_joint(beta, t, x0[i], xt[i])
        np.testing.assert_allclose(post.mean[i].numpy(), mean, rtol=1e-10, atol=1e-14)
        if t == 1:  # a point mass at x_0
            assert var == 0 and bool(torch.isneginf(post.log_var[i]).all())
            np.testing.assert_array_equal(post.mean[i].numpy(), x0[i])
        else:
            np.testing.assert_allclose(post.var[i].numpy(), var, rtol=1e-10)


def conversion_inputs(s: NoiseSchedule, ts: list[int]):
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(len(ts), 3, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(len(ts), 3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor(ts)
    return x0, eps, t, q_sample(s, x0, t, noise=eps)


@pytest.mark.parametrize("name", SCHEDULES)
def test_x0_eps_round_trip(name):
    s = NoiseSchedule.from_name(name, 1000)
    # x0_from_eps divides by sqrt(alpha_bar_t): keep to t where that is >= 1e-2 so that the
    # rounding error stays below 1e-12 (cosine reaches alpha_bar_T ~ 1e-9).
    ts = [t for t in (1, 2, 10, 100, 500, 800, 900, 999, 1000) if s.alpha_bar[t] >= 1e-4]
    x0, eps, t, xt = conversion_inputs(s, ts)
    torch.testing.assert_close(x0_from_eps(s, xt, t, eps), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_from_x0(s, xt, t, x0), eps, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_v_round_trip(name):
    s = NoiseSchedule.from_name(name, 1000)
    ts = [1, 2, 10, 100, 500, 900, 999, 1000]  # no division: every t is well conditioned
    x0, eps, t, xt = conversion_inputs(s, ts)
    v = v_from_x0_eps(s, x0, t, eps)
    torch.testing.assert_close(x0_from_v(s, xt, t, v), x0, rtol=0, atol=1e-12)
    # v = sqrt(ab) eps - sqrt(1 - ab) x0 and x_t form a rotation of (x0, eps): norms agree
    torch.testing.assert_close(v**2 + xt**2, x0**2 + eps**2, rtol=1e-12, atol=1e-12)
