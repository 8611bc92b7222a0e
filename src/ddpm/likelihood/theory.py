"""The theory lab: Bayes-optimal models whose answers are known, measured by the same evaluator
as trained networks, in the four views of a DDPM:

1. maximum likelihood: -ELBO >= -log p_theta(x_0), tightened by importance-weighted bounds;
2. the KL chain KL(q(x_{0:T}) || p_theta(x_{0:T})) >= KL(q(x_0) || p_theta(x_0)) >= 0;
3. a hierarchical VAE with a fixed encoder q(x_{1:T}|x_0): rate (L_T), the diffusion KLs,
   distortion (L_0), and the posterior gap E[KL(q(x_{1:T}|x_0) || p_theta(x_{1:T}|x_0))];
4. many easy problems: how the bound spreads over the T steps.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ddpm.config import DataConfig
from ddpm.data import DataSpec, GaussianMixture, load_dataset
from ddpm.errors import ConfigError
from ddpm.likelihood.evaluate import Evaluation, evaluate
from ddpm.likelihood.ode import ProbabilityFlow, ode_likelihood
from ddpm.likelihood.oracles import (
    ORACLE_VARIANCES,
    GaussianOracle,
    MixtureOracle,
    gaussian_analysis,
    gaussian_log_likelihood,
)
from ddpm.likelihood.stats import mean_se
from ddpm.memory import FLOAT64, check_fits
from ddpm.model import Model, Source
from ddpm.process.continuous import (
    ContinuousMixtureOracle,
    ContinuousSchedule,
    gaussian_flow_marginal,
)
from ddpm.process.diffusion import Denoiser, Diffusion, Parameterisation
from ddpm.process.gaussian import normal_kl
from ddpm.process.respace import respace, respaced_steps
from ddpm.process.rng import KeyedNoise, seeded_generator
from ddpm.process.schedule import NoiseSchedule
from ddpm.requests import EvaluationRequest, TheoryRequest

ORACLE = "bayes-optimal"  # what reports call the Bayes-optimal model


@dataclass(frozen=True)
class TheoryResult:
    """The subject's evaluation, the Bayes-optimal reference and closed forms where they exist."""

    name: str
    subject: Evaluation  # the model the report is about (the oracle for gaussian / mixtures)
    oracle: Evaluation | None = None  # Bayes-optimal model, when the subject is a trained one
    closed_form: dict | None = None  # exact expectations (Gaussian data)

    def gap_to_oracle(self) -> tuple[float, float]:
        """E[-ELBO_trained - -ELBO_optimal] over the same examples and x_t draws, with its SE:
        how far the trained model is from the best ELBO its model family allows."""
        return mean_se(self.subject.per_example - self.oracle.per_example)

    def gap_per_timestep(self) -> tuple[Tensor, Tensor]:
        """The paired gap of each step's term, trained minus Bayes-optimal, on the same x_0 and
        x_t: (mean [T], SE [T]) in nats; entry t-1 is step t (L_0 at t = 1)."""
        diff = self.subject.per_example_terms - self.oracle.per_example_terms  # [N, T]
        return diff.mean(dim=0), diff.std(dim=0) / math.sqrt(diff.shape[0])

    def gap_band(self) -> dict:
        """The shortest band of steps t_lo..t_hi whose summed per-step gap holds at least half
        of the total gap (ties: the larger sum), with the gap in it and its paired SE."""
        diff = self.subject.per_example_terms - self.oracle.per_example_terms  # [N, T]
        lo, hi = half_band(diff.mean(dim=0))
        inside = diff[:, lo - 1 : hi].sum(dim=1)
        gap, se = mean_se(inside)
        total = float(diff.sum(dim=1).mean())
        return {"t_lo": lo, "t_hi": hi, "gap": gap, "gap_se": se, "share": gap / total}

    def to_dict(self) -> dict:
        d = self.subject.to_dict()
        d["subject"] = self.name
        d["views"] = four_views(self.subject)
        if self.oracle is not None:
            d["oracle"] = self.oracle.to_dict()
            d["gap_to_oracle"], d["gap_to_oracle_se"] = self.gap_to_oracle()
            gap, se = self.gap_per_timestep()
            d["gap_per_timestep"], d["gap_per_timestep_se"] = gap.tolist(), se.tolist()
            d["gap_band"] = self.gap_band()
        if self.closed_form is not None:
            d["closed_form"] = self.closed_form
        return d


def half_band(per_t: Tensor) -> tuple[int, int]:
    """The shortest run of steps (t_lo, t_hi), 1-based and inclusive, whose values sum to at
    least half of the total (of equal widths, the larger sum). per_t: [T]; a total <= 0
    gives (1, T)."""
    T, total = per_t.numel(), float(per_t.sum())
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), per_t.double().cpu().cumsum(0)])
    for width in range(1, T + 1):
        sums = cum[width:] - cum[:-width]  # sums[a]: steps a+1..a+width
        if total > 0 and float(sums.max()) >= 0.5 * total:
            a = int(sums.argmax())
            return a + 1, a + width
    return 1, T


