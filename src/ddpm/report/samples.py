"""Write model samples the way people look at them: an image grid or a 2-D scatter, plus .npy."""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import Tensor

from ddpm.data import DataSpec
from ddpm.report.images import save_image_grid
from ddpm.report.plots import save_scatter_2d
from ddpm.storage import atomic_write_bytes

GRID_IMAGES = 256  # images drawn of a request too large to hold at once
# PNG text key under which a samples PNG lists the files written beside it
WRITTEN_BESIDE = "ddpm:written-beside"


def save_array(x: Tensor, path: str | os.PathLike) -> Path:
    """Save x as a .npy file atomically (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, x.detach().cpu().numpy(), allow_pickle=False)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def save_samples(
    x: Tensor,
    path: str | os.PathLike,
    spec: DataSpec,
    reference: Tensor | None = None,
    total: int | None = None,
) -> Path:
    """Samples x [N, *spec.shape] in model space -> PNG at path and raw-unit .npy beside it.

    Images become a grid; vectors a scatter plot of the first two coordinates against
    ``reference`` data (model space) when given. total: x is the first N of ``total`` samples
    whose .npy the caller has written; only the PNG is drawn, of at most the first
    ``GRID_IMAGES`` images or of the N points.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if total is None:
        save_array(spec.to_raw(x.detach().cpu().double()), path.with_suffix(".npy"))
    if spec.is_image:
        return save_image_grid((x if total is None else x[:GRID_IMAGES]).clamp(-1, 1), path)
    ref = None if reference is None else as_plane(reference)
    what = f"{len(x)} samples" if total is None else f"first {len(x)} of {total} samples"
    return save_scatter_2d(as_plane(x), path, reference=ref, title=f"{spec.name}: {what}")


def record_written_beside(png: str | os.PathLike, files: Iterable[str | os.PathLike]) -> None:
    """Note in the text of the PNG at png the files written beside it (name, size, mtime), so
    that a later ``ddpm sample --out`` of the same name knows them as ddpm's own: outside a run
    folder there is no manifest to say so."""
    png = Path(png)
    record = {}
    for f in map(Path, files):
        st = f.stat()
        record[f.name] = [st.st_size, st.st_mtime_ns]
    with Image.open(png) as im:
        im.load()
        info = PngImagePlugin.PngInfo()
        for key, value in im.text.items():
            if key != WRITTEN_BESIDE:
                info.add_text(key, value)
        info.add_text(WRITTEN_BESIDE, json.dumps(record))
        buf = io.BytesIO()
        im.save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(png, buf.getvalue())


def written_beside(png: str | os.PathLike) -> list[Path]:
    """The files that the samples PNG at png lists as written beside it and that are still as
    ddpm left them (same size and mtime, regular files); [] when png is no such PNG."""
    png = Path(png)
    try:
        with Image.open(png) as im:
            doc = json.loads(getattr(im, "text", {}).get(WRITTEN_BESIDE, "{}"))
    except (OSError, ValueError, SyntaxError):  # not there, not a PNG, or a damaged record
        return []
    if not isinstance(doc, dict):
        return []
    found = []
    for name, kept in doc.items():
        path = png.parent / str(name)
        if Path(name).name != name or not isinstance(kept, list):
            continue  # only plain names of files in the PNG's own folder
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and [st.st_size, st.st_mtime_ns] == kept:
            found.append(path)
    return found


def as_plane(x: Tensor) -> Tensor:
    """Points [..., D] to plot in a plane: the first two coordinates, or (x, 0) when D = 1."""
    x = x.detach().cpu()
    if x.shape[-1] >= 2:
        return x[..., :2]
    return torch.cat([x, torch.zeros_like(x)], dim=-1)
