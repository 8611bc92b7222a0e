"""The generic evaluator against closed forms: it cannot tell an oracle from a trained network."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.data import DataSpec, GaussianMixture
from ddpm.likelihood.evaluate import evaluate, mean_se
from ddpm.likelihood.oracles import (
    GaussianOracle,
    MixtureOracle,
    gaussian_analysis,
    gaussian_log_likelihood,
)
from ddpm.model import Model
from ddpm.process.diffusion import Diffusion
from ddpm.process.reverse import Parameterisation
from ddpm.process.schedule import NoiseSchedule
from ddpm.requests import EvaluationRequest

D, T = 3, 20


def _gaussian_setup(n: int = 3000, seed: int = 0):
    s = NoiseSchedule.cosine(T)
    m, sd = (
        torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64),
        torch.tensor([0.5, 0.2, 1.0]).double(),
    )
    an = gaussian_analysis(s, m, sd, "large")
    g = torch.Generator().manual_seed(seed)
    x0 = m + sd * torch.randn((n, D), generator=g, dtype=torch.float64)
    density = GaussianMixture(torch.ones(1).double(), m[None], torch.diag(sd**2)[None])
    return s, an, GaussianOracle(s, m, sd), x0, density, g


def test_evaluator_on_the_gaussian_oracle_matches_the_closed_forms():
    s, an, oracle, x0, density, g = _gaussian_setup()
    spec = DataSpec(name="gauss", shape=(D,), levels=None)
    model = Model(Diffusion(s, Parameterisation("eps", "large")), oracle, spec)
    ev = evaluate(
        model, x0, EvaluationRequest(iw=(1, 4), estimator="both", mc_timesteps=4),
        density=density, exact_log_prob=lambda x: gaussian_log_likelihood(an, x), generator=g,
    )  # fmt: skip
    assert abs(ev.neg_elbo - an.neg_elbo) < 4 * ev.neg_elbo_se
    assert abs(ev.neg_elbo_mc - an.neg_elbo) < 4 * ev.neg_elbo_mc_se
    assert abs(ev.neg_log_likelihood - an.neg_log_likelihood) < 4 * ev.neg_log_likelihood_se
    assert abs(ev.entropy - an.entropy) < 4 * ev.entropy_se
    # paired per-example differences: far tighter than the marginal SEs
    assert abs(ev.kl_joint - an.kl_joint) < 4 * ev.kl_joint_se
    assert abs(ev.kl_marginal - an.kl_marginal) < 4 * ev.kl_marginal_se + 1e-12
    assert abs(ev.posterior_gap - an.posterior_gap) < 4 * ev.posterior_gap_se
    assert ev.kl_joint_se < ev.neg_elbo_se
    assert ev.log_likelihood_exact is True
    assert sum(ev.terms.values()) == pytest.approx(ev.neg_elbo, rel=1e-12)
    assert sum(ev.per_timestep) + ev.terms["prior"] == pytest.approx(ev.neg_elbo, rel=1e-10)
    assert ev.bits_per_dim == pytest.approx(ev.neg_elbo / (D * math.log(2)), rel=1e-12)
    assert ev.bits_per_dim_se == pytest.approx(ev.neg_elbo_se / (D * math.log(2)), rel=1e-9)
    assert ev.nats_per_dim_se == pytest.approx(ev.neg_elbo_se / D, rel=1e-12)
    assert [b.K for b in ev.iw] == [1, 4]
    # K = 1 is an unbiased ELBO estimate; K = 4 is tighter (nested chains, paired)
    assert abs(ev.iw[0].neg_log_likelihood - an.neg_elbo) < 4 * ev.iw[0].se
    assert ev.iw[1].neg_log_likelihood < ev.iw[0].neg_log_likelihood


def test_mc_estimate_is_the_stratified_one():
    """evaluate's mc is elbo_mc over log_strata with the same keyed noise; on this oracle its
    SE is below that of uniform t at the same number of network calls."""
    from ddpm.likelihood.elbo import elbo_mc, log_strata
    from ddpm.process.rng import KeyedNoise

    s, an, oracle, x0, _, _ = _gaussian_setup(n=2000)
    spec = DataSpec(name="gauss", shape=(D,), levels=None)
    model = Model(Diffusion(s, Parameterisation("eps", "large")), oracle, spec)
    request = EvaluationRequest(estimator="both", mc_timesteps=8)
    ev = evaluate(model, x0, request, generator=KeyedNoise(5))
    strata = log_strata(T, 8)
    assert ev.mc_timesteps == len(strata) - 1
    mc = elbo_mc(model, x0, 8, KeyedNoise(5), strata=strata)
    assert ev.neg_elbo_mc == pytest.approx(float(mc.mean()), rel=1e-12)
    assert abs(ev.neg_elbo_mc - an.neg_elbo) < 4 * ev.neg_elbo_mc_se
    uniform = elbo_mc(model, x0, ev.mc_timesteps, KeyedNoise(5))
    assert ev.neg_elbo_mc_se < mean_se(uniform)[1]


def test_log_jacobian_moves_densities_not_kls():
    """Data scaled into model space by 1/scale: every -log density grows by D log(scale) in raw
    units, KLs (differences of densities) stay the same."""
    s, an, oracle, x0, density, _ = _gaussian_setup(n=200)
    exact = lambda x: gaussian_log_likelihood(an, x)  # noqa: E731
    diffusion = Diffusion(s, Parameterisation("eps", "large"))
    unit = DataSpec(name="g", shape=(D,), levels=None)
    scaled = DataSpec(name="g", shape=(D,), levels=None, shift=1.0, scale=2.5)
    ev1 = evaluate(Model(diffusion, oracle, unit), x0, density=density, exact_log_prob=exact,
                   generator=torch.Generator().manual_seed(1))  # fmt: skip
    ev2 = evaluate(Model(diffusion, oracle, scaled), x0, density=density, exact_log_prob=exact,
                   generator=torch.Generator().manual_seed(1))  # fmt: skip
    shift = D * math.log(2.5)
    assert ev2.log_jacobian == pytest.approx(-shift, rel=1e-12)
    for key in ("neg_elbo", "neg_log_likelihood", "entropy"):
        assert getattr(ev2, key) == pytest.approx(getattr(ev1, key) + shift, rel=1e-12)
    for key in ("kl_joint", "kl_marginal", "posterior_gap"):
        assert getattr(ev2, key) == pytest.approx(getattr(ev1, key), rel=1e-9, abs=1e-12)
    assert ev2.terms["decoder"] == pytest.approx(ev1.terms["decoder"] + shift, rel=1e-12)


def test_kl_chain_for_the_mixture_oracle():
    """gmm8's Bayes-optimal denoiser: KL_joint >= KL_marginal >= 0 within SE, where KL_marginal
    comes from the largest-K importance-weighted bound (an upper estimate of the true KL)."""
    from ddpm.data.toys import gmm8

    mixture = gmm8()
    s = NoiseSchedule.linear(50)
    g = torch.Generator().manual_seed(3)
    x0 = mixture.sample(400, generator=g)
    spec = DataSpec(name="gmm8", shape=(2,), levels=None)
    model = Model(Diffusion(s, Parameterisation("eps", "small")), MixtureOracle(s, mixture), spec)
    ev = evaluate(model, x0, EvaluationRequest(iw=(1, 16)), density=mixture, generator=g)
    assert ev.log_likelihood_exact is False
    assert ev.neg_log_likelihood == ev.iw[-1].neg_log_likelihood
    assert ev.kl_joint - ev.kl_marginal == pytest.approx(ev.posterior_gap, rel=1e-9)
    assert ev.posterior_gap > 4 * ev.posterior_gap_se  # the bound is visibly loose at T = 50
    assert ev.kl_marginal > -4 * ev.kl_marginal_se
    assert ev.neg_elbo > ev.entropy


def test_mean_se():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    m, se = mean_se(x)
    assert m == 2.5 and se == pytest.approx(x.std().item() / 2, rel=1e-12)


def test_per_timestep_se_is_the_standard_error_of_each_column():
    s, an, oracle, x0, density, _ = _gaussian_setup(n=50)
    spec = DataSpec(name="gauss", shape=(D,), levels=None)
    model = Model(Diffusion(s, Parameterisation("eps", "large")), oracle, spec)
    ev = evaluate(model, x0, generator=torch.Generator().manual_seed(5))
    from ddpm.likelihood.elbo import elbo_terms

    per_t = elbo_terms(model, x0, torch.Generator().manual_seed(5)).per_timestep
    want = per_t.std(dim=0) / math.sqrt(50)  # same draws: the same generator state
    torch.testing.assert_close(torch.tensor(ev.per_timestep_se, dtype=torch.float64), want)


def test_max_batch_bounds_every_network_call():
    """More examples than max_batch: examples are sliced, for the ELBO and for the IW chains."""
    s, an, oracle, x0, density, g = _gaussian_setup(n=10)
    sizes = []

    def net(xt, t):
        sizes.append(xt.shape[0])
        return oracle(xt, t)

    spec = DataSpec(name="gauss", shape=(D,), levels=None)
    model = Model(Diffusion(s, Parameterisation("eps", "large")), net, spec)
    ev = evaluate(model, x0, EvaluationRequest(iw=(1, 3), max_batch=4), generator=g)
    assert max(sizes) <= 4 and len(ev.per_timestep) == T
    assert ev.n == 10 and len(ev.per_example) == 10


def test_bad_evaluation_requests_are_refused_before_any_work():
    from ddpm.errors import ConfigError

    s, an, oracle, x0, density, g = _gaussian_setup(n=10)
    spec = DataSpec(name="gauss", shape=(D,), levels=None)
    model = Model(Diffusion(s, Parameterisation("eps", "large")), oracle, spec)
    with pytest.raises(ConfigError, match="at least 2 examples"):
        evaluate(model, x0[:1])
    with pytest.raises(ConfigError, match="iw must be an integer >= 1"):
        evaluate(model, x0, EvaluationRequest(iw=(0,)))
    with pytest.raises(ConfigError, match="mc_timesteps must be an integer >= 1"):
        evaluate(model, x0, EvaluationRequest(estimator="both", mc_timesteps=-1))
