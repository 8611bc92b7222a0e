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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ddpm.config import DataConfig
from ddpm.data import DataSpec, GaussianMixture, load_dataset
from ddpm.diffusion import Diffusion, Parameterisation
from ddpm.errors import ConfigError
from ddpm.evaluate import Evaluation, evaluate, mean_se
from ddpm.oracles import GaussianOracle, MixtureOracle, gaussian_analysis, gaussian_log_likelihood
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

    def to_dict(self) -> dict:
        d = self.subject.to_dict()
        d["subject"] = self.name
        d["views"] = four_views(self.subject)
        if self.oracle is not None:
            d["oracle"] = self.oracle.to_dict()
            d["gap_to_oracle"], d["gap_to_oracle_se"] = self.gap_to_oracle()
        if self.closed_form is not None:
            d["closed_form"] = self.closed_form
        return d


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


def _fixed_variance(variance: str) -> str:
    if variance not in ("small", "large"):
        raise ConfigError(
            f"variance {variance!r}: the Bayes-optimal oracle has a fixed variance, "
            "use --variance small or large"
        )
    return variance


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
) -> TheoryResult:
    """Data N(mean, std^2 I) in ``dim`` dimensions and its Bayes-optimal denoiser: closed-form
    expectations beside the generic evaluator's estimates on n samples (exact log p_theta)."""
    if dim < 1 or n < 2 or not std > 0:
        raise ConfigError(f"need --dim >= 1, --n >= 2 and --std > 0 (got {dim}, {n}, {std})")
    s = NoiseSchedule.from_name(schedule, T)
    m = torch.full((dim,), float(mean), dtype=torch.float64)
    sd = torch.full((dim,), float(std), dtype=torch.float64)
    an = gaussian_analysis(s, m, sd, _fixed_variance(variance))
    g = seeded_generator(seed)
    x0 = m + sd * torch.randn((n, dim), generator=g, dtype=torch.float64)
    density = GaussianMixture(
        weights=torch.ones(1, dtype=torch.float64), means=m[None], covs=torch.diag(sd**2)[None]
    )
    spec = DataSpec(name=f"gaussian{dim}d", shape=(dim,), levels=None)
    oracle = GaussianOracle(s, m, sd)
    ev = evaluate(
        Diffusion(s, Parameterisation("eps", variance)),
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
    closed = {
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
        "kl_marginal": an.kl_marginal,
        "posterior_gap": an.posterior_gap,
    }
    return TheoryResult(name=f"N({mean}, {std}^2 I_{dim})", subject=ev, closed_form=closed)


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
) -> TheoryResult:
    """The Bayes-optimal denoiser of a Gaussian mixture (gmm8 or a JSON spec), evaluated on n
    fresh samples: the best -ELBO any network reaches in this model family, the IW bounds,
    H(q(x_0)) and the KL chain (KL_marginal from the largest-K bound)."""
    _check_n(n)
    mixture, spec = load_mixture(name)
    s = NoiseSchedule.from_name(schedule, T)
    g = seeded_generator(seed)
    x0 = mixture.sample(n, generator=g)
    oracle = MixtureOracle(s, mixture)
    ev = evaluate(
        Diffusion(s, Parameterisation("eps", _fixed_variance(variance))),
        oracle,
        x0,
        spec,
        name="bayes-optimal",
        iw=iw,
        density=mixture,
        generator=g,
        progress=progress,
    )
    return TheoryResult(name=spec.name, subject=ev)


def theory_run(
    run_dir: str | Path,
    n: int = 1000,
    iw: tuple[int, ...] = (1, 4, 16),
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> TheoryResult:
    """A trained run on data of known density: its evaluation beside the Bayes-optimal
    denoiser's (same schedule and T; fixed variance 'small' when the run learned its variance)
    on the same n test examples."""
    from ddpm import runs

    _check_n(n)
    run = runs.load_run(run_dir, device=device)
    data = load_dataset(run.config.data)
    if data.density is None:
        raise ConfigError(
            f"{run_dir}: trained on {run.config.data.name!r}, whose density is unknown; "
            "`ddpm theory DIR` needs a run on gmm8 or a Gaussian-mixture .json"
        )
    x0 = data.test[:n].to(device)
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
    param = run.diffusion.param
    variance = param.variance if param.variance != "learned" else "small"
    oracle_diffusion = dataclasses.replace(
        run.diffusion, param=dataclasses.replace(param, variance=variance)
    )
    oracle = MixtureOracle(
        run.diffusion.schedule, data.density.to(device), prediction=param.prediction
    )
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
    return TheoryResult(
        name=f"{run.config.data.name} ({Path(run_dir).name})", subject=trained, oracle=best
    )
