"""DDIM [SME21]: eta = 1 is ancestral sampling, eta = 0 a deterministic map with the data's
moments for the Bayes-optimal denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.data import DataSpec
from ddpm.errors import ConfigError
from ddpm.likelihood.oracles import GaussianOracle
from ddpm.model import Model
from ddpm.process.diffusion import Diffusion
from ddpm.process.respace import respace
from ddpm.process.reverse import Parameterisation
from ddpm.process.schedule import NoiseSchedule
from ddpm.sampling.ancestral import sample
from ddpm.sampling.ddim import ddim_sample

M, S = 0.5, 0.5  # data N(M, S^2) per dimension


def _oracle_model(
    T: int, K: int, prediction: str = "eps", clip: tuple[float, float] | None = None
) -> Model:
    """The Gaussian oracle of 2-d data N(M, S^2) on the K-step respaced T-step process."""
    full = NoiseSchedule.linear(T)
    mean, std = (torch.full((2,), v, dtype=torch.float64) for v in (M, S))
    d = respace(Diffusion(full, Parameterisation(prediction, "small")), K)
    oracle = GaussianOracle(full, mean, std, prediction)
    return Model(d, oracle, DataSpec("x", (2,), None), clip=clip)


@pytest.mark.parametrize("prediction, clip", [("eps", None), ("x0", None), ("v", (-0.3, 1.2))])
def test_eta_one_is_ancestral_sampling_of_the_respaced_model(prediction, clip):
    model = _oracle_model(300, 20, prediction, clip)
    kw = dict(n=500, capture=(20, 7))
    a = sample(model, generator=torch.Generator().manual_seed(3), **kw)
    b = ddim_sample(model, generator=torch.Generator().manual_seed(3), eta=1.0, **kw)
    assert torch.allclose(b.x0, a.x0, rtol=0, atol=2e-5)
    assert b.steps == a.steps == [20, 7]
    assert torch.allclose(b.xt, a.xt, rtol=0, atol=2e-5)
    # the samples are random (not a constant map): the check above can fail
    assert float(a.x0.std()) > 0.3


def _ddim_chain(T: int, K: int, eta: float = 0.0) -> tuple[float, float, float]:
    """x_0 = A x_K + B + noise of variance V for DDIM with the Gaussian oracle on the respaced
    process: each step is affine plus noise. x0_hat = g x + o with g, o from Gaussian
    conditioning of x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps, s2 = eta^2 beta_tilde, and
    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s2) (x - sqrt(ab) x0_hat) / sqrt(1 - ab)
    + sqrt(s2) z   ([SME21] eqs. (12), (16)). Returns (A, B, V)."""
    full = NoiseSchedule.linear(T).alpha_bar.tolist()
    tau = respace(Diffusion(NoiseSchedule.linear(T)), K).net_t(torch.arange(K + 1)).tolist()
    ab = [1.0] + [full[t] for t in tau[1:]]
    A, B, V = 1.0, 0.0, 0.0
    for k in range(K, 0, -1):
        den = ab[k] * S**2 + 1 - ab[k]
        g, o = math.sqrt(ab[k]) * S**2 / den, (1 - ab[k]) * M / den
        s2 = eta**2 * (1 - ab[k - 1]) / (1 - ab[k]) * (1 - ab[k] / ab[k - 1])
        c = math.sqrt(1 - ab[k - 1] - s2) / math.sqrt(1 - ab[k])
        a_k = math.sqrt(ab[k - 1]) * g + c * (1 - math.sqrt(ab[k]) * g)
        b_k = math.sqrt(ab[k - 1]) * o - c * math.sqrt(ab[k]) * o
        A, B, V = a_k * A, a_k * B + b_k, a_k**2 * V + s2
    return A, B, V


def test_eta_zero_is_the_deterministic_map_of_x_T():
    T, K, n = 200, 15, 400
    model = _oracle_model(T, K)
    out = ddim_sample(model, n, generator=torch.Generator().manual_seed(5))
    x_T = torch.randn((n, 2), generator=torch.Generator().manual_seed(5))  # its first draw
    A, B, V = _ddim_chain(T, K)
    assert V == 0
    assert torch.allclose(out.x0.double(), A * x_T.double() + B, rtol=0, atol=2e-5)
    again = ddim_sample(model, n, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.x0, out.x0)


def test_eta_zero_with_many_steps_reproduces_the_data_moments():
    """T = K = 1000 with the Bayes-optimal denoiser: mean and variance of the samples equal the
    data's N(0.5, 0.25) within 4 Monte Carlo standard errors (the discretisation bias here,
    from the affine map, is below 0.002 in both)."""
    n = 10_000
    model = _oracle_model(1000, 1000)
    out = ddim_sample(model, n, generator=torch.Generator().manual_seed(0), eta=0.0)
    x = out.x0.double().flatten()
    se_mean, se_var = S / math.sqrt(x.numel()), S**2 * math.sqrt(2 / (x.numel() - 1))
    assert abs(float(x.mean()) - M) < 4 * se_mean
    assert abs(float(x.var()) - S**2) < 4 * se_var


def test_affine_map_bias_is_below_the_tolerance_used_above():
    A, B, _ = _ddim_chain(1000, 1000)  # x_T ~ N(0, 1): x_0 ~ N(B, A^2)
    assert abs(B - M) < 0.002 and abs(A**2 - S**2) < 0.002
    A10, _, _ = _ddim_chain(1000, 10)  # ten steps are visibly worse
    assert abs(A10**2 - S**2) > 0.01


@pytest.mark.parametrize("eta", [0.3, 0.7])
def test_intermediate_eta_has_the_moments_of_the_linear_gaussian_chain(eta):
    """0 < eta < 1 mixes both terms of eq. (12): x_0 = A x_K + B + noise(V), so the samples'
    mean B, variance A^2 + V and covariance A with the starting noise x_K match within 4
    standard errors; A depends on eta (A = 0.389 at eta = 0, 0.289 at 0.3, 0.057 at 0.7)."""
    T, K, n = 200, 12, 100_000
    model = _oracle_model(T, K)
    g = torch.Generator().manual_seed(1)
    out = ddim_sample(model, n // 2, generator=g, capture=(K,), eta=eta)
    A, B, V = _ddim_chain(T, K, eta)
    var = A**2 + V
    x, x_K = out.x0.double().flatten(), out.xt[0].double().flatten()
    assert abs(float(x.mean()) - B) < 4 * math.sqrt(var / n)
    assert abs(float(x.var()) - var) < 4 * var * math.sqrt(2 / (n - 1))
    cov = float(((x - x.mean()) * (x_K - x_K.mean())).mean())
    se_cov = math.sqrt((var + A**2) / n)  # Var(x y) for jointly Gaussian, Var(x_K) = 1
    assert abs(cov - A) < 4 * se_cov
    assert abs(A - _ddim_chain(T, K, 0.0)[0]) > 10 * se_cov


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan")])
def test_eta_outside_unit_interval_is_rejected(eta):
    model = _oracle_model(20, 5)
    with pytest.raises(ConfigError, match="^eta must lie in"):
        ddim_sample(model, 4, eta=eta)
