"""Nearest-neighbour distances to the training set: what is honest without a feature space.

For data with neither a known density nor labels there is no trained feature space in which
FID means something. What can be measured is how close each sample lies to its nearest training
example, in model space, as a root-mean-square distance per dimension

    d(x) = min_i |x - x_i^train| / sqrt(D),

beside the same distance for held-out real data. Samples much closer to the training set than
held-out data are (a share above 1% below the held-out 1st percentile, or exact copies) point at
memorisation; samples much farther away point at poor samples. It does not measure coverage.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ddpm.errors import DataError

COPY_DISTANCE = 1e-6  # a sample this close (RMS per dimension) to a training example is a copy


@dataclass(frozen=True)
class NeighbourScores:
    """Distances of n points to their nearest training example (RMS per dimension)."""

    name: str
    n: int
    median_distance: float
    mean_distance: float
    mean_distance_se: float
    close_share: float  # fraction below the held-out data's 1st percentile of d
    close_share_se: float
    copies: int  # points within COPY_DISTANCE of a training example

    def to_dict(self) -> dict:
        return asdict(self)


def nearest_distances(x: Tensor, train: Tensor, batch: int = 1024) -> Tensor:
    """d(x) for x [n, ...] against train [N, ...]: [n] float64."""
    x, train = x.reshape(len(x), -1).double(), train.reshape(len(train), -1).double()
    if x.shape[1] != train.shape[1]:
        raise DataError(f"points have {x.shape[1]} dimensions but the data {train.shape[1]}")
    out = [torch.cdist(x[i : i + batch], train).min(dim=1).values for i in range(0, len(x), batch)]
    return torch.cat(out) / math.sqrt(x.shape[1])


def close_threshold(test: Tensor, train: Tensor) -> float:
    """1st percentile of d over held-out data: the 'suspiciously close' threshold."""
    return torch.quantile(nearest_distances(test, train), 0.01).item()


def neighbour_scores(x: Tensor, train: Tensor, threshold: float, name: str) -> NeighbourScores:
    """Nearest-neighbour scores of the points x against the training set."""
    if len(x) < 2:
        raise DataError(f"{name}: need at least 2 points to score (got {len(x)})")
    d = nearest_distances(x, train)
    n = len(d)
    close = (d < threshold).double().mean().item()
    return NeighbourScores(
        name=name,
        n=n,
        median_distance=d.median().item(),
        mean_distance=d.mean().item(),
        mean_distance_se=(d.std() / math.sqrt(n)).item(),
        close_share=close,
        close_share_se=math.sqrt(close * (1 - close) / n),
        copies=int((d < COPY_DISTANCE).sum()),
    )
