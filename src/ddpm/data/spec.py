"""What a data set is: its shape, whether it is discrete, and how raw values map to model space.

The model sees x = (raw - shift) / scale. Discrete data with L levels (raw values 0..L-1) uses
shift = scale = (L - 1) / 2, so v maps to 2 v / (L - 1) - 1 in [-1, 1] as in [Ho20] sec. 3.3,
and neighbouring values are one bin width 2 / (L - 1) apart.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpm.data.mixture import GaussianMixture
from ddpm.data.rows import LazyRows, StackedRows, is_memory_mapped
from ddpm.errors import DataError

_SPEC_KEYS = ("name", "shape", "levels", "shift", "scale")


@dataclass(frozen=True)
class DataSpec:
    """One example's shape, its number of discrete levels (None: continuous) and its scaling."""

    name: str
    shape: tuple[int, ...]  # one example: (C, H, W) for images, (D,) for vectors
    levels: int | None  # discrete values per dimension (17 digits, 256 8-bit); None: continuous
    shift: float = 0.0  # model space: x = (raw - shift) / scale
    scale: float = 1.0

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if not shape or any(not isinstance(n, numbers.Integral) or n < 1 for n in shape):
            raise DataError(
                f"DataSpec {self.name!r}: shape must be positive integers (got {shape})"
            )
        object.__setattr__(self, "shape", tuple(int(n) for n in shape))
        if not (math.isfinite(self.shift) and math.isfinite(self.scale) and self.scale > 0):
            raise DataError(
                f"DataSpec {self.name!r}: need a finite shift and a finite scale > 0 "
                f"(got shift={self.shift}, scale={self.scale})"
            )
        if self.levels is not None:
            if not isinstance(self.levels, int) or self.levels < 2:
                raise DataError(f"DataSpec {self.name!r}: levels must be an integer >= 2 or None")
            half = (self.levels - 1) / 2
            if self.shift != half or self.scale != half:
                raise DataError(
                    f"DataSpec {self.name!r}: discrete data with {self.levels} levels needs "
                    f"shift = scale = {half} (model space [-1, 1]); use DataSpec.from_levels"
                )

    @classmethod
    def from_levels(cls, name: str, shape: tuple[int, ...], levels: int) -> DataSpec:
        """Values 0..levels-1 mapped to [-1, 1]: shift = scale = (levels - 1) / 2."""
        half = (levels - 1) / 2
        return cls(name=name, shape=shape, levels=levels, shift=half, scale=half)

    @property
    def discrete(self) -> bool:
        """True when each dimension takes one of `levels` values."""
        return self.levels is not None

    @property
    def num_dims(self) -> int:
        """D = prod(shape): the dimension that bits/dim divides by."""
        return math.prod(self.shape)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def bin_width(self) -> float:
        """Distance 2 / (levels - 1) between neighbouring discrete values in model space."""
        if self.levels is None:
            raise DataError(f"data {self.name!r} is continuous: it has no bin width")
        return 2.0 / (self.levels - 1)

    def log_jacobian_nats(self) -> float:
        """log |dx_model / dx_raw| per example = -D log(scale).

        Add it to a model-space log-density to express it in raw units. 0 for discrete data,
        whose decoder gives probabilities of the discrete values directly.
        """
        if self.levels is not None:
            return 0.0
        return -self.num_dims * math.log(self.scale)

    def to_raw(self, x: Tensor) -> Tensor:
        """Model space -> raw units: raw = x * scale + shift."""
        return x * self.scale + self.shift

    def to_model(self, raw: Tensor) -> Tensor:
        """Raw units -> model space: x = (raw - shift) / scale."""
        return (raw - self.shift) / self.scale

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "levels": self.levels,
            "shift": self.shift,
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, d: Any) -> DataSpec:
        """Inverse of to_dict; rejects unknown and missing keys by name."""
        if not isinstance(d, dict):
            raise DataError(f"DataSpec: expected a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_SPEC_KEYS))
        if unknown:
            raise DataError(
                f"DataSpec: unknown key(s) {', '.join(unknown)}; known keys are "
                f"{', '.join(_SPEC_KEYS)}"
            )
        missing = [k for k in ("name", "shape", "levels") if k not in d]
        if missing:
            raise DataError(f"DataSpec: missing key(s) {', '.join(missing)}")
        return cls(
            name=d["name"],
            shape=tuple(d["shape"]),
            levels=d["levels"],
            shift=_finite(d, "shift", 0.0),
            scale=_finite(d, "scale", 1.0, positive=True),
        )


def _finite(d: dict, key: str, default: float, positive: bool = False) -> float:
    """d[key] (default when absent) as a float; DataError unless a finite (positive) number."""
    v = d.get(key, default)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or (positive and v <= 0):
        what = "a finite number > 0" if positive else "a finite number"
        raise DataError(f"DataSpec: {key} must be {what} (got {v!r})")
    return float(v)


class Examples:
    """Examples [N, *shape] as stored; indexing gives float32 model space [n, *shape].

    Continuous data are stored in model space (float32). Discrete data are stored as their raw
    integers 0..levels-1 (uint8 in memory, a memory-mapped file of any integer type, or rows
    gathered from several files: ``ddpm.data.rows``) and mapped to model space a batch at a
    time, a quarter of the memory of float32, or none for a file: training gathers its batches
    by index. ``rows`` picks (and orders) the rows of values that belong here, so a split of a
    memory-mapped file is never copied.
    """

    def __init__(
        self,
        values: np.ndarray | Tensor | StackedRows | LazyRows,
        levels: int | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        if isinstance(values, Tensor):
            integer = not values.is_floating_point()
        else:
            integer = values.dtype.kind in "iu"
            if not integer and isinstance(values, np.ndarray):
                # continuous values are kept as a float32 tensor
                values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        if integer != (levels is not None):
            raise DataError(
                "examples: integer values need the number of levels, float values none "
                f"(got {values.dtype} with levels={levels})"
            )
        if not integer and values.dtype != torch.float32:
            raise DataError(f"examples: continuous values must be float32 (got {values.dtype})")
        self.values, self.levels, self.rows = values, levels, rows
        # integer level -> float32 model value, built once (on the values' device) rather than
        # per batch; it is ``discrete_to_model`` of 0..levels-1, so both give the same floats
        self._table = None
        if integer:
            table = discrete_to_model(np.arange(levels), levels)
            on_host = not isinstance(values, Tensor)
            self._table = table.numpy() if on_host else table.to(values.device)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else int(self.values.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *(int(n) for n in self.values.shape[1:]))

    @property
    def memory_mapped(self) -> bool:
        """True when the values are read from memory-mapped files as rows are asked for."""
        return is_memory_mapped(self.values)

    def __getitem__(self, index: slice | Tensor | np.ndarray) -> Tensor:
        """Rows at index (a slice, or int64 indices [n]) in model space: float32 [n, *shape]."""
        rows = self.stored(index)
        if self._table is None:
            return rows
        if isinstance(rows, np.ndarray):
            return torch.from_numpy(self._table[rows])
        return self._table[rows.long()]

    def stored(self, index: slice | Tensor | np.ndarray) -> np.ndarray | Tensor:
        """Rows at index as stored (raw levels, or model space for continuous data)."""
        if self.rows is not None:
            index = self.rows[_numpy_index(index)]
        if isinstance(self.values, Tensor):
            return self.values[torch.as_tensor(index) if not isinstance(index, slice) else index]
        # contiguous: rows of a transposed (channels-last) file keep its layout otherwise
        return np.ascontiguousarray(self.values[_numpy_index(index)])

    def take(self, rows: np.ndarray) -> Examples:
        """The examples at positions rows [n] of these, as a view: nothing is copied."""
        return Examples(self.values, self.levels, rows if self.rows is None else self.rows[rows])

    def to(self, device: torch.device | str) -> Examples:
        """The same examples with in-memory values on device; a memory-mapped file stays put
        (indexing it gives host tensors)."""
        if self.memory_mapped:
            return self
        values = self.values
        if not isinstance(values, Tensor):
            values = values[self.rows] if self.rows is not None else values[:]
            values = torch.from_numpy(np.array(values, copy=not values.flags.writeable))
        elif self.rows is not None:
            values = values[torch.from_numpy(self.rows)]
        return Examples(values.to(device), self.levels)


def concatenate(parts: Sequence[Examples]) -> Examples:
    """Examples one after the other as one Examples. Stored arrays and files are gathered from
    (``StackedRows``), never copied; tensors, which are in memory already, are concatenated."""
    levels = parts[0].levels
    assert all(p.levels == levels for p in parts), [p.levels for p in parts]
    if len(parts) == 1:
        return parts[0]
    if any(isinstance(p.values, Tensor) for p in parts):
        return Examples(torch.cat([torch.as_tensor(p.stored(slice(None))) for p in parts]), levels)
    return Examples(StackedRows([p.values for p in parts], [p.rows for p in parts]), levels)


def _numpy_index(index: slice | Tensor | np.ndarray) -> slice | np.ndarray:
    return index.cpu().numpy() if isinstance(index, Tensor) else index


@dataclass(frozen=True)
class Missing:
    """A split the data source does not hold (a lone test batch has no training split);
    reading it raises DataError(reason), which says what to give instead."""

    reason: str


Split = Tensor | np.ndarray | Examples | Missing


class Dataset:
    """Train and test examples, and their exact density when it is known.

    train / test are float32 model space [N, *shape]: the whole split, converted on each access.
    Code that needs a batch or a prefix of a large split indexes ``train_examples`` /
    ``test_examples`` / ``all_examples`` instead, which convert only the rows asked for. A split
    is given as float32 model space, as raw integers 0..levels-1 (an array or tensor), as
    Examples, or as Missing when the source lacks it (reading it is then an error).

    ``all_examples`` is every example, nothing held out: in the source's own order where the
    loader gives it (``source_order``: an image folder's files sorted by path, an array file's
    rows), else the training examples followed by the test examples. For CIFAR-10 and
    downsampled ImageNet that is the order of their files (training batches, then the test
    batch); for built-in and generated data (digits, MNIST, toys, mixtures) it is train then
    test, not an order of any source file. A source that lacks a split gives its other split.
    """

    def __init__(
        self,
        spec: DataSpec,
        train: Split,
        test: Split,
        density: GaussianMixture | None,
        train_labels: Tensor | None = None,  # int64 [N] class labels when the data has them
        test_labels: Tensor | None = None,  # int64 [M]
        source_order: Split | None = None,  # every example in the source's order (unlabelled)
    ) -> None:
        self.spec, self.density = spec, density  # density: exact, in model space (mixtures)
        self._splits = {
            name: split if isinstance(split, Missing) else _as_examples(split, spec)
            for name, split in (("train", train), ("test", test))
        }
        self.train_labels, self.test_labels = train_labels, test_labels
        self._source_order = None if source_order is None else _as_examples(source_order, spec)
        held = [name for name, split in self._splits.items() if isinstance(split, Examples)]
        assert held, "a data set holds at least one of its splits"
        for split in [*(self._splits[n] for n in held), self._source_order]:
            assert split is None or tuple(split.shape[1:]) == spec.shape, (split.shape, spec.shape)
        labels = {"train": train_labels, "test": test_labels}
        for name, y in labels.items():
            n = len(self._splits[name]) if name in held else None
            assert y is None or (y.dtype == torch.int64 and y.shape == (n,)), (name, n)
        assert len({labels[name] is None for name in held}) == 1, "labels for every split held"
        assert source_order is None or labels[held[0]] is None, "source_order: unlabelled data"

    def _split(self, name: str) -> Examples:
        split = self._splits[name]
        if isinstance(split, Missing):
            raise DataError(split.reason)
        return split

    @property
    def train_examples(self) -> Examples:
        """The training examples (DataError when the source holds none)."""
        return self._split("train")

    @property
    def test_examples(self) -> Examples:
        """The test examples (DataError when the source holds none)."""
        return self._split("test")

    @functools.cached_property
    def all_examples(self) -> Examples:
        """Every example: the source's order when known, else train then test (class doc)."""
        if self._source_order is not None:
            return self._source_order
        return concatenate([s for s in self._splits.values() if isinstance(s, Examples)])

    @property
    def train(self) -> Tensor:
        """All training examples, float32 [N, *shape] in model space."""
        return self.train_examples[:]

    @property
    def test(self) -> Tensor:
        """All test examples, float32 [M, *shape] in model space."""
        return self.test_examples[:]

    @property
    def all_labels(self) -> Tensor | None:
        """int64 [N] labels of ``all_examples`` (train then test), or None when unlabelled."""
        held = [y for y in (self.train_labels, self.test_labels) if y is not None]
        return torch.cat(held) if held and self._source_order is None else None

    @property
    def labelled(self) -> bool:
        """True when the splits held carry class labels (digits; MNIST with its label files;
        CIFAR-10; downsampled ImageNet)."""
        return self.train_labels is not None or self.test_labels is not None


def _as_examples(split: Split, spec: DataSpec) -> Examples:
    if isinstance(split, Examples):
        return split
    if isinstance(split, np.ndarray):
        floating = split.dtype.kind == "f"
    else:
        floating = split.is_floating_point()
    return Examples(split, None if floating else spec.levels)


def discrete_to_model(values: np.ndarray, levels: int) -> Tensor:
    """Integers 0..levels-1 -> float32 2 v / (levels - 1) - 1, computed in float64."""
    half = (levels - 1) / 2
    return torch.from_numpy((values.astype(np.float64) - half) / half).to(torch.float32)


def split_indices(n: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed split: permute 0..n-1 with np.random.default_rng(0); the last n_test are test."""
    perm = np.random.default_rng(0).permutation(n)
    return perm[: n - n_test], perm[n - n_test :]


def num_test(n: int, test_fraction: float) -> int:
    """Held-out count max(1, round(test_fraction * n)), leaving at least one training example."""
    return min(max(1, round(test_fraction * n)), n - 1)


def split_by_fraction(x: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed split of examples x [N, ...]: the last num_test of a seed-0 permutation are test."""
    train_idx, test_idx = split_indices(len(x), num_test(len(x), test_fraction))
    return x[train_idx], x[test_idx]
