"""The VAE baseline measured like a DDPM, and view 3 of the theory lab: a DDPM is a hierarchical
VAE whose encoder q(x_{1:T}|x_0) has no parameters; put it beside a VAE with a learned encoder.

    DDPM: rate = L_T + sum_{t>=2} L_{t-1},   distortion = L_0                   [Ho20] eq. (5)
    VAE:  rate = KL(q_phi(z|x) || N(0, I)),  distortion = E_q[-log p_theta(x|z)]  [Ale18] eq. (6)

Both come out of an ``Evaluation`` (nats per example in raw units, bits/dim, SE over examples,
IW bounds, and the entropy and KL chain when the data density is known); for a VAE, ``T`` is 0,
``per_timestep`` is empty and ``terms`` holds rate and distortion.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [BGS16] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519
    [Ale18] Alemi et al. Fixing a Broken ELBO. arXiv:1711.00464
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from ddpm.data import DataSpec, GaussianMixture, load_dataset
from ddpm.elbo import bits_per_dim
from ddpm.errors import ConfigError
from ddpm.evaluate import Evaluation, IwBound, evaluate, mean_se
from ddpm.rng import seeded_generator
from ddpm.vae import Vae, VaeTerms, num_parameters, vae_elbo_terms, vae_iw_curve


def evaluate_vae(
    model: Vae,
    x0: Tensor,
    spec: DataSpec,
    name: str = "vae",
    iw: Sequence[int] = (),
    samples: int = 16,
    density: GaussianMixture | None = None,
    generator: torch.Generator | None = None,
    max_batch: int = 4096,
) -> Evaluation:
    """-ELBO = rate + distortion per example (rate in closed form, distortion the mean over
    ``samples`` draws of z), bits/dim, -L_K for each K in ``iw`` and, with the data density
    (model space), the entropy and KL chain. x0: [N, *spec.shape] in model space."""
    if x0.shape[0] < 2:
        raise ConfigError(
            f"evaluation needs at least 2 examples for a standard error (got {x0.shape[0]})"
        )
    if any(int(k) < 1 for k in iw) or samples < 1:
        raise ConfigError(f"K and --samples must be >= 1 (got iw={list(iw)}, samples={samples})")
    start, levels, log_jac = time.perf_counter(), spec.levels, spec.log_jacobian_nats()
    step = max(1, max_batch // samples)
    with torch.no_grad():
        parts = [
            vae_elbo_terms(model, x0[i : i + step], levels, samples, generator)
            for i in range(0, x0.shape[0], step)
        ]
    terms = VaeTerms(*(torch.cat([getattr(p, f) for p in parts]) for f in ("rate", "distortion")))
    neg_elbo = terms.total() - log_jac  # [N], raw units
    nelbo, nelbo_se = mean_se(neg_elbo)
    bpd = mean_se(bits_per_dim(neg_elbo, spec.num_dims))
    out = dict(
        name=name, n=x0.shape[0], dims=spec.num_dims, T=0, neg_elbo=nelbo, neg_elbo_se=nelbo_se,
        terms={"rate": float(terms.rate.mean()),
               "distortion": float(terms.distortion.mean()) - log_jac},
        per_timestep=[], per_timestep_se=[],
        nats_per_dim=nelbo / spec.num_dims, nats_per_dim_se=nelbo_se / spec.num_dims,
        bits_per_dim=bpd[0], bits_per_dim_se=bpd[1], log_jacobian=log_jac,
    )  # fmt: skip
    nll = None
    if iw:
        curve = vae_iw_curve(model, x0, levels, tuple(int(k) for k in iw), generator, max_batch)
        out["iw"] = [IwBound(e.K, *mean_se(e.nll - log_jac)) for e in curve]
        nll = curve[-1].nll - log_jac  # the largest-K bound stands in for -log p_theta
        out["log_likelihood_exact"] = False
        out["neg_log_likelihood"], out["neg_log_likelihood_se"] = mean_se(nll)
        out["posterior_gap"], out["posterior_gap_se"] = mean_se(neg_elbo - nll)
    if density is not None:
        neg_log_q = -density.log_prob(x0.double().flatten(1)) - log_jac
        out["entropy"], out["entropy_se"] = mean_se(neg_log_q)
        out["kl_joint"], out["kl_joint_se"] = mean_se(neg_elbo - neg_log_q)
        if nll is not None:
            out["kl_marginal"], out["kl_marginal_se"] = mean_se(nll - neg_log_q)
    return Evaluation(**out, per_example=neg_elbo.cpu(), seconds=time.perf_counter() - start)


@dataclass(frozen=True)
class View3Row:
    """One model in view 3, nats per example (raw units) ± SE over the same examples."""

    name: str
    kind: str  # "ddpm" (fixed encoder, T latents) or "vae" (learned encoder, one latent)
    parameters: int
    cpu_seconds: float | None  # CPU time of training (None: not recorded)
    rate: float
    distortion: float
    neg_elbo: float
    neg_elbo_se: float
    bits_per_dim: float
    bits_per_dim_se: float
    iw_K: int | None  # the largest K evaluated
    iw_neg_log_likelihood: float | None
    iw_se: float | None


@dataclass(frozen=True)
class View3:
    """A DDPM and a VAE on the same examples: rate, distortion, bounds, entropy when known."""

    data: str
    n: int
    rows: list[View3Row]
    evaluations: list[Evaluation]
    entropy: float | None
    entropy_se: float | None

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "n": self.n,
            "rows": [asdict(r) for r in self.rows],
            "entropy": self.entropy,
            "entropy_se": self.entropy_se,
            "evaluations": [e.to_dict() for e in self.evaluations],
        }


def view3_row(ev: Evaluation, kind: str, parameters: int, cpu: float | None) -> View3Row:
    """The view-3 summary of one evaluation (DDPM: rate = L_T + diffusion KLs, distortion L_0)."""
    if kind == "ddpm":
        rate, distortion = ev.terms["prior"] + ev.terms["diffusion"], ev.terms["decoder"]
    else:
        rate, distortion = ev.terms["rate"], ev.terms["distortion"]
    top = ev.iw[-1] if ev.iw else None
    return View3Row(
        ev.name, kind, parameters, cpu, rate, distortion, ev.neg_elbo, ev.neg_elbo_se,
        ev.bits_per_dim, ev.bits_per_dim_se, top and top.K, top and top.neg_log_likelihood,
        top and top.se,
    )  # fmt: skip


def logged_cpu_seconds(run_dir: Path) -> float | None:
    """The last ``cpu_seconds`` in a run's log.jsonl (training CPU time), None if not logged."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return None
    value = None
    for line in path.read_text(errors="replace").splitlines():
        try:
            value = json.loads(line).get("cpu_seconds", value)
        except (json.JSONDecodeError, AttributeError):
            continue
    return value


