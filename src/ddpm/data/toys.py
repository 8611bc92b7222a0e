"""Two-dimensional toy data and data drawn from Gaussian mixtures.

Every draw is seeded: training examples come from seed 0, test examples from seed 1, so a data
set is a function of (name, n_train, n_test). Mixture data keeps its exact density; the other
toys are standardised with the fixed scalar shift/scale in TOY_SCALING (recorded in the spec),
chosen so that the pooled coordinates have roughly zero mean and unit variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ddpm.data.mixture import GaussianMixture
from ddpm.data.spec import Dataset, DataSpec

TRAIN_SEED, TEST_SEED = 0, 1

# (shift, scale) per toy: x_model = (raw - shift) / scale, one scalar for both coordinates.
TOY_SCALING: dict[str, tuple[float, float]] = {
    # make_moons: coordinate means 0.5 and 0.25 exactly; pooled std 0.718 (2e5 samples).
    "moons": (0.375, 0.72),
    # make_swiss_roll (x, z): pooled mean 1.11 and std 6.87 (2e5 samples).
    "swissroll": (1.1, 6.9),
    # Each coordinate is exactly uniform on [-2, 2]: mean 0, std 4 / sqrt(12) = 2 / sqrt(3).
    "checkerboard": (0.0, 2 / math.sqrt(3)),
}
TOY_NAMES = ("gmm8", *TOY_SCALING)


def gmm8() -> GaussianMixture:
    """8 equally weighted isotropic Gaussians, std 0.1, means 2 (cos, sin)(2 pi k / 8)."""
    angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = 2.0 * torch.stack([angle.cos(), angle.sin()], dim=1)
    covs = 0.1**2 * torch.eye(2, dtype=torch.float64).expand(8, 2, 2).clone()
    return GaussianMixture(torch.full((8,), 1 / 8, dtype=torch.float64), means, covs)


def mixture_dataset(name: str, mixture: GaussianMixture, n_train: int, n_test: int) -> Dataset:
    """n_train + n_test draws from a mixture (seeds 0 and 1), with the mixture as density."""
    train, test = (
        mixture.sample(n, generator=torch.Generator().manual_seed(seed)).to(torch.float32)
        for n, seed in ((n_train, TRAIN_SEED), (n_test, TEST_SEED))
    )
    spec = DataSpec(name=name, shape=(mixture.dim,), levels=None)
    return Dataset(spec=spec, train=train, test=test, density=mixture)


def load_toy(name: str, n_train: int, n_test: int) -> Dataset:
    """One of TOY_NAMES: gmm8 (exact density) or moons / swissroll / checkerboard (none)."""
    if name == "gmm8":
        return mixture_dataset("gmm8", gmm8(), n_train, n_test)
    draw = _RAW_SAMPLERS[name]
    shift, scale = TOY_SCALING[name]
    spec = DataSpec(name=name, shape=(2,), levels=None, shift=shift, scale=scale)
    train, test = (
        spec.to_model(draw(n, seed)).to(torch.float32)
        for n, seed in ((n_train, TRAIN_SEED), (n_test, TEST_SEED))
    )
    return Dataset(spec=spec, train=train, test=test, density=None)


def moons(n: int, seed: int) -> Tensor:
    """sklearn make_moons with noise 0.05, raw units: [n, 2] float64."""
    from sklearn.datasets import make_moons

    x, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
    return torch.from_numpy(x)


def swissroll(n: int, seed: int) -> Tensor:
    """The (x, z) plane of sklearn make_swiss_roll with noise 0.5, raw units: [n, 2] float64."""
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n_samples=n, noise=0.5, random_state=seed)
    return torch.from_numpy(np.ascontiguousarray(x[:, [0, 2]]))


def checkerboard(n: int, seed: int) -> Tensor:
    """Uniform on the 8 black cells of a 4 x 4 board over [-2, 2]^2: [n, 2] float64.

    Cell (i, j) covers [i - 2, i - 1] x [j - 2, j - 1] and is black when i + j is even.
    """
    g = torch.Generator().manual_seed(seed)
    cells = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
    pick = torch.randint(len(cells), (n,), generator=g)
    offset = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return cells[pick].to(torch.float64) - 2 + offset


_RAW_SAMPLERS: dict[str, Callable[[int, int], Tensor]] = {
    "moons": moons,
    "swissroll": swissroll,
    "checkerboard": checkerboard,
}
