"""Stored examples that read like one array [N, *shape] without being one.

A split of a published data set lies in several files (CIFAR-10's five training batches,
downsampled ImageNet's ten), some of them memory-mapped, some read only when first needed (a
member of a gzipped tar file, a compressed .npz). ``StackedRows`` reads several such parts as
one array, gathering the rows asked for from each part, so no file is copied into memory to
join them; ``LazyRows`` holds an array that is read the first time a row is asked for.
Both index like NumPy arrays by a slice or int64 indices [n] and return an ndarray [n, *shape].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def is_memory_mapped(values: Any) -> bool:
    """True for a memory-mapped file, or rows gathered only from memory-mapped files."""
    return isinstance(values, np.memmap) or getattr(values, "memory_mapped", False) is True


def _positions(index: slice | np.ndarray, n: int) -> np.ndarray:
    """Row positions 0..n-1 of a slice or of int indices [m] (negative ones count from n)."""
    if isinstance(index, slice):
        return np.arange(*index.indices(n), dtype=np.int64)
    idx = np.asarray(index, dtype=np.int64)
    if idx.ndim != 1:
        raise IndexError(f"rows are indexed by a slice or 1-D indices (got shape {idx.shape})")
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return np.where(idx < 0, idx + n, idx)


class StackedRows:
    """Parts [N_k, *shape] of one dtype, part k restricted to its rows r_k when given, read as
    one array [sum_k N_k, *shape] (or sum_k |r_k| rows): part 0's rows first, then part 1's."""

    def __init__(self, parts: Sequence[Any], rows: Sequence[np.ndarray | None] | None = None):
        if not parts:
            raise ValueError("StackedRows needs at least one part")
        self.parts = list(parts)
        self.part_rows = list(rows) if rows is not None else [None] * len(self.parts)
        first = self.parts[0]
        for part in self.parts:
            assert tuple(part.shape[1:]) == tuple(first.shape[1:]), (part.shape, first.shape)
            assert part.dtype == first.dtype, (part.dtype, first.dtype)
        sizes = [
            int(p.shape[0]) if r is None else len(r)
            for p, r in zip(self.parts, self.part_rows, strict=True)
        ]
        self.offsets = np.cumsum([0, *sizes])  # part k holds rows offsets[k] .. offsets[k+1]-1
        self.shape = (int(self.offsets[-1]), *(int(n) for n in first.shape[1:]))
        self.dtype = first.dtype

    @property
    def memory_mapped(self) -> bool:
        return all(is_memory_mapped(p) for p in self.parts)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        idx = _positions(index, len(self))
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for k in np.unique(part):
            sel = part == k
            local = idx[sel] - self.offsets[k]
            rows = self.part_rows[k]
            out[sel] = self.parts[k][local if rows is None else rows[local]]
        return out


class LazyRows:
    """An array [N, *shape] of a known shape and dtype, made by ``load()`` the first time a row
    is asked for and kept from then on."""

    memory_mapped = False

    def __init__(
        self, shape: tuple[int, ...], dtype: np.dtype | type, load: Callable[[], np.ndarray]
    ) -> None:
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self._load = load
        self._array: np.ndarray | None = None

    @property
    def loaded(self) -> bool:
        return self._array is not None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        if self._array is None:
            array = self._load()
            assert array.shape == self.shape and array.dtype == self.dtype, (
                array.shape,
                self.shape,
            )
            self._array = array
        return self._array[index]
