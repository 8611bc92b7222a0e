"""Quality beside likelihood against the number of sampling steps K.

A sweep draws n samples with each (sampler, K) of a grid, times the draw (wall seconds), scores
the samples (``scores.sample_quality``) and, when given, asks for the bits/dim of the same
K-step process. How samples are drawn is a callable, so any sampler that takes a number of steps
(ancestral sampling of a respaced process, DDIM, ...) fits without a code path of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from ddpm.errors import ConfigError
from ddpm.quality.scores import QualityReport

Draw = Callable[[str, int], Tensor]  # (sampler, K) -> samples [n, *shape] in model space
Score = Callable[[str, int, Tensor], QualityReport]  # (sampler, K, samples) -> report
BitsPerDim = Callable[[str, int], tuple[float, float]]  # (sampler, K) -> (bits/dim, SE)


@dataclass(frozen=True)
class StepRow:
    """One (sampler, K) of a sweep: its quality report, wall time and bits/dim."""

    sampler: str
    K: int
    seconds: float  # wall time of the draw
    report: QualityReport
    bits_per_dim: float | None = None
    bits_per_dim_se: float | None = None
    steps: str | None = (
        None  # how the K steps were chosen: spelling and spacing, ddpm.process.respace
    )
    spacing: str | None = None

    def headline(self) -> dict[str, float]:
        """The main score(s) of the samples row, by the report's kind."""
        s = self.report.samples
        if self.report.kind == "density":
            return {
                "cross_entropy": s.cross_entropy,
                "cross_entropy_se": s.cross_entropy_se,
                "low_density_share": s.low_density_share,
                "modes_missed": s.modes.modes_missed,
                "chi2_p_value": s.modes.p_value,
            }
        if self.report.kind == "features":
            return {"fid": s.fid, "kid": s.kid, "kid_se": s.kid_se, "confident": s.confident_share}
        return {"median_distance": s.median_distance, "close_share": s.close_share}

    def to_dict(self) -> dict:
        return {
            "sampler": self.sampler,
            "K": self.K,
            "steps": self.steps,
            "spacing": self.spacing,
            "seconds": self.seconds,
            "bits_per_dim": self.bits_per_dim,
            "bits_per_dim_se": self.bits_per_dim_se,
            **self.headline(),
            "report": self.report.to_dict(),
        }


def quality_vs_steps(
    grid: Sequence[tuple[str, int]],
    draw: Draw,
    score: Score,
    bits_per_dim: BitsPerDim | None = None,
) -> list[StepRow]:
    """Draw, time and score samples for each (sampler, K) in grid, in order."""
    if not grid:
        raise ConfigError("quality_vs_steps: give at least one (sampler, K)")
    rows = []
    for sampler, k in grid:
        if k < 1:
            raise ConfigError(f"number of steps K must be >= 1 (got {k} for {sampler})")
        start = time.perf_counter()
        x = draw(sampler, k)
        seconds = time.perf_counter() - start
        bpd, bpd_se = bits_per_dim(sampler, k) if bits_per_dim is not None else (None, None)
        rows.append(StepRow(sampler, k, seconds, score(sampler, k, x), bpd, bpd_se))
    return rows
