"""Image grids with Pillow: tensors in [-1, 1] to 8-bit pixels, tiled with thin grey lines.

Pixel mapping (the inverse of the data scaling of [Ho20] sec. 3.3, which maps {0, ..., 255}
linearly to [-1, 1]): ``round((clamp(x, -1, 1) + 1) * 127.5)``, so -1 -> 0 and 1 -> 255.
Rounding is half-to-even (``torch.round``), so 0 -> 128.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ddpm.errors import ConfigError, DataError
from ddpm.storage import atomic_write_bytes

__all__ = ["to_uint8", "default_scale", "image_grid", "save_image_grid", "save_png"]

logger = logging.getLogger(__name__)

GREY = 128  # padding between cells: neutral, so neither black nor white digits merge into it
MIN_CELL_PX = 64  # small images are upscaled (nearest neighbour) to at least this many pixels


def to_uint8(x: Tensor | np.ndarray) -> np.ndarray:
    """Images in [-1, 1] to 8-bit pixels. x: [N, C, H, W], C in {1, 3} -> uint8 [N, H, W, C].

    Values outside [-1, 1] are clamped; NaN is drawn as mid grey (and logged as a warning).
    """
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(
            f"expected images of shape [N, C, H, W] with C = 1 or 3, got {list(x.shape)}"
        )
    nan = torch.isnan(x)
    if nan.any():
        logger.warning("%d NaN pixel values drawn as mid grey", int(nan.sum()))
        x = torch.where(nan, torch.zeros_like(x), x)
    pixels = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def default_scale(height: int, width: int) -> int:
    """Smallest integer upscaling that makes the longer side of a cell at least 64 px."""
    return max(1, math.ceil(MIN_CELL_PX / max(height, width, 1)))


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a Pillow image as PNG atomically (temp file in the same folder, then os.replace)."""
    return atomic_write_bytes(path, _png_bytes(image))


def image_grid(
    x: Tensor | np.ndarray,
    nrow: int | None = None,
    scale: int | None = None,
    pad: int = 1,
) -> Image.Image:
    """Tile images into one picture. x: [N, C, H, W] in [-1, 1], C = 1 (mode "L") or 3 ("RGB").

    ``nrow`` is the number of images per row (as in torchvision's ``make_grid``), by default
    ceil(sqrt(N)), at most N; the grid has ceil(N / nrow) rows. Each image is upscaled by the
    integer ``scale`` with nearest-neighbour sampling (default :func:`default_scale`: cells of
    at least 64 px). Cells are separated and surrounded by ``pad`` grey pixels (not scaled), so
    the picture is ``nrow * (W * scale + pad) + pad`` wide and ``rows * (H * scale + pad) + pad``
    high; unused cells of the last row are grey.
    """
    pixels = to_uint8(x)  # [N, H, W, C]
    n, h, w, c = pixels.shape
    if n == 0:
        raise DataError("cannot draw a grid of zero images")
    nrow = math.ceil(math.sqrt(n)) if nrow is None else nrow
    scale = default_scale(h, w) if scale is None else scale
    if nrow < 1 or scale < 1 or pad < 0:
        raise ConfigError(f"need nrow >= 1, scale >= 1, pad >= 0 (got {nrow}, {scale}, {pad})")
    ncol = min(nrow, n)
    rows = math.ceil(n / ncol)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    ch, cw = h * scale, w * scale
    canvas = np.full((rows * (ch + pad) + pad, ncol * (cw + pad) + pad, c), GREY, np.uint8)
    for i in range(n):
        top, left = pad + (i // ncol) * (ch + pad), pad + (i % ncol) * (cw + pad)
        canvas[top : top + ch, left : left + cw] = pixels[i]
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)  # uint8: mode "L" or "RGB"


def save_image_grid(
    x: Tensor | np.ndarray,
    path: str | os.PathLike,
    nrow: int | None = None,
    scale: int | None = None,
    pad: int = 1,
) -> Path:
    """Write :func:`image_grid` of x ([N, C, H, W] in [-1, 1]) as a PNG; return the path."""
    return save_png(image_grid(x, nrow=nrow, scale=scale, pad=pad), path)
