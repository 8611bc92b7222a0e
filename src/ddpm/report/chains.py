"""Figures of the Markov chains: the forward process q and sampling trajectories of p_theta.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from ddpm.errors import DataError
from ddpm.report._figure import as_float_array, check_ts, limits, new_figure, save_figure
from ddpm.report.images import image_grid, to_uint8

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["save_forward_strip", "save_trajectory", "save_trajectory_2d"]

MAX_CHAINS = 8  # rows beyond this make the figure unreadable


def _show(ax: Axes, pixels: np.ndarray) -> None:
    """Draw one uint8 image [H, W, C] without ticks (axis labels stay visible)."""
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(pixels, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_forward_strip(
    frames: Tensor | np.ndarray,
    ts: Sequence[int],
    path: str | os.PathLike,
    alpha_bars: Sequence[float] | None = None,
) -> Path:
    """One row of images x_t ~ q(x_t | x_0) labelled "t = ...", [Ho20] eq. (4).

    frames: [K, C, H, W] in [-1, 1], frame k at timestep ts[k]. With ``alpha_bars`` (ᾱ_t for
    each frame) each label also shows sqrt(ᾱ_t), the weight of x_0 left in x_t.
    """
    pixels = to_uint8(frames)  # [K, H, W, C]
    k = len(pixels)
    ts = check_ts(list(ts), k, "frames")
    if alpha_bars is not None and len(alpha_bars) != k:
        raise DataError(f"frames: {k} frames but {len(alpha_bars)} values in alpha_bars")
    fig = new_figure(1.6 * k, 2.1 if alpha_bars is not None else 1.9)
    axes = fig.subplots(1, k, squeeze=False)[0]
    for i, ax in enumerate(axes):
        _show(ax, pixels[i])
        label = f"t = {ts[i]}"
        if alpha_bars is not None:
            label += "\n" + r"$\sqrt{\bar{\alpha}_t}$" + f" = {float(alpha_bars[i]) ** 0.5:.3f}"
        ax.set_title(label, fontsize=9)
    return save_figure(fig, path)


def save_trajectory(
    xt: Tensor | np.ndarray,
    x0_hat: Tensor | np.ndarray,
    ts: Sequence[int],
    path: str | os.PathLike,
) -> Path:
    """Sampling chains: per chain a row of x_t and under it a row of the predicted x̂_0.

    xt, x0_hat: [K, N, C, H, W] in [-1, 1], captured at the K timesteps ts (columns, titled
    "t = ..."). At most the first 8 of the N chains are drawn.
    """
    if getattr(xt, "ndim", None) == 3:
        raise DataError("xt: vectors [K, N, 2] are drawn with save_trajectory_2d")
    a, b = as_float_array(xt, "xt", ndim=5), as_float_array(x0_hat, "x0_hat", ndim=5)
    if a.shape != b.shape:
        raise DataError(f"xt {list(a.shape)} and x0_hat {list(b.shape)} differ in shape")
    k, n = a.shape[:2]
    ts = check_ts(list(ts), k, "xt")
    n = min(n, MAX_CHAINS)
    # One picture of 2n rows by k columns (x_t of chain i above its x̂_0) in a single Axes:
    # one Axes per image took 1.9 s for 8 chains at 8 steps, this takes 0.26 s.
    rows = np.stack([a[:, :n], b[:, :n]], axis=2).transpose(1, 2, 0, 3, 4, 5)  # [n, 2, k, ...]
    grid = np.asarray(image_grid(rows.reshape(2 * n * k, *a.shape[2:]), nrow=k, scale=1))
    h, w = a.shape[3:]
    fig = new_figure(1.2 * k + 0.8, 1.25 * 2 * n + 0.4)
    ax = fig.add_subplot()
    _show(ax, grid if grid.ndim == 3 else grid[..., None])
    ax.set_xticks([1 + j * (w + 1) + (w - 1) / 2 for j in range(k)], [f"t = {t}" for t in ts])
    ax.set_yticks(
        [1 + r * (h + 1) + (h - 1) / 2 for r in range(2 * n)],
        [f"{i}: " + (r"$x_t$", r"$\hat{x}_0$")[r] for i in range(n) for r in (0, 1)],
    )
    ax.xaxis.tick_top()
    ax.tick_params(length=0, labelsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return save_figure(fig, path)


def save_trajectory_2d(
    xt: Tensor | np.ndarray,
    ts: Sequence[int],
    path: str | os.PathLike,
    reference: Tensor | np.ndarray | None = None,
) -> Path:
    """Small multiples of 2-D samples along the chain: xt [K, N, 2] at the K timesteps ts.

    All panels share limits, so the contraction from N(0, I) at t = T to the data is visible;
    ``reference`` data points [M, 2] are drawn in grey beneath each panel.
    """
    a = as_float_array(xt, "xt", ndim=3)
    if a.shape[2] != 2:
        raise DataError(f"xt: expected shape [K, N, 2], got {list(a.shape)}")
    ref = None if reference is None else as_float_array(reference, "reference", ndim=2)
    k = a.shape[0]
    ts = check_ts(list(ts), k, "xt")
    arrays = [a.reshape(-1, 2)] + ([] if ref is None else [ref])
    xlim = limits(*(v[:, 0] for v in arrays))
    ylim = limits(*(v[:, 1] for v in arrays))
    fig = new_figure(2.3 * k, 2.6)
    axes = fig.subplots(1, k, squeeze=False, sharex=True, sharey=True)[0]
    for j, ax in enumerate(axes):
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.75", lw=0)
        ax.scatter(a[j, :, 0], a[j, :, 1], s=2, c="C0", alpha=0.7, lw=0)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"t = {ts[j]}", fontsize=9)
        ax.tick_params(labelsize=7)
    return save_figure(fig, path)
