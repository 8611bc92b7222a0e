"""The data published models were trained on: CIFAR-10's binary version and downsampled
ImageNet's .npz batches, from tiny fakes written here in the published layouts. Pixels and
labels are decoded independently in the test (byte offsets by formula) and must come back
exactly; extracted and stored files must be memory-mapped, not read."""

import io
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from helpers import run_cli

from ddpm.config import DataConfig, RunConfig, TrainConfig
from ddpm.data import load_dataset
from ddpm.data.rows import LazyRows, StackedRows
from ddpm.errors import ConfigError, DataError

TRAIN_COUNTS = (3, 2, 4, 1, 2)  # records of data_batch_1..5.bin
TEST_COUNT = 5


def load(name, **kwargs):
    return load_dataset(DataConfig(name=str(name), **kwargs))


def one_line(exc_info, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def to_levels(x):
    """Model space [-1, 1] back to the 8-bit values 0..255 (exact: v = 127.5 (x + 1))."""
    return torch.round((x.double() + 1) * 127.5).to(torch.int64).numpy()


# -- CIFAR-10 ----------------------------------------------------------------------------------


def cifar_bytes(rng, n):
    """n records: a label byte 0..9, then 3072 pixel bytes."""
    return rng.integers(0, 256, n * 3073, dtype=np.uint8).tobytes()


def fix_labels(raw: bytes, rng) -> bytes:
    """The same records with label bytes drawn from 0..9."""
    b = bytearray(raw)
    for i in range(0, len(b), 3073):
        b[i] = int(rng.integers(0, 10))
    return bytes(b)


def decode_cifar(raw: bytes):
    """Labels [n] and pixels [n, 3, 32, 32] from the bytes, element by element by formula:
    pixel (c, r, k) of record i is byte 3073 i + 1 + 1024 c + 32 r + k."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    n = len(buf) // 3073
    i, c, r, k = np.meshgrid(
        np.arange(n), np.arange(3), np.arange(32), np.arange(32), indexing="ij"
    )
    pixels = buf[3073 * i + 1 + 1024 * c + 32 * r + k]
    return buf[3073 * np.arange(n)].astype(np.int64), pixels


@pytest.fixture(scope="module")
def cifar_files():
    """{file name: bytes} of a tiny CIFAR-10 binary distribution (seeded)."""
    rng = np.random.default_rng(10)
    files = {
        f"data_batch_{k}.bin": fix_labels(cifar_bytes(rng, n), rng)
        for k, n in enumerate(TRAIN_COUNTS, 1)
    }
    files["test_batch.bin"] = fix_labels(cifar_bytes(rng, TEST_COUNT), rng)
    return files


def write_cifar_folder(root, files):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    (folder / "batches.meta.txt").write_text("airplane\nautomobile\n")
    (folder / "readme.html").write_text("<html></html>")
    return folder


def write_tar(path, members, order=None):
    """A .tar.gz with members {arcname: bytes}, added in the given order of arcnames."""
    with tarfile.open(path, "w:gz") as tar:
        for arcname in order or list(members):
            info = tarfile.TarInfo(arcname)
            info.size = len(members[arcname])
            tar.addfile(info, io.BytesIO(members[arcname]))
    return path


def expected_cifar(files):
    train = [decode_cifar(files[f"data_batch_{k}.bin"]) for k in range(1, 6)]
    test = decode_cifar(files["test_batch.bin"])
    train_y = np.concatenate([y for y, _ in train])
    train_x = np.concatenate([x for _, x in train])
    return train_x, train_y, test[1], test[0]


def check_cifar(data, files):
    train_x, train_y, test_x, test_y = expected_cifar(files)
    assert data.spec.name == "cifar10" and data.spec.shape == (3, 32, 32)
    assert data.spec.levels == 256
    assert np.array_equal(to_levels(data.train_examples[:]), train_x)
    assert np.array_equal(to_levels(data.test_examples[:]), test_x)
    assert data.train_labels.dtype == torch.int64 and data.test_labels.dtype == torch.int64
    assert np.array_equal(data.train_labels.numpy(), train_y)
    assert np.array_equal(data.test_labels.numpy(), test_y)
    # all: data_batch_1..5 then test_batch, in order
    assert np.array_equal(to_levels(data.all_examples[:]), np.concatenate([train_x, test_x]))
    assert np.array_equal(data.all_labels.numpy(), np.concatenate([train_y, test_y]))
    # gathered rows in any order: across the batch files and back
    idx = torch.tensor([11, 0, 3, 5, 9, 2, 16, 12])
    assert np.array_equal(
        to_levels(data.all_examples[idx]), np.concatenate([train_x, test_x])[idx.numpy()]
    )


def test_cifar_channel_order_is_red_green_blue_planes_row_major(tmp_path):
    # one record whose planes say which they are: red = 10 + row, green = 100 + column, blue 7
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    planes = [10 + rows, 100 + cols, np.full((32, 32), 7)]
    record = bytes([3]) + np.concatenate([p.ravel() for p in planes]).astype(np.uint8).tobytes()
    (tmp_path / "test_batch.bin").write_bytes(record * 2)
    data = load(tmp_path / "test_batch.bin")
    x = to_levels(data.test_examples[:1])[0]
    assert (x[0] == 10 + rows).all() and (x[1] == 100 + cols).all() and (x[2] == 7).all()
    assert data.test_labels.tolist() == [3, 3]


def test_cifar_extracted_folder_is_read_exactly_and_memory_mapped(tmp_path, cifar_files):
    folder = write_cifar_folder(tmp_path, cifar_files)
    for given in (folder, tmp_path):  # cifar-10-batches-bin/ itself, or the folder holding it
        data = load(given)
        check_cifar(data, cifar_files)
        for examples in (data.train_examples, data.test_examples, data.all_examples):
            assert examples.memory_mapped
        assert isinstance(data.train_examples.values, StackedRows)  # five files, not joined
        assert isinstance(data.test_examples.values, np.memmap)
        assert len(data.all_examples) == sum(TRAIN_COUNTS) + TEST_COUNT


def test_cifar_tarball_is_read_exactly_and_streams_only_the_split_asked_for(tmp_path, cifar_files):
    members = {f"cifar-10-batches-bin/{n}": raw for n, raw in cifar_files.items()}
    members["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\n"
    order = sorted(members, reverse=True)  # test_batch first, the batches 5..1: not name order
    path = write_tar(tmp_path / "cifar-10-binary.tar.gz", members, order)
    data = load(path)
    train, test = data.train_examples.values, data.test_examples.values
    assert isinstance(train, LazyRows) and isinstance(test, LazyRows)
    assert not train.loaded and not test.loaded  # labels only, so far
    train_x, train_y, test_x, test_y = expected_cifar(cifar_files)
    assert np.array_equal(to_levels(data.test_examples[:]), test_x)
    assert test.loaded and not train.loaded  # the test split alone was read
    assert not data.test_examples.memory_mapped
    check_cifar(data, cifar_files)


def test_cifar_single_batch_file_is_one_split_and_the_other_is_refused(tmp_path, cifar_files):
    folder = write_cifar_folder(tmp_path, cifar_files)
    test = load(folder / "test_batch.bin")
    _, _, test_x, test_y = expected_cifar(cifar_files)
    assert np.array_equal(to_levels(test.test_examples[:]), test_x)
    assert np.array_equal(to_levels(test.all_examples[:]), test_x)
    assert test.test_labels.tolist() == test_y.tolist() and test.labelled
    with pytest.raises(DataError) as e:
        test.train_examples  # noqa: B018
    one_line(e, "holds no CIFAR-10 training batches", "data_batch_1.bin")
    train = load(folder / "data_batch_3.bin")
    labels, pixels = decode_cifar(cifar_files["data_batch_3.bin"])
    assert np.array_equal(to_levels(train.train_examples[:]), pixels)
    assert train.train_labels.tolist() == labels.tolist()
    with pytest.raises(DataError) as e:
        train.test  # noqa: B018
    one_line(e, "holds no CIFAR-10 test batch", "test_batch.bin")
    # a folder that holds the test batch alone is the test split alone
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    shutil.copy(folder / "test_batch.bin", only_test)
    assert len(load(only_test).test_examples) == TEST_COUNT


def test_cifar_missing_batch_wrong_size_bad_label_and_names_are_one_line_errors(
    tmp_path, cifar_files
):
    folder = write_cifar_folder(tmp_path, cifar_files)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DataError) as e:
        load(tmp_path)
    one_line(e, "lacks data_batch_4.bin", str(folder))
    (folder / "data_batch_4.bin").write_bytes(cifar_files["data_batch_4.bin"][:-1])
    with pytest.raises(DataError) as e:
        load(folder)
    one_line(e, "data_batch_4.bin", "3072 bytes is not a whole number of 3073-byte")
    (folder / "data_batch_4.bin").write_bytes(bytes([12]) + cifar_files["data_batch_4.bin"][1:])
    with pytest.raises(DataError) as e:
        load(folder)
    one_line(e, "data_batch_4.bin", "label byte 12")
    (tmp_path / "batch.bin").write_bytes(cifar_files["test_batch.bin"])
    with pytest.raises(DataError) as e:
        load(tmp_path / "batch.bin")
    one_line(e, "not a CIFAR-10 batch name")
    # a gzipped tar without the batches, and a truncated one
    other = write_tar(tmp_path / "images.tar.gz", {"x/a.png": b"123"})
    with pytest.raises(DataError) as e:
        load(other)
    one_line(e, "not CIFAR-10's binary version")
    members = {f"cifar-10-batches-bin/{n}": raw for n, raw in cifar_files.items()}
    good = write_tar(tmp_path / "good.tar.gz", members).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as e:
        load(tmp_path / "cut.tar.gz")
    one_line(e, "cut.tar.gz", "cifar-10-binary.tar.gz")


def test_cifar_pickled_python_version_is_refused(tmp_path):
    pickled = tmp_path / "cifar-10-python.tar.gz"
    write_tar(pickled, {"cifar-10-batches-py/data_batch_1": b"\x80\x04."})
    renamed = shutil.copy(pickled, tmp_path / "mine.tar.gz")
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(b"\x80\x04.")
    for path in (pickled, renamed, folder, folder.parent):
        with pytest.raises(DataError) as e:
            load(path)
        one_line(e, "pickled Python version, which is never read", "cifar-10-binary.tar.gz")


def test_cifar_image_options_and_training_from_the_mapped_files(tmp_path, cifar_files):
    from ddpm.training.loop import Trainer

    folder = write_cifar_folder(tmp_path, cifar_files)
    assert load(folder, image_size=32).spec.shape == (3, 32, 32)  # what a model asks for
    for kwargs in ({"image_size": 16}, {"grayscale": True}):
        with pytest.raises(ConfigError) as e:
            load(folder, **kwargs)
        one_line(e, "cifar10 images are 32x32 colour as published")
    data = load(folder)
    trainer = Trainer(RunConfig(train=TrainConfig(batch_size=4)), data, torch.device("cpu"))
    assert trainer.train_x.memory_mapped and len(trainer.train_x) == sum(TRAIN_COUNTS)


def test_training_on_a_lone_training_batch_and_refusing_a_lone_test_batch(tmp_path, cifar_files):
    folder = write_cifar_folder(tmp_path, cifar_files)
    tiny = ["--diffusion-steps", "2", "--max-steps", "1", "--batch-size", "2", "--channels", "8",
            "--num-samples", "2", "--quiet", "--threads", "1"]  # fmt: skip
    run = tmp_path / "run"
    assert run_cli("train", "--data", folder / "data_batch_3.bin", "--out", run, *tiny) == 0
    assert (run / "samples.png").is_file()  # written with no test split to draw beside
    with pytest.raises(DataError) as e:
        trainer_of(load(folder / "test_batch.bin"))
    one_line(e, "holds no CIFAR-10 training batches")


def trainer_of(data):
    from ddpm.training.loop import Trainer

    return Trainer(RunConfig(train=TrainConfig(batch_size=2)), data, torch.device("cpu"))


# -- downsampled ImageNet ----------------------------------------------------------------------


def imagenet_batch(rng, n, size):
    """'data' uint8 [n, 3 S S] and 'labels', class ids 1..1000 (a list, as published)."""
    data = rng.integers(0, 256, (n, 3 * size * size), dtype=np.uint8)
    return data, [int(v) for v in rng.integers(1, 1001, n)]


def save_npz(path, data, labels, compressed, mean=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"data": data, "labels": labels}
    if mean:
        arrays["mean"] = data.mean(axis=0)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def decode_imagenet(data, size):
    """[n, 3, S, S] from rows laid out as S S red values row-major, then green, then blue."""
    i, c, r, k = np.meshgrid(
        np.arange(len(data)), np.arange(3), np.arange(size), np.arange(size), indexing="ij"
    )
    return data[i, size * size * c + size * r + k]


@pytest.fixture
def imagenet32(tmp_path):
    """The 32x32 layout: ten training batches (odd ones compressed) and val_data (stored)."""
    rng = np.random.default_rng(32)
    tmp_path = tmp_path / "in32"
    batches = {k: imagenet_batch(rng, 1 + k % 3, 32) for k in range(1, 11)}
    for k, (data, labels) in batches.items():
        path = tmp_path / "Imagenet32_train_npz" / f"train_data_batch_{k}.npz"
        save_npz(path, data, labels, compressed=k % 2 == 1)
    val = imagenet_batch(rng, 4, 32)
    save_npz(tmp_path / "Imagenet32_val_npz" / "val_data.npz", *val, compressed=False, mean=False)
    return tmp_path, batches, val


def test_imagenet_folder_is_read_exactly_with_0_based_labels(imagenet32):
    root, batches, (val_data, val_labels) = imagenet32
    order = range(1, 11)  # numeric: batch 10 comes after 9, not after 1
    train_x = np.concatenate([decode_imagenet(batches[k][0], 32) for k in order])
    train_y = np.concatenate([batches[k][1] for k in order]) - 1
    for given in (root, root / "Imagenet32_train_npz"):
        data = load(given)
        assert data.spec.name == "imagenet32" and data.spec.shape == (3, 32, 32)
        assert np.array_equal(to_levels(data.train_examples[:]), train_x)
        assert np.array_equal(data.train_labels.numpy(), train_y)
        assert data.train_labels.dtype == torch.int64 and data.train_labels.min() >= 0
    data = load(root)
    test_x = decode_imagenet(val_data, 32)
    assert np.array_equal(to_levels(data.test_examples[:]), test_x)
    assert np.array_equal(data.test_labels.numpy(), np.array(val_labels) - 1)
    # all: training batches 1..10 then val_data
    assert np.array_equal(to_levels(data.all_examples[:]), np.concatenate([train_x, test_x]))
    test_y = np.array(val_labels) - 1
    assert np.array_equal(data.all_labels.numpy(), np.concatenate([train_y, test_y]))
    with pytest.raises(DataError) as e:
        load(root / "Imagenet32_train_npz").test_examples  # noqa: B018
    one_line(e, "holds no downsampled ImageNet val_data.npz")


def test_imagenet_stored_members_are_memory_mapped_and_compressed_ones_read_when_needed(
    imagenet32,
):
    root, batches, (val_data, _) = imagenet32
    val = load(root / "Imagenet32_val_npz" / "val_data.npz")  # a lone val file: the test split
    assert val.test_examples.memory_mapped and isinstance(val.test_examples.values, np.memmap)
    assert np.array_equal(to_levels(val.test_examples[:]), decode_imagenet(val_data, 32))
    with pytest.raises(DataError) as e:
        val.train_examples  # noqa: B018
    one_line(e, "holds no downsampled ImageNet training batches")
    data = load(root)
    parts = data.train_examples.values.parts
    assert [isinstance(p, np.memmap) for p in parts] == [k % 2 == 0 for k in range(1, 11)]
    assert not data.train_examples.memory_mapped  # compressed parts are read into memory
    assert not any(p.loaded for p in parts if isinstance(p, LazyRows))
    first = data.train_examples[:1]  # a row of batch 1 (compressed): that file alone is read
    assert np.array_equal(to_levels(first), decode_imagenet(batches[1][0][:1], 32))
    assert [p.loaded for p in parts if isinstance(p, LazyRows)] == [
        True,
        False,
        False,
        False,
        False,
    ]


def test_imagenet_64_single_training_batch_and_stored_zip64_offsets(tmp_path):
    rng = np.random.default_rng(64)
    data, labels = imagenet_batch(rng, 3, 64)
    path = save_npz(
        tmp_path / "Imagenet64_train_part2_npz" / "train_data_batch_6.npz", data, labels, False
    )
    with zipfile.ZipFile(path) as zf:  # what the memory map relies on: stored, not compressed
        assert zf.getinfo("data.npy").compress_type == zipfile.ZIP_STORED
    d = load(path)
    assert d.spec.name == "imagenet64" and d.spec.shape == (3, 64, 64)
    assert d.train_examples.memory_mapped
    assert np.array_equal(to_levels(d.train_examples[:]), decode_imagenet(data, 64))
    assert d.train_labels.tolist() == [v - 1 for v in labels]
    assert np.array_equal(to_levels(d.all_examples[:]), decode_imagenet(data, 64))


def test_imagenet_bad_inputs_are_one_line_errors(imagenet32, tmp_path):
    root, batches, val = imagenet32
    bad = tmp_path / "bad" / "val_data.npz"
    save_npz(bad, np.zeros((2, 100), np.uint8), [1, 2], compressed=False)
    with pytest.raises(DataError) as e:
        load(bad)
    one_line(e, "'data' is uint8 of shape (2, 100)", "3072 values a row for 32x32")
    save_npz(bad, np.zeros((2, 3072), np.float32), [1, 2], compressed=False)
    with pytest.raises(DataError) as e:
        load(bad)
    one_line(e, "'data' is float32")
    save_npz(bad, np.zeros((2, 3072), np.uint8), [0, 2], compressed=True)
    with pytest.raises(DataError) as e:
        load(bad)
    one_line(e, "'labels' run 0..2, not the class ids 1..1000")
    renamed = save_npz(tmp_path / "mine.npz", *val, compressed=False)
    with pytest.raises(DataError) as e:
        load(renamed)
    one_line(e, "neither val_data.npz nor train_data_batch_K.npz")
    (root / "Imagenet32_train_npz" / "train_data_batch_7.npz").unlink()
    with pytest.raises(DataError) as e:
        load(root)
    one_line(e, "lacks train_data_batch_7.npz of the 10 training batches")
    data64, labels64 = imagenet_batch(np.random.default_rng(0), 2, 64)
    save_npz(root / "Imagenet32_train_npz" / "train_data_batch_7.npz", data64, labels64, False)
    with pytest.raises(DataError) as e:
        load(root)
    one_line(e, "32x32 images but", "64x64; use one size")
    pickled = tmp_path / "pickled" / "Imagenet32_val"
    pickled.mkdir(parents=True)
    (pickled / "val_data").write_bytes(b"\x80\x04.")
    with pytest.raises(DataError) as e:
        load(pickled.parent)
    one_line(e, "pickled version", "download the npz version")


def test_plain_npz_arrays_are_still_read_as_arrays(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", x=x)
    np.savez(tmp_path / "split.npz", train=x[:4], test=x[4:])
    one = load(tmp_path / "data.npz")
    assert one.spec.name == "data" and len(one.all_examples) == 6
    assert np.array_equal(to_levels(one.all_examples[:]), x)  # every row, in the file's order
    two = load(tmp_path / "split.npz")
    assert np.array_equal(to_levels(two.all_examples[:]), x)  # 'train' then 'test'
