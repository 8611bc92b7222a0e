"""Randomness as a function of what it belongs to.

Training draws from a generator seeded by (seed, rank, step): resuming a run replays the same
draws. Evaluation draws keyed noise (``KeyedNoise``): the standard normal for element j of the
draw keyed (stream, example index i, step t, chain k) is a pure function of
(seed, stream, i, t, k, j), so an example's numbers do not depend on which other examples
share its batch, on the batch size, on the order of the draws or on how the examples are split
over processes.

Keyed normals come from a counter-based construction. The whole seed is first mixed by
splitmix64's finalizer (a bijection of 64-bit integers, S. Vigna), whose two 32-bit halves start
two lanes; each lane then hashes the key, one component at a time, with its own bijective
integer mix from C. Wellons' "Prospecting for hash functions" (2018): ``lowbias32`` for the
first lane, the other two-round mix of that search for the second. That gives 64 bits of state
per pair of elements; Box-Muller turns them into two normals, sqrt(-2 log u1) (cos, sin)(2 pi u2).

Because the seed is mixed as a whole before it meets the lanes, and the lanes hash with
different functions, no two seeds share both lanes' starts (the mix is a bijection) and no seed's
lanes are another seed's lanes swapped. (Before, the lanes started at seed XOR a lane constant
and hashed alike, so seed s and s XOR 669632225, the XOR of the two constants, drew the same
bits with the lanes swapped.) All integer arithmetic on tensors stays below 2^63 in int64, so
the draws are the same on every device and need no generator state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ddpm.errors import ConfigError


def step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, rank, step, stream)."""
    seq = np.random.SeedSequence([seed, rank, step, stream])
    return int(seq.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def step_generator(
    seed: int, rank: int, step: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A torch.Generator on device whose state depends only on (seed, rank, step)."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, rank, step))


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on device seeded with seed (for sampling and evaluation)."""
    return torch.Generator(device=device).manual_seed(int(seed))


# --- keyed noise for evaluation ---------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
# The two lanes' mixes (Wellons 2018): (shift, multiplier, shift, multiplier, shift).
_LANE_MIXES = ((16, 0x7FEB352D, 15, 0x846CA68B, 16), (16, 0x21F0AAAD, 15, 0xD35A2D97, 15))
STREAM_ELBO, STREAM_IW, STREAM_MC_T, STREAM_MC = 0, 1, 2, 3  # what a draw is for


def _mul32(x: Tensor, m: int) -> Tensor:
    """x * m mod 2^32 for x in [0, 2^32) (int64). m is used as the signed 32-bit integer of
    the same residue, so |x * m| < 2^63: nothing overflows, and & keeps the low 32 bits."""
    return (x * (m - (1 << 32) if m >= 1 << 31 else m)) & _MASK32


def _hash32(x: Tensor, mix: tuple[int, int, int, int, int] = _LANE_MIXES[0]) -> Tensor:
    """A two-round xorshift-multiply bijection of [0, 2^32) with good avalanche (int64 in,
    int64 out); the default is lowbias32."""
    s1, m1, s2, m2, s3 = mix
    x = x ^ (x >> s1)
    x = _mul32(x, m1)
    x = x ^ (x >> s2)
    x = _mul32(x, m2)
    return x ^ (x >> s3)


def mix_seed(seed: int) -> tuple[int, int]:
    """The starts of the two lanes: the halves of splitmix64's finalizer of the seed, a
    bijection of 64-bit integers, so distinct seeds never share both starts."""
    z = int(seed) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z >> 32, z & _MASK32


def _key32(v: Tensor | int, device: torch.device) -> Tensor:
    return torch.as_tensor(v, dtype=torch.long, device=device) & _MASK32


@dataclass(frozen=True, eq=False)
class KeyedNoise:
    """Counter-based noise for evaluation (module docstring): draws keyed by
    (seed, stream, index[example], t, chain) instead of by their order.

    Accepted wherever the likelihood functions take a ``generator``. index: [B] the global index
    of each row of the x0 it is passed with (None: the row numbers 0..B-1).
    """

    seed: int
    index: Tensor | None = None

    def __post_init__(self) -> None:
        if not 0 <= int(self.seed) < 1 << 63:
            raise ConfigError(
                f"seed {self.seed}: the evaluation seed must be in [0, 2^63)", params=("seed",)
            )

    def rows(self, start: int, stop: int) -> KeyedNoise:
        """The same noise for the examples x0[start:stop]."""
        index = torch.arange(start, stop) if self.index is None else self.index[start:stop]
        return KeyedNoise(self.seed, index)

    def bits(
        self, stream: int, example: Tensor, t: Tensor | int, chain: Tensor | int, width: int
    ) -> list[Tensor]:
        """Two independent 32-bit hashes [R, width] (int64) of the key of each element."""
        dev = example.device
        i = example if self.index is None else self.index.to(dev)[example]
        j = torch.arange(width, device=dev)
        out = []
        for start, mix in zip(mix_seed(self.seed), _LANE_MIXES, strict=True):
            h = _key32(start, dev)
            for part in (stream, i, t, chain):
                h = _hash32(h ^ _key32(part, dev), mix)
            out.append(_hash32(h.reshape(-1, 1) ^ j, mix))
        return out

    def normal(self, like: Tensor, example: Tensor, t: Tensor | int, chain: Tensor | int = 0,
               stream: int = STREAM_ELBO) -> Tensor:  # fmt: skip
        """Standard normals shaped like ``like`` [R, ...] (its dtype and device); row r keyed by
        (stream, index[example[r]], t[r], chain[r]), elements j and j + ceil(n / 2) by the
        pair index j (Box-Muller gives two independent normals per pair of uniforms)."""
        n = like[0].numel() if like.shape[0] else 0
        a, b = self.bits(stream, example.to(like.device), t, chain, (n + 1) // 2)
        radius = (-2 * ((a.double() + 0.5) / 2.0**32).log()).sqrt()  # u1 in (0, 1): finite log
        angle = b.double() * (2 * math.pi / 2.0**32)
        z = torch.cat([radius * angle.cos(), radius * angle.sin()], dim=1)[:, :n]
        return z.reshape(like.shape).to(like.dtype)

    def randint(self, high: int, example: Tensor, chain: Tensor | int, stream: int) -> Tensor:
        """Integers uniform on 1..high [R], keyed by (stream, index[example], chain)."""
        a, b = self.bits(stream, example, 0, chain, 1)
        u = ((a[:, 0] << 21) + (b[:, 0] >> 11)).double() / 2.0**53  # 53 random bits in [0, 1)
        return (u * high).long() + 1


Noise = torch.Generator | KeyedNoise | None


def normal(
    generator: Noise,
    like: Tensor,
    example: Tensor,
    t: Tensor | int,
    chain: Tensor | int = 0,
    stream: int = STREAM_ELBO,
) -> Tensor:
    """Standard normals shaped like ``like``: keyed draws for a KeyedNoise, otherwise the next
    draws of the torch generator (the global one for None), whose keys are then ignored."""
    if isinstance(generator, KeyedNoise):
        return generator.normal(like, example, t, chain, stream)
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def uniform_t(
    generator: Noise, T: int, example: Tensor, chain: Tensor | int = 0, stream: int = STREAM_MC_T
) -> Tensor:
    """Timesteps uniform on 1..T [R] (int64 on example's device): keyed by (index[example],
    chain) for a KeyedNoise, otherwise the generator's next draws."""
    if isinstance(generator, KeyedNoise):
        return generator.randint(T, example, chain, stream)
    return torch.randint(1, T + 1, example.shape, generator=generator, device=example.device)


def rows(generator: Noise, start: int, stop: int) -> Noise:
    """The noise source for the examples x0[start:stop] of a batch: a KeyedNoise keeps each
    example's keys; a generator is shared (its draws continue in order)."""
    return generator.rows(start, stop) if isinstance(generator, KeyedNoise) else generator
