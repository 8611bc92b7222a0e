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
    """PNG: left, one bar per model split into rate (from 0) and distortion (from the rate on),
    ending at -ELBO (± SE), with the largest-K IW bound and the data entropy marked; right, -L_K
    against K for every model with IW bounds."""
    bars = view3_bars(view)
    fig = new_figure(11.0, 0.9 * len(bars) + 2.6)
    ax, ax_iw = fig.subplots(1, 2, width_ratios=(3, 2))
    y = np.arange(len(bars))
    for yi, b in enumerate(bars.values()):
        label = yi == 0
        ax.barh(yi, b["rate"], color="C0", alpha=0.8, label="rate" if label else None)
        ax.barh(yi, b["distortion"], left=b["rate"], color="C1", alpha=0.8,
                label="distortion" if label else None)  # fmt: skip
        ax.errorbar(b["neg_elbo"], yi, xerr=b["neg_elbo_se"], fmt="kD", capsize=4,
                    label="-ELBO ± SE" if label else None)  # fmt: skip
        if np.isfinite(b["iw"]):
            ax.plot(b["iw"], yi, "v", color="C2", ms=9, label="-log IW bound (largest K)")
        ax.annotate(f"{b['neg_elbo']:.3f}", (b["neg_elbo"], yi), xytext=(0, 10),
                    textcoords="offset points", ha="center", fontsize=9)  # fmt: skip
    if view.entropy is not None:
        ax.axvline(view.entropy, color="C3", ls="--", label=f"data entropy {view.entropy:.3f}")
    ax.axvline(0.0, color="0.3", lw=0.8)
    ax.set_yticks(y, [f"{n}\n{r.parameters} params" for n, r in zip(bars, view.rows, strict=True)])
    ax.invert_yaxis()
    ax.set_xlabel("nats per example")
    ax.set_title(f"{view.data}: rate + distortion = -ELBO (n = {view.n})")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, axis="x", alpha=0.3)
    for i, ev in enumerate(view.evaluations):
        if ev.iw:
            ks = [b.K for b in ev.iw]
            vals = np.array([b.neg_log_likelihood for b in ev.iw])
            ses = np.array([b.se for b in ev.iw])
            ax_iw.errorbar(ks, vals, yerr=ses, marker="o", capsize=3, color=f"C{i + 4}",
                           label=ev.name)  # fmt: skip
            ax_iw.axhline(ev.neg_elbo, color=f"C{i + 4}", ls=":", label=f"{ev.name}: -ELBO")
    if view.entropy is not None:
        ax_iw.axhline(view.entropy, color="C3", ls="--", label="data entropy")
    ax_iw.set_xscale("log")
    ax_iw.set_xlabel("K (importance samples)")
    ax_iw.set_ylabel("-L_K, nats per example")
    ax_iw.set_title("importance-weighted bounds")
    ax_iw.legend(fontsize=8)
    ax_iw.grid(True, alpha=0.3)
    return save_figure(fig, path)
