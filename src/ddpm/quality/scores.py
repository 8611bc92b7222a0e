"""One report of sample quality, with the floor and ceiling that make its numbers readable.

Which scores apply depends on what is known about the data:
    density     (gmm8, mixtures from JSON): exact scores under q (``density``); rows: the
                samples, held-out data (the floor) and any extra sample sets (the
                Bayes-optimal model's samples).
    features    (labelled images: digits, MNIST with labels): FID, KID, class coverage and
                confident share in a classifier trained here (``images``); rows: the samples,
                held-out data (floor), Gaussian noise and per-pixel independent draws from the
                training marginals (ceilings).
    neighbours  (anything else): no trained feature space exists, so only nearest-neighbour
                distances to the training set (``neighbours``), to spot memorisation.

Samples of discrete data are scored as the images they stand for: clipped to [-1, 1] and
rounded to the nearest of the data's levels, as when they are written to PNG.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ddpm.data.spec import Dataset, DataSpec
from ddpm.errors import DataError
from ddpm.quality.density import DensityScores, density_reference, density_scores
from ddpm.quality.features import load_or_train_classifier
from ddpm.quality.images import FeatureScores, feature_reference, feature_scores
from ddpm.quality.neighbours import NeighbourScores, close_threshold, neighbour_scores

Scores = DensityScores | FeatureScores | NeighbourScores
FLOOR = "held-out data (floor)"
BAYES_OPTIMAL = "bayes-optimal samples"
NOISE = "noise N(0, I) (ceiling)"
INDEPENDENT = "independent pixels (ceiling)"
NO_FEATURES = (
    "no trained feature space exists for unlabelled data: FID/KID would be meaningless, so only "
    "nearest-neighbour distances to the training set are reported (memorisation check)"
)


@dataclass(frozen=True)
class QualityReport:
    """Scores of the samples (first row) beside reference rows; seconds spent per part."""

    data: str
    kind: str  # "density" | "features" | "neighbours"
    rows: list[Scores]
    reference: dict  # what the rows are compared with (entropy, classifier, threshold)
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def samples(self) -> Scores:
        return self.rows[0]

    def row(self, name: str) -> Scores:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "kind": self.kind,
            "rows": [r.to_dict() for r in self.rows],
            "reference": self.reference,
            "seconds": self.seconds,
            "note": self.note,
        }


def as_data(x: Tensor, spec: DataSpec) -> Tensor:
    """Points as the data would hold them: discrete data clipped and rounded to its levels."""
    x = x.detach().cpu().float().reshape(len(x), *spec.shape)
    if not spec.discrete:
        return x
    half = (spec.levels - 1) / 2
    return (torch.round((x.clamp(-1, 1) + 1) * half) / half - 1).float()


def independent_pixels(train: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n draws with each dimension taken from a different random training example."""
    flat = train.reshape(len(train), -1)
    idx = torch.randint(len(train), (n, flat.shape[1]), generator=generator)
    return flat.gather(0, idx).reshape(n, *train.shape[1:])


def sample_quality(
    data: Dataset,
    samples: Tensor,
    extra: dict[str, Tensor] | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    kid_subsets: int = 10,
) -> QualityReport:
    """Score samples [n, *shape] (model space) of a model of ``data`` with floors and ceilings.

    extra: more named sample sets scored like the samples (e.g. the Bayes-optimal model's).
    cache_dir: where the classifier of labelled data is stored (``features.default_cache_dir``).
    """
    if len(samples) < 2:
        raise DataError(f"need at least 2 samples to score (got {len(samples)})")
    spec = data.spec
    sets = {"samples": as_data(samples, spec)}
    sets.update({k: as_data(v, spec) for k, v in (extra or {}).items()})
    n = len(samples)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    train, test = data.train, data.test  # each access converts the whole split: once here
    if data.density is not None:
        ref = density_reference(data.density, generator=g)
        sets[FLOOR] = test
        reference = asdict(ref)
        score = lambda name, x: density_scores(data.density, x, ref, name)  # noqa: E731
        kind, note = "density", ""
    elif data.labelled:
        if n < 2 * kid_subsets:
            raise DataError(
                f"KID with {kid_subsets} subsets needs at least {2 * kid_subsets} samples "
                f"(got {n}); draw more"
            )
        clf = load_or_train_classifier(data, cache_dir)
        fref = feature_reference(clf, train, data.train_labels)
        sets[FLOOR] = test[:n]
        sets[NOISE] = as_data(torch.randn((n, *spec.shape), generator=g), spec)
        sets[INDEPENDENT] = independent_pixels(train, n, g)
        reference = {"classifier": asdict(clf.info), "classifier_path": str(clf.path)}
        reference["classifier_trained_now"] = clf.trained_now
        score = lambda name, x: feature_scores(clf, x, fref, name, kid_subsets, g)  # noqa: E731
        kind, note = "features", ""
    else:
        threshold = close_threshold(test, train)
        sets[FLOOR] = test
        reference = {"close_threshold": threshold}
        score = lambda name, x: neighbour_scores(x, train, threshold, name)  # noqa: E731
        kind, note = "neighbours", NO_FEATURES
    seconds = {"reference": time.perf_counter() - start}
    rows = []
    for name, x in sets.items():
        start = time.perf_counter()
        rows.append(score(name, x))
        seconds[name] = time.perf_counter() - start
    return QualityReport(spec.name, kind, rows, reference, seconds, note)
