"""Training losses and timestep samplers: L_simple, the unbiasedness of L_vlb under uniform and
importance-sampled t, and the stop-gradient of L_hybrid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import LinearDenoiser, TimeOnlyDenoiser
from torch import nn

from ddpm.config import DiffusionConfig
from ddpm.data import DataSpec
from ddpm.likelihood.elbo import bits_per_dim, elbo_terms
from ddpm.model import Model
from ddpm.process.diffusion import Diffusion
from ddpm.process.forward import v_from_x0_eps
from ddpm.process.reverse import Parameterisation
from ddpm.process.schedule import NoiseSchedule
from ddpm.training.losses import ImportanceSampler, UniformSampler, make_sampler, training_loss

f64 = torch.float64


def model_of(diffusion, net, shape, levels=None) -> Model:
    """p_theta from the process, the network and the data's shape and decoder levels."""
    spec = (
        DataSpec("x", shape, None) if levels is None else DataSpec.from_levels("x", shape, levels)
    )
    return Model(diffusion, net, spec)


def grid_data(B: int, D: int, levels: int, seed: int) -> torch.Tensor:
    k = torch.randint(0, levels, (B, D), generator=torch.Generator().manual_seed(seed))
    return -1 + 2 * k.to(f64) / (levels - 1)


# --- L_simple ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ("eps", "x0", "v"))
def test_simple_loss_is_zero_for_the_true_target(prediction):
    T, B, D = 100, 64, 3
    s = NoiseSchedule.linear(T)
    cfg = DiffusionConfig(T=T, prediction=prediction)
    x_star = torch.tensor([0.5, -0.25, 1.0], dtype=f64)

    def exact(xt, t):  # knows the data is the single point x_star
        ab, omab = s.at(s.alpha_bar, t, xt), s.at(s.one_minus_alpha_bar, t, xt)
        eps = (xt - ab.sqrt() * x_star) / omab.sqrt()
        return {
            "eps": eps,
            "x0": x_star.expand_as(xt),
            "v": ab.sqrt() * eps - omab.sqrt() * x_star,
        }[prediction]

    g = torch.Generator().manual_seed(0)
    t = torch.randint(1, T + 1, (B,), generator=g)
    out = training_loss(
        model_of(Diffusion(s, Parameterisation.of(cfg)), exact, (D,)),
        cfg,
        x_star.expand(B, D),
        t,
        None,
        generator=g,
    )
    assert out.vb is None
    assert float(out.loss.max()) < 1e-20
    torch.testing.assert_close(out.loss, out.mse, rtol=0, atol=0)


@pytest.mark.parametrize("prediction", ("eps", "x0", "v"))
def test_simple_loss_of_a_zero_network_is_the_mean_square_target(prediction):
    T, B, D = 30, 16, 4
    s = NoiseSchedule.cosine(T)
    cfg = DiffusionConfig(T=T, prediction=prediction)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(B, D, generator=g, dtype=f64) * 2 - 1
    eps = torch.randn(B, D, generator=g, dtype=f64)
    t = torch.randint(1, T + 1, (B,), generator=g)
    target = {"eps": eps, "x0": x0, "v": v_from_x0_eps(s, x0, t, eps)}[prediction]
    out = training_loss(
        model_of(Diffusion(s, Parameterisation.of(cfg)), lambda x, tt: torch.zeros_like(x), (D,)),
        cfg,
        x0,
        t,
        None,
        noise=eps,
    )
    torch.testing.assert_close(out.loss, target.pow(2).mean(dim=1), rtol=1e-14, atol=0)


# --- L_vlb -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", ("large", "learned"))
def test_vlb_loss_is_unbiased_for_the_full_negative_elbo(variance):
    # E_{t ~ U, eps}[(L_T + T term_t) / (D ln 2)] = E_eps[-ELBO] / (D ln 2): compare the mean of
    # many one-sample losses with the mean of many full evaluations, within 4 combined SE.
    T, D, n, m, levels = 20, 2, 200_000, 20_000, 256
    s = NoiseSchedule.linear(T)
    cfg = DiffusionConfig(T=T, variance=variance, loss="vlb")
    model = LinearDenoiser(D, Parameterisation.of(cfg).out_mult, T, seed=2)
    x_one = grid_data(1, D, levels, seed=3)
    g = torch.Generator().manual_seed(4)
    t, p_t = UniformSampler(T).sample(n, g, "cpu")
    assert bool((p_t == 1 / T).all())
    p_theta = model_of(Diffusion(s, Parameterisation.of(cfg)), model, (D,), levels)
    out = training_loss(p_theta, cfg, x_one.expand(n, D), t, p_t, generator=g)
    assert out.mse is None and out.vb.shape == (n,)
    full = bits_per_dim(elbo_terms(p_theta, x_one.expand(m, D), generator=g).total(), D)
    se = math.sqrt(float(out.loss.var()) / n + float(full.var()) / m)
    assert abs(float(out.loss.mean()) - float(full.mean())) < 4 * se


