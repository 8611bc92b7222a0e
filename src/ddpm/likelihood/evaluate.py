"""The likelihood report of a model on data: -ELBO term by term, bits/dim, importance-weighted
bounds, and, for data of known density, the KL chain

    KL(q(x_{0:T}) || p_theta(x_{0:T})) = E[-ELBO] - H(q(x_0))                          (kl_joint)
                                       = E_x0[KL(q(x_{1:T}|x_0) || p_theta(x_{1:T}|x_0))]
                                         + KL(q(x_0) || p_theta(x_0))                  (kl_marginal)
                                       >= KL(q(x_0) || p_theta(x_0)) >= 0.

One evaluator serves trained networks and Bayes-optimal oracles alike: it only calls
``model(x_t, t)``. The work is per example (``example_terms``) and the report is built from the
per-example terms (``summarise``), so examples can be evaluated in slices or on several
processes and gathered; with ``ddpm.process.rng.KeyedNoise`` an example's draws are keyed by
(seed, example index, t, chain) and its terms do not depend on how the examples were split.
Every mean comes with its standard error over examples; the KLs are estimated from
per-example differences on the same x_0 (paired), which removes most of the data variance.

Units: nats per example in the data's own units. For continuous data scaled into model space
(x = (raw - shift) / scale) the log-Jacobian -D log(scale) is added to every log-density; for
discrete data the decoder gives probabilities of the discrete values directly and nothing is added.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [BGS16] Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. arXiv:1509.00519
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ddpm.data import GaussianMixture
from ddpm.errors import ConfigError, NonFiniteError
from ddpm.likelihood.bounds import iw_curve
from ddpm.likelihood.elbo import bits_per_dim, elbo_mc, elbo_terms, log_strata
from ddpm.likelihood.stats import mean_se
from ddpm.model import Model
from ddpm.process.rng import Noise
from ddpm.progress import progress_bar
from ddpm.requests import EvaluationRequest

if TYPE_CHECKING:
    from ddpm.likelihood.ode import OdeLikelihood


@dataclass(frozen=True)
class IwBound:
    """-log of the K-sample importance-weighted bound, mean over examples, in nats."""

    K: int
    neg_log_likelihood: float
    se: float


@dataclass(frozen=True)
class Evaluation:
    """Likelihood report for one model on one set of examples (nats per example unless said)."""

    name: str
    n: int
    dims: int
    T: int
    neg_elbo: float
    neg_elbo_se: float
    terms: dict[str, float]  # prior, diffusion, decoder: sum to neg_elbo (empty: 'mc' alone)
    per_timestep: list[float]  # length T; entry t-1: the term of step t (empty: 'mc' alone)
    per_timestep_se: list[float]
    nats_per_dim: float
    nats_per_dim_se: float
    bits_per_dim: float
    bits_per_dim_se: float
    log_jacobian: float  # per-example log|d model / d raw| added to the log-densities
    iw: list[IwBound] = field(default_factory=list)
    mc_timesteps: int | None = None  # timesteps (strata) of the Monte Carlo estimate, if run
    neg_elbo_mc: float | None = None  # its value (unbiased for neg_elbo) and SE
    neg_elbo_mc_se: float | None = None
    entropy: float | None = None
    entropy_se: float | None = None
    kl_joint: float | None = None
    kl_joint_se: float | None = None
    kl_marginal: float | None = None
    kl_marginal_se: float | None = None
    neg_log_likelihood: float | None = None
    neg_log_likelihood_se: float | None = None
    log_likelihood_exact: bool | None = None
    posterior_gap: float | None = None  # kl_joint - kl_marginal = E[-ELBO] - E[-log p_theta]
    posterior_gap_se: float | None = None
    # Prediction errors at the ELBO's x_t draws, per dimension, model space (length T each):
    per_timestep_eps_mse: list[float] | None = None  # E|eps_hat(x_t, t) - eps|^2 / D
    per_timestep_eps_mse_se: list[float] | None = None
    per_timestep_x0_mse: list[float] | None = None  # E|x0_hat(x_t, t) - x_0|^2 / D
    per_timestep_x0_mse_se: list[float] | None = None
    data_var: float | None = None  # Var(x_0) of the examples, mean over dimensions: x0-MSE's scale
    ode: OdeLikelihood | None = None  # probability-flow ODE: another model (ddpm.likelihood.ode)
    seconds: float = 0.0
    clip: list[float] | None = None  # range x0_hat was clipped to in the p_theta scored
    estimator: str = "exact"  # neg_elbo from the T-step loop, or 'mc': the Monte Carlo estimate
    per_example: Tensor | None = field(default=None, repr=False)  # [N] -ELBO (not in JSON)
    per_example_terms: Tensor | None = field(default=None, repr=False)  # [N, T] (not in JSON)

    def to_dict(self) -> dict:
        d = asdict(dataclasses.replace(self, per_example=None, per_example_terms=None, ode=None))
        del d["per_example"], d["per_example_terms"]
        d["coarse_to_fine"] = coarse_to_fine(self)
        d["ode"] = self.ode.to_dict() if self.ode is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        """The inverse of ``to_dict`` (keys it does not know, from other reports, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"per_example", "ode"}
        kept = {k: v for k, v in d.items() if k in names}
        kept["iw"] = [IwBound(**b) for b in kept.get("iw", [])]
        return cls(**kept)


