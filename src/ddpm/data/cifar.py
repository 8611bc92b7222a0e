"""CIFAR-10 from its binary distribution [Kr09]: 8-bit colour, 256 levels, shape (3, 32, 32).

The "CIFAR-10 binary version" (cifar-10-binary.tar.gz) holds cifar-10-batches-bin/ with
data_batch_1.bin .. data_batch_5.bin (the 50000 training images), test_batch.bin (the 10000
test images), batches.meta.txt and readme.html. A batch file is a run of 3073-byte records:
one label byte (the class 0..9), then 3072 pixel bytes, the 1024 red values of the 32 x 32
image in row-major order, then the 1024 green, then the 1024 blue. Labels come as int64 0..9.

Accepted as data: the .tar.gz itself; the extracted folder cifar-10-batches-bin/, or a folder
holding it; a single batch file, which is one split (test_batch.bin the test split,
data_batch_K.bin the training split; the other split is then missing, and using it is an
error). A folder holds the test batch, the five training batches, or both: a split that is
there must be complete, and a missing batch is an error naming it. The split 'all' is the
training batches 1..5 in order, then the test batch: 60000 images in the files' order.

Extracted batch files are memory-mapped: the pixels are a strided view of the records, and
the five training files are read as one split without being joined in memory. A gzipped tar
file cannot be read at an offset, so the archive is read through once when loaded (for the
labels and the batch sizes, keeping 1 byte per image) and again, by the stream, the first
time a split's pixels are needed: then only that split's members are kept, as one uint8 array
in memory (the test split 30 MB, the training split 150 MB). The pickled Python version
(cifar-10-python.tar.gz, cifar-10-batches-py/) is never read: it would run pickle.

References:
    [Kr09] Krizhevsky. Learning Multiple Layers of Features from Tiny Images. Technical report,
           University of Toronto, 2009. https://www.cs.toronto.edu/~kriz/cifar.html
"""

from __future__ import annotations

import functools
import gzip
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import torch

from ddpm.data.rows import LazyRows
from ddpm.data.spec import Dataset, DataSpec, Examples, Missing, concatenate
from ddpm.errors import DataError

CIFAR_LEVELS = 256
CIFAR_SHAPE = (3, 32, 32)
CIFAR_CLASSES = 10
RECORD_BYTES = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue planes
TRAIN_BATCHES = tuple(f"data_batch_{k}.bin" for k in range(1, 6))
TEST_BATCH = "test_batch.bin"
BINARY_FOLDER = "cifar-10-batches-bin"
_PICKLED_FOLDER = "cifar-10-batches-py"
_DOWNLOAD = "download the binary version, cifar-10-binary.tar.gz"
_READ_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error, gzip.BadGzipFile)
_CHUNK_RECORDS = 1024  # records read from the tar stream at a time
# what a folder of CIFAR-10 holds: binary batches, their folder, or the pickled version's
_FOLDER_MARKS = (*TRAIN_BATCHES, TEST_BATCH, BINARY_FOLDER, _PICKLED_FOLDER, "data_batch_1")


def is_tarball(path: Path) -> bool:
    return path.name.lower().endswith((".tar.gz", ".tgz"))


def recognises(path: Path) -> bool:
    """True for what this module reads (or refuses by name): a .bin batch, a .tar.gz, or a
    folder holding CIFAR-10 batches (binary or pickled) or cifar-10-batches-bin/."""
    if path.is_file():
        return path.suffix.lower() == ".bin" or is_tarball(path)
    if not path.is_dir():
        return False
    return any((path / name).exists() for name in _FOLDER_MARKS)


def load_cifar10(path: str | Path) -> Dataset:
    """CIFAR-10 train [50000, 3, 32, 32] and test [10000, 3, 32, 32] (uint8, mapped to [-1, 1] a
    batch at a time) with their labels, from any of the forms the module docstring lists."""
    path = Path(path)
    if "cifar-10-python" in path.name.lower() or path.name == _PICKLED_FOLDER:
        raise DataError(
            f"{path} is CIFAR-10's pickled Python version, which is never read; {_DOWNLOAD}"
        )
    if is_tarball(path):
        return _from_tarball(path)
    if path.is_file():
        return _dataset(*_single_batch(path))
    folder = path / BINARY_FOLDER if (path / BINARY_FOLDER).is_dir() else path
    if (folder / _PICKLED_FOLDER).is_dir() or (folder / "data_batch_1").is_file():
        raise DataError(
            f"{folder} holds CIFAR-10's pickled Python version, which is never read; {_DOWNLOAD}"
        )
    train_files, test_file = _folder_batches(folder)
    train = _read_files(train_files) if train_files else None
    test = _read_files([test_file]) if test_file else None
    return _dataset(train, test, folder)


