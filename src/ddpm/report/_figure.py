"""Matplotlib through its object API only: no pyplot, no global figure registry, no rcParams.

A :class:`matplotlib.figure.Figure` made directly is independent of any backend state and is
freed by the garbage collector like any other object, so the library never sets up anything
global and can draw in worker processes and without a display. Matplotlib is imported when the
first figure is made, never at ``import ddpm``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ddpm.errors import DataError
from ddpm.storage import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100


def new_figure(width_in: float, height_in: float) -> Figure:
    """A white figure of the given size in inches, laid out with constrained layout."""
    from matplotlib.figure import Figure  # heavy: imported only when a figure is drawn

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def printable(text: str) -> str:
    """text with the bytes of a file name that is not UTF-8 (kept by Python as lone surrogates,
    e.g. os.fsdecode(b"run\\xff") == "run\\udcff") shown as U+FFFD, which fonts can draw."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "replace").decode("utf-8")


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG in memory, then write it atomically; return the path."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):  # titles and labels naming files: see ``printable``
        s = text.get_text()
        if isinstance(s, str) and not s.isascii():
            text.set_text(printable(s))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())


def as_float_array(x: Tensor | np.ndarray, name: str, ndim: int | None = None) -> np.ndarray:
    """A CPU float64 numpy copy of x, checking its number of dimensions."""
    a = torch.as_tensor(x).detach().to("cpu", torch.float64).numpy()
    if ndim is not None and a.ndim != ndim:
        raise DataError(f"{name}: expected {ndim} dimensions, got shape {list(a.shape)}")
    return a


def check_ts(ts: list[int], k: int, name: str) -> list[int]:
    """Check that there is one timestep label per captured frame."""
    ts = [int(t) for t in ts]
    if len(ts) != k:
        raise DataError(f"{name}: {k} frames but {len(ts)} timesteps in ts")
    return ts


def limits(*arrays: np.ndarray, margin: float = 0.05) -> tuple[float, float]:
    """Common axis limits over the finite values of all arrays, widened by ``margin``."""
    vals = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if vals.size == 0:
        return -1.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    span = hi - lo if hi > lo else 1.0
    return lo - margin * span, hi + margin * span
