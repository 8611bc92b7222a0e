"""Files of a theory-lab report: JSON, per-timestep plots (log t), 'ELBO vs log-likelihood'
chart, the paired per-step gap to the Bayes-optimal model, T-sweeps, HTML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddpm.report.html import html_table, write_html
from ddpm.report.plots import save_bar_chain, save_per_timestep, save_sweep
from ddpm.storage import save_json


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
    """Write theory.json, theory_per_timestep.png, theory_chain.png, theory_mse.png,
    theory_gap_per_timestep.png (a trained model beside the Bayes-optimal one) and theory.html
    into out_dir for a ``ddpm.likelihood.theory.TheoryResult``; returns the paths."""
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
    mse = save_mse_per_timestep(models, out / "theory_mse.png", res.name)
    rows = [r for m in models for r in _rows(m)]
    sections = [
        ("Summary (nats per example ± SE)", html_table(rows)),
        ("ELBO vs log-likelihood vs entropy", chain),
        ("Where the bound lives: -ELBO per timestep", per_t),
        ("Coarse to fine: prediction errors per timestep", mse),
    ]
    paths = [json_path, per_t, chain, mse]
    if res.oracle is not None:
        gap, se = res.gap_per_timestep()
        band = res.gap_band()
        gap_png = save_per_timestep(
            {"trained - Bayes-optimal": gap},
            out / "theory_gap_per_timestep.png",
            logy=False,
            title=f"{res.name}: where the trained model loses its nats (paired, ± SE)",
            se={"trained - Bayes-optimal": se},
            span=(
                band["t_lo"],
                band["t_hi"],
                f"t = {band['t_lo']}..{band['t_hi']}: half of the gap",
            ),
        )
        sections.append(("Where the trained model loses its nats", gap_png))
        paths.append(gap_png)
    html = write_html(out / "theory.html", f"ddpm theory: {res.name}", sections)
    return [*paths, html]


def save_mse_per_timestep(models, path: str | Path, name: str) -> Path:
    """eps-MSE and x0-MSE per dimension against t (log axes) for each evaluation, with the
    data variance as the x0-MSE's ceiling."""
    curves, ses = {}, {}
    for m in models:
        for key, label in (("eps", "eps-MSE"), ("x0", "x0-MSE")):
            curves[f"{m.name}: {label}"] = torch.tensor(getattr(m, f"per_timestep_{key}_mse"))
            ses[f"{m.name}: {label}"] = torch.tensor(getattr(m, f"per_timestep_{key}_mse_se"))
    var = models[0].data_var
    return save_per_timestep(
        curves,
        path,
        ylabel="squared error per dimension",
        title=f"{name}: prediction errors per step (Var(x0) = {var:.3g})",
        se=ses,
    )


def write_sweep_report(sweep, out_dir: str | Path) -> list[Path]:
    """sweep.json, sweep.png (-ELBO and KL_joint against T) and sweep.html for a
    ``ddpm.likelihood.sweep.Sweep``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = save_json(out / "sweep.json", sweep.to_dict())
    curves, rows, entropy = {}, [], None
    for v in sweep.variances:
        pts = sweep.curve(v)
        evs = [p.report.subject for p in pts]
        cfs = [p.report.closed_form for p in pts]
        exact = cfs[0] is not None
        kl = [p.kl_joint() for p in pts]
        curves[v] = {
            "T": np.array([p.T for p in pts], dtype=float),
            "neg_elbo": np.array([e.neg_elbo for e in evs]),
            "neg_elbo_se": np.array([e.neg_elbo_se for e in evs]),
            "closed_form": np.array([c["neg_elbo"] for c in cfs]) if exact else None,
            "neg_log_likelihood": (
                np.array([c["neg_log_likelihood"] for c in cfs]) if exact else None
            ),
            "kl_joint": np.array([k[0] for k in kl]),
            "kl_joint_se": np.array([k[1] for k in kl]),
        }
        entropy = cfs[0]["entropy"] if exact else evs[0].entropy
        rows += [sweep_row(p) for p in pts]
    png = save_sweep(curves, out / "sweep.png", entropy=entropy, title=f"{sweep.name}: T-sweep")
    html = write_html(
        out / "sweep.html",
        f"ddpm theory: {sweep.name}, bound against the number of steps",
        [("T-sweep (nats per example ± SE)", html_table(rows)), ("-ELBO and KL_joint vs T", png)],
    )
    return [json_path, png, html]


def sweep_row(p) -> dict:
    """One table row of a sweep point: measured ± SE, and closed forms where they exist."""
    ev, cf = p.report.subject, p.report.closed_form
    row = {
        "variance": p.variance,
        "T": p.T,
        "-ELBO": f"{ev.neg_elbo:.4f} ± {ev.neg_elbo_se:.4f}",
        "L_T": f"{ev.terms['prior']:.4f}",
        "diffusion": f"{ev.terms['diffusion']:.4f}",
        "L_0": f"{ev.terms['decoder']:.4f}",
        "KL_joint (-ELBO - H)": f"{ev.kl_joint:.4f} ± {ev.kl_joint_se:.4f}",
        "KL_joint (steps)": f"{p.joint.total:.5f} ± {p.joint.total_se:.5f}",
    }
    if cf is not None:
        row["-ELBO closed"] = f"{cf['neg_elbo']:.4f}"
        row["KL_joint closed"] = f"{cf['kl_joint']:.5f}"
        row["-log p closed"] = f"{cf['neg_log_likelihood']:.4f}"
    row["seconds"] = f"{p.seconds:.1f}"
    return row
