"""Importance-weighted bounds on the Gaussian oracle, whose log p_theta(x_0) is exact."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.data import DataSpec
from ddpm.errors import ConfigError
from ddpm.likelihood.bounds import IwEstimate, iw_curve, iw_log_likelihood, iw_log_weights
from ddpm.likelihood.elbo import elbo_terms
from ddpm.likelihood.oracles import (
    GaussianOracle,
    gaussian_analysis,
    gaussian_elbo_terms,
    gaussian_log_likelihood,
)
from ddpm.model import Model
from ddpm.process.diffusion import Diffusion
from ddpm.process.reverse import Parameterisation
from ddpm.process.schedule import NoiseSchedule

K_SE = 4  # Monte Carlo tolerance in standard errors
F64 = torch.float64
MEAN, STD = torch.tensor([0.3], dtype=F64), torch.tensor([0.5], dtype=F64)


def setting(variance: str = "small", T: int = 10, levels: int | None = None):
    """A 1-D Gaussian oracle where the ELBO is visibly loose: linear schedule with small T.
    levels: the decoder's grid (None: a Gaussian density, continuous data)."""
    s = NoiseSchedule.linear(T=T)
    an = gaussian_analysis(s, MEAN, STD, variance)
    spec = DataSpec("x", (1,), None) if levels is None else DataSpec.from_levels("x", (1,), levels)
    d = Diffusion(s, Parameterisation("eps", variance))
    return Model(d, GaussianOracle(s, MEAN, STD), spec), an


def draw_x0(n: int, seed: int) -> torch.Tensor:
    return MEAN + STD * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=F64)


def z_score(x: torch.Tensor, expected: float = 0.0) -> float:
    return ((x.mean() - expected) / (x.std() / math.sqrt(x.numel()))).item()


@pytest.mark.parametrize("variance", ["small", "large"])
def test_one_sample_bound_is_an_unbiased_elbo(variance):
    model, an = setting(variance)
    x0 = draw_x0(2000, seed=0)
    g = torch.Generator().manual_seed(1)
    iw1 = -iw_log_likelihood(model, x0, K=1, generator=g)
    # paired with the closed-form E[-ELBO | x_0] of each example
    assert abs(z_score(iw1 - gaussian_elbo_terms(an, x0).total())) < K_SE
    # and with the generic evaluator on the same x_0 (independent draws)
    ref = elbo_terms(model, x0, generator=g).total()
    diff = iw1.mean() - ref.mean()
    se = math.hypot(iw1.std() / math.sqrt(2000), ref.std() / math.sqrt(2000))
    assert abs(diff.item()) < K_SE * se


def test_bound_rises_with_K_and_reaches_the_exact_log_likelihood():
    model, an = setting("small")
    assert an.posterior_gap > 1.0  # the ELBO is loose here: room for K to matter
    x0 = draw_x0(1000, seed=2)
    g = torch.Generator().manual_seed(3)
    curve = iw_curve(model, x0, Ks=(1, 8, 64, 1024), generator=g, max_batch=1 << 17)
    assert [e.K for e in curve] == [1, 8, 64, 1024]
    nll = {e.K: e.nll for e in curve}
    for k_small, k_large in [(1, 8), (8, 64)]:  # nested chains: paired differences
        assert z_score(nll[k_small] - nll[k_large]) > K_SE
    exact = -gaussian_log_likelihood(an, x0)
    assert abs(z_score(nll[1024] - exact)) < K_SE
    assert abs(z_score(nll[1] - exact, an.posterior_gap)) < K_SE  # -ELBO - (-log p) = the gap
    assert curve[0].nll_nats == pytest.approx(nll[1].mean().item())
    assert curve[0].se_nats == pytest.approx(nll[1].std().item() / math.sqrt(1000))


def test_chain_groups_keep_examples_in_their_columns():
    """Examples far apart have far-apart log-weights: column j must stay example j."""
    model, _ = setting("large", T=5)
    x0 = torch.tensor([[-6.0], [0.3], [6.0]], dtype=F64)
    for max_batch in (3, 6, 4096):  # groups of 1, 2 and all 7 chains
        g = torch.Generator().manual_seed(4)
        log_w = iw_log_weights(model, x0, K=7, generator=g, max_batch=max_batch)
        assert log_w.shape == (7, 3) and log_w.dtype == F64
        assert bool((log_w[:, 1] > log_w[:, 0] + 10).all() & (log_w[:, 1] > log_w[:, 2] + 10).all())


def test_groups_of_one_chain_are_successive_single_chain_draws():
    model, _ = setting("large", T=5)
    x0 = draw_x0(3, seed=5)
    log_w = iw_log_weights(
        model,
        x0,
        K=4,
        generator=torch.Generator().manual_seed(6),
        max_batch=3,
    )
    g = torch.Generator().manual_seed(6)
    singles = [iw_log_weights(model, x0, K=1, generator=g) for _ in range(4)]
    torch.testing.assert_close(log_w, torch.cat(singles), rtol=0, atol=0)
    bound = iw_log_likelihood(
        model,
        x0,
        K=4,
        generator=torch.Generator().manual_seed(6),
        max_batch=3,
    )
    torch.testing.assert_close(bound, torch.logsumexp(log_w, 0) - math.log(4), rtol=0, atol=0)


def test_discretized_decoder_bound_matches_the_elbo():
    """Data on a grid of 16 levels: the decoder is discretized [Ho20] eq. (13)."""
    levels = 16
    model, _ = setting("large", levels=levels)
    x0 = draw_x0(2000, seed=7).clamp(-1, 1)
    x0 = torch.round((x0 + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
    g = torch.Generator().manual_seed(8)
    curve = iw_curve(model, x0, Ks=(1, 16), generator=g)
    ref = elbo_terms(model, x0, generator=g).total()
    se = math.hypot(curve[0].se_nats, ref.std().item() / math.sqrt(2000))
    assert abs(curve[0].nll_nats - ref.mean().item()) < K_SE * se
    assert z_score(curve[0].nll - curve[1].nll) > -K_SE  # E[L_16] >= E[L_1]
    assert isinstance(curve[1], IwEstimate) and curve[1].nll.shape == (2000,)


def test_bad_numbers_of_samples_raise_config_errors():
    model, _ = setting()
    x0 = draw_x0(2, seed=9)
    with pytest.raises(ConfigError, match="K must be an integer >= 1"):
        iw_log_likelihood(model, x0, K=0)
    with pytest.raises(ConfigError, match="Ks must be a non-empty sequence"):
        iw_curve(model, x0, Ks=())
