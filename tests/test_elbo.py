"""The ELBO term by term, [Ho20] eq. (5), against the reference, closed forms and identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
import torch
from reference import LinearDenoiser, Schedule, TimeOnlyDenoiser

from ddpm.data import DataSpec
from ddpm.likelihood.elbo import ElboTerms, bits_per_dim, elbo_mc, elbo_terms, prior_kl, vb_term
from ddpm.model import Model
from ddpm.process.diffusion import Diffusion
from ddpm.process.forward import q_sample
from ddpm.process.reverse import Parameterisation
from ddpm.process.schedule import NoiseSchedule

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("small", "large", "learned")
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


def data(B: int, D: int, levels: int | None, seed: int) -> torch.Tensor:
    if levels is None:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(B, D, generator=g, dtype=f64) * 2 - 1
    return grid_data(B, D, levels, seed)


def ref_terms(s, param, model, x0, levels, noise_of):
    return ref.elbo_terms(
        Schedule(s.beta.tolist()),
        param.prediction,
        param.variance,
        model.row,
        x0.tolist(),
        noise_of,
        levels,
    )


# --- against the reference ---------------------------------------------------------------------


@pytest.mark.parametrize("levels", (None, 256))
@pytest.mark.parametrize("T", (1, 2, 10, 1000))
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_elbo_terms_match_reference(name, prediction, variance, T, levels):
    s = NoiseSchedule.from_name(name, T)
    param = Parameterisation(prediction=prediction, variance=variance)
    B, D = (2, 2) if T == 1000 else (3, 2)
    model = LinearDenoiser(D, param.out_mult, T, seed=11)
    x0 = data(B, D, levels, seed=12)
    # every (t, example) gets its own pinned eps; row (t - 1) * B + b
    t = torch.arange(1, T + 1).repeat_interleave(B)
    eps = torch.randn(T * B, D, generator=torch.Generator().manual_seed(13), dtype=f64)
    terms = (
        vb_term(model_of(Diffusion(s, param), model, (D,), levels), x0.repeat(T, 1), t, noise=eps)
        .reshape(T, B)
        .T
    )
    prior, kl, dec = ref_terms(s, param, model, x0, levels, lambda tt, b: eps[(tt - 1) * B + b])
    # prior_kl goes through the generic normal_kl, whose (1 - ab) - 1 - log(1 - ab) rounds to
    # ~1e-16 absolute per dimension; near x_T ~ N(0, I) the whole KL is that small.
    np.testing.assert_allclose(prior_kl(s, x0).numpy(), prior, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(terms[:, 0].numpy(), dec, rtol=1e-10, atol=1e-12)
    if T > 1:
        np.testing.assert_allclose(terms[:, 1:].numpy(), kl, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("levels", (None, 256))
@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("name", SCHEDULES)
def test_elbo_terms_chunking_on_a_noise_free_model(name, variance, levels):
    # With an x_0 prediction that ignores x_t no term depends on the x_t draw, so chunked and
    # unchunked evaluations must agree with each other and with the reference.
    T, B, D = 23, 4, 3
    s = NoiseSchedule.from_name(name, T)
    param = Parameterisation(prediction="x0", variance=variance)
    model = TimeOnlyDenoiser(D, param.out_mult, T, seed=14)
    x0 = data(B, D, levels, seed=15)
    prior, kl, dec = ref_terms(s, param, model, x0, levels, lambda tt, b: [0.3, -1.2, 2.0])
    for max_batch in (1, B, 3 * B + 1, 10_000):
        done = []
        g = torch.Generator().manual_seed(max_batch)
        e = elbo_terms(
            model_of(Diffusion(s, param), model, (D,), levels),
            x0,
            generator=g,
            max_batch=max_batch,
            on_chunk=done.append,
        )
        assert sum(done) == pytest.approx(T) and max(done) <= min(T, max(1, max_batch // B))
        assert e.kl.shape == (B, T - 1) and e.decoder_nll.shape == e.prior_kl.shape == (B,)
        np.testing.assert_allclose(e.prior_kl.numpy(), prior, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(e.decoder_nll.numpy(), dec, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(e.kl.numpy(), kl, rtol=1e-10, atol=1e-12)


def test_elbo_terms_is_reproducible_with_a_generator():
    T, B, D = 15, 3, 2
    s = NoiseSchedule.cosine(T)
    param = Parameterisation(prediction="eps", variance="learned")
    model = LinearDenoiser(D, 2, T, seed=16)
    x0 = grid_data(B, D, 256, seed=17)
    p_theta = model_of(Diffusion(s, param), model, (D,), 256)
    runs = [elbo_terms(p_theta, x0, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0].total(), runs[1].total())
    assert torch.equal(runs[0].per_timestep, runs[1].per_timestep)
    other = elbo_terms(p_theta, x0, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(other.per_timestep, runs[0].per_timestep)


# --- ElboTerms ---------------------------------------------------------------------------------


def test_total_and_per_timestep_layout():
    B, T = 2, 5
    kl = torch.arange(B * (T - 1), dtype=f64).reshape(B, T - 1) + 1
    terms = ElboTerms(
        prior_kl=torch.tensor([0.25, 0.5], dtype=f64),
        kl=kl,
        decoder_nll=torch.tensor([10.0, 20.0], dtype=f64),
    )
    torch.testing.assert_close(
        terms.total(),
        torch.tensor([0.25 + 1 + 2 + 3 + 4 + 10, 0.5 + 5 + 6 + 7 + 8 + 20], dtype=f64),
    )
    per_t = terms.per_timestep
    assert per_t.shape == (B, T)
    torch.testing.assert_close(per_t[:, 0], terms.decoder_nll)  # t = 1: L_0
    for t in range(2, T + 1):
        torch.testing.assert_close(per_t[:, t - 1], kl[:, t - 2])  # t: L_{t-1}
    torch.testing.assert_close(terms.total(), terms.prior_kl + per_t.sum(dim=1))


def test_total_from_elbo_terms_is_the_sum_of_its_terms():
    T, B, D = 12, 3, 2
    s = NoiseSchedule.linear(T)
    param = Parameterisation(prediction="v", variance="large")
    e = elbo_terms(
        model_of(Diffusion(s, param), LinearDenoiser(D, 1, T, seed=18), (D,), 17),
        grid_data(B, D, 17, 19),
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(
        e.total(), e.prior_kl + e.kl.sum(dim=1) + e.decoder_nll, rtol=1e-15, atol=0
    )


# --- closed forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", (1, 10, 1000))
def test_prior_kl_closed_form(name, T):
    s = NoiseSchedule.from_name(name, T)
    x0 = grid_data(4, 5, 256, seed=20)
    ab = float(s.alpha_bar[T])
    x = x0.numpy()
    # KL(N(sqrt(ab) x, 1 - ab) || N(0, 1)) = (ab x^2 + (1 - ab) - 1 - log(1 - ab)) / 2
    expected = 0.5 * (ab * x**2 - ab - math.log1p(-ab)).sum(axis=1)
    np.testing.assert_allclose(prior_kl(s, x0).numpy(), expected, rtol=1e-10, atol=1e-15)
    assert bool((prior_kl(s, x0) >= 0).all())


@pytest.mark.parametrize("D", (1, 784, 3072))
def test_bits_per_dim(D):
    nats = torch.tensor([0.0, 1.0, 1234.5], dtype=f64)
    torch.testing.assert_close(bits_per_dim(nats, D), nats / (D * math.log(2)), rtol=0, atol=0)
    assert bits_per_dim(D * math.log(2), D) == pytest.approx(1.0, rel=1e-15)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_perfect_denoiser_has_zero_kl_terms(name, prediction):
    # Data: a single point x0*. The network that returns the exact eps (x0, v) given x_t makes
    # mu_theta = mu_tilde_t, so with sigma_t^2 = beta_tilde_t every L_{t-1} (t >= 2) is 0 and
    # with sigma_t^2 = beta_t it is D/2 (log(beta/beta_tilde) - 1 + beta_tilde/beta).
    T, B, D = 1000, 2, 3
    s = NoiseSchedule.from_name(name, T)
    x_star = torch.tensor([0.5, -1.0, 0.25], dtype=f64)

    def perfect(xt, t):
        ab, omab = s.at(s.alpha_bar, t, xt), s.at(s.one_minus_alpha_bar, t, xt)
        eps = (xt - ab.sqrt() * x_star) / omab.sqrt()
        return {
            "eps": eps,
            "x0": x_star.expand_as(xt),
            "v": ab.sqrt() * eps - omab.sqrt() * x_star,
        }[prediction]

    x0 = x_star.expand(B, D)
    g = torch.Generator().manual_seed(21)
    small = elbo_terms(
        model_of(Diffusion(s, Parameterisation(prediction, "small")), perfect, (D,)),
        x0,
        generator=g,
    )
    assert float(small.kl.abs().max()) < 1e-10
    large = elbo_terms(
        model_of(Diffusion(s, Parameterisation(prediction, "large")), perfect, (D,)),
        x0,
        generator=g,
    )
    r = s.beta_tilde[2:] / s.beta[2:]
    expected = 0.5 * D * (-r.log() - 1 + r)
    np.testing.assert_allclose(
        large.kl.numpy(), expected.expand(B, T - 1).numpy(), rtol=1e-8, atol=1e-10
    )


# --- Monte Carlo -------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", (None, 256))
@pytest.mark.parametrize("stratified", (False, True))
def test_elbo_mc_agrees_with_elbo_terms(levels, stratified):
    # Both are unbiased for E_noise[-ELBO(x_0)]: elbo_mc over t and x_t, elbo_terms over x_t;
    # with strata, one t per stratum of log_strata(T, 4), weighted by the stratum's width.
    from ddpm.likelihood.elbo import log_strata

    T, D, n = 30 if stratified else 10, 2, 4000
    s = NoiseSchedule.linear(T)
    param = Parameterisation(prediction="eps", variance="learned")
    model = LinearDenoiser(D, 2, T, seed=22)
    x_one = data(1, D, levels, seed=23)
    x0 = x_one.expand(n, D)
    strata = log_strata(T, 4) if stratified else None
    p_theta = model_of(Diffusion(s, param), model, (D,), levels)
    mc = elbo_mc(p_theta, x0, K=1, generator=torch.Generator().manual_seed(24), strata=strata)
    full = elbo_terms(p_theta, x0, generator=torch.Generator().manual_seed(25))
    full_total = full.total()
    se = math.sqrt(float(mc.var()) / n + float(full_total.var()) / n)
    assert abs(float(mc.mean()) - float(full_total.mean())) < 4 * se


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("variance", ("small", "large"))
def test_negative_elbo_bounds_exact_nll_of_linear_gaussian_model(prediction, variance):
    # For 1-D data N(m, s2) and the Bayes-optimal network, p_theta(x_0) is Gaussian with the
    # moments of the reverse chain (decoder variance included), so -log p_theta(x_0) is exact
    # and E_q[-ELBO(x_0)] >= -log p_theta(x_0).
    T, n, m, s2 = 8, 20_000, 0.3, 0.25
    s = NoiseSchedule.cosine(T)
    sched = Schedule(s.beta.tolist())
    model = ref.GaussianOracle(sched, m, s2, prediction)
    mean0, var0 = ref.gaussian_chain_marginal(sched, m, s2, variance, decoder_noise=True)
    param = Parameterisation(prediction, variance)
    for x_value in (-0.8, 0.3, 1.5):
        nll = -ref.gaussian_log_prob(x_value, mean0, var0)
        x0 = torch.full((n, 1), x_value, dtype=f64)
        neg_elbo = elbo_terms(
            model_of(Diffusion(s, param), model, (1,)),
            x0,
            generator=torch.Generator().manual_seed(26),
        )
        total = neg_elbo.total()
        se = float(total.std()) / math.sqrt(n)
        assert float(total.mean()) > nll - 4 * se


def test_vb_term_uses_the_given_noise():
    T, B, D = 6, 5, 2
    s = NoiseSchedule.linear(T)
    param = Parameterisation(prediction="eps", variance="small")
    seen = {}

    def model(xt, t):
        seen["xt"] = xt.clone()
        return torch.zeros_like(xt)

    x0 = grid_data(B, D, 256, seed=27)
    t = torch.tensor([1, 2, 3, 6, 6])
    eps = torch.randn(B, D, generator=torch.Generator().manual_seed(28), dtype=f64)
    vb_term(model_of(Diffusion(s, param), model, (D,), 256), x0, t, noise=eps)
    torch.testing.assert_close(seen["xt"], q_sample(s, x0, t, noise=eps), rtol=0, atol=0)


# --- stratified Monte Carlo --------------------------------------------------------------------


@pytest.mark.parametrize("T,K", [(1, 4), (10, 16), (1000, 16), (1000, 64), (4000, 3)])
def test_log_strata_partition_one_to_T(T, K):
    from ddpm.likelihood.elbo import log_strata

    e = log_strata(T, K).tolist()
    assert e[0] == 1 and e[-1] == T + 1 and 1 <= len(e) - 1 <= K
    assert all(a < b for a, b in zip(e, e[1:], strict=False))  # strata are disjoint, non-empty
    widths = [b - a for a, b in zip(e, e[1:], strict=False)]
    # small t get the narrow strata (geometric widths, up to rounding of the edges)
    assert all(w <= v + 1 for i, w in enumerate(widths) for v in widths[i + 1 :])


def test_stratified_timesteps_are_uniform_within_each_stratum():
    # Each t in stratum k has probability 1 / width_k: counts over many keyed draws.
    from ddpm.likelihood.elbo import log_strata
    from ddpm.process.rng import KeyedNoise

    T, K, n = 100, 6, 20_000
    strata = log_strata(T, K)
    seen = []

    def record(xt, t):
        seen.append(t.clone())
        return torch.zeros_like(xt)

    diffusion = Diffusion(NoiseSchedule.linear(T), Parameterisation("eps", "small"))
    elbo_mc(model_of(diffusion, record, (1,)), torch.zeros(n, 1, dtype=f64), K, KeyedNoise(3),
            strata=strata)  # fmt: skip
    t = torch.cat(seen)
    for lo, hi in zip(strata[:-1].tolist(), strata[1:].tolist(), strict=True):
        inside = t[(t >= lo) & (t < hi)]
        assert inside.numel() == n  # one draw per example in every stratum
        counts = torch.bincount(inside - lo, minlength=hi - lo).double()
        p = 1.0 / (hi - lo)
        se = math.sqrt(n * p * (1 - p)) if hi - lo > 1 else 0.0
        assert float((counts - n * p).abs().max()) <= 4.5 * se + 1e-9