def test_vlb_loss_value_with_pinned_draws():
    # loss = (L_T + term_t / p(t)) / (D ln 2), term_t = L_0 at t = 1 and L_{t-1} otherwise
    T, B, D, levels = 12, 5, 3, 256
    s = NoiseSchedule.cosine(T)
    cfg = DiffusionConfig(T=T, prediction="x0", variance="learned", loss="vlb")
    param = Parameterisation.of(cfg)
    model = TimeOnlyDenoiser(D, 2, T, seed=5)  # terms do not depend on the x_t draw
    x0 = grid_data(B, D, levels, seed=6)
    p_theta = model_of(Diffusion(s, param), model, (D,), levels)
    e = elbo_terms(p_theta, x0)
    t = torch.tensor([1, 2, 7, 12, 12])
    p_t = torch.tensor([0.5, 0.1, 0.2, 0.1, 0.1], dtype=f64)
    out = training_loss(p_theta, cfg, x0, t, p_t, generator=torch.Generator())
    rows = torch.arange(B)
    term = e.per_timestep[rows, t - 1]
    torch.testing.assert_close(out.vb, term, rtol=1e-10, atol=1e-12)
    expected = (e.prior_kl + term / p_t) / (D * math.log(2))
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-12)


# --- timestep samplers -------------------------------------------------------------------------


def test_importance_sampler_is_uniform_until_every_history_is_full():
    T, H = 6, 4
    sampler = ImportanceSampler(T, history=H)
    uniform = torch.full((T,), 1 / T, dtype=f64)
    torch.testing.assert_close(sampler.probs(), uniform, rtol=0, atol=0)
    for t in range(1, T + 1):
        reps = H if t < T else H - 1  # the last timestep is one short
        sampler.update(torch.full((reps,), t), torch.full((reps,), float(t)))
    torch.testing.assert_close(sampler.probs(), uniform, rtol=0, atol=0)
    t, p = sampler.sample(50, torch.Generator().manual_seed(7), "cpu")
    assert bool((p == 1 / T).all()) and int(t.min()) >= 1 and int(t.max()) <= T
    sampler.update(torch.tensor([T]), torch.tensor([float(T)]))
    assert not torch.equal(sampler.probs(), uniform)


def test_importance_sampler_probabilities_follow_rms_of_recent_terms():
    T, H, mix = 5, 3, 0.001
    sampler = ImportanceSampler(T, history=H, uniform_mix=mix)
    rng = np.random.default_rng(8)
    values = rng.uniform(0.1, 5.0, size=(T, H + 2))  # two more than the history keeps
    for j in range(H + 2):
        sampler.update(torch.arange(1, T + 1), torch.from_numpy(values[:, j]))
    recent = values[:, -H:]
    w = np.sqrt((recent**2).mean(axis=1))
    expected = (1 - mix) * w / w.sum() + mix / T  # [ND21] Sec. 3.3
    np.testing.assert_allclose(sampler.probs().numpy(), expected, rtol=1e-12)
    assert float(sampler.probs().sum()) == pytest.approx(1.0, rel=1e-14)
    t, p = sampler.sample(10, torch.Generator().manual_seed(9), "cpu")
    np.testing.assert_array_equal(p.numpy(), sampler.probs().numpy()[t.numpy() - 1])
    # state round trip
    other = ImportanceSampler(T, history=H, uniform_mix=mix)
    other.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(other.probs(), sampler.probs(), rtol=0, atol=0)


def test_importance_sampler_draws_follow_its_probabilities():
    T, n = 4, 200_000
    sampler = ImportanceSampler(T, history=2)
    for value in (1.0, 3.0):
        sampler.update(torch.arange(1, T + 1), torch.tensor([value, 2 * value, 0.5, 4.0]))
    p = sampler.probs().numpy()
    t, _ = sampler.sample(n, torch.Generator().manual_seed(10), "cpu")
    freq = np.bincount(t.numpy() - 1, minlength=T) / n
    se = np.sqrt(p * (1 - p) / n)
    assert (np.abs(freq - p) < 4 * se).all()


