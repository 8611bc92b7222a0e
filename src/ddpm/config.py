"""Typed configuration: one frozen dataclass per component, nested in RunConfig.

Every config round-trips through JSON: ``from_dict(to_dict(c)) == c``. Unknown keys and unknown
option values are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

from ddpm.errors import ConfigError, require_choice

ScheduleName = Literal["linear", "cosine"]
Prediction = Literal["eps", "x0", "v"]
Variance = Literal["small", "large", "learned"]
LossName = Literal["simple", "vlb", "hybrid"]
TimestepSampler = Literal["uniform", "importance"]
LrSchedule = Literal["constant", "cosine"]
ModelKind = Literal["auto", "mlp", "unet"]
Autocast = Literal["off", "bf16"]


_S = TypeVar("_S", bound="_Serialisable")  # the class from_dict is called on


class _Serialisable:
    """to_dict / from_dict / JSON for frozen dataclasses, recursing into nested configs."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[_S], d: dict[str, Any]) -> _S:
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {', '.join(unknown)}; "
                f"known keys are {', '.join(sorted(names))}"
            )
        kwargs = {k: _coerce(hints[k], v, f"{cls.__name__}.{k}") for k, v in d.items()}
        return cls(**kwargs)

    @classmethod
    def from_json(cls: type[_S], text: str) -> _S:
        return cls.from_dict(json.loads(text))


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Turn a JSON value back into the field type (nested configs, tuples), checking its type."""
    if isinstance(hint, type) and issubclass(hint, _Serialisable):
        return hint.from_dict(value)
    origin, args = typing.get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list of integers (got {value!r})")
        return tuple(_coerce(args[0], v, where) for v in value)
    if origin is Literal:
        return value  # the dataclass checks the choice and names the options
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, True)
    if not ok:
        raise ConfigError(f"{where} must be of type {hint.__name__} (got {value!r})")
    return float(value) if hint is float else value


def _positive(name: str, value: float, owner: str) -> None:
    if not value > 0:
        raise ConfigError(f"{owner}: {name} must be > 0 (got {value})")


@dataclass(frozen=True)
class DiffusionConfig(_Serialisable):
    """The diffusion model: forward schedule, parameterisation of p_theta, training loss."""

    T: int = 1000
    schedule: ScheduleName = "linear"
    prediction: Prediction = "eps"
    variance: Variance = "small"
    loss: LossName = "simple"
    hybrid_lambda: float = 0.001  # weight of L_vlb in L_hybrid [ND21] eq. (16)
    timestep_sampler: TimestepSampler = "uniform"
    clip_x0: bool = True  # clip predicted x0 to the data range while sampling

    def __post_init__(self) -> None:
        if not isinstance(self.T, int) or isinstance(self.T, bool) or self.T < 1:
            raise ConfigError(f"T must be an integer >= 1 (got {self.T!r})")
        require_choice("schedule", self.schedule, get_args(ScheduleName))
        require_choice("prediction", self.prediction, get_args(Prediction))
        if self.variance == "optimal":
            raise ConfigError(
                "variance 'optimal' is the exact posterior variance of the Bayes-optimal models "
                "(ddpm theory); a trained network uses small, large or learned"
            )
        require_choice("variance", self.variance, get_args(Variance))
        require_choice("loss", self.loss, get_args(LossName))
        require_choice("timestep sampler", self.timestep_sampler, get_args(TimestepSampler))
        if self.variance == "learned" and self.loss == "simple":
            raise ConfigError(
                "variance 'learned' needs a loss that trains the variance: use loss hybrid or vlb",
                params=("loss",),
            )
        if self.variance != "learned" and self.loss == "hybrid":
            raise ConfigError(
                "loss 'hybrid' trains a learned variance: add variance learned",
                params=("variance",),
            )
        if self.timestep_sampler == "importance" and self.loss != "vlb":
            raise ConfigError(
                "importance-sampled timesteps are for loss vlb only", params=("loss",)
            )
        if self.hybrid_lambda < 0:
            raise ConfigError(f"hybrid_lambda must be >= 0 (got {self.hybrid_lambda})")


@dataclass(frozen=True)
class ModelConfig(_Serialisable):
    """The network eps_theta(x_t, t). 'auto' picks a U-Net for images, an MLP for vectors."""

    kind: ModelKind = "auto"
    # MLP (vector data)
    hidden: int = 128
    depth: int = 3
    # U-Net (images)
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (4,)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require_choice("model kind", self.kind, get_args(ModelKind))
        for name in ("hidden", "depth", "channels", "num_res_blocks"):
            _positive(name, getattr(self, name), "model")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ConfigError(f"channel_mults must be positive integers (got {self.channel_mults})")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1) (got {self.dropout})")


@dataclass(frozen=True)
class DataConfig(_Serialisable):
    """Where the data comes from: a built-in name or a path (folder, .npy/.npz, mixture .json)."""

    name: str = "digits"
    root: str | None = None  # folder of MNIST IDX files for name == "mnist"
    image_size: int | None = None  # resize/crop images to this size
    grayscale: bool = False  # convert images to one channel
    test_fraction: float = 0.1  # held-out share for user data without a split
    n_train: int = 10_000  # examples drawn from generated (toy/mixture) data
    n_test: int = 2_000

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("data name must not be empty")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1) (got {self.test_fraction})")
        if self.image_size is not None and self.image_size < 2:
            raise ConfigError(f"image_size must be >= 2 (got {self.image_size})")
        _positive("n_train", self.n_train, "data")
        _positive("n_test", self.n_test, "data")


@dataclass(frozen=True)
class TrainConfig(_Serialisable):
    """Optimisation: AdamW with linear warm-up, gradient clipping and EMA weights."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    lr_schedule: LrSchedule = "constant"  # cosine: decays to 0 at `steps` (fixed by the run)
    weight_decay: float = 0.0
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    seed: int = 0
    log_every: int = 50
    sample_every: int = 0  # 0: sample grid only at the end
    checkpoint_every: int = 1000
    num_samples: int = 64
    # Validation (ddpm.training.validation): every val_every steps (0: off, all training examples
    # are trained on) a val_timesteps-timestep -ELBO estimate on the held-out val_fraction of the
    # training examples; the best weights by it are kept, and training stops after `patience`
    # validations without improvement (0: never).
    val_every: int = 0
    val_fraction: float = 0.1
    val_timesteps: int = 16
    patience: int = 0
    # bf16: the training forward pass under bfloat16 autocast (weights, gradients, the optimizer
    # and sampling stay float32)
    autocast: Autocast = "off"
    compile: bool = False  # torch.compile the network for training: compile time vs step time

    def __post_init__(self) -> None:
        require_choice("autocast", self.autocast, get_args(Autocast))
        for name in ("steps", "batch_size", "lr", "log_every", "num_samples", "val_timesteps"):
            _positive(name, getattr(self, name), "train")
        require_choice("lr schedule", self.lr_schedule, get_args(LrSchedule))
        if self.val_every < 0 or self.patience < 0:
            raise ConfigError("val_every and patience must be >= 0 (0 turns them off)")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1) (got {self.val_fraction})")
        if self.patience and not self.val_every:
            raise ConfigError(
                "patience counts validations: add val_every N (e.g. 500)",
                params=("patience", "val_every"),
            )
        if self.warmup < 0 or self.sample_every < 0 or self.checkpoint_every < 0:
            raise ConfigError("warmup, sample_every and checkpoint_every must be >= 0")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0 (got {self.seed})")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (got {self.ema_decay})")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0, 0 turns it off (got {self.grad_clip})")