@dataclass(frozen=True)
class ExampleTerms:
    """What ``evaluate`` reports, per example, before averaging: float64 nats in model space
    (no log-Jacobian). Row n is example n, so the terms of consecutive slices of the examples
    (shards, under torchrun) concatenate into the terms of the whole set."""

    x0_flat: Tensor  # [N, D] the examples (for Var(x_0), the scale of x0_mse)
    prior_kl: Tensor | None = None  # [N] L_T  (None: the Monte Carlo estimate alone)
    per_timestep: Tensor | None = None  # [N, T] L_0 (column 0) and L_{t-1} (column t-1)
    eps_mse: Tensor | None = None  # [N, T] |eps_hat - eps|^2 / D at the same x_t draws
    x0_mse: Tensor | None = None  # [N, T] |x0_hat - x_0|^2 / D
    iw_nll: Tensor | None = None  # [N, len(Ks)] -L_K for each K of the bounds (ascending)
    mc: Tensor | None = None  # [N] stratified K-timestep estimate of -ELBO
    exact_nll: Tensor | None = None  # [N] exact -log p_theta(x_0)
    neg_log_q: Tensor | None = None  # [N] -log q(x_0) of the known density

    def map(self, fn: Callable[[Tensor], Tensor]) -> ExampleTerms:
        """fn applied to every per-example tensor (rows are examples)."""
        return ExampleTerms(
            **{f.name: None if (v := getattr(self, f.name)) is None else fn(v)
               for f in dataclasses.fields(self)}
        )  # fmt: skip


def check_examples(n: int) -> None:
    """Refuse, before any work, an evaluation of fewer than 2 examples."""
    if n < 2:
        raise ConfigError(f"evaluation needs at least 2 examples for a standard error (got {n})")


