"""DataSpec and every loader behind load_dataset: exact values, fixed splits, one-line errors."""

import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.config import DataConfig, RunConfig, TrainConfig
from ddpm.data import BUILTIN_NAMES, DataSpec, GaussianMixture, load_dataset
from ddpm.errors import DataError


def load(name, **kwargs):
    return load_dataset(DataConfig(name=str(name), **kwargs))


def raise_one_line(name, message, **kwargs):
    """load(name) raises DataError whose single line contains message."""
    with pytest.raises(DataError) as err:
        load(name, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    return str(err.value)


def model(v):
    """8-bit value v -> 2 v / 255 - 1 as float32, the mapping of every 256-level loader."""
    return torch.from_numpy((np.asarray(v, dtype=np.float64) - 127.5) / 127.5).float()


# -- DataSpec --------------------------------------------------------------------------------


def test_spec_properties_and_json_round_trip():
    spec = DataSpec.from_levels("digits", (1, 8, 8), 17)
    assert (spec.shift, spec.scale, spec.discrete, spec.is_image) == (8.0, 8.0, True, True)
    assert spec.num_dims == 64 and spec.bin_width == 2 / 16 and spec.log_jacobian_nats() == 0.0
    assert DataSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    v = torch.arange(17.0)
    assert torch.equal(spec.to_model(v), 2 * v / 16 - 1)
    assert torch.equal(spec.to_raw(spec.to_model(v)), v)

    cont = DataSpec("moons", (2,), None, shift=0.375, scale=0.72)
    assert not cont.discrete and not cont.is_image
    assert cont.log_jacobian_nats() == pytest.approx(-2 * math.log(0.72), rel=1e-15)
    assert DataSpec.from_dict(json.loads(json.dumps(cont.to_dict()))) == cont
    with pytest.raises(DataError, match="continuous: it has no bin width"):
        _ = cont.bin_width


def test_log_jacobian_converts_a_density_to_raw_units():
    # x ~ N(0, 1) in model space is raw ~ N(shift, scale^2) in raw units.
    spec = DataSpec("v", (3,), None, shift=2.0, scale=0.5)
    raw = torch.tensor([[2.1, 1.7, 2.4]], dtype=torch.float64)
    x = spec.to_model(raw)
    log_model = -0.5 * (x**2).sum() - 1.5 * math.log(2 * math.pi)
    log_raw = (-0.5 * ((raw - 2) / 0.5) ** 2 - 0.5 * math.log(2 * math.pi * 0.25)).sum()
    assert (log_model + spec.log_jacobian_nats()).item() == pytest.approx(log_raw.item(), 1e-14)


def test_spec_rejects_bad_dicts_and_values():
    d = DataSpec.from_levels("x", (2,), 256).to_dict()
    with pytest.raises(DataError, match="unknown key.*colour"):
        DataSpec.from_dict({**d, "colour": 1})
    with pytest.raises(DataError, match="missing key.*levels"):
        DataSpec.from_dict({k: v for k, v in d.items() if k != "levels"})
    with pytest.raises(DataError, match="shift = scale = 127.5"):
        DataSpec.from_dict({**d, "shift": 0.0})
    with pytest.raises(DataError, match="scale > 0"):
        DataSpec("x", (2,), None, scale=0.0)
    cont = DataSpec("x", (2,), None, shift=1.0, scale=2.0).to_dict()
    for key, bad in [("scale", None), ("scale", "2"), ("shift", float("nan")), ("scale", True)]:
        with pytest.raises(DataError, match=f"{key} must be a finite number"):
            DataSpec.from_dict({**cont, key: bad})


# -- digits ----------------------------------------------------------------------------------


def test_digits_split_levels_and_determinism():
    from sklearn.datasets import load_digits

    data = load("digits")
    assert data.spec == DataSpec("digits", (1, 8, 8), 17, shift=8.0, scale=8.0)
    assert data.train.shape == (1500, 1, 8, 8) and data.test.shape == (297, 1, 8, 8)
    assert data.train.dtype == torch.float32 and data.density is None
    # All 17 values occur, exactly on the grid 2 v / 16 - 1.
    values = torch.cat([data.train, data.test]).flatten().unique()
    assert torch.equal(values, torch.arange(17.0) / 8 - 1)
    # The documented split: permutation by default_rng(0), first 1500 train, last 297 test.
    perm = np.random.default_rng(0).permutation(1797)
    images = torch.from_numpy(load_digits().images).float()[:, None] / 8 - 1
    assert torch.equal(data.train, images[perm[:1500]])
    assert torch.equal(data.test, images[perm[1500:]])
    assert set(perm[:1500]).isdisjoint(perm[1500:])
    assert torch.equal(load("digits").train, data.train)


# -- toys ------------------------------------------------------------------------------------


def test_gmm8_sample_moments_within_standard_errors():
    data = load("gmm8", n_train=40_000, n_test=500)
    x = data.train.double()
    n = len(x)
    # E[x] = 0 and E[x x^T] = 0.1^2 I + (1/8) sum_k mu_k mu_k^T = 2.01 I.
    assert ((x.mean(0)).abs() <= 4 * x.std(0) / math.sqrt(n)).all()
    prod = x[:, :, None] * x[:, None, :]
    second = torch.tensor([[2.01, 0.0], [0.0, 2.01]], dtype=torch.float64)
    assert ((prod.mean(0) - second).abs() <= 4 * prod.std(0) / math.sqrt(n)).all()
    assert data.spec == DataSpec("gmm8", (2,), None) and data.test.shape == (500, 2)
    assert isinstance(data.density, GaussianMixture)
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    assert torch.allclose(data.density.means, 2 * torch.stack([angle.cos(), angle.sin()], 1))
    assert torch.equal(load("gmm8", n_train=40_000, n_test=500).train, data.train)


def test_checkerboard_lies_on_black_cells_with_unit_variance():
    data = load("checkerboard", n_train=40_000, n_test=10)
    raw = data.spec.to_raw(data.train.double())
    assert raw.abs().max() <= 2
    cell = torch.floor(raw) + 2
    assert ((cell.sum(1) % 2) == 0).all()
    # Each coordinate is uniform on [-2, 2], so model-space coordinates have mean 0, var 1.
    n, x = len(raw), data.train.double()
    assert (x.mean(0).abs() <= 4 * x.std(0) / math.sqrt(n)).all()
    sq = x**2
    assert ((sq.mean(0) - 1).abs() <= 4 * sq.std(0) / math.sqrt(n)).all()


@pytest.mark.parametrize("name", ["moons", "swissroll"])
def test_sklearn_toys_are_seeded_and_standardised(name):
    from sklearn.datasets import make_moons, make_swiss_roll

    data = load(name, n_train=2000, n_test=300)
    raw = data.spec.to_raw(data.train.double()).numpy()
    if name == "moons":
        expected = make_moons(2000, noise=0.05, random_state=0)[0]
    else:
        expected = make_swiss_roll(2000, noise=0.5, random_state=0)[0][:, [0, 2]]
    np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert data.test.shape == (300, 2) and data.density is None
    assert abs(data.train.mean().item()) < 0.1 and 0.9 < data.train.std().item() < 1.1


def test_unknown_name_lists_the_built_in_data_sets():
    text = raise_one_line("nonsense", "unknown data 'nonsense'")
    assert all(name in text for name in BUILTIN_NAMES)


# -- image folders ---------------------------------------------------------------------------


def write_images(folder, arrays, suffix=".png", mode=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a, mode=mode).save(folder / f"img{i:02d}{suffix}")


def random_pixels(n, shape, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8))


