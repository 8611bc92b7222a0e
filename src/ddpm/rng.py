"""Randomness as a function of (seed, rank, step): resuming a run replays the same draws."""

from __future__ import annotations

import numpy as np
import torch


def step_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu"):
    """A torch.Generator on device whose state depends only on (seed, rank, step)."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on device seeded with seed (for sampling and evaluation)."""
    return torch.Generator(device=device).manual_seed(int(seed))
