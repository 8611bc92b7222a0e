"""Write model samples the way people look at them: an image grid or a 2-D scatter, plus .npy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddpm.checkpoint import atomic_write_bytes
from ddpm.data import DataSpec
from ddpm.report.images import save_image_grid
from ddpm.report.plots import save_scatter_2d


def save_array(x: Tensor, path: str | os.PathLike) -> Path:
    """Save x as a .npy file atomically (no pickle)."""
    import io

    buf = io.BytesIO()
    np.save(buf, x.detach().cpu().numpy(), allow_pickle=False)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def save_samples(
    x: Tensor, path: str | os.PathLike, spec: DataSpec, reference: Tensor | None = None
) -> Path:
    """Samples x [N, *spec.shape] in model space -> PNG at path and raw-unit .npy beside it.

    Images become a grid; vectors a scatter plot of the first two coordinates against
    ``reference`` data (model space) when given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_array(spec.to_raw(x.detach().cpu().double()), path.with_suffix(".npy"))
    if spec.is_image:
        return save_image_grid(x.clamp(-1, 1), path)
    ref = None if reference is None else as_plane(reference)
    return save_scatter_2d(as_plane(x), path, reference=ref, title=f"{spec.name}: {len(x)} samples")


def as_plane(x: Tensor) -> Tensor:
    """Points [..., D] to plot in a plane: the first two coordinates, or (x, 0) when D = 1."""
    x = x.detach().cpu()
    if x.shape[-1] >= 2:
        return x[..., :2]
    return torch.cat([x, torch.zeros_like(x)], dim=-1)
