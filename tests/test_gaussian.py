"""Gaussian KL, log density and the discretized decoder likelihood of [Ho20] eq. (13)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import discretized_log_prob, log_interval_prob

from ddpm.likelihood.elbo import bits_per_dim
from ddpm.process.gaussian import (
    discretized_gaussian_log_prob,
    gaussian_log_prob,
    log_normal_interval,
    normal_kl,
)

f64 = torch.float64


def tensor(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=f64)


def grid(levels: int) -> torch.Tensor:
    """The data values -1 + 2k / (levels - 1), k = 0..levels-1 (exactly -1 and 1 at the ends)."""
    k = torch.arange(levels, dtype=f64)
    return -1 + 2 * k / (levels - 1)


# --- normal_kl ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m1, v1, m2, v2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.0, 0.04, 0.9, 0.05)]
)
def test_normal_kl_matches_monte_carlo(m1, v1, m2, v2):
    n = 400_000
    rng = np.random.default_rng(3)
    x = m1 + math.sqrt(v1) * rng.standard_normal(n)
    log_ratio = (-0.5 * np.log(v1) - (x - m1) ** 2 / (2 * v1)) - (
        -0.5 * np.log(v2) - (x - m2) ** 2 / (2 * v2)
    )
    kl = float(normal_kl(tensor(m1), tensor(math.log(v1)), tensor(m2), tensor(math.log(v2))))
    se = log_ratio.std(ddof=1) / math.sqrt(n)
    assert abs(log_ratio.mean() - kl) <= 4 * se + 1e-15  # + round-off when both are 0


def test_normal_kl_closed_form_and_identities():
    rng = np.random.default_rng(4)
    m1, m2 = rng.normal(size=1000) * 3, rng.normal(size=1000) * 3
    lv1, lv2 = rng.uniform(-20, 10, size=1000), rng.uniform(-20, 10, size=1000)
    kl = normal_kl(tensor(m1), tensor(lv1), tensor(m2), tensor(lv2)).numpy()
    v1, v2 = np.exp(lv1), np.exp(lv2)
    expected = 0.5 * (np.log(v2 / v1) - 1 + v1 / v2 + (m1 - m2) ** 2 / v2)
    np.testing.assert_allclose(kl, expected, rtol=1e-10, atol=1e-12)
    assert (kl >= 0).all()
    same = normal_kl(tensor(m1), tensor(lv1), tensor(m1), tensor(lv1))
    assert bool((same == 0).all())


# --- gaussian_log_prob -------------------------------------------------------------------------


def test_gaussian_log_prob_matches_numpy():
    rng = np.random.default_rng(5)
    x, m = rng.normal(size=500) * 2, rng.normal(size=500)
    lv = rng.uniform(-15, 5, size=500)
    expected = -0.5 * np.log(2 * np.pi * np.exp(lv)) - (x - m) ** 2 / (2 * np.exp(lv))
    got = gaussian_log_prob(tensor(x), tensor(m), tensor(lv)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# --- discretized_gaussian_log_prob -------------------------------------------------------------

MEANS = (-1e3, -5.0, -1.0, -0.999, -0.3, 0.0, 1 / 255, 0.5, 1.0, 3.0, 1e3)
LOG_VARS = tuple(math.log(v) for v in (1e-16, 1e-8, 1e-4, 1e-2, 1.0, 1e2, 1e8, 1e16))


@pytest.mark.parametrize("levels", (2, 17, 256))
def test_discretized_probabilities_sum_to_one(levels):
    x = grid(levels)
    for mean in MEANS:
        for log_var in LOG_VARS:
            lp = discretized_gaussian_log_prob(x, tensor(mean), tensor(log_var), 2 / (levels - 1))
            assert not bool(torch.isnan(lp).any()), (mean, log_var)
            assert bool((lp <= 0).all())
            total = float(lp.exp().sum())
            # Each level's bin edges x -+ w/2 are rounded separately (to ~1e-16), so adjacent
            # bins may overlap or leave a gap of that width; it holds at most density * 1e-16
            # of mass, which matters only for the tiniest std with the mean on an edge.
            std = math.exp(0.5 * log_var)
            edge_rounding = 4 * 2.3e-16 / (std * math.sqrt(2 * math.pi))
            assert abs(total - 1) < 1e-10 + edge_rounding, (levels, mean, log_var, total)


def cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize("levels", (2, 17, 256))
def test_discretized_matches_erf_cdf_differences(levels):
    x = grid(levels)
    w = 2 / (levels - 1)
    for mean in (-1.2, -0.5, 0.0, 0.13, 0.9):
        for std in (0.05, 0.3, 1.0, 3.0):
            lp = discretized_gaussian_log_prob(x, tensor(mean), tensor(2 * math.log(std)), w)
            for k, xk in enumerate(x.tolist()):
                lo = 0.0 if k == 0 else cdf((xk - w / 2 - mean) / std)
                hi = 1.0 if k == levels - 1 else cdf((xk + w / 2 - mean) / std)
                if hi - lo < 1e-8:
                    continue  # erf differences lose their relative precision here
                assert float(lp[k]) == pytest.approx(math.log(hi - lo), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("x", (0.5, -0.5, 1.0, -1.0, 25 / 255))
def test_discretized_far_tail_matches_asymptotic(x):
    # mean 0, std 1e-3: the bin of x lies hundreds of std away; its mass is Phi(-z) for the
    # nearer edge z (the far edge changes that by a factor 1 - O(exp(-z w / std)), below
    # e^-700 here), and
    # log Phi(-z) = -z^2/2 - log z - log(2 pi)/2 + log(1 - 1/z^2 + 3/z^4 - 15/z^6 + ...)
    w, std = 2 / 255, 1e-3
    z = (abs(x) - w / 2) / std
    series = 1 - 1 / z**2 + 3 / z**4 - 15 / z**6 + 105 / z**8
    expected = -(z**2) / 2 - math.log(z) - 0.5 * math.log(2 * math.pi) + math.log(series)
    lp = float(discretized_gaussian_log_prob(tensor(x), tensor(0.0), tensor(2 * math.log(std)), w))
    assert math.isfinite(lp)
    assert lp == pytest.approx(expected, rel=1e-12)


def test_discretized_matches_reference_everywhere():
    # reference: erfc-based, with an asymptotic log Phi beyond the reach of erfc
    levels = 256
    x = grid(levels)
    for mean in (-3.0, -0.2, 0.0, 0.7, 2.0):
        for std in (1e-3, 1e-2, 0.1, 1.0):
            lp = discretized_gaussian_log_prob(x, tensor(mean), tensor(2 * math.log(std)), 2 / 255)
            expected = [discretized_log_prob(xk, mean, std**2, levels) for xk in x.tolist()]
            np.testing.assert_allclose(lp.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_log_normal_interval_tails_are_symmetric():
    a = tensor([-40.0, -8.0, -1.0, 0.5, 7.5])
    b = a + tensor([0.1, 0.5, 2.0, 0.25, 1.0])
    lo, hi = log_normal_interval(a, b), log_normal_interval(-b, -a)
    torch.testing.assert_close(lo, hi, rtol=1e-13, atol=0)
    expected = [log_interval_prob(float(aa), float(bb)) for aa, bb in zip(a, b, strict=True)]
    np.testing.assert_allclose(lo.numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("mean", (-5.0, -1.0, 0.0, 0.999, 1.0, 5.0))
@pytest.mark.parametrize("std", (1e-4, 1e-2, 1.0, 1e4))
def test_discretized_gradients_finite_at_edge_bins(mean, std):
    w = 2 / 255
    x = tensor([-1.0, -1 + w, 1 - w, 1.0])
    m = torch.full((4,), mean, dtype=f64, requires_grad=True)
    lv = torch.full((4,), 2 * math.log(std), dtype=f64, requires_grad=True)
    lp = discretized_gaussian_log_prob(x, m, lv, w)
    lp.sum().backward()
    assert bool(torch.isfinite(lp).all())
    assert bool(torch.isfinite(m.grad).all()) and bool(torch.isfinite(lv.grad).all())


def test_discretized_gradient_matches_finite_difference_at_edges():
    w = 2 / 255
    x = tensor([-1.0, 1.0, 0.2])
    m = tensor([-0.97, 0.98, 0.21]).requires_grad_(True)
    lv = tensor([2 * math.log(0.02)] * 3).requires_grad_(True)
    discretized_gaussian_log_prob(x, m, lv, w).sum().backward()
    h = 1e-6
    for i in range(3):
        up, dn = m.detach().clone(), m.detach().clone()
        up[i] += h
        dn[i] -= h
        fd = (
            discretized_gaussian_log_prob(x, up, lv.detach(), w)[i]
            - discretized_gaussian_log_prob(x, dn, lv.detach(), w)[i]
        ) / (2 * h)
        assert float(m.grad[i]) == pytest.approx(float(fd), rel=1e-6)


def test_two_levels_with_centred_mean_is_exactly_uniform():
    # levels = 2: the bins are (-inf, 0] and (0, inf); a Gaussian centred at 0 gives 1/2 each,
    # so a D-dimensional decoder costs D ln 2 nats = 1 bit per dimension.
    D = 6
    x = torch.tensor([-1.0, 1.0, 1.0, -1.0, -1.0, 1.0], dtype=f64)
    for log_var in (-30.0, 0.0, 30.0):
        lp = discretized_gaussian_log_prob(x, torch.zeros(D, dtype=f64), tensor(log_var), 2.0)
        nll = -float(lp.sum())
        assert nll == pytest.approx(D * math.log(2), rel=1e-15)
        assert bits_per_dim(nll, D) == pytest.approx(1.0, rel=1e-15)


@pytest.mark.parametrize("N", (2, 17, 256))
def test_bits_per_dim_of_uniform_nll(N):
    D = 3 * 8 * 8
    assert bits_per_dim(D * math.log(N), D) == pytest.approx(math.log2(N), rel=1e-15)


@pytest.mark.parametrize("std", (1e3, 1e6))
def test_very_wide_gaussian_puts_half_on_each_edge_bin(std):
    # Not uniform: the edge bins hold Phi(+-(1 - w/2)/std) ~ 1/2 each, the N - 2 inner bins
    # ~ w phi(z) / std each (midpoint rule, relative error ~ (w/std)^2).
    levels, w = 256, 2 / 255
    x = grid(levels)
    p = discretized_gaussian_log_prob(x, tensor(0.0), tensor(2 * math.log(std)), w).exp()
    phi0 = 1 / math.sqrt(2 * math.pi)
    assert abs(float(p[0]) - 0.5) <= phi0 / std and abs(float(p[-1]) - 0.5) <= phi0 / std
    inner = w * np.exp(-0.5 * (x[1:-1].numpy() / std) ** 2) * phi0 / std
    # CDF differences of size w/std lose about 1e-16 / (w/std) of relative precision
    np.testing.assert_allclose(p[1:-1].numpy(), inner, rtol=10 * 1e-16 * std / w + 1e-9)
