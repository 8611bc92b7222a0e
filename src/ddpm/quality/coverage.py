"""Mode coverage: how many samples land in each mode (mixture component or class) against
how many the data would put there, tested with Pearson's chi-square [Pea00].

A mode is missed when it receives fewer than MISSED_FRACTION of its expected count while at
least MIN_EXPECTED samples were expected there (for the data itself this happens with
probability below P(Poisson(5) = 0) = 0.7% per mode).

References:
    [Pea00] Pearson. On the criterion that a given system of deviations from the probable ...
            Philosophical Magazine 50 (1900), 157-175.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MISSED_FRACTION = 0.1  # a mode with fewer than this share of its expected count is missed
MIN_EXPECTED = 5.0  # ... provided this many samples were expected there


def chi2_sf(x: float, dof: int) -> float:
    """P(chi^2_dof > x) = Q(dof / 2, x / 2), the regularised upper incomplete gamma function."""
    half = torch.tensor([dof / 2, x / 2], dtype=torch.float64)
    return torch.special.gammaincc(half[0], half[1]).item()


@dataclass(frozen=True)
class ModeCoverage:
    """Samples per mode against what the data would put there."""

    counts: list[int]  # [K] samples assigned to each mode
    expected: list[float]  # [K] n * probs / sum(probs)
    chi2: float  # Pearson's statistic sum_k (counts - expected)^2 / expected
    dof: int  # K - 1
    p_value: float  # P(chi2_dof >= chi2)
    modes_missed: int


def coverage(counts: Tensor, probs: Tensor) -> ModeCoverage:
    """Chi-square test of counts [K] (integers) against mode probabilities probs [K] > 0."""
    counts, probs = counts.double(), probs.double()
    assert counts.shape == probs.shape and bool((probs > 0).all())
    expected = counts.sum() * probs / probs.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    dof = len(counts) - 1
    missed = (expected >= MIN_EXPECTED) & (counts < MISSED_FRACTION * expected)
    return ModeCoverage(
        counts=[int(c) for c in counts.tolist()],
        expected=expected.tolist(),
        chi2=chi2,
        dof=dof,
        p_value=chi2_sf(chi2, dof) if dof > 0 else 1.0,
        modes_missed=int(missed.sum()),
    )
