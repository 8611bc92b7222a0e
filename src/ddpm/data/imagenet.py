"""Downsampled ImageNet [CLH17] from its .npz batches: 8-bit colour, 256 levels, (3, S, S).

ImageNet (ILSVRC 2012) downsampled to S x S, S in 8, 16, 32, 64, as NumPy .npz files. 32 x 32:
Imagenet32_train_npz/train_data_batch_1.npz .. train_data_batch_10.npz and
Imagenet32_val_npz/val_data.npz; 64 x 64: Imagenet64_train_part1_npz/train_data_batch_1..5.npz,
Imagenet64_train_part2_npz/train_data_batch_6..10.npz and Imagenet64_val_npz/val_data.npz.
Each file holds 'data', uint8 [N, 3 S S], a row per image laid out like CIFAR-10's: the S S red
values in row-major order, then the green, then the blue; 'labels', the class ids 1..1000; the
training batches also 'mean' (the mean training image, not used here). Labels are given
0-based, as int64 0..999 (the published id minus one), like the other labelled data sets.

Standard split: the training batches 1..10 are the training split, val_data the test split;
the split 'all' is the training batches in order 1..10, then val_data. Accepted as data: a
folder holding the files, or holding folders that hold them (one level down, e.g. the parent of
Imagenet32_train_npz/ and Imagenet32_val_npz/); a single file, which is one split (val_data.npz
the test split, train_data_batch_K.npz the training split; the other split is then missing,
and using it is an error). Training batches that are there must be all ten (a missing one is
an error naming it), and all files one size S. The pickled versions (files without .npz) are
never read. A .npz is read as downsampled ImageNet when its arrays are 'data' and 'labels'
(and optionally 'mean'); other .npz files are plain arrays (``ddpm.data.arrays``).

Reading: np.savez stores each array as an uncompressed .npy member of the zip file, whose data
is memory-mapped where it lies in the file (after the member's zip header and .npy header):
nothing is read until a row is asked for. A compressed member (np.savez_compressed) cannot be
mapped: its file's 'data' is decompressed into memory the first time one of its rows is read,
one file at a time, and kept. Labels are read when the data is loaded.

References:
    [CLH17] Chrabaszcz, Loshchilov, Hutter. A Downsampled Variant of ImageNet as an Alternative
            to the CIFAR datasets. arXiv:1707.08819, 2017.
"""

from __future__ import annotations

import functools
import math
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from ddpm.data.rows import LazyRows
from ddpm.data.spec import Dataset, DataSpec, Examples, Missing, concatenate
from ddpm.errors import DataError