def test_grey_folder_values_and_split(tmp_path):
    pixels = random_pixels(10, (5, 6))
    write_images(tmp_path / "faces", pixels[:7])
    write_images(tmp_path / "faces" / "more", pixels[7:])  # found recursively
    data = load(tmp_path / "faces", test_fraction=0.25)
    assert data.spec == DataSpec.from_levels("faces", (1, 5, 6), 256)
    assert len(data.train) == 8 and len(data.test) == 2  # round(0.25 * 10) = 2
    # Files sorted by path: faces/img00..06.png, then faces/more/img00..02.png.
    order = pixels[:7] + pixels[7:]
    perm = np.random.default_rng(0).permutation(10)
    assert torch.equal(data.train, model(np.stack(order)[perm[:8], None]))
    assert torch.equal(data.test, model(np.stack(order)[perm[8:], None]))


def test_colour_folder_keeps_channels_and_drops_alpha(tmp_path):
    rgb = random_pixels(3, (4, 5, 3))
    write_images(tmp_path / "rgb", rgb)
    rgba = np.concatenate([rgb[0], np.full((4, 5, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgb" / "zz_alpha.png")
    data = load(tmp_path / "rgb", test_fraction=0.25)
    assert data.spec.shape == (3, 4, 5)
    everything = torch.cat([data.train, data.test])
    expected = model(np.stack(rgb + [rgb[0]]).transpose(0, 3, 1, 2))
    assert sorted(map(tuple, everything.flatten(1).tolist())) == sorted(
        map(tuple, expected.flatten(1).tolist())
    )


def test_grayscale_converts_colour_and_palette_images(tmp_path):
    rgb = random_pixels(2, (4, 4, 3))
    write_images(tmp_path / "mixed", rgb)
    Image.fromarray(rgb[0]).convert("P").save(tmp_path / "mixed" / "palette.png")
    write_images(tmp_path / "mixed" / "grey", random_pixels(1, (4, 4)))
    raise_one_line(tmp_path / "mixed", "pass grayscale")
    data = load(tmp_path / "mixed", grayscale=True, test_fraction=0.25)
    assert data.spec.shape == (1, 4, 4)
    expected = model(np.asarray(Image.fromarray(rgb[0]).convert("L")))
    assert any(torch.equal(x[0], expected) for x in torch.cat([data.train, data.test]))


def test_image_size_crops_the_centre_square_then_resizes(tmp_path):
    # 10 x 14 (H x W): the centre square is columns 2..11, all 200; the margins differ.
    a = np.full((10, 14), 200, np.uint8)
    a[:, :2], a[:, 12:] = 0, 50
    b = np.full((12, 9), 30, np.uint8)  # different size: centre 9 x 9 square of 30s
    write_images(tmp_path / "sizes", [a, b])
    raise_one_line(tmp_path / "sizes", "pass image_size")
    data = load(tmp_path / "sizes", image_size=8)
    assert data.spec.shape == (1, 8, 8)
    found = sorted(torch.cat([data.train, data.test]).unique().tolist())
    assert found == model([30, 200]).tolist()


def test_jpeg_images_load(tmp_path):
    write_images(tmp_path / "jpg", random_pixels(3, (8, 8, 3)), suffix=".jpg")
    data = load(tmp_path / "jpg")
    assert data.spec.shape == (3, 8, 8) and len(data.train) + len(data.test) == 3


def test_image_folder_errors(tmp_path):
    raise_one_line(tmp_path / "missing" / "folder", "no such file or folder")
    assert str(tmp_path / "missing") in raise_one_line(
        tmp_path / "missing", "check the name or path"
    )
    from ddpm.data.images import load_image_folder

    with pytest.raises(DataError, match="image folder .* does not exist"):
        load_image_folder(tmp_path / "missing", None, False, 0.1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    raise_one_line(tmp_path / "empty", "found 0 image(s)")
    write_images(tmp_path / "one", random_pixels(1, (4, 4)))
    raise_one_line(tmp_path / "one", "need at least 2")
    write_images(tmp_path / "broken", random_pixels(2, (4, 4)))
    (tmp_path / "broken" / "bad.png").write_bytes(b"not a png at all")
    text = raise_one_line(tmp_path / "broken", "cannot decode image")
    assert "bad.png" in text
    write_images(tmp_path / "deep", random_pixels(1, (4, 4)))
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "deep" / "wide.png")
    text = raise_one_line(tmp_path / "deep", "is not supported")
    assert "wide.png" in text and "16-bit or float" in text


# -- .npy / .npz -----------------------------------------------------------------------------


def test_integer_vectors_are_256_levels(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (20, 3)).astype(np.int64)
    np.save(tmp_path / "ints.npy", a)
    data = load(tmp_path / "ints.npy", test_fraction=0.1)
    assert data.spec == DataSpec.from_levels("ints", (3,), 256)
    assert DataSpec.from_levels("ints", (np.int64(3),), 256).shape == (3,)
    perm = np.random.default_rng(0).permutation(20)
    assert torch.equal(data.train, model(a[perm[:18]])) and torch.equal(
        data.test, model(a[perm[18:]])
    )


def test_float_arrays_are_standardised_with_train_statistics(tmp_path):
    rng = np.random.default_rng(1)
    train, test = rng.normal(5, 3, (50, 4)), rng.normal(5, 3, (10, 4))
    np.savez(tmp_path / "f.npz", train=train, test=test)
    data = load(tmp_path / "f.npz")
    spec = data.spec
    assert spec.levels is None and spec.shape == (4,)
    assert spec.shift == pytest.approx(train.mean(), rel=1e-12)
    assert spec.scale == pytest.approx(train.std(), rel=1e-12)
    # float32 rounding of |x| < 4 errs by <= 2.4e-7, i.e. <= 7.2e-7 in raw units (scale ~ 3).
    np.testing.assert_allclose(spec.to_raw(data.train.double()).numpy(), train, 0, 1e-6)
    np.testing.assert_allclose(spec.to_raw(data.test.double()).numpy(), test, 0, 1e-6)
    assert abs(data.train.mean().item()) < 1e-6 and data.train.double().std(correction=0) == (
        pytest.approx(1.0, rel=1e-6)
    )


@pytest.mark.parametrize(
    "shape, spec_shape",
    [((6, 5, 7), (1, 5, 7)), ((6, 3, 5, 7), (3, 5, 7)), ((6, 1, 5, 7), (1, 5, 7))],
)
def test_image_ranks_channels_first(tmp_path, shape, spec_shape):
    a = np.random.default_rng(2).integers(0, 256, shape).astype(np.uint8)
    np.save(tmp_path / "i.npy", a)
    data = load(tmp_path / "i.npy")
    assert data.spec.shape == spec_shape and data.spec.is_image
    everything = torch.cat([data.train, data.test])
    assert sorted(everything.flatten(1).tolist()) == sorted(model(a).flatten(1).tolist())


def test_channels_last_is_transposed(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (4, 5, 6, 3)).astype(np.uint8)
    np.savez(tmp_path / "hwc.npz", train=a, test=a[:2])
    data = load(tmp_path / "hwc.npz")
    assert data.spec.shape == (3, 5, 6)
    assert torch.equal(data.test, model(a[:2].transpose(0, 3, 1, 2)))


def test_npz_single_array_under_any_key(tmp_path):
    a = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.savez(tmp_path / "one.npz", samples=a)
    np.savez(tmp_path / "two.npz", x=a, y=a)
    assert load(tmp_path / "one.npz").spec.shape == (4,)
    assert load(tmp_path / "two.npz").spec.shape == (4,)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"train": np.full((5, 2), np.nan)}, "has 10 NaN or infinite value(s)"),
        ({"train": np.array([[1.0, np.inf], [0.0, 2.0]])}, "has 1 NaN or infinite value(s)"),
        ({"train": np.zeros(5)}, "wrong array rank"),
        ({"train": np.zeros((2, 3, 4, 5, 6))}, "wrong array rank"),
        ({"train": np.zeros((2, 4, 4, 5))}, "shape (2, 4, 4, 5)"),
        ({"train": np.zeros((0, 3))}, "is empty"),
        ({"train": np.array([[0, 256]])}, "must lie in 0..255 (found 0..256)"),
        ({"train": np.array([[-1, 3]])}, "must lie in 0..255"),
        ({"train": np.ones((4, 2)), "test": np.ones((4, 3))}, "make them match"),
        ({"train": np.ones((4, 2)), "test": np.ones((4, 2), np.uint8)}, "make them match"),
        ({"train": np.ones((4, 2)), "other": np.ones(3)}, "unexpected array(s) other"),
        ({"test": np.ones((4, 2))}, "no 'train'"),
        ({"a": np.ones((4, 2)), "b": np.ones((4, 2))}, "holds arrays a, b"),
        ({"train": np.ones((4, 2), bool)}, "has dtype bool"),
        ({"train": np.full((4, 2), 3.0)}, "constant data"),
        ({"train": np.ones((1, 2))}, "1 example cannot be split"),
    ],
)
def test_bad_arrays_are_named_in_one_line(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    assert str(path) in raise_one_line(path, message)


def test_unreadable_or_missing_array_files(tmp_path):
    raise_one_line(tmp_path / "absent.npy", "array file")
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    raise_one_line(tmp_path / "junk.npy", "not a numpy file")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    raise_one_line(tmp_path / "junk.npz", "not a numpy file")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    raise_one_line(tmp_path / "obj.npy", "cannot read")


# -- MNIST IDX -------------------------------------------------------------------------------


def idx_bytes(images: np.ndarray, magic: int = 0x00000803) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", magic, n, h, w) + images.astype(np.uint8).tobytes()


def test_mnist_reads_raw_and_gzipped_idx(tmp_path):
    rng = np.random.default_rng(4)
    train, test = rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 256, (7, 28, 28))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(train))
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_bytes(test))
    data = load("mnist", root=str(tmp_path))
    assert data.spec == DataSpec.from_levels("mnist", (1, 28, 28), 256)
    assert torch.equal(data.train, model(train[:, None])) and torch.equal(
        data.test, model(test[:, None])
    )
    assert data.train.min() >= -1 and data.train.max() <= 1