def test_importance_weighted_vlb_is_unbiased():
    # Probabilities from a history unrelated to the true terms: any p(t) > 0 keeps
    # E_t[term_t / p(t)] = sum_t term_t. The model's terms do not depend on the x_t draw, so the
    # full -ELBO is exact and the only randomness is t.
    T, D, n, levels = 10, 3, 200_000, 256
    s = NoiseSchedule.linear(T)
    cfg = DiffusionConfig(
        T=T, prediction="x0", variance="learned", loss="vlb", timestep_sampler="importance"
    )
    model = TimeOnlyDenoiser(D, 2, T, seed=11)
    sampler = make_sampler(cfg)
    assert isinstance(sampler, ImportanceSampler)
    history = torch.from_numpy(np.random.default_rng(12).uniform(0.1, 10, size=T))
    for _ in range(sampler.terms.shape[1]):
        sampler.update(torch.arange(1, T + 1), history)
    p = sampler.probs()
    assert float(p.max() / p.min()) > 2  # genuinely non-uniform
    x_one = grid_data(1, D, levels, seed=13)
    p_theta = model_of(Diffusion(s, Parameterisation.of(cfg)), model, (D,), levels)
    exact = bits_per_dim(float(elbo_terms(p_theta, x_one).total()), D)
    g = torch.Generator().manual_seed(14)
    t, p_t = sampler.sample(n, g, "cpu")
    out = training_loss(
        p_theta,
        cfg,
        x_one.expand(n, D),
        t,
        p_t,
        generator=g,
    )
    se = float(out.loss.std()) / math.sqrt(n)
    assert se > 0
    assert abs(float(out.loss.mean()) - exact) < 4 * se


def test_make_sampler():
    assert type(make_sampler(DiffusionConfig(T=5))) is UniformSampler
    cfg = DiffusionConfig(T=5, loss="vlb", timestep_sampler="importance")
    assert type(make_sampler(cfg)) is ImportanceSampler


# --- L_hybrid ----------------------------------------------------------------------------------


class TwoHeads(nn.Module):
    """out = [a x + b t/T, c x + d]: the mean head (a, b) and variance head (c, d) share no
    parameter."""

    def __init__(self, T: int) -> None:
        super().__init__()
        self.T = T
        self.a = nn.Parameter(torch.tensor(0.7, dtype=f64))
        self.b = nn.Parameter(torch.tensor(-0.2, dtype=f64))
        self.c = nn.Parameter(torch.tensor(0.3, dtype=f64))
        self.d = nn.Parameter(torch.tensor(0.1, dtype=f64))

    def forward(self, x, t):
        frac = (t.to(f64) / self.T)[:, None]
        return torch.cat([self.a * x + self.b * frac, self.c * x + self.d], dim=1)


def test_hybrid_vlb_part_trains_only_the_variance_head():
    T, B, D, levels = 40, 32, 2, 256
    s = NoiseSchedule.cosine(T)
    g = torch.Generator().manual_seed(15)
    x0 = grid_data(B, D, levels, seed=16)
    t = torch.randint(1, T + 1, (B,), generator=g)
    p_t = torch.full((B,), 1 / T, dtype=f64)
    eps = torch.randn(B, D, generator=g, dtype=f64)
    model = TwoHeads(T)
    mean_head, var_head = [model.a, model.b], [model.c, model.d]

    def grads(cfg, pick):
        out = training_loss(
            model_of(Diffusion(s, Parameterisation.of(cfg)), model, (D,), levels),
            cfg,
            x0,
            t,
            p_t,
            noise=eps,
        )
        return torch.autograd.grad(pick(out).mean(), mean_head + var_head, allow_unused=True)

    hybrid = DiffusionConfig(T=T, variance="learned", loss="hybrid", hybrid_lambda=0.5)
    g_total = grads(hybrid, lambda o: o.loss)
    g_mse = grads(hybrid, lambda o: o.mse)
    # mean head: only L_simple
    for gt, gm in zip(g_total[:2], g_mse[:2], strict=True):
        torch.testing.assert_close(gt, gm, rtol=1e-12, atol=0)
    # variance head: only lambda * L_vlb, and it does get a gradient
    assert all(gm is None or float(gm) == 0 for gm in g_mse[2:])
    assert all(float(gv) != 0 for gv in g_total[2:])
    # without the stop-gradient (loss 'vlb') the mean head does get a vlb gradient
    g_vlb = grads(DiffusionConfig(T=T, variance="learned", loss="vlb"), lambda o: o.loss)
    assert all(float(gv) != 0 for gv in g_vlb[:2])
    # and the hybrid variance gradient is lambda times the vlb one
    for gh, gv in zip(g_total[2:], g_vlb[2:], strict=True):
        torch.testing.assert_close(gh, 0.5 * gv, rtol=1e-10, atol=0)
