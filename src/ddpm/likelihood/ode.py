"""The exact likelihood of the probability-flow ODE that shares a DDPM's network [Song21].

The model. Along the continuous-time process of ``ddpm.process.continuous`` the densities q_s of x_s
are also carried by a deterministic flow ([Song21] eq. (13) with f = -1/2 beta x, g^2 = beta and the
score grad log q_s(x) = -E[eps | x_s = x] / sqrt(1 - alpha_bar(s))):
    dx/ds = v(x, s) = -1/2 beta(s) (x - eps_hat(x, s) / sqrt(1 - alpha_bar(s))),           (F1)

with the network's eps_hat in place of E[eps | x_s]. Started from N(0, I) at s_end and run back
to s_min, (F1) defines a continuous normalising flow p_ODE, whose log-density follows from the
instantaneous change of variables ([CRBD18] Thm. 1, [Song21] eq. (39)):

    log p_ODE(x) = log N(x(s_end); 0, I) + int_{s_min}^{s_end} div_x v(x(s), s) ds,         (F2)

where x(s) solves (F1) from x(s_min) = x. p_ODE is a different model from the DDPM's p_theta(x_0)
(the reverse Markov chain that the ELBO bounds); the two only share the network. Its likelihood
is reported beside -ELBO and the IW bounds, never as their value. With the Bayes-optimal eps_hat
the flow carries q_{s_min} to q_{s_end} exactly: (F2) with log q_{s_end} in place of the prior
is log q_{s_min}(x), up to the solver's tolerance (tested for Gaussian data).

Choices:
- s_min = 1/T by default (``OdeConfig.s_min``): the smallest noise level the network was trained
  at (alpha_bar(1/T) ~ alpha_bar_1), so p_ODE is a density of x at s_min. [Song21] use 1e-5 for
  networks trained in continuous time; a DDPM's network has never seen a step t < 1.
- s_end = ``ContinuousSchedule.s_end`` (1 for linear, 1 - 1/T for cosine) with the prior N(0, I)
  there, the DDPM's own p(x_T). The prior is part of the model, not an approximation in it; it
  differs from q_{s_end} through sqrt(alpha_bar(s_end)) (0.0066 for linear at T = 1000, 0.0015
  for cosine).
- Network time: process step t = s T, a float, passed through ``Diffusion.net_t`` (the identity
  for runs of this package; a time map is read by linear interpolation). Whatever the network
  predicts (eps, x0 or v; a learned variance is ignored), its output becomes eps_hat at
  alpha_bar(s) by the identities of ``ddpm.process.forward``. x0_hat is never clipped: clipping is a
  choice of p_theta's mean (``ddpm evaluate --clip-denoised``), not part of the flow.
- Divergence: exact (one backward pass per dimension and evaluation; the default up to
  EXACT_MAX_DIMS dimensions) or Hutchinson's estimator [Hut89] as in FFJORD [GCBSD19]:
  div v = E_z[z^T (dv/dx) z] for Rademacher z, with K probes per example held fixed over the
  solve, so each example's estimate of the integral is unbiased; the spread over its K probes
  gives the estimator's own standard error.
- Discrete data (``DataSpec.levels``): uniform dequantization [TOB16] y = x_0 + w (u - 1/2),
  u ~ U[0, 1)^D, w the bin width. Since P(x_0) = int_bin p_ODE(y) dy = w^D E_u[p_ODE(y)], Jensen
  gives -log P(x_0) <= E_u[-log p_ODE(y)] - D log w: an upper bound on the nats of the discrete
  values, the units of the ELBO's discrete decoder (estimated with one u per example).
- Continuous data: the log-Jacobian of the scaling into model space is added, as in
  ``ddpm.likelihood.evaluate``.
- Solver: scipy.integrate.solve_ivp (adaptive; RK45, rtol = atol = 1e-5 by default as in
  [Song21]) on a float64 state [x (B D), integral of the divergence (B K)]; the examples of a
  batch share the steps and the error norm (RMS over the whole state). The number of function
  evaluations (NFE) is reported.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [Song21] Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole. Score-Based Generative Modeling
             through Stochastic Differential Equations. arXiv:2011.13456
    [CRBD18] Chen, Rubanova, Bettencourt, Duvenaud. Neural Ordinary Differential Equations.
             arXiv:1806.07366
    [GCBSD19] Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud. FFJORD: Free-form Continuous
              Dynamics for Scalable Reversible Generative Models. arXiv:1810.01367
    [Hut89] Hutchinson. A stochastic estimator of the trace of the influence matrix for Laplacian
            smoothing splines. Comm. Statist. Simulation Comput. 18 (1989).
    [TOB16] Theis, van den Oord, Bethge. A note on the evaluation of generative models.
            arXiv:1511.01844
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ddpm.config import EXACT_MAX_DIMS, OdeConfig
from ddpm.errors import ConfigError
from ddpm.likelihood.elbo import bits_per_dim
from ddpm.likelihood.stats import mean_se
from ddpm.model import Model
from ddpm.process.continuous import ContinuousSchedule
from ddpm.process.diffusion import Denoiser, Diffusion, denoise
from ddpm.process.forward import eps_from_x0_at, x0_from_v_at
from ddpm.process.gaussian import gaussian_log_prob
from ddpm.process.reverse import split_output
from ddpm.process.rng import Noise, normal
from ddpm.progress import progress_bar

STREAM_DEQUANTIZATION, STREAM_PROBES = 16, 17  # keyed-noise streams (ddpm.process.rng uses 0..3)


def eps_from_output(
    prediction: str, head: Tensor, xt: Tensor, alpha_bar: Tensor, one_minus_alpha_bar: Tensor
) -> Tensor:
    """eps_hat from the network's mean head for ``prediction`` at noise level alpha_bar."""
    if prediction == "eps":
        return head
    x0_hat = head if prediction == "x0" else x0_from_v_at(alpha_bar, one_minus_alpha_bar, xt, head)
    return eps_from_x0_at(alpha_bar, one_minus_alpha_bar, xt, x0_hat)


