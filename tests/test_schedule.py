"""Noise schedules: endpoints, [ND21] eq. (17), derived quantities against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import Schedule, cosine_betas, cosine_f, linear_betas

from ddpm.errors import ConfigError
from ddpm.process.schedule import NoiseSchedule

TS = (1, 2, 10, 1000)


def make(name: str, T: int) -> NoiseSchedule:
    return NoiseSchedule.from_name(name, T)


def ref_betas(name: str, T: int) -> list[float]:
    return linear_betas(T) if name == "linear" else cosine_betas(T)


# --- linear ------------------------------------------------------------------------------------


def test_linear_endpoints_at_T_1000():
    s = NoiseSchedule.linear(1000)
    assert s.T == 1000
    assert s.beta[0] == 0
    assert float(s.beta[1]) == pytest.approx(1e-4, rel=1e-14)
    assert float(s.beta[1000]) == pytest.approx(0.02, rel=1e-14)
    steps = s.beta[2:] - s.beta[1:-1]  # evenly spaced
    np.testing.assert_allclose(steps.numpy(), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_linear_scaled_and_capped_at_T_10():
    s = NoiseSchedule.linear(10)
    expected = np.minimum(np.linspace(1e-4 * 100, 0.02 * 100, 10), 0.999)
    np.testing.assert_allclose(s.beta[1:].numpy(), expected, rtol=1e-14)
    assert float(s.beta[1]) == pytest.approx(0.01, rel=1e-14)
    assert float(s.beta[10]) == 0.999  # 2.0 before the cap
    assert float(s.beta.max()) == 0.999


def test_linear_T_1_is_the_scaled_start():
    # numpy.linspace(start, stop, 1) == [start]: beta_1 = 1e-4 * 1000 = 0.1 (below the cap).
    s = NoiseSchedule.linear(1)
    assert s.T == 1
    assert float(s.beta[1]) == pytest.approx(0.1, rel=1e-14)
    assert float(s.beta[1]) == pytest.approx(np.linspace(0.1, 20.0, 1)[0], rel=1e-14)


# --- cosine ------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", TS)
def test_cosine_alpha_bar_is_f_ratio_until_the_cap(T):
    s = NoiseSchedule.cosine(T)
    beta = s.beta.numpy()
    assert (beta[1:] <= 0.999).all()
    capped = np.flatnonzero(beta >= 0.999)
    first_cap = capped[0] if capped.size else T + 1
    for t in range(first_cap):
        expected = cosine_f(t, T) / cosine_f(0, T)  # [ND21] eq. (17)
        assert float(s.alpha_bar[t]) == pytest.approx(expected, rel=1e-12)
    # f(T) = cos(pi/2)^2 ~ 0, so 1 - f(T)/f(T-1) ~ 1 is always capped at the last step.
    assert float(s.beta[T]) == 0.999


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", TS)
def test_betas_match_reference(name, T):
    # cosine beta_t = 1 - (a ratio near 1): an absolute rounding error of a few ulp of 1.0
    np.testing.assert_allclose(
        make(name, T).beta.numpy(), ref_betas(name, T), rtol=1e-12, atol=4 * 2.0**-52
    )


# --- derived quantities ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", TS)
def test_alpha_bar_monotone_in_unit_interval(name, T):
    s = make(name, T)
    ab = s.alpha_bar
    assert ab.dtype == torch.float64 and ab.shape == (T + 1,)
    assert float(ab[0]) == 1.0
    assert bool((ab[1:] < ab[:-1]).all())
    assert bool((ab > 0).all()) and bool((ab <= 1).all())


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", TS)
def test_beta_tilde_bounds(name, T):
    s = make(name, T)
    bt = s.beta_tilde
    assert float(bt[0]) == 0 and float(bt[1]) == 0
    assert bool((bt <= s.beta).all())
    assert bool((bt[2:] > 0).all())


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", TS)
def test_derived_quantities_match_definitions(name, T):
    s, r = make(name, T), Schedule(ref_betas(name, T))
    for fast, ref in [
        (s.alpha, r.alpha),
        (s.alpha_bar, r.alpha_bar),
        (s.one_minus_alpha_bar, r.one_minus_alpha_bar),
        (s.beta_tilde, r.beta_tilde),
        (s.posterior_coef_x0, r.coef_x0),
        (s.posterior_coef_xt, r.coef_xt),
    ]:
        np.testing.assert_allclose(fast.numpy(), ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", TS)
def test_posterior_coefficients_reproduce_x0_at_t1(name, T):
    # q(x_0 | x_1, x_0) is a point mass at x_0: coef_x0[1] = 1, coef_xt[1] = 0.
    s = make(name, T)
    assert float(s.posterior_coef_x0[1]) == pytest.approx(1.0, rel=1e-12)
    assert float(s.posterior_coef_xt[1]) == 0.0


def test_one_minus_alpha_bar_accurate_for_tiny_beta():
    b, T = 1e-12, 5
    s = NoiseSchedule(torch.tensor([0.0] + [b] * T, dtype=torch.float64))
    for t in range(T + 1):
        # 1 - (1 - b)^t = sum_k (-1)^(k+1) C(t, k) b^k, exact term by term in float64
        exact = sum((-1) ** (k + 1) * math.comb(t, k) * b**k for k in range(1, t + 1))
        assert float(s.one_minus_alpha_bar[t]) == pytest.approx(exact, rel=1e-14, abs=0)
    # beta_tilde_2 = (1 - ab_1) / (1 - ab_2) beta_2 = b / (2b - b^2) b = b / (2 - b)
    assert float(s.beta_tilde[2]) == pytest.approx(b / (2 - b), rel=1e-14)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", (2, 10, 1000))
def test_reverse_variances_at_t1_use_beta_tilde_2(name, T):
    s = make(name, T)
    bt2 = float(s.beta_tilde[2])
    assert float(s.sigma2_small[1]) == bt2
    assert float(s.sigma2_large[1]) == bt2
    torch.testing.assert_close(s.sigma2_small[2:], s.beta_tilde[2:], rtol=0, atol=0)
    torch.testing.assert_close(s.sigma2_large[2:], s.beta[2:], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_reverse_variances_at_T_1_use_beta_1(name):
    s = make(name, 1)
    assert float(s.sigma2_small[1]) == float(s.beta[1])
    assert float(s.sigma2_large[1]) == float(s.beta[1])


def test_at_gathers_casts_and_broadcasts():
    s = NoiseSchedule.linear(10)
    t = torch.tensor([1, 5, 10])
    like = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    v = s.at(s.alpha_bar, t, like)
    assert v.shape == (3, 1, 1, 1) and v.dtype == torch.float32
    torch.testing.assert_close(v.flatten(), s.alpha_bar[t].float(), rtol=0, atol=0)


def test_to_dict():
    s = NoiseSchedule.cosine(4)
    d = s.to_dict()
    assert d["T"] == 4 and d["beta"] == s.beta.tolist()
    again = NoiseSchedule(torch.tensor(d["beta"], dtype=torch.float64))
    torch.testing.assert_close(again.alpha_bar, s.alpha_bar, rtol=0, atol=0)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize(
    "T, shown", [(0, "0"), (-3, "-3"), (2.0, "2.0"), ("10", "'10'"), (True, "True")]
)
def test_bad_T_rejected(name, T, shown):
    with pytest.raises(ConfigError) as info:
        make(name, T)
    assert str(info.value) == f"T must be an integer >= 1 (got {shown})"


def test_unknown_schedule_rejected():
    with pytest.raises(ConfigError) as info:
        NoiseSchedule.from_name("quadratic", 10)
    assert str(info.value) == "unknown schedule 'quadratic': choose one of 'linear', 'cosine'"


@pytest.mark.parametrize(
    "beta",
    [
        torch.tensor([0.0, 0.1], dtype=torch.float32),
        torch.tensor([0.0], dtype=torch.float64),
        torch.tensor([[0.0, 0.1]], dtype=torch.float64),
    ],
)
def test_bad_beta_vector_rejected(beta):
    with pytest.raises(ConfigError, match="float64 vector beta of length T \\+ 1 >= 2"):
        NoiseSchedule(beta)


@pytest.mark.parametrize("values", [[0.1, 0.1], [0.0, 0.0], [0.0, 1.0], [0.0, 0.5, -0.1]])
def test_bad_beta_values_rejected(values):
    with pytest.raises(ConfigError, match=r"beta\[0\] must be 0 and every beta_t"):
        NoiseSchedule(torch.tensor(values, dtype=torch.float64))
