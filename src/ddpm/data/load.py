"""load_dataset: one entry point from a DataConfig to a Dataset.

cfg.name is a built-in name (BUILTIN_NAMES) or a path: a mixture '.json'; CIFAR-10's binary
distribution (the .tar.gz, its folder, a .bin batch); downsampled ImageNet's .npz batches (a
file or their folder); a '.npy'/'.npz' array file; or a folder of images. Nothing is ever
downloaded.
"""

from __future__ import annotations

from pathlib import Path

from ddpm.config import DataConfig
from ddpm.data import cifar, imagenet
from ddpm.data.arrays import load_array_file
from ddpm.data.digits import load_digits
from ddpm.data.images import load_image_folder
from ddpm.data.mixture import GaussianMixture
from ddpm.data.mnist import load_mnist
from ddpm.data.spec import Dataset
from ddpm.data.toys import TOY_NAMES, load_toy, mixture_dataset
from ddpm.errors import ConfigError, DataError

BUILTIN_NAMES = ("digits", "mnist", *TOY_NAMES)


def load_dataset(cfg: DataConfig) -> Dataset:
    """The data named by cfg.name, in model space, with its exact density when known.

    Splits: ``train_examples``, ``test_examples`` and ``all_examples`` (every example, nothing
    held out). digits: sklearn's 8 x 8 digits (1500 train / 297 test). mnist: IDX files in
    cfg.root (60000 / 10000). gmm8, moons, swissroll, checkerboard: cfg.n_train / cfg.n_test
    seeded draws. A '.json' path: a Gaussian mixture of any dimension (GaussianMixture.from_dict
    layout), sampled like gmm8. For these built-in and generated data 'all' is train then test.
    CIFAR-10 (``ddpm.data.cifar``: cifar-10-binary.tar.gz, its cifar-10-batches-bin/ folder or a
    .bin batch) and downsampled ImageNet (``ddpm.data.imagenet``: train_data_batch_K.npz and
    val_data.npz, a file or their folder): the published split, train = the training batches,
    test = the test batch or val_data, 'all' = training batches then test, in file order. A
    '.npy'/'.npz' path or an image folder: user data split by cfg.test_fraction, 'all' in the
    file's row order or the images' sorted path order.
    """
    name = cfg.name
    _check_options_apply(cfg)
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist(cfg.root)
    if name in TOY_NAMES:
        return load_toy(name, cfg.n_train, cfg.n_test)
    path = Path(name).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".json":
        mixture = GaussianMixture.from_json_file(path)
        return mixture_dataset(path.stem, mixture, cfg.n_train, cfg.n_test)
    if path.exists() and cifar.recognises(path):
        return _published(cfg, cifar.load_cifar10(path))
    if path.exists() and imagenet.recognises(path):
        return _published(cfg, imagenet.load_imagenet(path))
    if suffix in (".npy", ".npz"):
        return load_array_file(path, cfg.test_fraction)
    if path.is_dir():
        return load_image_folder(path, cfg.image_size, cfg.grayscale, cfg.test_fraction)
    if path.exists():
        raise DataError(
            f"cannot load {path}: give a folder of images, a .npy/.npz array, a mixture .json, "
            "CIFAR-10's binary version or downsampled ImageNet's .npz batches"
        )
    raise DataError(
        f"unknown data {name!r}: no such file or folder, and not a built-in data set "
        f"({', '.join(BUILTIN_NAMES)}); check the name or path"
    )


def _published(cfg: DataConfig, data: Dataset) -> Dataset:
    """A published data set comes at its own size and in colour: image_size may only repeat
    its size (a model of its images asks for that), and grayscale is refused."""
    size = data.spec.shape[-1]
    if cfg.image_size not in (None, size) or cfg.grayscale:
        raise ConfigError(
            f"{data.spec.name} images are {size}x{size} colour as published; image_size and "
            "grayscale apply to image folders: drop them",
            params=("image_size", "grayscale"),
        )
    return data


def _check_options_apply(cfg: DataConfig) -> None:
    """Options that do nothing for this data are errors, not silently ignored."""
    folder = cfg.name not in BUILTIN_NAMES and Path(cfg.name).expanduser().is_dir()
    if (cfg.image_size is not None or cfg.grayscale) and not folder:
        raise ConfigError(
            f"image_size and grayscale apply to image folders, not to {cfg.name!r}; drop them",
            params=("image_size", "grayscale"),
        )
    if cfg.root is not None and cfg.name != "mnist":
        raise ConfigError(
            f"root is for the data mnist, not {cfg.name!r}; drop it", params=("root",)
        )