def compare_runs(
    ddpm_dir: str | Path,
    vae_dir: str | Path,
    n: int | None = None,
    iw: Sequence[int] = (1, 10, 100, 1000),
    ddpm_iw: Sequence[int] = (),
    seed: int = 0,
    device: str | torch.device = "cpu",
    ddpm_cpu_seconds: float | None = None,
    max_batch: int = 4096,
    progress: bool = False,
) -> View3:
    """View 3: a trained DDPM and a trained VAE on the first n test examples of their (same)
    data: parameters, training CPU time, rate, distortion, -ELBO, bits/dim, IW bounds (``iw``
    for the VAE, ``ddpm_iw`` for the DDPM, whose chains cost T network calls each) and the data
    entropy when the density is known. ddpm_cpu_seconds overrides what the DDPM's log holds."""
    from ddpm import runs
    from ddpm.vae_train import load_vae_run

    if n is not None and n < 2:
        raise ConfigError(f"--n must be >= 2 examples (got {n})")
    run, vrun = runs.load_run(ddpm_dir, device=device), load_vae_run(vae_dir, device=device)
    if run.config.data != vrun.config.data:
        raise ConfigError(
            f"{ddpm_dir} was trained on {run.config.data.name!r} but {vae_dir} on "
            f"{vrun.config.data.name!r} (or other data settings); compare runs on the same data"
        )
    data = load_dataset(run.config.data)
    x0 = data.test_examples[:n].to(device)
    density = data.density.to(device) if data.density is not None else None
    ddpm_ev = evaluate(
        run.diffusion, run.model, x0, data.spec, name=f"DDPM ({run.run_dir.name})",
        iw=tuple(ddpm_iw), density=density, generator=seeded_generator(seed, device),
        max_batch=max_batch, progress=progress,
    )  # fmt: skip
    vae_ev = evaluate_vae(
        vrun.model, x0, data.spec, name=f"VAE ({vrun.run_dir.name})", iw=tuple(iw),
        density=density, generator=seeded_generator(seed, device), max_batch=max_batch,
    )  # fmt: skip
    cpu = ddpm_cpu_seconds if ddpm_cpu_seconds is not None else logged_cpu_seconds(run.run_dir)
    rows = [
        view3_row(ddpm_ev, "ddpm", num_parameters(run.model), cpu),
        view3_row(vae_ev, "vae", num_parameters(vrun.model), vrun.cpu_seconds),
    ]
    return View3(
        data.spec.name, x0.shape[0], rows, [ddpm_ev, vae_ev], vae_ev.entropy, vae_ev.entropy_se
    )


