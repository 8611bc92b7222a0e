"""Plots of numbers: 2-D samples, per-timestep ELBO terms, bound comparisons (PNG files).

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from ddpm.errors import DataError
from ddpm.report._figure import as_float_array, limits, new_figure, save_figure

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn (``new_figure``)
    from matplotlib.figure import Figure

__all__ = [
    "save_scatter_2d",
    "save_per_timestep",
    "save_bar_chain",
    "save_loss_curve",
    "save_steps_curve",
    "save_sweep",
    "steps_figure",
]


def save_scatter_2d(
    x: Tensor | np.ndarray,
    path: str | os.PathLike,
    reference: Tensor | np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Scatter plot of 2-D samples x: [N, 2] over reference data points [M, 2] (equal aspect)."""
    samples = as_float_array(x, "x", ndim=2)
    ref = None if reference is None else as_float_array(reference, "reference", ndim=2)
    for name, a in (("x", samples), ("reference", ref)):
        if a is not None and a.shape[1] != 2:
            raise DataError(f"{name}: expected shape [N, 2], got {list(a.shape)}")
    fig = new_figure(5.0, 5.0)
    ax = fig.add_subplot()
    if ref is not None:
        label = f"data ({len(ref)})"
        ax.scatter(ref[:, 0], ref[:, 1], s=3, c="0.6", alpha=0.5, lw=0, label=label)
    label = f"samples ({len(samples)})"
    size = 12 if len(samples) <= 500 else 4  # few samples: make each one visible
    ax.scatter(samples[:, 0], samples[:, 1], s=size, c="C0", alpha=0.8, lw=0, label=label)
    arrays = [samples] if ref is None else [samples, ref]
    ax.set_xlim(*limits(*(a[:, 0] for a in arrays)))
    ax.set_ylim(*limits(*(a[:, 1] for a in arrays)))
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="upper right", markerscale=2, frameon=True)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_per_timestep(
    per_t: Mapping[str, Tensor | np.ndarray],
    path: str | os.PathLike,
    ylabel: str = "nats",
    logy: bool = True,
    title: str = "",
    se: Mapping[str, Tensor | np.ndarray] | None = None,
    span: tuple[int, int, str] | None = None,
) -> Path:
    """Line plot over t = 1..T (log axis) of per-timestep values, one line per model (legend).

    ``per_t[name]`` has shape [T] with entry t-1 for timestep t (e.g. the mean ELBO terms
    L_0, L_1, ..., L_{T-1} of [Ho20] eq. (5) indexed by the t of p_theta(x_{t-1} | x_t)).
    The t axis is logarithmic: most of the bound lives in the first steps. ``se[name]`` [T]
    draws a +-1 SE band; ``span`` = (t_lo, t_hi, label) shades those steps (label in the
    legend). The y-axis is logarithmic when ``logy`` and every finite value is positive;
    otherwise a zero line is drawn, and values of both signs spanning more than three decades
    (a negative continuous decoder term beside small KLs) get a symmetric-log axis.
    """
    if not per_t:
        raise DataError("per_t: nothing to plot (no series given)")
    series = {name: as_float_array(v, f"per_t[{name!r}]", ndim=1) for name, v in per_t.items()}
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    if span is not None:
        ax.axvspan(span[0] - 0.5, span[1] + 0.5, color="C3", alpha=0.12, lw=0, label=span[2])
    for i, (name, v) in enumerate(series.items()):
        t = np.arange(1, len(v) + 1)
        ax.plot(t, v, marker="o" if len(v) <= 50 else None, ms=3, lw=1.2, label=name, c=f"C{i}")
        if se is not None and name in se:
            e = as_float_array(se[name], f"se[{name!r}]", ndim=1)
            ax.fill_between(t, v - e, v + e, color=f"C{i}", alpha=0.25, lw=0)
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()])
    if logy and finite.size and (finite > 0).all():
        ax.set_yscale("log")
    else:
        ax.axhline(0.0, color="0.3", lw=0.8)
        nonzero = np.abs(finite[finite != 0])
        if logy and nonzero.size and nonzero.max() > 1e3 * nonzero.min():
            ax.set_yscale("symlog", linthresh=max(1e-3 * nonzero.max(), nonzero.min()))
    ax.set_xscale("log")
    ax.set_xlabel("t (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_bar_chain(
    values: Mapping[str, tuple[float, float]],
    path: str | os.PathLike,
    title: str = "",
    xlabel: str = "",
) -> Path:
    """Horizontal bars with error bars: ``values[label] = (value, standard error)``.

    Bars run top to bottom in the order given (e.g. -ELBO, -log p, data entropy, in nats or
    bits/dim), each annotated with "value ± se" so that small gaps stay readable.
    """
    if not values:
        raise DataError("values: nothing to plot (no bars given)")
    labels = list(values)
    pairs = np.array([[float(v), float(se)] for v, se in values.values()], dtype=np.float64)
    means, ses = pairs[:, 0], pairs[:, 1]
    y = np.arange(len(labels))
    fig = new_figure(7.0, 0.55 * len(labels) + 1.3)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(labels))]
    ax.barh(y, means, xerr=np.nan_to_num(ses), color=colors, alpha=0.8, capsize=4)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()  # first entry on top
    for yi, m, se in zip(y, means, ses, strict=True):
        ax.annotate(
            f"{m:.4g} ± {se:.2g}",
            xy=(m + np.nan_to_num(se) * np.sign(m or 1.0), yi),  # beyond the error bar
            xytext=(6 if m >= 0 else -6, 0),
            textcoords="offset points",
            ha="left" if m >= 0 else "right",
            va="center",
            fontsize=9,
        )
    ends = np.concatenate([means - np.nan_to_num(ses), means + np.nan_to_num(ses), [0.0]])
    lo, hi = float(np.nanmin(ends)), float(np.nanmax(ends))
    room = 0.3 * ((hi - lo) or 1.0)  # space for the annotations beyond the bar ends
    ax.set_xlim(lo - room if lo < 0 else 0.0, hi + room if hi > 0 else 0.0)
    ax.axvline(0.0, color="0.3", lw=0.8)
    ax.grid(True, axis="x", alpha=0.3)
    if xlabel:
        ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_sweep(
    curves: Mapping[str, Mapping[str, np.ndarray]],
    path: str | os.PathLike,
    entropy: float | None = None,
    title: str = "",
    xlabel: str = "T",
) -> Path:
    """The bound against the number of steps T: two panels, T on a log axis (``xlabel``).

    ``curves[name]`` holds arrays over the T values of one model: ``T``, ``neg_elbo`` (and
    ``neg_elbo_se``: error bars), optionally ``closed_form`` (-ELBO in closed form, dashed),
    ``neg_log_likelihood`` (exact -log p_theta(x_0), dotted), ``kl_joint`` (and
    ``kl_joint_se``). Left: -ELBO with the data entropy H(q(x_0)) as a line (the floor of every
    -log p); right: KL(q(x_{0:T}) || p_theta(x_{0:T})) on a log-log scale with the 0.1 and 0.01
    nat lines (values <= 0 of a Monte Carlo estimate are left out of that panel).
    """
    if not curves:
        raise DataError("curves: nothing to plot (no series given)")
    fig = new_figure(11.0, 4.2)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, (name, c) in enumerate(curves.items()):
        color = f"C{i}"
        T = as_float_array(c["T"], f"{name}: T", ndim=1)
        y = as_float_array(c["neg_elbo"], f"{name}: neg_elbo", ndim=1)
        err = c.get("neg_elbo_se")
        left.errorbar(T, y, yerr=err, fmt="o-", ms=3, lw=1.2, capsize=2, c=color, label=name)
        if c.get("closed_form") is not None:
            left.plot(T, c["closed_form"], "--", c=color, lw=1, label=f"{name}: closed form")
        if c.get("neg_log_likelihood") is not None:
            left.plot(T, c["neg_log_likelihood"], ":", c=color, lw=1.5, label=f"{name}: -log p")
        if c.get("kl_joint") is not None:
            kl = as_float_array(c["kl_joint"], f"{name}: kl_joint", ndim=1)
            kl_se = c.get("kl_joint_se")
            keep = kl > 0
            e = None if kl_se is None else np.minimum(np.asarray(kl_se)[keep], 0.999 * kl[keep])
            right.errorbar(T[keep], kl[keep], yerr=e, fmt="o-", ms=3, lw=1.2, capsize=2, c=color)
    if entropy is not None:
        left.axhline(entropy, color="0.2", lw=1.2, label="H(q(x0)), data entropy")
    for th in (0.1, 0.01):
        right.axhline(th, color="0.5", lw=0.8, ls=":")
    low, high = right.get_ylim()
    right.set_ylim(max(low, 1e-7), max(high, 0.2))  # closed forms reach 1e-18: keep 0.01 legible
    left.set_xscale("log")
    left.set_xlabel(f"{xlabel} (log scale)")
    left.set_ylabel("nats per example")
    left.set_title("-ELBO against the number of steps")
    left.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=7)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel(f"{xlabel} (log scale)")
    right.set_ylabel("nats per example")
    right.set_title("KL(q(x0:T) || p(x0:T)) = E[-ELBO] - H")
    right.grid(True, which="major", alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def steps_figure(
    steps: Sequence[int],
    values: Sequence[float],
    ses: Sequence[float],
    ylabel: str = "bits/dim",
    title: str = "",
) -> Figure:
    """A bound against the number of steps K of a respaced process: ``values[i] ± ses[i]``
    (one standard error) at K = ``steps[i]``, sorted by K, on a logarithmic K axis (and a
    logarithmic value axis when the values span more than a factor of 10)."""
    k = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    se = np.asarray(ses, dtype=np.float64)
    if not (k.ndim == v.ndim == se.ndim == 1 and len(k) == len(v) == len(se) > 0):
        raise DataError(
            f"steps, values, ses: need 1-D sequences of one non-zero length (got {k.shape}, "
            f"{v.shape}, {se.shape})"
        )
    order = np.argsort(k)
    k, v, se = k[order], v[order], se[order]
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.errorbar(k, v, yerr=np.nan_to_num(se), marker="o", ms=4, lw=1.2, capsize=3)
    for ki, vi in zip(k, v, strict=True):
        ax.annotate(f"{vi:.3f}", xy=(ki, vi), xytext=(4, 6), textcoords="offset points", fontsize=8)
    if k.min() > 0 and k.max() > k.min():
        ax.set_xscale("log")
    if (v > 0).all() and v.max() > 10 * v.min():  # bounds spanning decades (few K)
        ax.set_yscale("log")
    ax.set_xticks(k, [str(int(x)) for x in k])
    ax.set_xlabel("steps K")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


def save_steps_curve(
    steps: Sequence[int],
    values: Sequence[float],
    ses: Sequence[float],
    path: str | os.PathLike,
    ylabel: str = "bits/dim",
    title: str = "",
) -> Path:
    """``steps_figure`` written as PNG to path."""
    return save_figure(steps_figure(steps, values, ses, ylabel, title), path)


def save_loss_curve(steps: list[int], losses: list[float], path: str | os.PathLike) -> Path:
    """Training loss against the optimisation step (log y-axis when every loss is positive)."""
    if not steps or len(steps) != len(losses):
        raise DataError(f"loss curve: {len(steps)} steps but {len(losses)} losses")
    x, y = np.asarray(steps, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    fig = new_figure(7.0, 3.2)
    ax = fig.add_subplot()
    ax.plot(x, y, lw=1.0, color="C0")
    if np.isfinite(y).all() and (y > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(True, which="major", alpha=0.3)
    return save_figure(fig, path)


def validation_figure(steps: list[int], bpd: list[float], se: list[float], best_step: int):
    """Held-out -ELBO (bits/dim ± SE band) against the step, the kept (best) step marked."""
    if not steps or not len(steps) == len(bpd) == len(se):
        raise DataError(f"validation curve: {len(steps)} steps, {len(bpd)} values, {len(se)} SEs")
    x, y, e = (np.asarray(v, dtype=np.float64) for v in (steps, bpd, se))
    fig = new_figure(7.0, 3.2)
    ax = fig.add_subplot()
    ax.plot(x, y, lw=1.2, color="C1", marker=".", label="validation -ELBO")
    ax.fill_between(x, y - e, y + e, color="C1", alpha=0.2, lw=0, label="± 1 SE")
    if best_step in steps:
        i = steps.index(best_step)
        ax.plot([x[i]], [y[i]], "o", color="C3", label=f"kept: step {best_step}")
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(frameon=False)
    return fig