@dataclass(frozen=True, eq=False)
class ProbabilityFlow:
    """The ODE (F1) of a network: the process it was trained on (parameterisation, time map) and
    the continuous extension of its schedule."""

    diffusion: Diffusion
    schedule: ContinuousSchedule

    def __post_init__(self) -> None:
        if self.schedule.T != self.diffusion.T:
            raise ConfigError(
                f"continuous schedule has T = {self.schedule.T} but the process {self.diffusion.T}"
            )

    @classmethod
    def of(cls, model: Model) -> ProbabilityFlow:
        """The flow of a model whose schedule has a continuous form (``Model.continuous``)."""
        if model.continuous is None:
            raise ConfigError(
                f"{model.name}: the probability-flow likelihood needs the continuous form of the "
                "schedule (linear or cosine, not respaced); this model's process has none"
            )
        return cls(model.diffusion, model.continuous)

    def s_min(self, cfg: OdeConfig) -> float:
        return cfg.s_min if cfg.s_min is not None else 1.0 / self.schedule.T

    def velocity(self, model: Denoiser, x: Tensor, s: float) -> Tensor:
        """v(x, s) of (F1). x: [B, ...] -> [B, ...] in x's dtype; the network at step t = s T."""
        t = torch.full((x.shape[0],), s * self.schedule.T, dtype=torch.float64, device=x.device)
        alpha_bar, one_minus_alpha_bar = self.schedule.levels(t, x)
        param = self.diffusion.param
        head, _ = split_output(param, denoise(self.diffusion, model, x, t), x)
        eps_hat = eps_from_output(param.prediction, head, x, alpha_bar, one_minus_alpha_bar)
        beta = float(self.schedule.beta(torch.tensor(s, dtype=torch.float64)))
        return -0.5 * beta * (x - eps_hat / one_minus_alpha_bar.sqrt())


def divergence(v: Tensor, x: Tensor, probes: Tensor | None = None) -> Tensor:
    """div_x v per example: exact ([B, 1], one backward pass per dimension) or Hutchinson's
    z^T (dv/dx) z for each probe z = probes[:, k] ([B, K]). v = v(x) must not mix examples."""
    if probes is None:
        vf = v.flatten(1)
        diag = [
            torch.autograd.grad(vf[:, d].sum(), x, retain_graph=True)[0].flatten(1)[:, d]
            for d in range(vf.shape[1])
        ]
        return torch.stack(diag, dim=1).sum(dim=1, keepdim=True)
    out = []
    for k in range(probes.shape[1]):
        z = probes[:, k].to(v)
        vjp = torch.autograd.grad(v, x, grad_outputs=z, retain_graph=True)[0]  # z^T dv/dx
        out.append((vjp * z).flatten(1).sum(dim=1))
    return torch.stack(out, dim=1)