@dataclass(frozen=True)
class RunConfig(_Serialisable):
    """Everything needed to rebuild a run: saved as config.json beside the weights."""

    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --- the probability-flow ODE likelihood (ddpm.likelihood.ode) --------------------------------
EXACT_MAX_DIMS = 16  # 'auto' takes the exact divergence up to this many dimensions
Divergence = Literal["auto", "exact", "hutchinson"]
OdeMethod = Literal["RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"]


@dataclass(frozen=True)
class OdeConfig(_Serialisable):
    """How the likelihood of the probability-flow ODE is computed (``ddpm.likelihood.ode``)."""

    rtol: float = 1e-5
    atol: float = 1e-5
    method: OdeMethod = "RK45"  # a solver of scipy.integrate.solve_ivp
    divergence: Divergence = "auto"  # auto: exact up to EXACT_MAX_DIMS dimensions, else hutchinson
    probes: int = 1  # K Rademacher probes per example for Hutchinson's estimator
    s_min: float | None = None  # start of the flow; None: 1 / T

    def __post_init__(self) -> None:
        require_choice("ODE method", self.method, get_args(OdeMethod))
        require_choice("divergence", self.divergence, get_args(Divergence))
        if not (self.rtol > 0 and self.atol > 0):
            raise ConfigError(
                f"ODE tolerances must be > 0 (got rtol={self.rtol}, atol={self.atol})"
            )
        if isinstance(self.probes, bool) or not isinstance(self.probes, int) or self.probes < 1:
            raise ConfigError(f"ODE probes K must be an integer >= 1 (got {self.probes!r})")
        if self.s_min is not None and not 0 < self.s_min < 1:
            raise ConfigError(f"ODE s_min must lie in (0, 1) (got {self.s_min})")

    def divergence_for(self, dims: int) -> str:
        """'exact' or 'hutchinson' for data of ``dims`` dimensions."""
        if self.divergence == "auto":
            return "exact" if dims <= EXACT_MAX_DIMS else "hutchinson"
        return self.divergence
