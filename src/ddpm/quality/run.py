"""Sample quality of a trained run: draw samples, and score them beside the run's data.

For data of known density the Bayes-optimal model's samples are drawn too, with the same
starting noise and the same noise at every step as the run's samples (same seed), so the two
rows differ only by the denoiser.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [SME21] Song, Meng, Ermon. Denoising Diffusion Implicit Models. arXiv:2010.02502
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from ddpm.data import Dataset, load_dataset
from ddpm.errors import ConfigError
from ddpm.models import LoadedModel as Run
from ddpm.quality.scores import BAYES_OPTIMAL, QualityReport, sample_quality
from ddpm.quality.steps import StepRow, quality_vs_steps
from ddpm.rng import seeded_generator
from ddpm.sampling import sample


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
    data = load_dataset(run.data_config())
    extra = {}
    if data.density is not None:
        extra[BAYES_OPTIMAL] = bayes_optimal_samples(run, data, len(samples), seed, device)
    return sample_quality(data, samples.cpu(), extra, cache_dir=cache_dir, seed=seed)


def run_quality_vs_steps(
    run: Run,
    steps: Sequence[int | str],
    samplers: Sequence[str] = ("ancestral", "ddim"),
    n: int = 1000,
    seed: int = 0,
    eta: float = 0.0,
    classifier_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    bits_per_dim: Mapping[int, tuple[float, float]] | None = None,
    spacing: str | None = None,
) -> list[StepRow]:
    """Quality of n samples of the K-step respaced process ([ND21] Sec. 4) for each sampler
    ('ancestral' [Ho20] Alg. 2, 'ddim' [SME21] eq. (12) with eta) and K, with wall time.
    steps: counts K or other spellings ("10,15,20", "ddimK") with ``spacing`` for counts
    (``ddpm.respace.respaced_steps``); each row records its spelling and spacing.

    For data of known density each row also holds the Bayes-optimal model's samples drawn with
    the same sampler, K and noise: what remains of the error when the denoiser is perfect.
    bits_per_dim: (bits/dim, SE) of the K-step model per K, shown on the ancestral rows (the
    ELBO is a bound for the ancestral K-step model, not for deterministic DDIM).
    """
    from ddpm.ddim import check_eta, ddim_sample
    from ddpm.respace import respace, steps_by_K
    from ddpm.theory import bayes_optimal

    eta = check_eta(eta)
    for s in samplers:
        if s not in ("ancestral", "ddim"):
            raise ConfigError(f"sampler {s!r}: choose 'ancestral' or 'ddim'")
    chosen = steps_by_K(run.diffusion.T, steps, spacing)  # K -> (spelling, tau)
    data = load_dataset(run.data_config())
    oracle = bayes_optimal(run.diffusion, data.density.to(device)) if data.density else None

    def draw_with(diffusion, model, sampler: str, k: int) -> Tensor:
        fn = sample if sampler == "ancestral" else partial(ddim_sample, eta=eta)
        g = seeded_generator(seed, device)
        respaced = respace(diffusion, chosen[k][0], spacing)
        x = fn(respaced, model, run.spec.shape, n, g, device, run.clip).x0
        return x.cpu()

    def score(sampler: str, k: int, x: Tensor) -> QualityReport:
        extra = {}
        if oracle is not None:
            extra[BAYES_OPTIMAL] = draw_with(*oracle, sampler, k)
        return sample_quality(data, x, extra, cache_dir=classifier_dir, seed=seed)

    def bpd(sampler: str, k: int) -> tuple[float | None, float | None]:
        if sampler != "ancestral" or bits_per_dim is None or k not in bits_per_dim:
            return None, None
        return bits_per_dim[k]

    grid = [(s, k) for s in samplers for k in sorted(chosen)]
    draw = partial(draw_with, run.diffusion, run.model)
    rows = quality_vs_steps(grid, draw, score, bpd)
    return [dataclasses.replace(r, steps=chosen[r.K][0], spacing=spacing) for r in rows]


def write_quality_steps(rows: Sequence[StepRow], out_dir: str | Path, title: str = ""):
    """quality_steps.json (one entry per row) and quality_steps.png into out_dir."""
    from ddpm.checkpoint import save_json
    from ddpm.quality.scores import FLOOR
    from ddpm.report.quality import save_quality_vs_steps

    out_dir = Path(out_dir)
    json_path = save_json(out_dir / "quality_steps.json", {"rows": [r.to_dict() for r in rows]})
    floor = rows[0].report.row(FLOOR)
    key = {"density": "cross_entropy", "features": "fid", "neighbours": "median_distance"}
    level = getattr(floor, key[rows[0].report.kind])
    png = save_quality_vs_steps(rows, out_dir / "quality_steps.png", floor=level, title=title)
    return json_path, png