@dataclass(frozen=True, eq=False)
class FlowSolution:
    """(F2) for a batch, float64 in model space."""

    log_prob: Tensor  # [B] log p_ODE(x) (the mean over the probes)
    prior_log_prob: Tensor  # [B] log N(x(s_end); 0, I)
    delta_log_prob: Tensor  # [B, K] int div v ds per probe (K = 1: exact divergence)
    x_end: Tensor  # [B, ...] x(s_end)
    nfe: int  # evaluations of (F1)


def flow_log_prob(
    flow: ProbabilityFlow,
    model: Denoiser,
    x: Tensor,
    cfg: OdeConfig | None = None,
    probes: Tensor | None = None,
) -> FlowSolution:
    """log p_ODE(x), (F2), for each example of x [B, ...] (model space): solves (F1) and the
    divergence integral from s_min to s_end. The network runs in x's dtype and device.
    probes: [B, K, ...] Rademacher vectors for Hutchinson's estimator; None: exact divergence.
    cfg: solver settings (default ``OdeConfig()``)."""
    from scipy.integrate import solve_ivp

    cfg = cfg or OdeConfig()
    b, shape = x.shape[0], x.shape[1:]
    n_x = x[0].numel() * b
    k = 1 if probes is None else probes.shape[1]

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        xs = torch.from_numpy(y[:n_x]).reshape(x.shape).to(dtype=x.dtype, device=x.device)
        with torch.enable_grad():
            xs.requires_grad_(True)
            v = flow.velocity(model, xs, s)
            div = divergence(v, xs, probes)
        return np.concatenate([_numpy(v).ravel(), _numpy(div).ravel()])

    y0 = np.concatenate([_numpy(x).ravel(), np.zeros(b * k)])
    s_min, s_end = flow.s_min(cfg), flow.schedule.s_end
    if not s_min < s_end:
        raise ConfigError(f"ODE s_min = {s_min} must be below the end of the process {s_end}")
    sol = solve_ivp(rhs, (s_min, s_end), y0, method=cfg.method, rtol=cfg.rtol, atol=cfg.atol)
    if not sol.success:
        raise ConfigError(
            f"ODE solver {cfg.method} failed ({sol.message}); try other tolerances rtol/atol "
            "or another method of the OdeConfig"
        )
    y = torch.from_numpy(sol.y[:, -1]).to(x.device)
    x_end = y[:n_x].reshape(b, *shape)
    delta = y[n_x:].reshape(b, k)
    zero = torch.zeros_like(x_end)
    prior = gaussian_log_prob(x_end, zero, zero).flatten(1).sum(dim=1)
    return FlowSolution(prior + delta.mean(dim=1), prior, delta, x_end, int(sol.nfev))


def _numpy(v: Tensor) -> np.ndarray:
    return v.detach().to(device="cpu", dtype=torch.float64).numpy()


@dataclass(frozen=True)
class OdeLikelihood:
    """-log p_ODE(x_0) of the probability-flow ODE sharing the network, in nats per example in
    the data's units (discrete data: a dequantized upper bound on the nats of the values). Not
    the DDPM's likelihood: reported beside -ELBO, never as its value."""

    n: int
    dims: int
    neg_log_likelihood: float
    neg_log_likelihood_se: float  # over examples (includes the probes' noise)
    bits_per_dim: float
    bits_per_dim_se: float
    divergence: str  # 'exact' | 'hutchinson'
    probes: int  # K per example (1 for the exact divergence)
    probe_se: float | None  # the probes' share of the SE of the mean (Hutchinson, K >= 2)
    dequantization: float  # -D log(bin width) nats added per example (0: continuous data)
    log_jacobian: float  # per-example log|d model / d raw| subtracted, as in Evaluation
    schedule: str
    s_min: float
    s_end: float
    method: str
    rtol: float
    atol: float
    nfe: int  # evaluations of (F1), summed over batches
    batches: int
    seconds: float
    per_example: Tensor | None = field(default=None, repr=False)  # [N] nats (not in JSON)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(dataclasses.replace(self, per_example=None))
        del d["per_example"]
        return d


