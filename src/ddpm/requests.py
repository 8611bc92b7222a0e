"""One request per job: what to compute, as a typed frozen value.

Each request holds the choices of one job (evaluating, sampling, the theory lab, scoring
samples), with the command line's defaults. It validates at construction, naming the field and
the value, round-trips through JSON (``from_dict(to_dict(r)) == r``) and is recorded beside the
result it produced. Where the job writes and on which device are arguments of the job, not part
of the request: they do not change the numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, get_args

from ddpm.config import OdeConfig, _Serialisable
from ddpm.errors import ConfigError, require_choice
from ddpm.process.respace import SPACINGS, Spacing, parse_steps
from ddpm.process.schedule import SCHEDULES

Split = Literal["test", "train", "all"]  # all: every example in order (Dataset.all_examples)
Estimator = Literal["exact", "mc", "both"]
Sampler = Literal["ancestral", "ddim"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)


def _at_least(name: str, value: object, low: int, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low} (got {value!r})", params=(name,))


def _eta(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(
            f"eta must lie in [0, 1] (got {value!r}): 0 deterministic, 1 ancestral", params=("eta",)
        )


def _spacing(spacing: Spacing | None, has_steps: bool) -> None:
    if spacing is None:
        return
    require_choice("spacing", spacing, SPACINGS)
    if not has_steps:
        raise ConfigError(
            f"spacing {spacing!r} applies to a respaced process; give steps too",
            params=("spacing", "steps"),
        )


@dataclass(frozen=True)
class QualityRequest(_Serialisable):
    """Scoring samples (``ddpm.quality``): how many to draw, where the feature classifier of
    labelled data is kept (None: beside the user's cache) and the data the samples are compared
    with (None: the data the model was trained on; a foreign model records none)."""

    samples: int = 1000
    seed: int = 0
    classifier_dir: str | None = None
    data: str | None = None

    def __post_init__(self) -> None:
        _at_least("samples", self.samples, 2, optional=False)
        _at_least("seed", self.seed, 0, optional=False)
        for name in ("classifier_dir", "data"):  # paths are kept as text, as JSON holds them
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))


@dataclass(frozen=True)
class EvaluationRequest(_Serialisable):
    """What ``ddpm evaluate`` computes on a model.

    estimator: 'exact' (every one of the T terms per example), 'mc' (the stratified Monte Carlo
    estimate from ``mc_timesteps`` timesteps per example: about mc_timesteps / T of the network
    calls) or 'both'. steps: score the K-step respaced models instead (a count, section counts
    "10,15,20" or "ddimK" each; ``spacing`` for counts). quality: also draw and score samples.
    """

    data: str | None = None  # a data name or path; None: the data the model was trained on
    split: Split = "test"
    n: int | None = None  # the first n examples of the split; None: all
    estimator: Estimator = "exact"
    mc_timesteps: int | None = None
    iw: tuple[int, ...] = ()  # importance-weighted bounds for these K
    clip: bool | None = None  # None: the model's own clipping
    steps: tuple[str, ...] = ()
    spacing: Spacing | None = None
    samplers: tuple[str, ...] = SAMPLERS  # with steps and quality: the samplers to score
    eta: float = 0.0  # DDIM's eta for those samples
    ode: OdeConfig | None = None  # also the probability-flow ODE likelihood
    quality: QualityRequest | None = None
    seed: int = 0  # noise keyed by (seed, example, t, chain)
    max_batch: int = 4096  # inputs per network call

    def __post_init__(self) -> None:
        require_choice("split", self.split, get_args(Split))
        require_choice("estimator", self.estimator, get_args(Estimator))
        _at_least("n", self.n, 1)
        _at_least("mc_timesteps", self.mc_timesteps, 1)
        if (self.estimator == "exact") != (self.mc_timesteps is None):
            raise ConfigError(
                f"estimator {self.estimator!r} with mc_timesteps={self.mc_timesteps}: the "
                "Monte Carlo estimators 'mc' and 'both' need mc_timesteps, 'exact' takes none",
                params=("estimator", "mc_timesteps"),
            )
        for k in self.iw:
            _at_least("iw", k, 1, optional=False)
        for spelling in self.steps:
            parse_steps(spelling, self.spacing)
        _spacing(self.spacing, bool(self.steps))
        for name in self.samplers:
            require_choice("sampler", name, SAMPLERS)
        _eta(self.eta)
        _at_least("seed", self.seed, 0, optional=False)
        _at_least("max_batch", self.max_batch, 1, optional=False)

    @property
    def exact(self) -> bool:
        return self.estimator in ("exact", "both")

    @property
    def mc(self) -> int | None:
        """Timesteps per example of the Monte Carlo estimate, or None."""
        return self.mc_timesteps if self.estimator in ("mc", "both") else None


@dataclass(frozen=True)
class SamplingRequest(_Serialisable):
    """What ``ddpm sample`` draws: n samples by ``sampler`` over all T steps or the K-step
    respaced process ``steps``; trajectory: also x_t and x0_hat at ``frames`` steps."""

    n: int = 64
    seed: int = 0
    sampler: Sampler = "ancestral"
    eta: float | None = None  # DDIM only; None: 0 (deterministic)
    steps: str | None = None
    spacing: Spacing | None = None
    clip: bool | None = None  # None: the model's own clipping
    trajectory: bool = False
    frames: int = 8
    quality: QualityRequest | None = None  # also score the samples

    def __post_init__(self) -> None:
        _at_least("n", self.n, 1, optional=False)
        _at_least("seed", self.seed, 0, optional=False)
        require_choice("sampler", self.sampler, SAMPLERS)
        if self.eta is not None:
            if self.sampler != "ddim":
                raise ConfigError(
                    f"eta applies to the sampler 'ddim' (got {self.sampler!r})",
                    params=("eta", "sampler"),
                )
            _eta(self.eta)
        if self.steps is not None:
            parse_steps(self.steps, self.spacing)
        _spacing(self.spacing, self.steps is not None)
        _at_least("frames", self.frames, 2, optional=False)


@dataclass(frozen=True)
class VaeEvaluationRequest(_Serialisable):
    """What ``ddpm vae evaluate`` (and the VAE side of view 3) computes: -ELBO = rate +
    distortion with the distortion averaged over ``z_samples`` draws of z, and IW bounds."""

    split: Split = "test"
    n: int | None = None
    iw: tuple[int, ...] = (1, 10, 100, 1000)
    z_samples: int = 16
    seed: int = 0
    max_batch: int = 4096
    # view 3 (``ddpm vae compare``): the DDPM's IW bounds (T network calls per chain) and its
    # training CPU seconds (None: what a run folder's log holds)
    ddpm_iw: tuple[int, ...] = ()
    ddpm_cpu_seconds: float | None = None

    def __post_init__(self) -> None:
        require_choice("split", self.split, get_args(Split))
        for k in self.ddpm_iw:
            _at_least("ddpm_iw", k, 1, optional=False)
        _at_least("n", self.n, 2)
        for k in self.iw:
            _at_least("iw", k, 1, optional=False)
        _at_least("z_samples", self.z_samples, 1, optional=False)
        _at_least("seed", self.seed, 0, optional=False)
        _at_least("max_batch", self.max_batch, 1, optional=False)


@dataclass(frozen=True)
class TheoryRequest(_Serialisable):
    """The theory lab on a known density: the Bayes-optimal model of ``T`` steps, ``schedule``
    and ``variance`` evaluated on n fresh samples (several T or variances: a sweep).
    Gaussian data: N(mean, std^2 I_dim)."""

    T: tuple[int, ...] = (1000,)
    schedule: str = "linear"
    variance: tuple[str, ...] = ("small",)
    n: int | None = None  # None: 2000 for a Gaussian, 1000 for a mixture or run, 300 a sweep
    iw: tuple[int, ...] = (1, 4, 16)
    seed: int = 0
    steps: str | None = None
    spacing: Spacing | None = None
    ode: OdeConfig | None = None
    dim: int = 2
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        if not self.T:
            raise ConfigError("T needs at least one number of steps", params=("T",))
        for T in self.T:
            _at_least("T", T, 1, optional=False)
        require_choice("schedule", self.schedule, SCHEDULES)
        if not self.variance:
            raise ConfigError("variance needs at least one choice", params=("variance",))
        _at_least("n", self.n, 2)
        for k in self.iw:
            _at_least("iw", k, 1, optional=False)
        _at_least("seed", self.seed, 0, optional=False)
        if self.steps is not None:
            parse_steps(self.steps, self.spacing)
        _spacing(self.spacing, self.steps is not None)
        _at_least("dim", self.dim, 1, optional=False)
        if not self.std > 0:
            raise ConfigError(f"std must be > 0 (got {self.std})", params=("std",))

    @property
    def sweep(self) -> bool:
        return len(self.T) > 1 or len(self.variance) > 1


__all__ = [
    "EvaluationRequest",
    "QualityRequest",
    "SamplingRequest",
    "TheoryRequest",
    "VaeEvaluationRequest",
]
