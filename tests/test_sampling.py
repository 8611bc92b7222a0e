"""Ancestral sampling, [Ho20] Algorithm 2: moments of a linear-Gaussian chain, captures,
reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
from reference import GaussianOracle, LinearDenoiser, Schedule, gaussian_chain_marginal

from ddpm.data import DataSpec
from ddpm.model import Model, p_mean_var
from ddpm.process.diffusion import Diffusion
from ddpm.process.reverse import Parameterisation
from ddpm.process.schedule import NoiseSchedule
from ddpm.sampling.ancestral import p_sample, sample

f64 = torch.float64


def model_of(diffusion, net, shape) -> Model:
    """p_theta on continuous data of one example's shape, x0_hat not clipped."""
    return Model(diffusion, net, DataSpec("x", shape, None))


@pytest.mark.parametrize("prediction", ("eps", "x0", "v"))
@pytest.mark.parametrize("variance", ("small", "large"))
@pytest.mark.parametrize("name", ("linear", "cosine"))
def test_samples_match_the_linear_gaussian_chain(name, variance, prediction):
    # Data N(m, s2) in 1-D with the Bayes-optimal network: every reverse step is affine in x_t
    # plus Gaussian noise, so x_0 is Gaussian with the moments of the recursion
    # mean_{t-1} = a_t mean_t + b_t, var_{t-1} = a_t^2 var_t + sigma_t^2 (no noise at t = 1).
    T, n, m, s2 = 10, 200_000, 0.4, 0.09
    s = NoiseSchedule.from_name(name, T)
    sched = Schedule(s.beta.tolist())
    model = GaussianOracle(sched, m, s2, prediction)
    mean, var = gaussian_chain_marginal(sched, m, s2, variance, decoder_noise=False)
    g = torch.Generator().manual_seed(0)
    out = sample(
        model_of(Diffusion(s, Parameterisation(prediction, variance)), model, (1,)), n, generator=g
    )
    x = out.x0.double().flatten()
    assert out.x0.shape == (n, 1)
    se_mean = math.sqrt(var / n)
    se_var = var * math.sqrt(2 / (n - 1))  # x_0 is Gaussian
    assert abs(float(x.mean()) - mean) < 4 * se_mean
    assert abs(float(x.var()) - var) < 4 * se_var


def test_capture_shapes_and_contents():
    T, n, shape = 12, 7, (2, 3)
    s = NoiseSchedule.cosine(T)
    param = Parameterisation("eps", "small")
    model = LinearDenoiser(3, 1, T, seed=1)

    def net(x, t):  # per-example shape (2, 3): apply the linear map to each row
        return model(x.reshape(-1, 3), t.repeat_interleave(2)).reshape(x.shape)

    p_theta = model_of(Diffusion(s, param), net, shape)
    out = sample(
        p_theta,
        n,
        generator=torch.Generator().manual_seed(2),
        capture=(1, T, 5, 5, 0, T + 3),
    )
    assert out.steps == [T, 5, 1]  # descending, deduplicated, out-of-range dropped
    assert out.xt.shape == out.x0_hat.shape == (3, n, *shape)
    assert out.x0.shape == (n, *shape)
    # x_T is the first draw, [Ho20] Alg. 2 line 1
    x_T = torch.randn((n, *shape), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out.xt[0], x_T, rtol=0, atol=0)
    # x0_hat at each captured step is the network's prediction at that x_t
    for k, t in enumerate(out.steps):
        p = p_mean_var(p_theta, out.xt[k], torch.full((n,), t))
        torch.testing.assert_close(out.x0_hat[k], p.x0_hat, rtol=1e-6, atol=1e-6)
    # the last step adds no noise: x_0 is the decoder mean at x_1
    p1 = p_mean_var(p_theta, out.xt[2], torch.ones(n, dtype=torch.long))
    torch.testing.assert_close(out.x0, p1.mean, rtol=1e-6, atol=1e-6)


def test_no_capture_gives_none():
    s = NoiseSchedule.linear(3)
    out = sample(
        model_of(Diffusion(s, Parameterisation()), LinearDenoiser(2, 1, 3, seed=3), (2,)), 4
    )
    assert out.steps == [] and out.xt is None and out.x0_hat is None


def test_same_seed_same_samples():
    T = 15
    s = NoiseSchedule.linear(T)
    param = Parameterisation("v", "learned")
    model = LinearDenoiser(4, 2, T, seed=4)
    p_theta = model_of(Diffusion(s, param), model, (4,))
    a, b, c = (
        sample(p_theta, 32, generator=torch.Generator().manual_seed(seed)).x0 for seed in (5, 5, 6)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_p_sample_step():
    T = 8
    s = NoiseSchedule.linear(T)
    param = Parameterisation("eps", "large")
    model = LinearDenoiser(2, 1, T, seed=7)
    xt = torch.randn(5, 2, dtype=f64, generator=torch.Generator().manual_seed(8))
    z = torch.randn(5, 2, dtype=f64, generator=torch.Generator().manual_seed(9))
    p_theta = model_of(Diffusion(s, param), model, (2,))
    x_prev, p = p_sample(p_theta, xt, 4, noise=z)
    torch.testing.assert_close(x_prev, p.mean + float(s.beta[4]) ** 0.5 * z, rtol=1e-14, atol=0)
    x0, p1 = p_sample(p_theta, xt, 1, noise=z)  # z is ignored at t = 1
    torch.testing.assert_close(x0, p1.mean, rtol=0, atol=0)


def test_on_step_sees_every_t_descending():
    T = 6
    seen = []
    sample(
        model_of(
            Diffusion(NoiseSchedule.cosine(T), Parameterisation()),
            LinearDenoiser(1, 1, T, seed=10),
            (1,),
        ),
        2,
        on_step=seen.append,
    )
    assert seen == list(range(T, 0, -1))
