"""Examples stored as NumPy arrays: a .npy file, or a .npz with 'train' (and optional 'test').

An .npz without 'train' holds one array, under the key 'x' or as its only key. Integer arrays
(values 0..255) are discrete with 256 levels, mapped to [-1, 1]; float arrays are continuous and
standardised with the global scalar shift = mean and scale = std of the training array. Ranks:
[N, D] vectors; [N, H, W] grey images; [N, C, H, W] or channels-last [N, H, W, C] with C in
{1, 3}. Without a 'test' array the last max(1, round(test_fraction N)) of a seed-0 permutation
are held out, and the split 'all' is every row in the file's order; with one, 'all' is 'train'
then 'test'. A .npz with the arrays 'data' and 'labels' is downsampled ImageNet
(``ddpm.data.imagenet``), not read here.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ddpm.data.spec import (
    Dataset,
    DataSpec,
    Examples,
    num_test,
    split_indices,
)
from ddpm.errors import DataError

ARRAY_LEVELS = 256
_RANKS = "[N, D] vectors, [N, H, W] or [N, C, H, W] / [N, H, W, C] images with C in {1, 3}"


def load_array_file(path: str | Path, test_fraction: float) -> Dataset:
    """A .npy/.npz file as a Dataset named after the file stem.

    Integer data stay as stored (uint8 in memory; a .npy file memory-mapped) and are mapped to
    [-1, 1] a batch at a time; float data are standardised and loaded into memory.
    """
    path = Path(path)
    train, test = _read_arrays(path)
    train = _as_examples(train, path, "train")
    if test is not None:
        test = _as_examples(test, path, "test")
        if test.shape[1:] != train.shape[1:] or test.dtype.kind != train.dtype.kind:
            raise DataError(
                f"{path}: 'test' has shape {test.shape[1:]} ({test.dtype}) per example but "
                f"'train' has {train.shape[1:]} ({train.dtype}); make them match"
            )
    elif len(train) < 2:
        raise DataError(
            f"{path}: 1 example cannot be split into train and test; add more or a 'test' array"
        )
    shape = tuple(int(n) for n in train.shape[1:])
    rows = (
        None if test is not None else split_indices(len(train), num_test(len(train), test_fraction))
    )
    if train.dtype.kind in "iu":
        spec = DataSpec.from_levels(path.stem, shape, ARRAY_LEVELS)
        if test is not None:
            return Dataset(spec=spec, train=_compact(train), test=_compact(test), density=None)
        # split by row indices, so a memory-mapped file is never copied
        values = _compact(train)
        train, test = (Examples(values, ARRAY_LEVELS, r) for r in rows)
        whole = Examples(values, ARRAY_LEVELS)  # every row in the file's order
        return Dataset(spec=spec, train=train, test=test, density=None, source_order=whole)
    raw = np.asarray(train).astype(np.float64)
    spec = _standardised(path, shape, raw if rows is None else raw[rows[0]])
    model = spec.to_model(torch.from_numpy(raw)).to(torch.float32)  # [N, *shape] in memory
    if test is not None:
        test_x = spec.to_model(torch.from_numpy(np.asarray(test, dtype=np.float64)))
        return Dataset(spec=spec, train=model, test=test_x.to(torch.float32), density=None)
    train, test = (Examples(model, None, r) for r in rows)
    return Dataset(spec=spec, train=train, test=test, density=None, source_order=Examples(model))


def _standardised(path: Path, shape: tuple[int, ...], train: np.ndarray) -> DataSpec:
    """Continuous data with shift = mean and scale = std of the training values (float64)."""
    scale = float(train.std())
    if not scale > 0:
        raise DataError(f"{path}: every value is {train.flat[0]}; constant data cannot be scaled")
    return DataSpec(
        name=path.stem, shape=shape, levels=None, shift=float(train.mean()), scale=scale
    )


def _compact(values: np.ndarray | Examples) -> np.ndarray | Examples:
    """Integers 0..255 as uint8 in memory; a memory-mapped file is left as it is."""
    if isinstance(values, Examples | np.memmap):
        return values
    return values.astype(np.uint8, copy=False)


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(train, test or None) from a .npy or .npz file, without unpickling anything."""
    if not path.is_file():
        raise DataError(f"array file {path} not found; check the path")
    magic = b"\x93NUMPY" if path.suffix.lower() == ".npy" else b"PK"  # .npz is a zip file
    with open(path, "rb") as f:
        if not f.read(len(magic)) == magic:
            raise DataError(
                f"{path}: not a numpy file (it lacks the {path.suffix.lower()} header); save "
                "arrays with numpy.save or numpy.savez"
            )
    try:
        if path.suffix.lower() == ".npy":
            # Memory-mapped: rows are read when a batch gathers them, so a file larger than
            # the free memory can be trained on.
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        with np.load(path, allow_pickle=False) as f:
            return _pick_npz_arrays(path, {k: f[k] for k in f.files})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path} ({e}); save it with numpy.save/savez") from None


def _pick_npz_arrays(
    path: Path, arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    keys = sorted(arrays)
    if "train" in arrays:
        extra = [k for k in keys if k not in ("train", "test")]
        if extra:
            raise DataError(
                f"{path}: unexpected array(s) {', '.join(extra)} beside 'train'; "
                "keep only 'train' and optional 'test'"
            )
        return arrays["train"], arrays.get("test")
    if "test" in arrays:
        raise DataError(f"{path}: has 'test' but no 'train' array; add 'train'")
    if "x" in arrays:
        return arrays["x"], None
    if len(keys) == 1:
        return arrays[keys[0]], None
    raise DataError(
        f"{path}: holds arrays {', '.join(keys) or '(none)'}; name them 'train' and 'test', or "
        "store a single array"
    )


def _as_examples(a: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Check dtype, size and values, and bring images to [N, C, H, W]."""
    if a.dtype.kind not in "iuf":
        raise DataError(f"{path}: '{key}' has dtype {a.dtype}; store integers 0..255 or floats")
    if a.size == 0:
        raise DataError(f"{path}: '{key}' is empty (shape {a.shape})")
    a = _channels_first(a, path, key)
    if a.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise DataError(f"{path}: '{key}' has {bad} NaN or infinite value(s); remove them")
    else:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > ARRAY_LEVELS - 1:
            raise DataError(
                f"{path}: integer values of '{key}' must lie in 0..255 (found {lo}..{hi}); "
                "store continuous data as floats"
            )
    return a


def _channels_first(a: np.ndarray, path: Path, key: str) -> np.ndarray:
    if a.ndim == 2:
        return a
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[1] in (1, 3):
        return a
    if a.ndim == 4 and a.shape[3] in (1, 3):
        return a.transpose(0, 3, 1, 2)  # a view: batches gathered from it come out contiguous
    raise DataError(
        f"{path}: wrong array rank or channel count for '{key}': shape {a.shape}; expected {_RANKS}"
    )
