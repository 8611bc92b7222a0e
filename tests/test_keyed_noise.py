"""Keyed evaluation noise: standard normals keyed by (seed, example, t, chain), so that an
example's likelihood numbers do not depend on the batch it is evaluated in."""

from __future__ import annotations

import math

import pytest
import torch
from reference import LinearDenoiser

from ddpm.data import DataSpec
from ddpm.errors import ConfigError
from ddpm.likelihood.elbo import elbo_terms
from ddpm.likelihood.evaluate import ExampleTerms, example_terms
from ddpm.likelihood.oracles import GaussianOracle, gaussian_analysis, gaussian_elbo_terms
from ddpm.model import Model
from ddpm.process.diffusion import Diffusion, Parameterisation
from ddpm.process.rng import STREAM_IW, KeyedNoise, normal, uniform_t
from ddpm.process.schedule import NoiseSchedule
from ddpm.requests import EvaluationRequest
from ddpm.training.dist import DistInfo, shard

K_SE = 4.0
F64 = torch.float64


def _z(x: torch.Tensor) -> float:
    """Mean of x in standard errors from zero."""
    return (x.mean() / (x.std() / math.sqrt(x.numel()))).item()


def test_keyed_normals_have_standard_normal_moments_and_no_correlations():
    n_rows, width = 4000, 50
    example = torch.arange(n_rows)
    z = KeyedNoise(3).normal(torch.zeros(n_rows, width, dtype=F64), example, t=5)
    x = z.flatten()
    assert abs(_z(x)) < K_SE  # mean 0
    assert abs(_z(x**2 - 1)) < K_SE  # variance 1
    assert abs(_z(x**4 - 3)) < K_SE  # kurtosis of a normal
    assert abs(_z(torch.special.ndtr(x) - 0.5)) < K_SE  # Phi(z) uniform: mean 1/2
    assert abs(_z((torch.special.ndtr(x) - 0.5) ** 2 - 1 / 12)) < K_SE  # and variance 1/12
    # neighbours in every key direction are uncorrelated
    half = width // 2
    assert abs(_z(z[:, :half] * z[:, half:])) < K_SE  # the cos and sin of one pair
    assert abs(_z(z[:, :-1] * z[:, 1:])) < K_SE  # adjacent elements
    assert abs(_z(z[:-1] * z[1:])) < K_SE  # adjacent examples
    keyed = KeyedNoise(3)
    others = [
        keyed.normal(torch.zeros(n_rows, width, dtype=F64), example, t=6),  # next t
        keyed.normal(torch.zeros(n_rows, width, dtype=F64), example, 5, chain=1),  # next chain
        keyed.normal(torch.zeros(n_rows, width, dtype=F64), example, 5, stream=STREAM_IW),
        KeyedNoise(4).normal(torch.zeros(n_rows, width, dtype=F64), example, t=5),  # next seed
    ]
    for other in others:
        assert abs(_z(z * other)) < K_SE