def four_views(ev: Evaluation) -> dict:
    """The evaluation read in the four views of the module docstring (nats per example)."""
    kl = torch.tensor(ev.per_timestep[1:], dtype=torch.float64)  # L_{t-1}, t = 2..T: all >= 0
    total = float(kl.sum())
    steps_for_90 = int((kl.sort(descending=True).values.cumsum(0) < 0.9 * total).sum()) + 1
    first_tenth = float(kl[: max(1, len(kl) // 10)].sum()) / total if total > 0 else 0.0
    worst = int(kl.argmax()) + 2 if len(kl) else 1
    ml = {"neg_elbo": ev.neg_elbo, "iw": [asdict(b) for b in ev.iw]}
    ml["neg_log_likelihood"] = ev.neg_log_likelihood
    ml["log_likelihood_exact"] = ev.log_likelihood_exact
    return {
        "maximum_likelihood": ml,
        "kl_chain": {
            "kl_joint": ev.kl_joint,
            "kl_marginal": ev.kl_marginal,
            "holds": None
            if ev.kl_joint is None or ev.kl_marginal is None
            else bool(
                ev.kl_joint + 4 * ev.kl_joint_se >= ev.kl_marginal - 4 * ev.kl_marginal_se
                and ev.kl_marginal + 4 * ev.kl_marginal_se >= 0
            ),
        },
        "hierarchical_vae": {
            "rate_prior": ev.terms["prior"],
            "diffusion_kls": ev.terms["diffusion"],
            "distortion_decoder": ev.terms["decoder"],
            "posterior_gap": ev.posterior_gap,
        },
        "many_easy_problems": {
            "T": ev.T,
            "largest_term_t": worst,
            "largest_term": float(kl.max()) if len(kl) else None,
            "share_in_first_tenth_of_steps": first_tenth,
            "steps_holding_90_percent": min(steps_for_90, len(kl)),
        },
    }


def _oracle_variance(variance: str) -> str:
    if variance not in ORACLE_VARIANCES:
        raise ConfigError(
            f"variance {variance!r}: a Bayes-optimal oracle uses small, large or optimal "
            "(the exact posterior variance)"
        )
    return variance


def _one(request: TheoryRequest) -> tuple[int, str]:
    """The T and variance of a request for one point (not a sweep)."""
    if request.sweep:
        raise ConfigError(
            f"T={list(request.T)}, variance={list(request.variance)}: several values make a "
            "sweep (ddpm.likelihood.sweep); give one of each here"
        )
    return request.T[0], _oracle_variance(request.variance[0])


def oracle_model(
    schedule: NoiseSchedule, oracle: Denoiser, spec: DataSpec, param: Parameterisation
) -> Model:
    """A Bayes-optimal denoiser as a model (identity time map: oracles read process steps)."""
    return Model(Diffusion(schedule, param), oracle, spec, source=Source("oracle", name=ORACLE))


def gaussian_data(
    dim: int, mean: float, std: float
) -> tuple[torch.Tensor, torch.Tensor, GaussianMixture, DataSpec]:
    """N(mean, std^2 I_dim): mean [D], std [D], the density as a one-component mixture, spec."""
    if dim < 1 or not std > 0:
        raise ConfigError(f"need dim >= 1 and std > 0 (got {dim}, {std})")
    m = torch.full((dim,), float(mean), dtype=torch.float64)
    sd = torch.full((dim,), float(std), dtype=torch.float64)
    density = GaussianMixture(
        weights=torch.ones(1, dtype=torch.float64), means=m[None], covs=torch.diag(sd**2)[None]
    )
    return m, sd, density, DataSpec(name=f"gaussian{dim}d", shape=(dim,), levels=None)


def theory_gaussian(request: TheoryRequest | None = None, progress: bool = False) -> TheoryResult:
    """Data N(mean, std^2 I_dim) (the request's) and its Bayes-optimal denoiser: closed-form
    expectations beside the generic evaluator's estimates on n samples (exact log p_theta).

    request.steps: evaluate the K-step respaced process ([ND21] Sec. 4,
    ``ddpm.process.respace``) instead of the T-step one (a count K, section counts "10,15,20"
    or "ddimK"; ``spacing`` for a count; recorded under ``respacing`` in the closed form); the
    T-step oracle, called at the original steps tau_k, is Bayes-optimal for it, and the closed
    form is that of the respaced schedule. With variance 'optimal' the oracle is built on the
    respaced schedule itself: its variance (G5) depends on the process's own beta_tilde and c,
    not only on alpha_bar. request.ode: also the probability-flow likelihood of the Bayes-optimal
    denoiser of the T-step process (``ddpm.likelihood.ode``)."""
    request = request or TheoryRequest()
    T, variance = _one(request)
    dim, mean, std, n = request.dim, request.mean, request.std, request.n or 2000
    # float64: the covariance [D, D], the closed form's arrays [T + 1, D] (at least six at
    # once) and the n examples with their x_t, noise and predictions [n, D]
    check_fits(
        FLOAT64 * max(dim, 0) * (dim + 6 * (T + 1) + 4 * n),
        f"dim {dim}: N(mean, std^2 I_{dim}) with T = {T} and {n} examples",
        "use a smaller dim",
        params=("dim",),
    )
    s = NoiseSchedule.from_name(request.schedule, T)
    m, sd, density, spec = gaussian_data(dim, mean, std)
    diffusion = Diffusion(s, Parameterisation("eps", variance))
    if request.steps is not None:
        diffusion = respace(diffusion, request.steps, request.spacing)
    if variance == "optimal":
        s, diffusion = diffusion.schedule, Diffusion(diffusion.schedule, diffusion.param)
    an = gaussian_analysis(diffusion.schedule, m, sd, variance)
    g = seeded_generator(request.seed)
    x0 = m + sd * torch.randn((n, dim), generator=g, dtype=torch.float64)
    oracle = GaussianOracle(s, m, sd, variance=variance)
    model = Model(diffusion, oracle, spec, source=Source("oracle", name=ORACLE))
    ev = evaluate(
        model, x0, EvaluationRequest(iw=request.iw), density=density,
        exact_log_prob=lambda x: gaussian_log_likelihood(an, x), generator=g, progress=progress,
    )  # fmt: skip
    respacing = None  # which K of the T steps, as spelled
    if request.steps is not None:
        tau = respaced_steps(T, request.steps, request.spacing)
        respacing = {"steps": str(request.steps).strip(), "spacing": request.spacing, "tau": tau}
    closed = {
        "steps": diffusion.T,
        "respacing": respacing,
        "neg_elbo": an.neg_elbo,
        "terms": {
            "prior": an.prior_kl,
            "diffusion": float(an.per_timestep[1:].sum()),
            "decoder": float(an.per_timestep[0]),
        },
        "per_timestep": an.per_timestep.tolist(),
        "entropy": an.entropy,
        "neg_log_likelihood": an.neg_log_likelihood,
        "kl_joint": an.kl_joint,
        "kl_prior_marginal": an.kl_prior_marginal,
        "kl_marginal": an.kl_marginal,
        "posterior_gap": an.posterior_gap,
    }
    if request.ode is not None:
        flow_model = _named_continuous_oracle(request.schedule, T, density, spec)
        res = ode_likelihood(
            flow_model, x0, request.ode, KeyedNoise(request.seed), progress=progress
        )
        ev = dataclasses.replace(ev, ode=res)
        cs = flow_model.continuous
        M, V = gaussian_flow_marginal(cs, m, sd, res.s_min, cs.s_end)
        kl = normal_kl(m, 2 * sd.log(), M, V.log()).sum().item()  # E_q[-log N(M, V)] - H(q)
        closed["ode_neg_log_likelihood"] = an.entropy + kl
    name = f"N({mean}, {std}^2 I_{dim})"
    if request.steps is not None:
        how = str(request.steps).strip() + (
            "" if request.spacing is None else f", {request.spacing}"
        )
        name += f", {diffusion.T} of {T} steps" + ("" if how == str(diffusion.T) else f" ({how})")
    return TheoryResult(name=name, subject=ev, closed_form=closed)


def continuous_oracle(
    s: NoiseSchedule, cs: ContinuousSchedule, density: GaussianMixture, spec: DataSpec
) -> Model:
    """The Bayes-optimal denoiser at continuous time (schedule cs, the continuous form of s) of
    data from ``density``: the model whose probability flow (``ddpm.likelihood.ode``) the
    theory lab scores beside a trained one's."""
    oracle = ContinuousMixtureOracle(cs, density)
    return Model(Diffusion(s), oracle, spec, continuous=cs, source=Source("oracle", name=ORACLE))


def _named_continuous_oracle(
    schedule: str, T: int, density: GaussianMixture, spec: DataSpec
) -> Model:
    """``continuous_oracle`` of the named T-step schedule."""
    s = NoiseSchedule.from_name(schedule, T)
    return continuous_oracle(s, ContinuousSchedule.of(schedule, s), density, spec)


def load_mixture(name: str) -> tuple[GaussianMixture, DataSpec]:
    """A known-density data set by name (gmm8) or Gaussian-mixture JSON path (model space)."""
    data = load_dataset(DataConfig(name=name, n_train=1, n_test=1))
    if data.density is None:
        raise ConfigError(
            f"{name!r} has no known density: the theory lab needs gaussian, gmm8 or a "
            "Gaussian-mixture .json"
        )
    return data.density, data.spec


def theory_mixture(
    name: str = "gmm8", request: TheoryRequest | None = None, progress: bool = False
) -> TheoryResult:
    """The Bayes-optimal denoiser of a Gaussian mixture (gmm8 or a JSON spec), evaluated on n
    fresh samples: the best -ELBO any network reaches in this model family, the IW bounds,
    H(q(x_0)) and the KL chain (KL_marginal from the largest-K bound).
    request.ode: also its probability-flow likelihood (``ddpm.likelihood.ode``)."""
    request = request or TheoryRequest()
    T, variance = _one(request)
    mixture, spec = load_mixture(name)
    s = NoiseSchedule.from_name(request.schedule, T)
    g = seeded_generator(request.seed)
    x0 = mixture.sample(request.n or 1000, generator=g)
    oracle = MixtureOracle(s, mixture, variance=variance)
    model = oracle_model(s, oracle, spec, Parameterisation("eps", variance))
    ev = evaluate(
        model, x0, EvaluationRequest(iw=request.iw), density=mixture, generator=g,
        progress=progress,
    )  # fmt: skip
    if request.ode is not None:
        flow_model = _named_continuous_oracle(request.schedule, T, mixture, spec)
        res = ode_likelihood(
            flow_model, x0, request.ode, KeyedNoise(request.seed), progress=progress
        )
        ev = dataclasses.replace(ev, ode=res)
    return TheoryResult(name=spec.name, subject=ev)


def bayes_optimal(model: Model, density: GaussianMixture) -> Model:
    """The Bayes-optimal model of data from ``density`` (model space) under the model's process:
    the mixture oracle on the process's own schedule with the identity time map (an oracle reads
    process steps, also for a respaced process), with the model's prediction, clipping and
    variance, or the exact 'optimal' variance where the variance is learned (it minimises every
    term over all Gaussian steps with per-x_t variances, a family that holds the learned one)."""
    param = model.diffusion.param
    variance = "optimal" if param.variance == "learned" else param.variance
    schedule = model.diffusion.schedule
    oracle = MixtureOracle(schedule, density, param.prediction, variance)
    best = oracle_model(schedule, oracle, model.spec, Parameterisation(param.prediction, variance))
    return dataclasses.replace(best, clip=model.clip).named(f"{ORACLE} K={model.T}")


def theory_run(
    model: Model, request: TheoryRequest | None = None, progress: bool = False
) -> TheoryResult:
    """A trained model on data of known density (the data it was trained on): its evaluation
    beside the Bayes-optimal model's on the same n test examples and x_t draws (paired). The
    Bayes-optimal model has the model's schedule, T and variance, or the exact 'optimal' variance
    when it learned its variance (it minimises every term over all Gaussian steps with per-x_t
    variances). request.ode: also both probability-flow likelihoods (``ddpm.likelihood.ode``).
    Only n, iw, seed and ode of the request apply: the process is the model's own."""
    request = request or TheoryRequest()
    data = load_dataset(model.data_config())
    if data.density is None:
        raise ConfigError(
            f"{model.name}: trained on {data.spec.name!r}, whose density is unknown; the "
            "theory lab needs a model of gmm8 or of a Gaussian-mixture .json"
        )
    device = model.device
    x0 = data.test_examples[: request.n or 1000].to(device)
    density = data.density.to(device)
    model = model.on(data.spec).named("trained")
    # Both models see the same keyed x_t draws, so their difference is paired; the trained
    # model's numbers are those of `ddpm evaluate` with the same seed.
    noise = KeyedNoise(request.seed)
    req = EvaluationRequest(iw=request.iw, seed=request.seed)
    trained = evaluate(model, x0, req, density=density, generator=noise, progress=progress)
    oracle = bayes_optimal(model, density).named(ORACLE)
    best = evaluate(oracle, x0, req, density=density, generator=noise, progress=progress)
    if request.ode is not None:
        res = ode_likelihood(model, x0, request.ode, noise, progress=progress)
        trained = dataclasses.replace(trained, ode=res)
        cs = ProbabilityFlow.of(model).schedule
        flow_model = continuous_oracle(model.diffusion.schedule, cs, density, data.spec)
        res = ode_likelihood(flow_model, x0, request.ode, noise, progress=progress)
        best = dataclasses.replace(best, ode=res)
    where = model.source.path.name if model.source.path is not None else model.source.kind
    return TheoryResult(name=f"{data.spec.name} ({where})", subject=trained, oracle=best)