IMAGENET_LEVELS = 256
IMAGENET_CLASSES = 1000
IMAGENET_SIZES = (8, 16, 32, 64)  # the published resolutions S
TRAIN_BATCHES = 10
VAL_FILE = "val_data.npz"
_TRAIN_FILE = re.compile(r"train_data_batch_(\d+)\.npz")
_PICKLED = re.compile(r"(train_data_batch_\d+|val_data)")
_KEYS = {"data", "labels"}
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra length
_DOWNLOAD = "download the npz version (e.g. Imagenet32_train_npz.zip, Imagenet32_val_npz.zip)"
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def npz_keys(path: Path) -> set[str] | None:
    """The array names of a .npz file, from its zip directory (nothing is decompressed); None
    when it is not a zip file."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {n.removesuffix(".npy") for n in zf.namelist()}
    except (OSError, zipfile.BadZipFile):
        return None


def recognises(path: Path) -> bool:
    """True for a .npz holding 'data' and 'labels' (and 'mean'), or a folder holding batches."""
    if path.is_file():
        keys = npz_keys(path) if path.suffix.lower() == ".npz" else None
        return keys is not None and _KEYS <= keys <= _KEYS | {"mean"}
    return path.is_dir() and any(_is_batch_name(p.name) for p in _candidates(path))


def _is_batch_name(name: str) -> bool:
    return name == VAL_FILE or bool(_TRAIN_FILE.fullmatch(name) or _PICKLED.fullmatch(name))


def _candidates(folder: Path) -> list[Path]:
    """Files in folder and in its subfolders, sorted by path."""
    return sorted(p for p in [*folder.glob("*"), *folder.glob("*/*")] if p.is_file())


def load_imagenet(path: str | Path) -> Dataset:
    """Downsampled ImageNet: train [N, 3, S, S] (about 1.28 million images in the published
    batches) and test (val_data, 50000) as uint8 mapped to [-1, 1] a batch at a time, with
    labels int64 0..999."""
    path = Path(path)
    if path.is_file():
        train, test = ([path], None) if _split_of(path) == "train" else ([], path)
    else:
        train, test = _folder_files(path)
    batches = {p: _read_batch(p) for p in [*train, *([test] if test else [])]}
    first, size = next((p, b[2]) for p, b in batches.items())
    for p, (_, _, s) in batches.items():
        if s != size:
            raise DataError(f"{first} holds {size}x{size} images but {p} {s}x{s}; use one size")
    spec = DataSpec.from_levels(f"imagenet{size}", (3, size, size), IMAGENET_LEVELS)
    train_x, train_y = _missing(path, "train"), None
    test_x, test_y = _missing(path, "test"), None
    if train:
        train_x = concatenate([batches[p][0] for p in train])
        train_y = torch.from_numpy(np.concatenate([batches[p][1] for p in train]))
    if test:
        test_x, test_y = batches[test][0], torch.from_numpy(batches[test][1])
    return Dataset(spec, train_x, test_x, None, train_labels=train_y, test_labels=test_y)


def _missing(path: Path, split: str) -> Missing:
    """The split a source lacks: reading it says what to give instead."""
    if split == "train":
        what = f"training batches (train_data_batch_1.npz .. train_data_batch_{TRAIN_BATCHES}.npz)"
    else:
        what = f"{VAL_FILE} (the test split)"
    return Missing(f"{path} holds no downsampled ImageNet {what}; give the folder that holds it")


def _split_of(path: Path) -> str:
    """'train' for train_data_batch_K.npz, 'test' for val_data.npz; other names are refused."""
    if path.name == VAL_FILE:
        return "test"
    if _TRAIN_FILE.fullmatch(path.name):
        return "train"
    raise DataError(
        f"{path} holds 'data' and 'labels' as downsampled ImageNet does, but its name is neither "
        f"{VAL_FILE} nor train_data_batch_K.npz; give it its published name, or store plain "
        "arrays as 'train' (and 'test')"
    )


def _folder_files(folder: Path) -> tuple[list[Path], Path | None]:
    """The training batches 1..10 in order (all, or none) and val_data.npz (or None)."""
    train: dict[int, Path] = {}
    vals: list[Path] = []
    pickled: list[Path] = []
    for p in _candidates(folder):
        if (m := _TRAIN_FILE.fullmatch(p.name)) is not None:
            k = int(m.group(1))
            if k in train:
                raise DataError(f"{train[k]} and {p} are both training batch {k}; keep one")
            train[k] = p
        elif p.name == VAL_FILE:
            vals.append(p)
        elif _PICKLED.fullmatch(p.name):
            pickled.append(p)
    if len(vals) > 1:
        raise DataError(f"{vals[0]} and {vals[1]} are both {VAL_FILE}; keep one")
    if not train and not vals:
        what = (
            f"only the pickled version ({pickled[0].name}), which is never read"
            if pickled
            else "no .npz batches"
        )
        raise DataError(f"{folder} holds {what}; {_DOWNLOAD}")
    expected = range(1, TRAIN_BATCHES + 1)
    missing = [f"train_data_batch_{k}.npz" for k in expected if k not in train]
    extra = sorted(set(train) - set(expected))
    if extra:
        raise DataError(f"{train[extra[0]]}: the published training batches are 1..{TRAIN_BATCHES}")
    if train and missing:
        raise DataError(
            f"{folder} lacks {', '.join(missing)} of the {TRAIN_BATCHES} training batches; put all "
            "of them there (the 64x64 ones come in two parts, Imagenet64_train_part1_npz and "
            "Imagenet64_train_part2_npz)"
        )
    return [train[k] for k in sorted(train)], vals[0] if vals else None


def _read_batch(path: Path) -> tuple[Examples, np.ndarray, int]:
    """One file's images as Examples [N, 3, S, S] (memory-mapped when stored uncompressed, else
    decompressed when first read), its labels int64 0..999 [N], and S."""
    try:
        with zipfile.ZipFile(path) as zf:
            keys = {n.removesuffix(".npy") for n in zf.namelist()}
            if not _KEYS <= keys:
                raise DataError(
                    f"{path}: has {', '.join(sorted(keys))}, not 'data' and 'labels'; {_DOWNLOAD}"
                )
            info = zf.getinfo("data.npy")
            with zf.open(info) as f:
                shape, fortran, dtype = _npy_header(f, path)
                header_bytes = f.tell()
        n, size = _check_data(path, shape, dtype)
        labels = _labels(path, n)
        if info.compress_type == zipfile.ZIP_STORED and not fortran and not info.flag_bits & 1:
            offset = _member_data_offset(path, info) + header_bytes
            data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=shape)
            pixels = data.reshape(n, 3, size, size)  # a view: planes R, G, B
        else:
            load = functools.partial(_decompressed, path, n, size)
            pixels = LazyRows((n, 3, size, size), np.uint8, load)
    except _READ_ERRORS as e:
        raise DataError(f"cannot read {path} ({e}); {_DOWNLOAD} again") from None
    return Examples(pixels, IMAGENET_LEVELS), labels, size


def _npy_header(f, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from the .npy header at the start of f."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise DataError(
        f"{path}: 'data' is a .npy of format version {version}; save it with numpy.savez"
    )


def _check_data(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int]:
    """(N, S) of 'data' uint8 [N, 3 S S]; DataError unless S is a published size."""
    width = shape[1] if len(shape) == 2 else None
    size = math.isqrt(width // 3) if width else 0
    if (
        dtype != np.uint8
        or width is None
        or 3 * size * size != width
        or size not in IMAGENET_SIZES
        or shape[0] == 0
    ):
        raise DataError(
            f"{path}: 'data' is {dtype} of shape {shape}, but downsampled ImageNet stores uint8 "
            f"[N, 3 S S] with S in {', '.join(map(str, IMAGENET_SIZES))} (3072 values a row for "
            f"32x32, 12288 for 64x64); {_DOWNLOAD}"
        )
    return shape[0], size


def _labels(path: Path, n: int) -> np.ndarray:
    """'labels' (class ids 1..1000) as int64 0..999 [n]."""
    with np.load(path, allow_pickle=False) as z:
        labels = np.asarray(z["labels"])
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path}: 'labels' is {labels.dtype} {labels.shape}, not {n} integer class ids; "
            f"{_DOWNLOAD}"
        )
    if n and (labels.min() < 1 or labels.max() > IMAGENET_CLASSES):
        raise DataError(
            f"{path}: 'labels' run {labels.min()}..{labels.max()}, not the class ids "
            f"1..{IMAGENET_CLASSES}; {_DOWNLOAD}"
        )
    return labels.astype(np.int64) - 1


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start in the zip file: after its 30-byte local header,
    its file name and its extra field (whose lengths the local header gives)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise DataError(f"{path}: broken zip entry {info.filename}; {_DOWNLOAD} again")
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _decompressed(path: Path, n: int, size: int) -> np.ndarray:
    """A compressed file's 'data' read into memory: uint8 [n, 3, size, size]."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = z["data"]
    except _READ_ERRORS as e:
        raise DataError(f"cannot read {path} ({e}); {_DOWNLOAD} again") from None
    if data.shape != (n, 3 * size * size) or data.dtype != np.uint8:
        raise DataError(f"{path} changed since it was loaded; load it again")
    return data.reshape(n, 3, size, size)
