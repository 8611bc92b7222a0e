"""Sample quality of a trained run: draw samples, and score them beside the run's data.

For data of known density the Bayes-optimal model's samples are drawn too, with the same
starting noise and the same noise at every step as the run's samples (same seed), so the two
rows differ only by the denoiser.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ddpm.data import Dataset, load_dataset
from ddpm.quality.scores import QualityReport, sample_quality
from ddpm.rng import seeded_generator
from ddpm.runs import Run
from ddpm.sampling import sample

BAYES_OPTIMAL = "bayes-optimal samples"


def bayes_optimal_samples(
    run: Run, data: Dataset, n: int, seed: int, device: torch.device | str = "cpu"
) -> Tensor:
    """n ancestral samples of the Bayes-optimal denoiser of the run's mixture data."""
    from ddpm.theory import bayes_optimal

    diffusion, oracle = bayes_optimal(run.diffusion, data.density.to(device))
    g = seeded_generator(seed, device)
    return sample(diffusion, oracle, run.spec.shape, n, g, device, clip=run.clip).x0


def score_run_samples(
    run: Run,
    samples: Tensor,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> QualityReport:
    """Scores of samples [n, *shape] drawn from run (with seed), with floors and ceilings."""
    data = load_dataset(run.config.data)
    extra = {}
    if data.density is not None:
        extra[BAYES_OPTIMAL] = bayes_optimal_samples(run, data, len(samples), seed, device)
    return sample_quality(data, samples.cpu(), extra, cache_dir=cache_dir, seed=seed)