def ode_likelihood(
    model: Model,
    x0: Tensor,
    cfg: OdeConfig | None = None,
    generator: Noise = None,
    max_batch: int = 1024,
    progress: bool = False,
) -> OdeLikelihood:
    """-log p_ODE(x_0) for every example of x0 [N, *model.shape] (model space), (F2), of the
    flow that shares the model's network (``ProbabilityFlow.of``): the mean with its SE, in nats
    per example and bits/dim (the data of ``model.spec``), with NFE and timing.

    generator: the dequantization noise u [N, ...] and the probes [N, K, ...] come from
    standard normals z of ``ddpm.process.rng.normal`` (u = Phi(z), probe = sign(z)), keyed by
    example index and probe with a ``KeyedNoise``, so an example's numbers do not depend on n or
    ``max_batch`` beyond the solver's tolerance (a batch shares its steps). cfg: default
    ``OdeConfig()``."""
    cfg = cfg or OdeConfig()
    flow, spec = ProbabilityFlow.of(model), model.spec
    n = x0.shape[0]
    if n < 2:
        raise ConfigError(f"the ODE likelihood needs at least 2 examples for an SE (got {n})")
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1 (got {max_batch})")
    start = time.perf_counter()
    dims = spec.num_dims
    how = cfg.divergence_for(dims)
    example = torch.arange(n, device=x0.device)
    x, dequantization = x0, 0.0
    if spec.discrete:  # uniform dequantization within each value's bin: u = Phi(z) ~ U(0, 1)
        w = spec.bin_width
        z = normal(generator, x0.double(), example, 0, 0, STREAM_DEQUANTIZATION)
        u = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        x, dequantization = x0 + (w * (u - 0.5)).to(x0.dtype), -dims * math.log(w)
    probes = None
    if how == "hutchinson":  # Rademacher: the sign of a standard normal
        draws = [normal(generator, x0, example, 0, k, STREAM_PROBES) for k in range(cfg.probes)]
        probes = torch.where(torch.stack(draws, dim=1) >= 0, 1.0, -1.0).to(x0.dtype)
    log_prob, delta, nfe, batches = [], [], 0, 0
    with progress_bar(-(-n // max_batch), "ODE likelihood", enabled=progress) as bar:
        for i in range(0, n, max_batch):
            part = None if probes is None else probes[i : i + max_batch]
            sol = flow_log_prob(flow, model.net, x[i : i + max_batch], cfg, part)
            log_prob.append(sol.log_prob)
            delta.append(sol.delta_log_prob)
            nfe, batches = nfe + sol.nfe, batches + 1
            bar.update(1)
    log_jac = spec.log_jacobian_nats()
    nll = -torch.cat(log_prob) + dequantization - log_jac  # [N] nats, the data's units
    delta = torch.cat(delta)
    k = delta.shape[1]
    probe_se = float(delta.var(dim=1).sum().sqrt() / (math.sqrt(k) * n)) if k > 1 else None
    mean, se = mean_se(nll)
    bpd, bpd_se = mean_se(bits_per_dim(nll, dims))
    return OdeLikelihood(
        n=n,
        dims=dims,
        neg_log_likelihood=mean,
        neg_log_likelihood_se=se,
        bits_per_dim=bpd,
        bits_per_dim_se=bpd_se,
        divergence=how,
        probes=k,
        probe_se=probe_se,
        dequantization=dequantization,
        log_jacobian=log_jac,
        schedule=flow.schedule.name,
        s_min=flow.s_min(cfg),
        s_end=flow.schedule.s_end,
        method=cfg.method,
        rtol=cfg.rtol,
        atol=cfg.atol,
        nfe=nfe,
        batches=batches,
        seconds=time.perf_counter() - start,
        per_example=nll.detach().cpu(),
    )


__all__ = [
    "EXACT_MAX_DIMS",
    "FlowSolution",
    "OdeConfig",
    "OdeLikelihood",
    "ProbabilityFlow",
    "divergence",
    "eps_from_output",
    "flow_log_prob",
    "ode_likelihood",
]
