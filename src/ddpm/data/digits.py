"""The 8 x 8 handwritten digits bundled with scikit-learn (no download).

1797 grey images with values 0..16 (17 levels), shape (1, 8, 8). Fixed split: the indices
0..1796 are permuted by np.random.default_rng(0).permutation(1797); the first 1500 of that
permutation are the training set, the last 297 the test set, each in permutation order.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm.data.spec import Dataset, DataSpec, split_indices

DIGITS_LEVELS = 17
DIGITS_TEST = 297


def load_digits() -> Dataset:
    """The sklearn digits: train [1500, 1, 8, 8], test [297, 1, 8, 8] (levels 0..16), labelled."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    values = np.rint(bunch.images).astype(np.uint8)[:, None]  # [1797, 1, 8, 8] in 0..16
    labels = torch.from_numpy(bunch.target.astype(np.int64))  # [1797] digit classes 0..9
    train_idx, test_idx = split_indices(len(values), DIGITS_TEST)
    spec = DataSpec.from_levels("digits", (1, 8, 8), DIGITS_LEVELS)
    return Dataset(
        spec=spec,
        train=values[train_idx],  # raw levels, mapped to [-1, 1] a batch at a time
        test=values[test_idx],
        density=None,
        train_labels=labels[train_idx],
        test_labels=labels[test_idx],
    )