def format_view3(v: View3) -> str:
    """The view-3 table as text."""
    head = f"view 3 on {v.data}: n = {v.n}   (nats per example ± SE; CPU s of training)"
    lines = [head, f"  {'model':<24s}{'params':>9s}{'CPU s':>9s}{'rate':>11s}{'distortion':>12s}"
             f"{'-ELBO':>21s}{'bits/dim':>18s}{'-log IW bound':>26s}"]  # fmt: skip
    for r in v.rows:
        cpu = "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.0f}"
        iw = "-" if r.iw_K is None else f"K={r.iw_K} {r.iw_neg_log_likelihood:.3f} ± {r.iw_se:.3f}"
        lines.append(
            f"  {r.name[:23]:<24s}{r.parameters:>9d}{cpu:>9s}{r.rate:>11.3f}{r.distortion:>12.3f}"
            f"{r.neg_elbo:>12.3f} ± {r.neg_elbo_se:<6.3f}{r.bits_per_dim:>9.4f} ± "
            f"{r.bits_per_dim_se:<6.4f}{iw:>26s}"
        )
    if v.entropy is not None:
        lines.append(f"  data entropy H(q(x0)) {v.entropy:.4f} ± {v.entropy_se:.4f}")
    vae = v.evaluations[1]
    if vae.iw:
        curve = ", ".join(f"K={b.K}: {b.neg_log_likelihood:.3f}" for b in vae.iw)
        lines.append(f"  VAE -L_K: {curve}")
    return "\n".join(lines)


def evaluate_vae_run(
    run_dir: str | Path,
    split: str = "test",
    n: int | None = None,
    iw: Sequence[int] = (1, 10, 100, 1000),
    samples: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    max_batch: int = 4096,
    out_dir: str | Path | None = None,
) -> tuple[Evaluation, Path]:
    """Evaluate a VAE run (the weights ``load_vae_run`` picks: the best by validation when the
    run validated) on its data split (first n examples); write eval_<split>.json, which names
    the weights scored, into out_dir (default: the run folder). Returns the evaluation and the
    JSON path."""
    from ddpm import rundir
    from ddpm.checkpoint import save_json
    from ddpm.vae_train import load_config, load_vae_run

    if split not in ("test", "train"):
        raise ConfigError(f"--split {split!r}: choose 'test' or 'train'")
    if n is not None and n < 2:
        raise ConfigError(f"--n must be >= 2 examples (got {n})")
    load_config(run_dir)  # a folder that holds no VAE run is named so before it is locked
    path = Path(out_dir if out_dir is not None else run_dir) / f"eval_{split}.json"
    with rundir.writing_outputs(run_dir, [path], "vae evaluate"):  # as `ddpm evaluate` writes
        run = load_vae_run(run_dir, device=device)
        data = load_dataset(run.config.data)
        x0 = getattr(data, split)[:n].to(device)
        density = data.density.to(device) if data.density is not None else None
        g = seeded_generator(seed, device)
        ev = evaluate_vae(run.model, x0, data.spec, run.run_dir.name, iw, samples, density, g,
                          max_batch)  # fmt: skip
        return ev, save_json(path, {**ev.to_dict(), "weights": run.weights})