def _split_of(path: Path) -> str:
    """'train' for data_batch_K.bin, 'test' for test_batch.bin; other names are refused."""
    if path.name == TEST_BATCH:
        return "test"
    if re.fullmatch(r"data_batch_[1-5]\.bin", path.name):
        return "train"
    raise DataError(
        f"{path}: not a CIFAR-10 batch name (data_batch_1.bin .. data_batch_5.bin, "
        f"test_batch.bin); give the file under its published name or its folder"
    )


def _single_batch(path: Path) -> tuple[tuple | None, tuple | None, Path]:
    split = _split_of(path)
    read = _read_files([path])
    return (read, None, path) if split == "train" else (None, read, path)


def _folder_batches(folder: Path) -> tuple[list[Path], Path | None]:
    """The training batch files (all five, or none) and the test batch file (or None)."""
    train = [folder / name for name in TRAIN_BATCHES]
    found = [p for p in train if p.is_file()]
    missing = [p.name for p in train if not p.is_file()]
    test = folder / TEST_BATCH if (folder / TEST_BATCH).is_file() else None
    if found and missing:
        raise DataError(
            f"CIFAR-10 folder {folder} lacks {', '.join(missing)} of the five training batches; "
            "extract the whole cifar-10-binary.tar.gz there"
        )
    if not found and test is None:
        raise DataError(
            f"{folder} holds no CIFAR-10 batch files (data_batch_1.bin .. data_batch_5.bin, "
            f"test_batch.bin); {_DOWNLOAD} and extract it"
        )
    return found, test


