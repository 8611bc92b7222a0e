"""Data sets in model space: digits, MNIST IDX, 2-D toys, Gaussian mixtures, images, arrays,
CIFAR-10's binary version and downsampled ImageNet's .npz batches."""

from ddpm.data.load import BUILTIN_NAMES, load_dataset
from ddpm.data.mixture import GaussianMixture, MonteCarloEstimate
from ddpm.data.spec import Dataset, DataSpec, Examples

__all__ = [
    "BUILTIN_NAMES",
    "DataSpec",
    "Dataset",
    "Examples",
    "GaussianMixture",
    "MonteCarloEstimate",
    "load_dataset",
]
