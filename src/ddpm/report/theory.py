"""Files of a theory-lab report: JSON, per-timestep plot, 'ELBO vs log-likelihood' chart, HTML."""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm.checkpoint import save_json
from ddpm.report.html import html_table, write_html
from ddpm.report.plots import save_bar_chain, save_per_timestep


def _chain_bars(ev, prefix: str) -> dict[str, tuple[float, float]]:
    """-ELBO, -IW bounds and -log p of one evaluation, as (value, SE) bars."""
    bars = {f"{prefix}-ELBO": (ev.neg_elbo, ev.neg_elbo_se)}
    for b in ev.iw:
        if b.K > 1:
            bars[f"{prefix}-log IW bound, K={b.K}"] = (b.neg_log_likelihood, b.se)
    if ev.neg_log_likelihood is not None and ev.log_likelihood_exact:
        bars[f"{prefix}-log p_theta(x0), exact"] = (ev.neg_log_likelihood, ev.neg_log_likelihood_se)
    return bars


def _rows(ev) -> list[dict]:
    keys = ("neg_elbo", "bits_per_dim", "neg_log_likelihood", "entropy", "kl_joint", "kl_marginal")
    row = {"model": ev.name}
    for k in keys:
        v, se = getattr(ev, k), getattr(ev, f"{k}_se", None)
        row[k] = "-" if v is None else (f"{v:.4f} ± {se:.4f}" if se is not None else f"{v:.4f}")
    return [row]


def write_theory_report(res, out_dir: str | Path) -> list[Path]:
    """Write theory.json, theory_per_timestep.png, theory_chain.png and theory.html into
    out_dir for a ``ddpm.theory.TheoryResult``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = [res.subject] + ([res.oracle] if res.oracle is not None else [])
    json_path = save_json(out / "theory.json", res.to_dict())
    curves = {m.name: torch.tensor(m.per_timestep) for m in models}
    if res.closed_form is not None:
        curves["closed form"] = torch.tensor(res.closed_form["per_timestep"])
    per_t = save_per_timestep(
        curves, out / "theory_per_timestep.png", title=f"{res.name}: -ELBO term per timestep"
    )
    bars: dict[str, tuple[float, float]] = {}
    for m in models:
        bars.update(_chain_bars(m, f"{m.name}: " if len(models) > 1 else ""))
    if res.subject.entropy is not None:
        bars["H(q(x0)), data entropy"] = (res.subject.entropy, res.subject.entropy_se)
    chain = save_bar_chain(
        bars,
        out / "theory_chain.png",
        title=f"{res.name}: ELBO vs log-likelihood (nats)",
        xlabel="nats per example",
    )
    rows = [r for m in models for r in _rows(m)]
    html = write_html(
        out / "theory.html",
        f"ddpm theory: {res.name}",
        [
            ("Summary (nats per example ± SE)", html_table(rows)),
            ("ELBO vs log-likelihood vs entropy", chain),
            ("Where the bound lives: -ELBO per timestep", per_t),
        ],
    )
    return [json_path, per_t, chain, html]
