"""A folder of PNG/JPEG images as 8-bit discrete data (256 levels), shape (1, H, W) or (3, H, W).

Images are found recursively (hidden files skipped) and sorted by path, component by component
(Python's Path order: each name compared by Unicode code points, so on POSIX 'B.png' comes
before 'a.png' and 'c10.png' before 'c2.png'; a subfolder's files come where the subfolder's
name sorts among its siblings, so 'a/z.png' comes before 'a-b.png' and 'a.png'). Grey images
('1', 'L', 'LA') load as one channel, colour ones ('RGB', 'RGBA', 'P', 'CMYK', ...) as three;
16-bit and float images are refused. With image_size the centre square of each image is
resized to image_size x image_size (bicubic, which Pillow antialiases when shrinking); with
grayscale every image becomes one channel. Split: the last max(1, round(test_fraction N)) of
a seed-0 permutation are test; the split 'all' is every image in the sorted order above,
nothing held out, so values per example line up with the sorted file names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ddpm.data.spec import Dataset, DataSpec, Examples, num_test, split_indices
from ddpm.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_LEVELS = 256
_GREY_MODES = ("1", "L", "LA", "La")
_COLOUR_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def find_images(folder: Path) -> list[Path]:
    """PNG/JPEG files under folder (recursively, hidden files skipped), sorted by path component
    by component (the module docstring gives the order)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def read_image(path: Path, image_size: int | None, grayscale: bool) -> np.ndarray:
    """Decode one image to uint8 [C, H, W] with C = 1 (grey) or 3 (colour)."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in _GREY_MODES:
                img = img.convert("L")
            elif mode in _COLOUR_MODES:
                img = img.convert("RGB")
            else:
                raise DataError(
                    f"{path}: image mode {mode!r} (16-bit or float) is not supported; "
                    "save it as 8-bit grey or RGB"
                )
            if grayscale:
                img = img.convert("L")
            if image_size is not None:
                img = _center_square(img, image_size)
            pixels = np.asarray(img, dtype=np.uint8)
    except _DECODE_ERRORS as e:
        raise DataError(f"cannot decode image {path} ({e}); remove or replace the file") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _center_square(img: Image.Image, size: int) -> Image.Image:
    """Crop the centred min(W, H) square, then resize it to size x size (bicubic)."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return img


def load_image_folder(
    folder: str | Path, image_size: int | None, grayscale: bool, test_fraction: float
) -> Dataset:
    """All images under folder as one Dataset in [-1, 1]; named after the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; check the path")
    paths = find_images(folder)
    if len(paths) < 2:
        raise DataError(
            f"found {len(paths)} image(s) in {folder}; need at least 2 PNG or JPEG files "
            "(some to train on, one to test)"
        )
    images = [read_image(p, image_size, grayscale) for p in paths]
    _check_same_layout(paths, images)
    values = np.stack(images)  # [N, C, H, W] uint8, mapped to [-1, 1] a batch at a time
    # the splits are rows of the one array: nothing is copied
    train, test = split_indices(len(values), num_test(len(values), test_fraction))
    spec = DataSpec.from_levels(folder.resolve().name, tuple(values.shape[1:]), IMAGE_LEVELS)
    return Dataset(
        spec=spec,
        train=Examples(values, IMAGE_LEVELS, train),
        test=Examples(values, IMAGE_LEVELS, test),
        density=None,
        source_order=Examples(values, IMAGE_LEVELS),  # sorted by path
    )


def _check_same_layout(paths: list[Path], images: list[np.ndarray]) -> None:
    """All images must share channels and size; name the first pair that differs."""
    first, ref = paths[0], images[0]
    for path, img in zip(paths[1:], images[1:], strict=True):
        if img.shape[0] != ref.shape[0]:
            grey, colour = (first, path) if ref.shape[0] == 1 else (path, first)
            raise DataError(
                f"images mix grey ({grey}) and colour ({colour}); pass grayscale to load all "
                "as grey",
                params=("grayscale",),
            )
        if img.shape != ref.shape:
            raise DataError(
                f"images have different sizes: {first} is {ref.shape[1]}x{ref.shape[2]}, {path} "
                f"is {img.shape[1]}x{img.shape[2]} (HxW); pass image_size N to resize them",
                params=("image_size",),
            )
