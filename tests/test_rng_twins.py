"""Keyed noise has no seed twins: the whole seed is mixed before it meets the two lanes, so no
seed draws another seed's bits, with its lanes swapped or not, and the draws of different seeds
are independent."""

from __future__ import annotations

import math

import numpy as np
import torch

from ddpm.process.rng import KeyedNoise, mix_seed

# The XOR of the two lane constants of the earlier construction: seed s and s ^ OLD_TWIN drew
# the same bits with the lanes swapped.
OLD_TWIN = 0x3C6EF372 ^ 0x1B873593
N = 4096  # normals per seed


def _bits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    noise = KeyedNoise(seed)
    example = torch.arange(8)
    return noise.bits(0, example, 5, 0, N // 16)


def _normals(seed: int) -> torch.Tensor:
    like = torch.zeros(16, N // 16, dtype=torch.float64)
    return KeyedNoise(seed).normal(like, torch.arange(16), 3).flatten()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_the_old_xor_twin_draws_its_own_bits():
    assert OLD_TWIN == 669632225
    for s in (0, 1, 12345, 2**40 + 7):
        a, b = _bits(s)
        a2, b2 = _bits(s ^ OLD_TWIN)
        for x, y in ((a, b2), (b, a2), (a, a2), (b, b2)):  # swapped or not: no lane is shared
            assert float((x == y).double().mean()) < 1e-3  # a shared lane would give 1.0
        # and the normals are uncorrelated: |r| sqrt(N) is standard normal for independent draws
        assert abs(_corr(_normals(s), _normals(s ^ OLD_TWIN))) * math.sqrt(N) < 5


def test_distinct_seeds_start_their_lanes_apart():
    rng = np.random.default_rng(0)
    seeds = [int(s) for s in rng.integers(0, 2**63, size=2000, dtype=np.int64)]
    seeds += [0, 1, 2, OLD_TWIN, 2**63 - 1]
    starts = [mix_seed(s) for s in seeds]
    assert len(set(starts)) == len(set(seeds))  # the mix is a bijection of 64-bit integers
    assert all(0 <= x < 2**32 for pair in starts for x in pair)
    swapped = {(b, a) for a, b in starts}
    assert not swapped & set(starts) - {(a, a) for a, _ in starts}


def test_draws_of_random_seed_pairs_are_independent():
    """For independent draws r sqrt(N) ~ N(0, 1): over 100 random pairs the sum of N r^2 is
    chi-square with 100 degrees of freedom (mean 100, SD sqrt(200)), and no |r| sqrt(N) is
    beyond 5 (probability about 6e-5 over 100 pairs)."""
    rng = np.random.default_rng(1)
    pairs = rng.integers(0, 2**63, size=(100, 2), dtype=np.int64)
    z = [_corr(_normals(int(s)), _normals(int(t))) * math.sqrt(N) for s, t in pairs]
    chi2 = sum(v * v for v in z)
    assert abs(chi2 - 100) < 5 * math.sqrt(200)
    assert max(abs(v) for v in z) < 5


def test_each_seed_draws_standard_normals():
    for s in (0, OLD_TWIN, 2**62 + 3):
        z = _normals(s)
        assert abs(float(z.mean())) < 5 / math.sqrt(N)
        assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / N)