def test_mnist_accepts_the_dotted_file_names(tmp_path):
    a = np.random.default_rng(5).integers(0, 256, (3, 28, 28))
    (tmp_path / "train-images.idx3-ubyte").write_bytes(idx_bytes(a))
    (tmp_path / "t10k-images.idx3-ubyte").write_bytes(idx_bytes(a[:1]))
    assert load("mnist", root=str(tmp_path)).train.shape == (3, 1, 28, 28)


def test_mnist_errors(tmp_path):
    raise_one_line("mnist", "data mnist needs root DIR holding the MNIST IDX files")
    raise_one_line("mnist", "does not exist", root=str(tmp_path / "nowhere"))
    raise_one_line("mnist", "no MNIST file train-images-idx3-ubyte", root=str(tmp_path))
    a = np.zeros((5, 28, 28))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(a))
    train = tmp_path / "train-images-idx3-ubyte"
    train.write_bytes(idx_bytes(a)[:-10])
    assert "(3936 bytes) but the file has 3926 bytes" in raise_one_line(
        "mnist", "header says 5 images of 28x28", root=str(tmp_path)
    )
    train.write_bytes(idx_bytes(a)[:9])
    raise_one_line("mnist", "truncated IDX file (9 bytes", root=str(tmp_path))
    train.write_bytes(idx_bytes(a, magic=0x00000801))
    raise_one_line("mnist", "magic 0x00000801, expected 0x00000803", root=str(tmp_path))
    train.unlink()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_bytes(a))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
        (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()[:30]
    )
    raise_one_line("mnist", "cannot read", root=str(tmp_path))
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_bytes(np.zeros((2, 14, 14))))
    raise_one_line("mnist", "use files from one data set", root=str(tmp_path))


