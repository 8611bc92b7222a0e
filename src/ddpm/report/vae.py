"""The view-3 figure: rate + distortion = -ELBO per model, and the VAE's IW bounds against K."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ddpm.report._figure import new_figure, save_figure


def view3_bars(view) -> dict[str, dict[str, float]]:
    """What the left panel draws, per model: rate, distortion, -ELBO, its SE and the
    largest-K -log IW bound (NaN when none)."""
    return {
        r.name: {
            "rate": r.rate,
            "distortion": r.distortion,
            "neg_elbo": r.neg_elbo,
            "neg_elbo_se": r.neg_elbo_se,
            "iw": np.nan if r.iw_K is None else r.iw_neg_log_likelihood,
        }
        for r in view.rows
    }


def save_view3(view, path: str | os.PathLike) -> Path:
    """PNG: left, rate, distortion, -ELBO (± SE) and the largest-K -log IW bound as grouped
    bars, one colour per model, each from 0 (distortion may be negative for continuous data),
    with the data entropy as a line; right, -L_K against K for every model with IW bounds."""
    bars = view3_bars(view)
    fig = new_figure(12.0, 4.6)
    ax, ax_iw = fig.subplots(1, 2, width_ratios=(3, 2))
    keys = [("rate", "rate"), ("distortion", "distortion"), ("neg_elbo", "-ELBO"),
            ("iw", "-log IW bound\n(largest K)")]  # fmt: skip
    x = np.arange(len(keys))
    width = 0.8 / len(bars)
    for i, (name, b) in enumerate(bars.items()):
        vals = np.array([b[k] for k, _ in keys], dtype=np.float64)
        err = np.array([0.0, 0.0, b["neg_elbo_se"], 0.0])
        params = view.rows[i].parameters
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, np.nan_to_num(vals), width, yerr=err, capsize=4, color=f"C{i}", alpha=0.85,
               label=f"{name}, {params} params")  # fmt: skip
        for xi, v in zip(pos, vals, strict=True):
            if np.isfinite(v):
                ax.annotate(f"{v:.3f}", (xi, v), xytext=(0, 3 if v >= 0 else -11),
                            textcoords="offset points", ha="center", fontsize=8)  # fmt: skip
    if view.entropy is not None:
        ax.axhline(view.entropy, color="C3", ls="--", label=f"data entropy {view.entropy:.3f}")
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_xticks(x, [label for _, label in keys])
    ax.set_ylabel("nats per example")
    ax.set_title(f"{view.data}: rate + distortion = -ELBO (n = {view.n})")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, axis="y", alpha=0.3)
    for i, ev in enumerate(view.evaluations):
        if ev.iw:
            ks = [b.K for b in ev.iw]
            vals = np.array([b.neg_log_likelihood for b in ev.iw])
            ses = np.array([b.se for b in ev.iw])
            ax_iw.errorbar(ks, vals, yerr=ses, marker="o", capsize=3, color=f"C{i}",
                           label=ev.name)  # fmt: skip
            ax_iw.axhline(ev.neg_elbo, color=f"C{i}", ls=":", label=f"{ev.name}: -ELBO")
    if view.entropy is not None:
        ax_iw.axhline(view.entropy, color="C3", ls="--", label="data entropy")
    ax_iw.set_xscale("log")
    ax_iw.set_xlabel("K (importance samples)")
    ax_iw.set_ylabel("-L_K, nats per example")
    ax_iw.set_title("importance-weighted bounds")
    ax_iw.legend(fontsize=8)
    ax_iw.grid(True, alpha=0.3)
    return save_figure(fig, path)
