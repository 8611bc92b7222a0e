"""Sample quality on the command line: the flags shared by `ddpm sample --metrics` and
`ddpm evaluate --samples N`, and the terminal table of a QualityReport."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_classifier_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--classifier-dir",
        type=Path,
        default=None,
        help="where the feature classifier of labelled data is kept (default: $DDPM_CACHE/"
        "classifiers or ~/.cache/ddpm/classifiers); trained there, in seconds, when missing",
    )


def _pct(p: float, se: float) -> str:
    return f"{100 * p:5.1f}% ± {100 * se:.1f}%"


def _modes(c) -> str:
    hit = sum(1 for k in c.counts if k > 0)
    return f"{hit:>3d}/{len(c.counts):<3d} {c.modes_missed:>3d}  {c.p_value:8.2g}"


def format_quality(report) -> str:
    """A terminal table of a ddpm.quality.QualityReport: samples first, then references."""
    ref = report.reference
    if report.kind == "density":
        lines = [
            f"sample quality on {report.data}: exact scores under the true density q "
            "(nats per example ± SE)",
            f"  H(q) data entropy {ref['entropy']:.4f} ± {ref['entropy_se']:.4f}; low density: "
            f"log q(x) < {ref['log_q_threshold']:.3f}, the 1st percentile of q",
            f"  {'':<28s}{'n':>6s}  {'cross-entropy':>17s}  {'low density':>14s}  "
            f"{'modes':>7s} {'missed':>3s} {'chi2 p':>8s}",
        ]
        for r in report.rows:
            lines.append(
                f"  {r.name:<28s}{r.n:>6d}  {r.cross_entropy:8.4f} ± {r.cross_entropy_se:.4f}  "
                f"{_pct(r.low_density_share, r.low_density_share_se):>14s}  {_modes(r.modes)}"
            )
    elif report.kind == "features":
        c = ref["classifier"]
        how = "trained just now" if ref["classifier_trained_now"] else "stored"
        lines = [
            f"sample quality on {report.data} in the feature space of a classifier trained here "
            f"(test accuracy {100 * c['test_accuracy']:.1f}%, {c['steps']} steps, seed "
            f"{c['seed']}, {c['train_seconds']:.1f} s to train; {how}: {ref['classifier_path']})",
            f"  {'':<30s}{'n':>6s} {'FID':>9s}  {'KID ± SE':>19s}  {'classes':>7s} "
            f"{'missed':>3s} {'chi2 p':>8s}  {'confident':>14s}",
        ]
        for r in report.rows:
            lines.append(
                f"  {r.name:<30s}{r.n:>6d} {r.fid:9.3f}  {r.kid:9.3f} ± {r.kid_se:7.3f}  "
                f"{_modes(r.classes)}  {_pct(r.confident_share, r.confident_share_se):>14s}"
            )
    else:
        lines = [
            f"sample quality on {report.data}: {report.note}",
            f"  distance to the nearest training example (RMS per dimension, model space); "
            f"close: below {ref['close_threshold']:.4f}, the held-out data's 1st percentile",
            f"  {'':<28s}{'n':>6s} {'median':>9s} {'mean ± SE':>20s} {'close':>14s} {'copies':>7s}",
        ]
        for r in report.rows:
            lines.append(
                f"  {r.name:<28s}{r.n:>6d} {r.median_distance:9.4f} {r.mean_distance:10.4f} ± "
                f"{r.mean_distance_se:.4f} {_pct(r.close_share, r.close_share_se):>14s} "
                f"{r.copies:>7d}"
            )
    cost = ", ".join(f"{k} {v:.2f}" for k, v in report.seconds.items())
    lines.append(f"  seconds: {cost}")
    return "\n".join(lines)


def format_quality_steps(rows) -> str:
    """The quality-vs-K table: one line per (sampler, K) of ddpm.quality.steps.StepRow."""
    from ddpm.quality.scores import BAYES_OPTIMAL, FLOOR

    kind = rows[0].report.kind
    floor = rows[0].report.row(FLOOR)
    if kind == "density":
        ref = rows[0].report.reference
        head = (
            f"quality vs K ({rows[0].report.data}): cross-entropy -E log q(x) in nats; "
            f"H(q) = {ref['entropy']:.4f}, held-out data {floor.cross_entropy:.4f} ± "
            f"{floor.cross_entropy_se:.4f}"
        )
        cols = f"{'cross-entropy':>17s} {'low dens.':>9s} {'missed':>6s} {'bayes-opt. CE':>17s}"
    elif kind == "features":
        head = (
            f"quality vs K ({rows[0].report.data}): classifier features; held-out data FID "
            f"{floor.fid:.3f}, KID {floor.kid:.3f} ± {floor.kid_se:.3f}"
        )
        cols = f"{'FID':>8s} {'KID ± SE':>17s} {'missed':>6s} {'confident':>9s}"
    else:
        head = f"quality vs K ({rows[0].report.data}): nearest-neighbour distances"
        cols = f"{'median NN':>9s} {'close':>7s}"
    lines = [head, f"  {'sampler':<10s}{'K':>6s} {'seconds':>8s} {'bits/dim':>17s} {cols}"]
    for r in rows:
        bpd = "-" if r.bits_per_dim is None else f"{r.bits_per_dim:.4f} ± {r.bits_per_dim_se:.4f}"
        s = r.report.samples
        if kind == "density":
            best = r.report.row(BAYES_OPTIMAL)
            cells = (
                f"{s.cross_entropy:8.4f} ± {s.cross_entropy_se:.4f} "
                f"{100 * s.low_density_share:8.1f}% {s.modes.modes_missed:>6d} "
                f"{best.cross_entropy:8.4f} ± {best.cross_entropy_se:.4f}"
            )
        elif kind == "features":
            cells = (
                f"{s.fid:8.3f} {s.kid:8.3f} ± {s.kid_se:6.3f} {s.classes.modes_missed:>6d} "
                f"{100 * s.confident_share:8.1f}%"
            )
        else:
            cells = f"{s.median_distance:9.4f} {100 * s.close_share:6.1f}%"
        lines.append(f"  {r.sampler:<10s}{r.K:>6d} {r.seconds:8.2f} {bpd:>17s} {cells}")
    return "\n".join(lines)
