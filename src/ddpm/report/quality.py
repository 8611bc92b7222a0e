"""Figure of sample quality and bits/dim against the number of sampling steps K.

One line per sampler in each of up to three panels: the headline quality score of the samples
(cross-entropy under q with ± SE, or FID, or median nearest-neighbour distance), bits/dim of the
K-step process when measured, and the wall time of the draw; K on a log axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ddpm.errors import DataError
from ddpm.quality.scores import BAYES_OPTIMAL
from ddpm.report._figure import new_figure, save_figure

_QUALITY = {
    "density": ("cross_entropy", "cross_entropy_se", "cross-entropy -E log q(x) (nats)"),
    "features": ("fid", None, "FID (classifier features)"),
    "neighbours": ("median_distance", None, "median distance to training set"),
}


def quality_curves(rows: Sequence) -> dict[str, dict[str, np.ndarray]]:
    """The data behind the figure: per sampler, arrays over K sorted ascending of
    'K', 'quality', 'quality_se' (NaN without one), 'bits_per_dim' (NaN if not measured), 'seconds'
    and 'bayes_optimal' (the quality of the Bayes-optimal model's samples at the same sampler and
    K; NaN without one). rows: ``ddpm.quality.steps.StepRow`` values of one data set."""
    if not rows:
        raise DataError("quality_curves: no rows to plot")
    key, se_key, _ = _QUALITY[rows[0].report.kind]
    curves: dict[str, dict[str, list[float]]] = {}
    for r in sorted(rows, key=lambda r: r.K):
        h = r.headline()
        c = curves.setdefault(r.sampler, {k: [] for k in _FIELDS})
        c["K"].append(r.K)
        c["quality"].append(h[key])
        c["quality_se"].append(h[se_key] if se_key else float("nan"))
        c["bits_per_dim"].append(np.nan if r.bits_per_dim is None else r.bits_per_dim)
        c["seconds"].append(r.seconds)
        best = [x for x in r.report.rows[1:] if x.name == BAYES_OPTIMAL]
        c["bayes_optimal"].append(getattr(best[0], key) if best else float("nan"))
    return {s: {k: np.asarray(v, dtype=float) for k, v in c.items()} for s, c in curves.items()}


_FIELDS = ("K", "quality", "quality_se", "bits_per_dim", "seconds", "bayes_optimal")


def save_quality_vs_steps(
    rows: Sequence, path: str | os.PathLike, floor: float | None = None, title: str = ""
) -> Path:
    """Quality (and bits/dim, wall time) against K per sampler; ``floor``: the held-out data's
    score, drawn as a dashed line."""
    curves = quality_curves(rows)
    _, _, ylabel = _QUALITY[rows[0].report.kind]
    has_bpd = any(np.isfinite(c["bits_per_dim"]).any() for c in curves.values())
    panels = 3 if has_bpd else 2
    fig = new_figure(4.0 * panels, 3.6)
    axes = fig.subplots(1, panels)
    for i, (sampler, c) in enumerate(curves.items()):
        se = np.nan_to_num(c["quality_se"])
        axes[0].errorbar(
            c["K"], c["quality"], yerr=se, marker="o", ms=4, capsize=2, c=f"C{i}", label=sampler
        )
        if np.isfinite(c["bayes_optimal"]).any():
            label = f"{sampler}, Bayes-optimal model"
            axes[0].plot(c["K"], c["bayes_optimal"], ls=":", marker="x", c=f"C{i}", label=label)
        if has_bpd:
            axes[1].plot(c["K"], c["bits_per_dim"], marker="o", ms=4, label=sampler)
        axes[-1].plot(c["K"], c["seconds"], marker="o", ms=4, label=sampler)
    if floor is not None:
        axes[0].axhline(floor, ls="--", c="0.5", lw=1, label="held-out data")
    axes[0].set_ylabel(ylabel)
    if rows[0].report.kind == "density":  # cross-entropies can be < 0 and outliers huge
        axes[0].set_yscale("symlog", linthresh=1.0)
    if has_bpd:
        axes[1].set_ylabel("bits/dim of the K-step process")
        axes[1].set_yscale("log")
    axes[-1].set_ylabel("seconds to draw")
    axes[-1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps K")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
