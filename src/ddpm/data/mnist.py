"""MNIST from its IDX files in a local folder (never downloaded): 8-bit grey, 256 levels.

Training images come from train-images-idx3-ubyte, test images from t10k-images-idx3-ubyte;
each may be gzipped (.gz) and the dotted spelling train-images.idx3-ubyte is accepted too.
An IDX image file is a big-endian header (magic 0x00000803: unsigned bytes, 3 dimensions;
then N, H, W as uint32) followed by N H W pixel bytes.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ddpm.data.spec import Dataset, DataSpec, discrete_to_model
from ddpm.errors import DataError

MNIST_LEVELS = 256
IDX_UBYTE_3D = 0x00000803  # data type 0x08 (unsigned byte), 3 dimensions
_HEADER = struct.Struct(">IIII")  # magic, N, H, W


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


def read_idx_images(path: Path) -> np.ndarray:
    """Pixels of an IDX uint8 3-D file (optionally gzipped): uint8 [N, H, W]."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path} ({e}); download the file again") from None
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
        raise DataError("--data mnist needs --data-root DIR holding the MNIST IDX files")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"MNIST folder {root} does not exist; pass --data-root DIR")
    train_path, test_path = find_idx_file(root, "train"), find_idx_file(root, "t10k")
    train, test = read_idx_images(train_path), read_idx_images(test_path)
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{train_path} holds {train.shape[1]}x{train.shape[2]} images but {test_path} "
            f"holds {test.shape[1]}x{test.shape[2]}; use files from one data set"
        )
    spec = DataSpec.from_levels("mnist", (1, *train.shape[1:]), MNIST_LEVELS)
    return Dataset(
        spec=spec,
        train=discrete_to_model(train[:, None], MNIST_LEVELS),
        test=discrete_to_model(test[:, None], MNIST_LEVELS),
        density=None,
    )
