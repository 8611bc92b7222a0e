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
from pathlib import Path

import torch
from torch import Tensor

from ddpm.config import DataConfig
from ddpm.continuous import ContinuousMixtureOracle, gaussian_flow_marginal
from ddpm.data import DataSpec, GaussianMixture, load_dataset
from ddpm.diffusion import Diffusion, Parameterisation
from ddpm.errors import ConfigError
from ddpm.evaluate import Evaluation, evaluate, mean_se
from ddpm.gaussian import normal_kl
from ddpm.memory import FLOAT64, check_fits
from ddpm.ode import OdeConfig, ProbabilityFlow, ode_likelihood
from ddpm.oracles import (
    ORACLE_VARIANCES,
    GaussianOracle,
    MixtureOracle,
    gaussian_analysis,
    gaussian_log_likelihood,
)
from ddpm.respace import respace, respaced_steps
from ddpm.rng import KeyedNoise, seeded_generator
from ddpm.schedule import NoiseSchedule


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


def _check_n(n: int) -> None:
    if n < 2:
        raise ConfigError(f"--n must be >= 2 examples (got {n})")


def _oracle_variance(variance: str) -> str:
    if variance not in ORACLE_VARIANCES:
        raise ConfigError(
            f"variance {variance!r}: a Bayes-optimal oracle uses small, large or optimal "
            "(the exact posterior variance); use --variance small, large or optimal"
        )
    return variance


def gaussian_data(
    dim: int, mean: float, std: float
) -> tuple[torch.Tensor, torch.Tensor, GaussianMixture, DataSpec]:
    """N(mean, std^2 I_dim): mean [D], std [D], the density as a one-component mixture, spec."""
    if dim < 1 or not std > 0:
        raise ConfigError(f"need --dim >= 1 and --std > 0 (got {dim}, {std})")
    m = torch.full((dim,), float(mean), dtype=torch.float64)
    sd = torch.full((dim,), float(std), dtype=torch.float64)
    density = GaussianMixture(
        weights=torch.ones(1, dtype=torch.float64), means=m[None], covs=torch.diag(sd**2)[None]
    )
    return m, sd, density, DataSpec(name=f"gaussian{dim}d", shape=(dim,), levels=None)


def theory_gaussian(
    dim: int = 2,
    mean: float = 0.5,
    std: float = 0.5,
    T: int = 1000,
    schedule: str = "linear",
    variance: str = "small",
    n: int = 2000,
    iw: tuple[int, ...] = (1, 4, 16),
    seed: int = 0,
    progress: bool = False,
    steps: int | str | None = None,
    ode: OdeConfig | None = None,
    spacing: str | None = None,
) -> TheoryResult:
    """Data N(mean, std^2 I) in ``dim`` dimensions and its Bayes-optimal denoiser: closed-form
    expectations beside the generic evaluator's estimates on n samples (exact log p_theta).

    steps: evaluate the K-step respaced process ([ND21] Sec. 4, ``ddpm.respace``) instead of
    the T-step one (a count K, section counts "10,15,20" or "ddimK"; ``spacing`` for a count;
    recorded under ``respacing`` in the closed form); the T-step oracle, called at the original
    steps tau_k, is Bayes-optimal for it, and the closed form is that of the respaced schedule.
    With variance 'optimal' the oracle is built on the respaced schedule itself: its variance
    (G5) depends on the process's own beta_tilde and c, not only on alpha_bar. ode: also the
    probability-flow likelihood of the Bayes-optimal denoiser of the T-step process
    (``ddpm.ode``)."""
    if n < 2:
        raise ConfigError(f"need --n >= 2 (got {n})")
    # float64: the covariance [D, D], the closed form's arrays [T + 1, D] (at least six at
    # once) and the n examples with their x_t, noise and predictions [n, D]
    check_fits(
        FLOAT64 * max(dim, 0) * (dim + 6 * (T + 1) + 4 * n),
        f"--dim {dim}: N(mean, std^2 I_{dim}) with T = {T} and n = {n} examples",
        "use a smaller --dim (or --T, --n)",
    )
    s = NoiseSchedule.from_name(schedule, T)
    m, sd, density, spec = gaussian_data(dim, mean, std)
    diffusion = Diffusion(s, Parameterisation("eps", _oracle_variance(variance)))
    if steps is not None:
        diffusion = respace(diffusion, steps, spacing)
    elif spacing is not None:
        raise ConfigError(f"spacing {spacing!r} applies with a number of steps K; give one")
    if variance == "optimal":
        s, diffusion = diffusion.schedule, Diffusion(diffusion.schedule, diffusion.param)
    an = gaussian_analysis(diffusion.schedule, m, sd, variance)
    g = seeded_generator(seed)
    x0 = m + sd * torch.randn((n, dim), generator=g, dtype=torch.float64)
    oracle = GaussianOracle(s, m, sd, variance=variance)
    ev = evaluate(
        diffusion,
        oracle,
        x0,
        spec,
        name="bayes-optimal",
        iw=iw,
        density=density,
        exact_log_prob=lambda x: gaussian_log_likelihood(an, x),
        generator=g,
        progress=progress,
    )
    respacing = None  # which K of the T steps, as spelled
    if steps is not None:
        tau = respaced_steps(T, steps, spacing)
        respacing = {"steps": str(steps).strip(), "spacing": spacing, "tau": tau}
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
    if ode is not None:
        full = Diffusion(NoiseSchedule.from_name(schedule, T))  # the flow of the T-step process
        flow = ProbabilityFlow.of(full, schedule)
        oracle_ode = ContinuousMixtureOracle(flow.schedule, density)
        res = ode_likelihood(flow, oracle_ode, x0, spec, ode, KeyedNoise(seed), progress=progress)
        ev = dataclasses.replace(ev, ode=res)
        M, V = gaussian_flow_marginal(flow.schedule, m, sd, flow.s_min(ode), flow.schedule.s_end)
        kl = normal_kl(m, 2 * sd.log(), M, V.log()).sum().item()  # E_q[-log N(M, V)] - H(q)
        closed["ode_neg_log_likelihood"] = an.entropy + kl
    name = f"N({mean}, {std}^2 I_{dim})"
    if steps is not None:
        how = str(steps).strip() + ("" if spacing is None else f", {spacing}")
        name += f", {diffusion.T} of {T} steps" + ("" if how == str(diffusion.T) else f" ({how})")
    return TheoryResult(name=name, subject=ev, closed_form=closed)


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
    name: str = "gmm8",
    T: int = 1000,
    schedule: str = "linear",
    variance: str = "small",
    n: int = 1000,
    iw: tuple[int, ...] = (1, 4, 16),
    seed: int = 0,
    progress: bool = False,
    ode: OdeConfig | None = None,
) -> TheoryResult:
    """The Bayes-optimal denoiser of a Gaussian mixture (gmm8 or a JSON spec), evaluated on n
    fresh samples: the best -ELBO any network reaches in this model family, the IW bounds,
    H(q(x_0)) and the KL chain (KL_marginal from the largest-K bound).
    ode: also its probability-flow likelihood (``ddpm.ode``)."""
    _check_n(n)
    mixture, spec = load_mixture(name)
    s = NoiseSchedule.from_name(schedule, T)
    g = seeded_generator(seed)
    x0 = mixture.sample(n, generator=g)
    oracle = MixtureOracle(s, mixture, variance=_oracle_variance(variance))
    ev = evaluate(
        Diffusion(s, Parameterisation("eps", variance)),
        oracle,
        x0,
        spec,
        name="bayes-optimal",
        iw=iw,
        density=mixture,
        generator=g,
        progress=progress,
    )
    if ode is not None:
        flow = ProbabilityFlow.of(Diffusion(s), schedule)
        oracle_ode = ContinuousMixtureOracle(flow.schedule, mixture)
        res = ode_likelihood(flow, oracle_ode, x0, spec, ode, KeyedNoise(seed), progress=progress)
        ev = dataclasses.replace(ev, ode=res)
    return TheoryResult(name=spec.name, subject=ev)


