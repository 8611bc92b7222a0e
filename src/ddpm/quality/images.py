"""Sample quality of labelled image data in the feature space of a classifier trained here.

With features f(x) of ``ddpm.quality.features`` and the training split as reference:
    FID and KID (``ddpm.quality.fid``) of the points against the training split;
    class coverage: the classifier's predicted classes of the points against the class
        frequencies of the training labels (``ddpm.quality.coverage``);
    confident share: the fraction of points whose top class probability exceeds CONFIDENT.
Held-out data give the floor (what real images reach), Gaussian noise and per-pixel independent
draws a ceiling (what no model should reach); see ``ddpm.quality.scores``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ddpm.quality.coverage import ModeCoverage, coverage
from ddpm.quality.features import CONFIDENT, Classifier
from ddpm.quality.fid import frechet_distance, kernel_distance


@dataclass(frozen=True)
class FeatureReference:
    """The training split in feature space: the target of FID/KID and class frequencies."""

    features: Tensor  # [N, FEATURE_DIM]
    class_probs: Tensor  # [classes] label frequencies of the training split


@dataclass(frozen=True)
class FeatureScores:
    """FID, KID (± SE), class coverage and confident share of n points."""

    name: str
    n: int
    fid: float
    kid: float
    kid_se: float
    classes: ModeCoverage
    confident_share: float
    confident_share_se: float

    def to_dict(self) -> dict:
        return asdict(self)


def feature_reference(classifier: Classifier, train: Tensor, labels: Tensor) -> FeatureReference:
    counts = torch.bincount(labels, minlength=classifier.info.num_classes).double()
    return FeatureReference(classifier.features(train), counts / counts.sum())


def feature_scores(
    classifier: Classifier,
    x: Tensor,
    ref: FeatureReference,
    name: str,
    kid_subsets: int = 10,
    generator: torch.Generator | None = None,
) -> FeatureScores:
    """Scores of the points x [n, *shape] (model space) against the reference."""
    f = classifier.features(x)
    probs = classifier.probabilities(x)
    kid = kernel_distance(f, ref.features, subsets=kid_subsets, generator=generator)
    counts = torch.bincount(probs.argmax(-1), minlength=len(ref.class_probs))
    confident = (probs.max(-1).values > CONFIDENT).double().mean().item()
    n = len(x)
    return FeatureScores(
        name=name,
        n=n,
        fid=frechet_distance(f, ref.features),
        kid=kid.value,
        kid_se=kid.se,
        classes=coverage(counts, ref.class_probs.clamp_min(1e-12)),
        confident_share=confident,
        confident_share_se=math.sqrt(confident * (1 - confident) / n),
    )
