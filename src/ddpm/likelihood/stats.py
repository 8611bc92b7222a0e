"""Means with standard errors over examples: every number ddpm reports comes with one."""

from __future__ import annotations

import math

from torch import Tensor


def mean_se(x: Tensor) -> tuple[float, float]:
    """Sample mean and its standard error std / sqrt(n) (NaN for a single value)."""
    x = x.double().flatten()
    n = x.numel()
    se = float(x.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return float(x.mean()), se
