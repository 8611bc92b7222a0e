"""MNIST from its IDX files in a local folder (never downloaded): 8-bit grey, 256 levels.

Training images come from train-images-idx3-ubyte, test images from t10k-images-idx3-ubyte;
each may be gzipped (.gz) and the dotted spelling train-images.idx3-ubyte is accepted too.
An IDX image file is a big-endian header (magic 0x00000803: unsigned bytes, 3 dimensions;
then N, H, W as uint32) followed by N H W pixel bytes. When the label files
train-labels-idx1-ubyte and t10k-labels-idx1-ubyte (same spellings) lie in the same folder, the
Dataset carries the digit classes too (magic 0x00000801, then N as uint32, then N label bytes).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddpm.data.spec import Dataset, DataSpec
from ddpm.errors import DataError

MNIST_LEVELS = 256
IDX_UBYTE_3D = 0x00000803  # data type 0x08 (unsigned byte), 3 dimensions
IDX_UBYTE_1D = 0x00000801  # data type 0x08 (unsigned byte), 1 dimension
_HEADER = struct.Struct(">IIII")  # magic, N, H, W
_LABEL_HEADER = struct.Struct(">II")  # magic, N


def find_idx_file(root: Path, prefix: str) -> Path:
    """The first of {prefix}-images-idx3-ubyte, {prefix}-images.idx3-ubyte (each + .gz) in root."""
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"]
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(
        f"no MNIST file {names[0]} (or {names[0]}.gz) in {root}; put the IDX files there"
    )


def find_label_file(root: Path, prefix: str) -> Path | None:
    """{prefix}-labels-idx1-ubyte (or .idx1-ubyte, each + .gz) in root, or None when absent."""
    for name in (f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"):
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path} ({e}); download the file again") from None


def read_idx_labels(path: Path) -> np.ndarray:
    """Labels of an IDX uint8 1-D file (optionally gzipped): int64 [N]."""
    data = _read_bytes(path)
    if len(data) < _LABEL_HEADER.size:
        raise DataError(f"{path}: truncated IDX label file ({len(data)} bytes, header needs 8)")
    magic, n = _LABEL_HEADER.unpack_from(data)
    if magic != IDX_UBYTE_1D or len(data) != _LABEL_HEADER.size + n:
        raise DataError(
            f"{path}: not an IDX label file (magic 0x{magic:08x}, {len(data)} bytes for "
            f"{n} labels); point to the *-labels-idx1-ubyte file or download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=_LABEL_HEADER.size).astype(np.int64)


def read_idx_images(path: Path) -> np.ndarray:
    """Pixels of an IDX uint8 3-D file (optionally gzipped): uint8 [N, H, W]."""
    data = _read_bytes(path)
    if len(data) < _HEADER.size:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, header needs 16)")
    magic, n, h, w = _HEADER.unpack_from(data)
    if magic != IDX_UBYTE_3D:
        raise DataError(
            f"{path}: not an IDX image file (magic 0x{magic:08x}, expected 0x{IDX_UBYTE_3D:08x});"
            " point to the *-images-idx3-ubyte file"
        )
    expected = _HEADER.size + n * h * w
    if n == 0 or h == 0 or w == 0 or len(data) != expected:
        raise DataError(
            f"{path}: header says {n} images of {h}x{w} ({expected} bytes) but the file has "
            f"{len(data)} bytes; download the file again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=_HEADER.size).reshape(n, h, w)


def load_mnist(root: str | Path | None) -> Dataset:
    """MNIST train [60000, 1, 28, 28] and test (t10k) [10000, 1, 28, 28] in [-1, 1]."""
    if root is None:
        raise DataError("data mnist needs root DIR holding the MNIST IDX files", params=("root",))
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"MNIST folder {root} does not exist; pass root DIR", params=("root",))
    train_path, test_path = find_idx_file(root, "train"), find_idx_file(root, "t10k")
    train, test = read_idx_images(train_path), read_idx_images(test_path)
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{train_path} holds {train.shape[1]}x{train.shape[2]} images but {test_path} "
            f"holds {test.shape[1]}x{test.shape[2]}; use files from one data set"
        )
    spec = DataSpec.from_levels("mnist", (1, *train.shape[1:]), MNIST_LEVELS)
    train_labels, test_labels = _labels(root, len(train), len(test))
    return Dataset(
        spec=spec,
        train=train[:, None],  # uint8, mapped to [-1, 1] a batch at a time
        test=test[:, None],
        density=None,
        train_labels=train_labels,
        test_labels=test_labels,
    )


def _labels(root: Path, n_train: int, n_test: int) -> tuple[Tensor | None, Tensor | None]:
    """Both label files as int64 tensors when both are present, else (None, None)."""
    paths = find_label_file(root, "train"), find_label_file(root, "t10k")
    if paths[0] is None or paths[1] is None:
        return None, None
    out = []
    for path, n in zip(paths, (n_train, n_test), strict=True):
        labels = read_idx_labels(path)
        if len(labels) != n:
            raise DataError(f"{path} holds {len(labels)} labels for {n} images; use matching files")
        out.append(torch.from_numpy(labels))
    return out[0], out[1]
