"""p_theta(x_{t-1} | x_t) against the line-by-line reference, over every schedule x prediction x
variance, plus the parameterisation's edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import LinearDenoiser, Schedule
from reference import p_mean_var as ref_p_mean_var

from ddpm.data import DataSpec
from ddpm.errors import ConfigError
from ddpm.model import Model, p_mean_var
from ddpm.process.diffusion import Diffusion
from ddpm.process.forward import eps_from_x0, q_posterior
from ddpm.process.reverse import Parameterisation, p_from_output, split_output
from ddpm.process.schedule import NoiseSchedule

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("small", "large", "learned")
D = 3
SPEC = DataSpec("x", (D,), None)  # continuous D-dimensional data


@pytest.mark.parametrize("T", (1, 2, 10, 1000))
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_p_mean_var_matches_reference(name, prediction, variance, T):
    s = NoiseSchedule.from_name(name, T)
    ref = Schedule(s.beta.tolist())
    param = Parameterisation(prediction=prediction, variance=variance)
    model = LinearDenoiser(D, param.out_mult, T, seed=7)
    per_t = 1 if T == 1000 else 3
    t = torch.arange(1, T + 1).repeat_interleave(per_t)
    xt = torch.randn(len(t), D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    p = p_mean_var(Model(Diffusion(s, param), model, SPEC), xt, t)
    assert p.mean.shape == p.log_var.shape == p.x0_hat.shape == p.eps_hat.shape == (len(t), D)
    mean_ref, var_ref = [], []
    for i in range(len(t)):
        ti, xi = int(t[i]), xt[i].tolist()
        m, v = ref_p_mean_var(ref, prediction, variance, model.row(xi, ti), xi, ti)
        mean_ref.append(m)
        var_ref.append(v)
    np.testing.assert_allclose(p.mean.numpy(), mean_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.log_var.exp().numpy(), var_ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_predictions_are_consistent(name, prediction):
    # x0_hat and eps_hat are two views of one prediction: x_t = sqrt(ab) x0_hat + sqrt(1-ab) eps_hat
    T = 50
    s = NoiseSchedule.from_name(name, T)
    param = Parameterisation(prediction=prediction)
    model = LinearDenoiser(D, 1, T, seed=9)
    t = torch.arange(1, T + 1)
    xt = torch.randn(T, D, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    p = p_mean_var(Model(Diffusion(s, param), model, SPEC), xt, t)
    ab = s.alpha_bar[1:, None]
    torch.testing.assert_close(
        ab.sqrt() * p.x0_hat + (1 - ab).sqrt() * p.eps_hat, xt, rtol=1e-10, atol=1e-10
    )
    # the mean is the posterior mean with x0_hat in place of x_0, [Ho20] eq. (7)
    post = q_posterior(s, p.x0_hat, xt, t)
    torch.testing.assert_close(p.mean, post.mean, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_learned_variance_endpoints(name):
    # out = -1 gives u = 0 (beta_tilde_t: 'small'), out = +1 gives u = 1 (beta_t: 'large'); at
    # t = 1 the range runs from the decoder variance beta_tilde_2 to beta_1 ([ND21]'s code).
    T = 20
    s = NoiseSchedule.from_name(name, T)
    t = torch.arange(1, T + 1)
    xt = torch.zeros(T, D, dtype=torch.float64)
    head = torch.zeros(T, D, dtype=torch.float64)
    learned = Parameterisation(variance="learned")
    for value, fixed in ((-1.0, "small"), (1.0, "large")):
        out = torch.cat([head, torch.full((T, D), value, dtype=torch.float64)], dim=1)
        got = p_from_output(Diffusion(s, learned), out, xt, t).log_var
        want = p_from_output(Diffusion(s, Parameterisation(variance=fixed)), head, xt, t).log_var
        torch.testing.assert_close(got[1:], want[1:], rtol=1e-14, atol=1e-14)
        end = s.beta_tilde[2] if value < 0 else s.beta[1]
        torch.testing.assert_close(got[0].exp(), end.expand(D), rtol=1e-14, atol=0)
    # halfway: the geometric mean of beta_t and beta_tilde_t
    out = torch.cat([head, torch.zeros(T, D, dtype=torch.float64)], dim=1)
    var = p_from_output(Diffusion(s, learned), out, xt, t).log_var.exp()[:, 0]
    torch.testing.assert_close(var[1:], (s.beta[2:] * s.beta_tilde[2:]).sqrt(), rtol=1e-12, atol=0)
    assert float(var[0]) == pytest.approx(float((s.beta[1] * s.beta_tilde[2]).sqrt()), rel=1e-12)


def test_clip_clamps_x0_hat_before_the_mean():
    s = NoiseSchedule.linear(10)
    t = torch.tensor([3, 3])
    xt = torch.tensor([[0.2], [-0.4]], dtype=torch.float64)
    out = torch.tensor([[2.5], [-0.3]], dtype=torch.float64)  # x0 predictions
    p = p_from_output(Diffusion(s, Parameterisation(prediction="x0")), out, xt, t, clip=(-1.0, 1.0))
    x0_clipped = torch.tensor([[1.0], [-0.3]], dtype=torch.float64)
    torch.testing.assert_close(p.x0_hat, x0_clipped, rtol=0, atol=0)
    torch.testing.assert_close(p.mean, q_posterior(s, x0_clipped, xt, t).mean, rtol=0, atol=0)
    torch.testing.assert_close(p.eps_hat, eps_from_x0(s, xt, t, x0_clipped), rtol=0, atol=0)


def test_detach_mean_stops_gradients_to_the_mean_only():
    s = NoiseSchedule.linear(10)
    t = torch.tensor([4, 7])
    xt = torch.randn(2, D, dtype=torch.float64)
    out = torch.randn(2, 2 * D, dtype=torch.float64, requires_grad=True)
    p = p_from_output(
        Diffusion(s, Parameterisation(variance="learned")), out, xt, t, detach_mean=True
    )
    assert not p.mean.requires_grad and p.log_var.requires_grad
    (g,) = torch.autograd.grad(p.log_var.sum(), out)
    assert bool((g[:, :D] == 0).all()) and bool((g[:, D:] != 0).all())


def test_network_output_shape_is_checked():
    xt = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ConfigError) as info:
        split_output(Parameterisation(variance="learned"), torch.zeros(4, 3, 8, 8), xt)
    msg = str(info.value)
    assert "network output has shape (4, 3, 8, 8) but 2x3 channels are needed" in msg
    assert "variance 'learned'" in msg and "rebuild the network" in msg
    head, var = split_output(Parameterisation(variance="learned"), torch.zeros(4, 6, 8, 8), xt)
    assert head.shape == var.shape == (4, 3, 8, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prediction": "score"}, "unknown prediction 'score': choose one of 'eps', 'x0', 'v'"),
        (
            {"variance": "tiny"},
            "unknown variance 'tiny': choose one of 'small', 'large', 'learned', 'optimal'",
        ),
    ],
)
def test_bad_parameterisation_rejected(kwargs, message):
    with pytest.raises(ConfigError) as info:
        Parameterisation(**kwargs)
    assert str(info.value) == message


def test_out_mult():
    assert Parameterisation(variance="learned").out_mult == 2
    assert Parameterisation(variance="small").out_mult == 1