# -- raw storage: discrete data stay integers until a batch is drawn --------------------------


def test_digits_are_stored_as_levels_and_give_the_float_values_of_before():
    from sklearn.datasets import load_digits as sklearn_digits

    from ddpm.data.spec import discrete_to_model, split_indices

    data = load("digits")
    assert data.train_examples.values.dtype == torch.uint8 or (
        data.train_examples.values.dtype == np.uint8
    )
    raw = np.rint(sklearn_digits().images).astype(np.int64)[:, None]
    train_idx, test_idx = split_indices(len(raw), 297)
    before = discrete_to_model(raw[train_idx], 17)  # how the splits were stored before
    assert torch.equal(data.train, before)
    assert torch.equal(data.test, discrete_to_model(raw[test_idx], 17))
    idx = torch.randint(0, len(before), (64,), generator=torch.Generator().manual_seed(0))
    for examples in (data.train_examples, data.train_examples.to("cpu")):
        batch = examples[idx]
        assert batch.dtype == torch.float32 and torch.equal(batch, before[idx])


def test_npy_is_memory_mapped_and_batches_match_the_in_memory_values(tmp_path):
    from ddpm.training.loop import Trainer

    values = np.random.default_rng(0).integers(0, 256, (4000, 1, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "big.npy", values)  # 3 MB
    data = load(tmp_path / "big.npy")
    for examples in (data.train_examples, data.test_examples):
        assert isinstance(examples.values, np.memmap) and examples.memory_mapped
    train_idx, _ = np.random.default_rng(0).permutation(4000)[:3600], None
    idx = torch.tensor([5, 0, 3599, 5, 17])
    assert torch.equal(data.train_examples[idx], model(values[train_idx][idx.numpy()]))
    assert torch.equal(data.train_examples[:3], model(values[train_idx[:3]]))
    # the trainer gathers its batches from the file rather than copying it into memory
    trainer = Trainer(RunConfig(train=TrainConfig(batch_size=8)), data, torch.device("cpu"))
    assert trainer.train_x.memory_mapped


def test_channels_last_uint8_npy_is_gathered_channels_first(tmp_path):
    values = np.random.default_rng(1).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "c.npy", values)
    data = load(tmp_path / "c.npy", test_fraction=0.2)
    perm = np.random.default_rng(0).permutation(10)
    batch = data.train_examples[torch.tensor([1, 0])]
    assert batch.is_contiguous()
    assert torch.equal(batch, model(values.transpose(0, 3, 1, 2)[perm[[1, 0]]]))
    assert torch.equal(data.test, model(values.transpose(0, 3, 1, 2)[perm[8:]]))