def _records(path: Path) -> np.memmap:
    """The 3073-byte records of one batch file, memory-mapped: uint8 [N, 3073]."""
    size = path.stat().st_size
    if size == 0 or size % RECORD_BYTES:
        raise DataError(
            f"{path}: {size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records "
            f"(1 label byte + 3072 pixel bytes); {_DOWNLOAD} again"
        )
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(size // RECORD_BYTES, RECORD_BYTES))


def _read_files(paths: list[Path]) -> tuple[Examples, np.ndarray]:
    """Pixels of the batch files as one Examples (memory-mapped, strided views of the records,
    read in file order) and their labels int64 [N]."""
    parts, labels = [], []
    for path in paths:
        records = _records(path)
        labels.append(_labels(records[:, 0], path))
        pixels = records[:, 1:].reshape(-1, *CIFAR_SHAPE)  # [N, 3, 32, 32]: planes R, G, B
        parts.append(Examples(pixels, CIFAR_LEVELS))
    return concatenate(parts), np.concatenate(labels)


def _labels(label_bytes: np.ndarray, where: Path | str) -> np.ndarray:
    labels = np.asarray(label_bytes, dtype=np.int64)
    bad = np.flatnonzero(labels >= CIFAR_CLASSES)
    if bad.size:
        raise DataError(
            f"{where}: record {bad[0]} has label byte {labels[bad[0]]}, not a class 0..9: not a "
            f"CIFAR-10 binary batch (CIFAR-100's records differ); {_DOWNLOAD}"
        )
    return labels


def _dataset(train: tuple | None, test: tuple | None, where: Path) -> Dataset:
    """A Dataset of the (Examples, labels int64 [N]) of each split; a split that is None is
    Missing, and reading it says what to give instead."""
    spec = DataSpec.from_levels("cifar10", CIFAR_SHAPE, CIFAR_LEVELS)
    train_x, train_y = train or (None, None)
    test_x, test_y = test or (None, None)
    if train is None:
        train_x = Missing(
            f"{where} holds no CIFAR-10 training batches (data_batch_1.bin .. data_batch_5.bin); "
            "give the folder or .tar.gz that holds them"
        )
    if test is None:
        test_x = Missing(
            f"{where} holds no CIFAR-10 test batch (test_batch.bin); give the folder or .tar.gz "
            "that holds it"
        )
    return Dataset(
        spec,
        train_x,
        test_x,
        density=None,
        train_labels=None if train_y is None else torch.from_numpy(train_y),
        test_labels=None if test_y is None else torch.from_numpy(test_y),
    )


# -- the gzipped tar file ----------------------------------------------------------------------


def _from_tarball(path: Path) -> Dataset:
    """Both splits of cifar-10-binary.tar.gz: labels now, each split's pixels when first read."""
    labels = _scan_tarball(path)
    splits = []
    for names in (list(TRAIN_BATCHES), [TEST_BATCH]):
        held = [n for n in names if n in labels]
        if not held:
            splits.append(None)
            continue
        if len(held) < len(names):
            missing = ", ".join(n for n in names if n not in labels)
            raise DataError(f"{path} lacks {missing}; {_DOWNLOAD} again")
        counts = {name: len(labels[name]) for name in names}
        load = functools.partial(_read_tarball_pixels, path, counts)
        rows = LazyRows((sum(counts.values()), *CIFAR_SHAPE), np.uint8, load)
        pixels = Examples(rows, CIFAR_LEVELS)
        splits.append((pixels, np.concatenate([labels[name] for name in names])))
    if splits == [None, None]:
        raise DataError(
            f"{path} holds no {BINARY_FOLDER}/*.bin batches: not CIFAR-10's binary version; "
            f"{_DOWNLOAD}"
        )
    return _dataset(splits[0], splits[1], path)


def _batch_name(path: Path, member: tarfile.TarInfo) -> str | None:
    """The batch file a tar member is (cifar-10-batches-bin/NAME.bin), else None."""
    name = PurePosixPath(member.name)
    if _PICKLED_FOLDER in name.parts:
        raise DataError(
            f"{path} is CIFAR-10's pickled Python version, which is never read; {_DOWNLOAD}"
        )
    if member.isfile() and name.name in (*TRAIN_BATCHES, TEST_BATCH):
        return name.name
    return None


def _stream(path: Path):
    """(batch name, file object, size) of each batch member, in the archive's order."""
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                name = _batch_name(path, member)
                if name is not None:
                    yield name, tar.extractfile(member), member.size
    except _READ_ERRORS as e:
        raise DataError(f"cannot read {path} ({e}); {_DOWNLOAD} again") from None


def _chunks(f: BinaryIO, size: int, where: str):
    """The member's records, uint8 [<= _CHUNK_RECORDS, 3073] at a time."""
    if size == 0 or size % RECORD_BYTES:
        raise DataError(
            f"{where}: {size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 "
            f"records; {_DOWNLOAD} again"
        )
    left = size
    while left:
        try:
            data = f.read(min(left, _CHUNK_RECORDS * RECORD_BYTES))
        except _READ_ERRORS as e:
            raise DataError(f"cannot read {where} ({e}); {_DOWNLOAD} again") from None
        if not data or len(data) % RECORD_BYTES:
            raise DataError(f"{where}: the archive ends inside a record; {_DOWNLOAD} again")
        left -= len(data)
        yield np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)


def _scan_tarball(path: Path) -> dict[str, np.ndarray]:
    """One pass through the archive: each batch member's labels int64 [N] (pixels dropped)."""
    labels: dict[str, np.ndarray] = {}
    for name, f, size in _stream(path):
        where = f"{path}:{name}"
        labels[name] = _labels(np.concatenate([c[:, 0] for c in _chunks(f, size, where)]), where)
    return labels


def _read_tarball_pixels(path: Path, counts: dict[str, int]) -> np.ndarray:
    """The pixels of the members named by counts (name -> records), in that order:
    uint8 [sum of counts, 3, 32, 32]. Other members are skipped in the stream."""
    starts = dict(zip(counts, np.cumsum([0, *counts.values()])[:-1].tolist(), strict=True))
    out = np.empty((sum(counts.values()), *CIFAR_SHAPE), dtype=np.uint8)
    read = set()
    for name, f, size in _stream(path):
        if name not in counts:
            continue
        if size != counts[name] * RECORD_BYTES or name in read:
            raise DataError(f"{path} changed since it was loaded; load it again")
        row = starts[name]
        for chunk in _chunks(f, size, f"{path}:{name}"):
            out[row : row + len(chunk)] = chunk[:, 1:].reshape(-1, *CIFAR_SHAPE)
            row += len(chunk)
        read.add(name)
    if len(read) < len(counts):
        raise DataError(f"{path} changed since it was loaded; load it again")
    return out
