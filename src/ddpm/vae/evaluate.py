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

import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ddpm.data import DataSpec, GaussianMixture
from ddpm.errors import ConfigError
from ddpm.likelihood.elbo import bits_per_dim
from ddpm.likelihood.evaluate import Evaluation, IwBound
from ddpm.likelihood.stats import mean_se
from ddpm.requests import VaeEvaluationRequest
from ddpm.vae.model import Vae, VaeTerms, vae_elbo_terms, vae_iw_curve


def evaluate_vae(
    model: Vae,
    x0: Tensor,
    spec: DataSpec,
    request: VaeEvaluationRequest | None = None,
    density: GaussianMixture | None = None,
    generator: torch.Generator | None = None,
    name: str = "vae",
) -> Evaluation:
    """-ELBO = rate + distortion per example (rate in closed form, distortion the mean over
    ``request.z_samples`` draws of z), bits/dim, -L_K for each K in ``request.iw`` and, with the
    data density (model space), the entropy and KL chain. x0: [N, *spec.shape] in model space."""
    request = request or VaeEvaluationRequest(iw=())
    iw, samples, max_batch = request.iw, request.z_samples, request.max_batch
    if x0.shape[0] < 2:
        raise ConfigError(
            f"evaluation needs at least 2 examples for a standard error (got {x0.shape[0]})"
        )
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
