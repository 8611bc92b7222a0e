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
from collections.abc import Mapping
from functools import partial

from torch import Tensor

from ddpm.data import Dataset, load_dataset
from ddpm.likelihood.theory import bayes_optimal
from ddpm.model import Model
from ddpm.process.respace import steps_by_K
from ddpm.process.rng import seeded_generator
from ddpm.quality.scores import BAYES_OPTIMAL, QualityReport, sample_quality
from ddpm.quality.steps import StepRow, quality_vs_steps
from ddpm.requests import EvaluationRequest, QualityRequest
from ddpm.sampling.ancestral import sample
from ddpm.sampling.ddim import ddim_sample


def bayes_optimal_samples(model: Model, data: Dataset, n: int, seed: int) -> Tensor:
    """n ancestral samples of the Bayes-optimal denoiser of the model's mixture data."""
    oracle = bayes_optimal(model, data.density.to(model.device))
    return sample(oracle, n, seeded_generator(seed, model.device)).x0


def score_run_samples(model: Model, samples: Tensor, request: QualityRequest) -> QualityReport:
    """Scores of samples [n, *shape] drawn from the model (with ``request.seed``), beside the
    request's data (else the model's own), with floors and ceilings."""
    data = load_dataset(model.data_config(request.data))
    extra = {}
    if data.density is not None:
        extra[BAYES_OPTIMAL] = bayes_optimal_samples(model, data, len(samples), request.seed)
    return sample_quality(
        data, samples.cpu(), extra, cache_dir=request.classifier_dir, seed=request.seed
    )


def run_quality_vs_steps(
    model: Model,
    request: EvaluationRequest,
    bits_per_dim: Mapping[int, tuple[float, float]] | None = None,
) -> list[StepRow]:
    """Quality of ``request.quality.samples`` samples of the K-step respaced model ([ND21]
    Sec. 4) for each sampler of ``request.samplers`` ('ancestral' [Ho20] Alg. 2, 'ddim' [SME21]
    eq. (12) with ``request.eta``) and each spelling of ``request.steps`` (with its spacing),
    with wall time; each row records its spelling and spacing.

    For data of known density each row also holds the Bayes-optimal model's samples drawn with
    the same sampler, K and noise: what remains of the error when the denoiser is perfect.
    bits_per_dim: (bits/dim, SE) of the K-step model per K, shown on the ancestral rows (the
    ELBO is a bound for the ancestral K-step model, not for deterministic DDIM).
    """
    quality = request.quality or QualityRequest()
    n, seed, spacing = quality.samples, quality.seed, request.spacing
    chosen = steps_by_K(model.T, request.steps, spacing)  # K -> (spelling, tau)
    data = load_dataset(model.data_config(request.data))
    oracle = bayes_optimal(model, data.density.to(model.device)) if data.density else None

    def draw_with(m: Model, sampler: str, k: int) -> Tensor:
        fn = sample if sampler == "ancestral" else partial(ddim_sample, eta=request.eta)
        g = seeded_generator(seed, m.device)
        return fn(m.respaced(chosen[k][0], spacing), n, g).x0.cpu()

    def score(sampler: str, k: int, x: Tensor) -> QualityReport:
        extra = {}
        if oracle is not None:
            extra[BAYES_OPTIMAL] = draw_with(oracle, sampler, k)
        return sample_quality(data, x, extra, cache_dir=quality.classifier_dir, seed=seed)

    def bpd(sampler: str, k: int) -> tuple[float | None, float | None]:
        if sampler != "ancestral" or bits_per_dim is None or k not in bits_per_dim:
            return None, None
        return bits_per_dim[k]

    grid = [(s, k) for s in request.samplers for k in sorted(chosen)]
    rows = quality_vs_steps(grid, partial(draw_with, model), score, bpd)
    return [dataclasses.replace(r, steps=chosen[r.K][0], spacing=spacing) for r in rows]