def bayes_optimal(
    diffusion: Diffusion, density: GaussianMixture
) -> tuple[Diffusion, MixtureOracle]:
    """The Bayes-optimal model of data from ``density`` (model space) under the process of
    ``diffusion``: the mixture oracle on the process's own schedule with the identity time map
    (an oracle reads process steps, also for a respaced process), with the process's prediction
    and variance, or the exact 'optimal' variance where the variance is learned (it minimises
    every term over all Gaussian steps with per-x_t variances, a family that holds the learned
    one)."""
    param = diffusion.param
    variance = "optimal" if param.variance == "learned" else param.variance
    oracle_param = Parameterisation(param.prediction, variance)
    oracle = MixtureOracle(diffusion.schedule, density, param.prediction, variance)
    return Diffusion(diffusion.schedule, oracle_param), oracle


def theory_run(
    run_dir: str | Path,
    n: int = 1000,
    iw: tuple[int, ...] = (1, 4, 16),
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    ode: OdeConfig | None = None,
) -> TheoryResult:
    """A trained run on data of known density: its evaluation beside the Bayes-optimal
    model's on the same n test examples and x_t draws (paired). The Bayes-optimal model has the
    run's schedule, T and variance, or the exact 'optimal' variance when the run learned its
    variance (it minimises every term over all Gaussian steps with per-x_t variances).
    ode: also both probability-flow likelihoods (``ddpm.ode``)."""
    from ddpm import runs

    _check_n(n)
    run = runs.load_run(run_dir, device=device)
    data = load_dataset(run.config.data)
    if data.density is None:
        raise ConfigError(
            f"{run_dir}: trained on {run.config.data.name!r}, whose density is unknown; "
            "`ddpm theory DIR` needs a run on gmm8 or a Gaussian-mixture .json"
        )
    x0 = data.test_examples[:n].to(device)
    # Both models see the same keyed x_t draws, so their difference is paired; the trained
    # model's numbers are those of `ddpm evaluate` with the same seed.
    noise = KeyedNoise(seed)
    trained = evaluate(
        run.diffusion,
        run.model,
        x0,
        data.spec,
        name="trained",
        iw=iw,
        density=data.density.to(device),
        generator=noise,
        progress=progress,
    )
    oracle_diffusion, oracle = bayes_optimal(run.diffusion, data.density.to(device))
    best = evaluate(
        oracle_diffusion,
        oracle,
        x0,
        data.spec,
        name="bayes-optimal",
        iw=iw,
        density=data.density.to(device),
        generator=noise,
        progress=progress,
    )
    if ode is not None:
        name = run.config.diffusion.schedule
        flow = ProbabilityFlow.of(run.diffusion, name)
        res = ode_likelihood(flow, run.model, x0, data.spec, ode, noise, progress=progress)
        trained = dataclasses.replace(trained, ode=res)
        flow = ProbabilityFlow.of(Diffusion(run.diffusion.schedule), name)
        oracle_ode = ContinuousMixtureOracle(flow.schedule, data.density.to(device))
        res = ode_likelihood(flow, oracle_ode, x0, data.spec, ode, noise, progress=progress)
        best = dataclasses.replace(best, ode=res)
    return TheoryResult(
        name=f"{run.config.data.name} ({Path(run_dir).name})", subject=trained, oracle=best
    )