def example_terms(
    model: Model,
    x0: Tensor,
    request: EvaluationRequest | None = None,
    density: GaussianMixture | None = None,
    generator: Noise = None,
    progress: bool = False,
) -> ExampleTerms:
    """Every per-example quantity ``evaluate`` reports (see its arguments), for x0 [N, ...]:
    the T-step loop and/or the Monte Carlo estimate as the request's estimator says, and the
    importance-weighted bounds it asks for."""
    request = request or EvaluationRequest()
    T, name, max_batch = model.T, model.name, request.max_batch
    terms = None
    if request.exact:
        with progress_bar(T, f"{name}: ELBO", "t", enabled=progress) as bar:
            terms = elbo_terms(
                model, x0, generator=generator, max_batch=max_batch,
                on_chunk=lambda k: bar.update(min(k, bar.total - bar.n)),  # fractions may round up
            )  # fmt: skip
    iw_nll = None
    if request.iw:
        iw = tuple(request.iw)
        b = min(x0.shape[0], max_batch)  # examples per slice, as iw_log_weights slices them
        groups = -(-x0.shape[0] // b) * -(-max(iw) // max(1, max_batch // b))
        with progress_bar(groups * T, f"{name}: IW K<={max(iw)}", enabled=progress) as bar:
            curve = iw_curve(model, x0, iw, generator, max_batch, on_step=bar.update)
        iw_nll = torch.stack([est.nll for est in curve], dim=1)
    mc = None
    if request.mc is not None:
        strata = log_strata(T, request.mc)
        with progress_bar(len(strata) - 1, f"{name}: ELBO (MC)", "t", enabled=progress) as bar:
            mc = elbo_mc(model, x0, request.mc, generator, max_batch, strata)
            bar.update(len(strata) - 1)
    return ExampleTerms(
        x0_flat=x0.double().flatten(1),
        prior_kl=None if terms is None else terms.prior_kl,
        per_timestep=None if terms is None else terms.per_timestep,
        eps_mse=None if terms is None else terms.eps_mse,
        x0_mse=None if terms is None else terms.x0_mse,
        iw_nll=iw_nll,
        mc=mc,
        neg_log_q=None if density is None else -density.log_prob(x0.double().flatten(1)),
    )


COARSE_TO_FINE = (0.5, 0.1, 0.01)  # shares of Var(x_0) left undecided


def coarse_to_fine(ev: Evaluation) -> dict[str, int | None] | None:
    """For each share f of COARSE_TO_FINE, the largest t at which the x0-MSE has fallen to
    f * Var(x_0): the reverse chain, running from t = T down, has fixed all but f of the data
    variance by then (large shares: the coarse shape; small shares: the detail). None where it
    never falls that far, or when no errors were recorded."""
    if ev.per_timestep_x0_mse is None or not ev.data_var:
        return None
    mse = torch.tensor(ev.per_timestep_x0_mse, dtype=torch.float64)
    out: dict[str, int | None] = {}
    for f in COARSE_TO_FINE:
        below = (mse <= f * ev.data_var).nonzero()
        out[str(f)] = int(below.max()) + 1 if len(below) else None
    return out


def _se_columns(x: Tensor) -> list[float]:
    """Standard error of each column's mean: [N, T] -> T values."""
    return (x.std(dim=0) / math.sqrt(x.shape[0])).tolist()


def evaluate(
    model: Model,
    x0: Tensor,
    request: EvaluationRequest | None = None,
    density: GaussianMixture | None = None,
    exact_log_prob: Callable[[Tensor], Tensor] | None = None,
    generator: Noise = None,
    progress: bool = False,
) -> Evaluation:
    """Evaluate -ELBO (every term, or the Monte Carlo estimate: ``request.estimator``), IW
    bounds for each K in ``request.iw`` and, when the data density is known (``density``, model
    space), the entropy and the KL chain. The model is scored as it is (its clipping and
    decoder levels); the request's data, split, n, steps and clip are the job's to apply.

    x0: [N, *model.shape] in model space. exact_log_prob(x0) -> [N], model space: the model's
    exact log p_theta(x_0) where tractable (the Gaussian oracle); otherwise the largest-K IW
    bound stands in for it, and ``log_likelihood_exact`` is False. progress: show progress bars.
    generator: a ``ddpm.process.rng.KeyedNoise`` keys every draw by (seed, example index, t,
    chain), so each example's numbers are the same for any n, max_batch or split over processes.
    """
    request = request or EvaluationRequest()
    check_examples(x0.shape[0])
    start = time.perf_counter()
    terms = example_terms(model, x0, request, density, generator, progress)
    if exact_log_prob is not None:
        terms = dataclasses.replace(terms, exact_nll=-exact_log_prob(x0).double())
    return summarise(model, terms, request, time.perf_counter() - start)


def check_finite_terms(terms: ExampleTerms, name: str = "model") -> None:
    """Refuse per-example terms holding NaN or inf (a network whose outputs are not finite):
    the error names the timesteps t and the number of examples affected."""
    per_t = terms.per_timestep
    bad = None if per_t is None else ~torch.isfinite(per_t)  # [N, T], column t - 1: step t
    if bad is not None and bool(bad.any()):
        ts = (bad.any(dim=0).nonzero().flatten() + 1).tolist()
        more = f", ... ({len(ts)} timesteps)" if len(ts) > 5 else ""
        shown = ", ".join(map(str, ts[:5])) + more
        raise NonFiniteError(
            f"{name}: the -ELBO term is NaN or inf at t = {shown} for {int(bad.any(dim=1).sum())} "
            f"of {per_t.shape[0]} examples: the network's outputs are not finite there; check "
            "its weights, or retrain it (e.g. with a lower learning rate)"
        )
    for label, v in (("importance-weighted bound", terms.iw_nll), ("Monte Carlo -ELBO", terms.mc)):
        if v is not None and not bool(torch.isfinite(v).all()):
            rows = int((~torch.isfinite(v.reshape(v.shape[0], -1))).any(dim=1).sum())
            raise NonFiniteError(
                f"{name}: the {label} is NaN or inf for {rows} of {v.shape[0]} examples: the "
                "network's outputs are not finite; check its weights"
            )


def summarise(
    model: Model, terms: ExampleTerms, request: EvaluationRequest, seconds: float = 0.0
) -> Evaluation:
    """The report of ``evaluate`` from per-example terms (means with standard errors), in the
    units of the model's data (``model.spec``)."""
    name, spec = model.name, model.spec
    check_finite_terms(terms, name)
    log_jac = spec.log_jacobian_nats()
    n, T, dims = terms.x0_flat.shape[0], model.T, spec.num_dims
    check_examples(n)
    out: dict = dict(name=name, n=n, dims=dims, T=T, log_jacobian=log_jac, estimator="exact")
    mc = None if terms.mc is None else terms.mc - log_jac  # [N], raw units
    if mc is not None:
        out["mc_timesteps"] = len(log_strata(T, request.mc)) - 1
        out["neg_elbo_mc"], out["neg_elbo_mc_se"] = mean_se(mc)
    per_t = terms.per_timestep
    if per_t is not None:
        neg_elbo = terms.prior_kl + per_t.sum(dim=1) - log_jac  # [N], raw units
        out.update(
            terms={
                "prior": float(terms.prior_kl.mean()),
                "diffusion": float(per_t[:, 1:].sum(dim=-1).mean()),
                "decoder": float(per_t[:, 0].mean()) - log_jac,
            },
            per_timestep=per_t.mean(dim=0).tolist(),
            per_timestep_se=_se_columns(per_t),
            per_timestep_eps_mse=terms.eps_mse.mean(dim=0).tolist(),
            per_timestep_eps_mse_se=_se_columns(terms.eps_mse),
            per_timestep_x0_mse=terms.x0_mse.mean(dim=0).tolist(),
            per_timestep_x0_mse_se=_se_columns(terms.x0_mse),
            per_example_terms=per_t.detach().cpu(),
        )
    else:  # the Monte Carlo estimate alone stands for -ELBO
        neg_elbo = mc
        out.update(terms={}, per_timestep=[], per_timestep_se=[], estimator="mc")
    nelbo, nelbo_se = mean_se(neg_elbo)
    bpd = bits_per_dim(neg_elbo, dims)
    iw_bounds, nll_iw = [], None
    for j, K in enumerate(sorted(set(int(k) for k in request.iw))):
        nll_iw = terms.iw_nll[:, j] - log_jac
        iw_bounds.append(IwBound(K, *mean_se(nll_iw)))
    out.update(
        neg_elbo=nelbo,
        neg_elbo_se=nelbo_se,
        data_var=float(terms.x0_flat.var(dim=0).mean()),
        nats_per_dim=nelbo / dims,
        nats_per_dim_se=nelbo_se / dims,
        bits_per_dim=mean_se(bpd)[0],
        bits_per_dim_se=mean_se(bpd)[1],
        iw=iw_bounds,
        clip=None if model.clip is None else [float(c) for c in model.clip],
    )
    nll = None
    if terms.exact_nll is not None:
        nll = terms.exact_nll - log_jac
        out["log_likelihood_exact"] = True
    elif nll_iw is not None:
        nll = nll_iw
        out["log_likelihood_exact"] = False
    if nll is not None:
        out["neg_log_likelihood"], out["neg_log_likelihood_se"] = mean_se(nll)
        out["posterior_gap"], out["posterior_gap_se"] = mean_se(neg_elbo - nll)
    if terms.neg_log_q is not None:
        neg_log_q = terms.neg_log_q - log_jac  # [N], raw units
        out["entropy"], out["entropy_se"] = mean_se(neg_log_q)
        out["kl_joint"], out["kl_joint_se"] = mean_se(neg_elbo - neg_log_q)
        if nll is not None:
            out["kl_marginal"], out["kl_marginal_se"] = mean_se(nll - neg_log_q)
    out["per_example"] = neg_elbo.detach().cpu()
    out["seconds"] = seconds
    return Evaluation(**out)