def test_keyed_normals_depend_only_on_their_keys():
    like = torch.zeros(6, 2, 3)
    keyed = KeyedNoise(11, index=torch.tensor([40, 41, 42, 43, 44, 45]))
    z = keyed.normal(like, torch.arange(6), torch.tensor([1, 2, 3, 1, 2, 3]))
    assert z.dtype == torch.float32 and z.shape == like.shape
    # the same (example index, t) in another order, batch or slice gives the same numbers
    again = keyed.rows(3, 6).normal(like[:2], torch.tensor([2, 0]), torch.tensor([3, 1]))
    assert torch.equal(again, z[[5, 3]])
    assert torch.equal(
        KeyedNoise(11, torch.tensor([44])).normal(like[:1], torch.zeros(1, dtype=torch.long), 2),
        z[4:5],
    )
    # a torch generator ignores the keys and draws in order
    g = torch.Generator().manual_seed(0)
    drawn = normal(g, like, torch.arange(6), 1)
    assert torch.equal(drawn, torch.randn(like.shape, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ConfigError, match="seed must be in"):
        KeyedNoise(-1)


def test_keyed_timesteps_are_uniform():
    T, n = 7, 70_000
    t = uniform_t(KeyedNoise(5), T, torch.arange(n), chain=2)
    assert int(t.min()) == 1 and int(t.max()) == T
    freq = torch.bincount(t, minlength=T + 1)[1:].double() / n
    se = math.sqrt((1 / T) * (1 - 1 / T) / n)
    assert bool(((freq - 1 / T).abs() < K_SE * se).all())
    assert torch.equal(uniform_t(KeyedNoise(5), T, torch.arange(10), chain=2), t[:10])


def _setting(
    levels: int = 17, T: int = 12, D: int = 3, clip: tuple[float, float] | None = None
) -> tuple[Model, torch.Tensor]:
    """p_theta of a linear network on data on a grid of ``levels`` values, and 10 examples."""
    d = Diffusion(NoiseSchedule.linear(T), Parameterisation("x0", "learned"))
    spec = DataSpec.from_levels("x", (D,), levels)
    model = Model(d, LinearDenoiser(D, 2, T, seed=1), spec, clip=clip)
    g = torch.Generator().manual_seed(2)
    grid = torch.randint(0, levels, (10, D), generator=g)
    return model, (grid.double() / (levels - 1) * 2 - 1)


def _assert_rows_equal(part: ExampleTerms, full: ExampleTerms, rows: slice) -> None:
    for name in ("prior_kl", "per_timestep", "iw_nll", "mc"):
        torch.testing.assert_close(
            getattr(part, name), getattr(full, name)[rows], rtol=1e-12, atol=1e-12
        )


def test_an_examples_terms_do_not_depend_on_its_batch():
    """-ELBO terms, IW bounds and the K-timestep estimate of an example are the same for any
    number of examples, max_batch, or slice of the examples it is evaluated in."""
    model, x0 = _setting(clip=(-1.0, 1.0))

    def request(max_batch: int = 4096) -> EvaluationRequest:
        return EvaluationRequest(iw=(1, 3), estimator="both", mc_timesteps=5, max_batch=max_batch)

    full = example_terms(model, x0, request(), generator=KeyedNoise(7))
    for n, max_batch in ((4, 4096), (4, 3), (10, 7), (10, 1)):
        part = example_terms(model, x0[:n], request(max_batch), generator=KeyedNoise(7))
        _assert_rows_equal(part, full, slice(0, n))
    # a shard that starts at example 6 keeps the keys of examples 6..9
    shard_noise = KeyedNoise(7, torch.arange(6, 10))
    tail = example_terms(model, x0[6:], request(max_batch=5), generator=shard_noise)
    _assert_rows_equal(tail, full, slice(6, 10))
    # another seed draws other noise
    other = example_terms(model, x0, request(), generator=KeyedNoise(8))
    assert not torch.allclose(other.per_timestep, full.per_timestep)


def test_with_a_torch_generator_the_numbers_depend_on_the_batch():
    # what keyed noise removes: drawn in order, the first 4 examples alone get other x_t
    model, x0 = _setting()
    alone = elbo_terms(model, x0[:4], torch.Generator().manual_seed(0)).total()
    inside = elbo_terms(model, x0, torch.Generator().manual_seed(0)).total()[:4]
    assert not torch.allclose(alone, inside)


def test_keyed_noise_is_unbiased_for_the_closed_form_terms():
    """E over keyed x_t of each example's -ELBO and one-chain IW bound is the closed-form
    E[-ELBO | x_0] of the Gaussian oracle; the K-timestep estimate too (paired, within K_SE)."""
    T, n = 10, 3000
    s = NoiseSchedule.linear(T)
    m, sd = torch.tensor([0.3, -0.5], dtype=F64), torch.tensor([0.5, 0.2], dtype=F64)
    an = gaussian_analysis(s, m, sd, "large")
    x0 = m + sd * torch.randn((n, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    d = Diffusion(s, Parameterisation("eps", "large"))
    model = Model(d, GaussianOracle(s, m, sd), DataSpec("x", (2,), None))
    request = EvaluationRequest(iw=(1,), estimator="both", mc_timesteps=2)
    terms = example_terms(model, x0, request, generator=KeyedNoise(1))
    closed = gaussian_elbo_terms(an, x0)
    assert abs(_z(terms.per_timestep.sum(1) - closed.per_timestep.sum(1))) < K_SE
    assert abs(_z(terms.iw_nll[:, 0] - closed.total())) < K_SE
    assert abs(_z(terms.mc - closed.total())) < K_SE


def test_shards_cover_the_examples_in_order():
    for n, world in ((10, 3), (2, 4), (297, 2)):
        parts = [shard(n, DistInfo(rank=r, world_size=world)) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
        sizes = [b - a for a, b in parts]
        assert max(sizes) - min(sizes) <= 1
