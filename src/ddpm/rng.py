"""Randomness as a function of (seed, rank, step): resuming a run replays the same draws."""

from __future__ import annotations

import numpy as np
import torch


def step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, rank, step, stream)."""
    seq = np.random.SeedSequence([seed, rank, step, stream])
    return int(seq.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def step_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu"):
    """A torch.Generator on device whose state depends only on (seed, rank, step)."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, rank, step))


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on device seeded with seed (for sampling and evaluation)."""
    return torch.Generator(device=device).manual_seed(int(seed))
