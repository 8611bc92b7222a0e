"""Any network as a ddpm model: the process conventions it was trained under, said once.

A network trained by any code is scored (and sampled) by ddpm once four things are known: the
schedule beta_1..beta_T, what it predicts, which reverse variance, and which time input stands
for step t. ``Process`` states them; ``from_network(net, process, data)`` returns the ``Model``:

    schedule     betas [T] (beta_1..beta_T), or alpha_bar [T] (alpha_bar_1..alpha_bar_T, with
                 alpha_bar_0 = 1 implied: beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}), or
                 schedule 'linear' / 'cosine' with T (``NoiseSchedule.linear`` / ``.cosine``).
                 Floating values of any precision are cast exactly to float64; every quantity
                 derived from them is computed in float64.
    prediction   'eps' (eps_theta, [Ho20] eq. (11)), 'x0', or 'v' = sqrt(alpha_bar_t) eps
                 - sqrt(1 - alpha_bar_t) x_0 ([SH22] Sec. 4)
    variance     'small' (beta_tilde_t), 'large' (beta_t), 'learned' ([ND21] eq. (15): the
                 network returns 2C channels, the mean head then the interpolation v in [-1, 1])
    time         the input the network reads for ddpm's step t = 1..T:
                   'step'      t itself (int64), ddpm's own networks
                   'index'     t - 1 (int64): 0-based timesteps (diffusers, denoising-diffusion-
                               pytorch, improved-diffusion without rescale_timesteps)
                   'rescaled'  (t - 1) * 1000 / T as float32 (improved-diffusion's
                               rescale_timesteps, computed as there)
                   a tensor [T] of the network times of t = 1..T
                 A floating t between steps (the probability-flow ODE) reads the map by linear
                 interpolation (``Diffusion.net_t``); below t = 1 the map continues linearly.

The ODE needs the continuous form of the schedule (``ddpm.process.continuous``). It is known only
for a named schedule: with ``schedule`` alone, or with ``schedule`` naming the schedule that given
betas or alpha_bar follow, which is checked to float32 precision. Other betas have none, and the
probability-flow likelihood refuses such a model.

The network is called as ``net(x_t, t_net)`` with x_t [B, *data.shape] and t_net [B], and must
return [B, C, ...] ([B, 2C, ...] with variance 'learned'; [B, D] / [B, 2D] for vectors);
``from_network`` checks this on one example. It is scored as it is: call ``net.eval()`` first
when it has dropout or batch norm.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [SH22] Salimans, Ho. Progressive Distillation for Fast Sampling of Diffusion Models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from ddpm.config import Prediction
from ddpm.data import DataSpec
from ddpm.errors import ConfigError, require_choice
from ddpm.memory import check_steps
from ddpm.model import Model, Source
from ddpm.process.continuous import ContinuousSchedule
from ddpm.process.diffusion import Diffusion, Parameterisation
from ddpm.process.schedule import SCHEDULES, NoiseSchedule

TimeConvention = Literal["step", "index", "rescaled"]
Variance = Literal["small", "large", "learned"]
EPS32 = float(torch.finfo(torch.float32).eps)
# betas "equal to float32 precision": float32 rounding is within EPS32 / 2 of the value; a
# schedule computed in float32 arithmetic (torch.linspace) is a few roundings off
NAMED_RTOL = 8 * EPS32


@dataclass(frozen=True, eq=False)
class Process:
    """The process a network was trained under (module docstring). Give one of ``betas``,
    ``alpha_bar``, or ``schedule`` with ``T``; ``schedule`` beside betas or alpha_bar names the
    schedule they follow (for the ODE's continuous form; checked). Validated at construction:
    a bad value raises a ConfigError naming the field."""

    betas: Tensor | Sequence[float] | None = None  # [T]: beta_1..beta_T
    alpha_bar: Tensor | Sequence[float] | None = None  # [T]: alpha_bar_1..alpha_bar_T
    schedule: str | None = None  # 'linear' | 'cosine'
    T: int | None = None
    prediction: Prediction = "eps"
    variance: Variance = "small"
    time: TimeConvention | Tensor | Sequence[float] = "step"
    noise_schedule: NoiseSchedule = field(init=False, repr=False)  # derived, float64
    time_map: Tensor | None = field(init=False, repr=False)  # [T + 1]; None: the step itself

    def __post_init__(self) -> None:
        require_choice("prediction", self.prediction, get_args(Prediction))
        require_choice("variance", self.variance, get_args(Variance))
        beta = _beta_of(self)
        object.__setattr__(self, "noise_schedule", NoiseSchedule(beta))
        object.__setattr__(self, "time_map", time_map_of(self.time, len(beta) - 1))

    @property
    def parameterisation(self) -> Parameterisation:
        return Parameterisation(self.prediction, self.variance)

    def diffusion(self) -> Diffusion:
        """The ``Diffusion`` of this process: schedule, parameterisation, time map."""
        return Diffusion(self.noise_schedule, self.parameterisation, self.time_map)

    def continuous(self) -> ContinuousSchedule | None:
        """The continuous form of the named schedule (None when no schedule is named)."""
        if self.schedule is None:
            return None
        return ContinuousSchedule.of(self.schedule, self.noise_schedule)


# --- the schedule ------------------------------------------------------------------------------
def _beta_of(p: Process) -> Tensor:
    """[T + 1] float64 beta (entry 0 is 0) from the fields of p; checks them."""
    if p.betas is not None and p.alpha_bar is not None:
        raise ConfigError(
            "Process: give betas or alpha_bar, not both", params=("betas", "alpha_bar")
        )
    if p.schedule is not None:
        require_choice("schedule", p.schedule, SCHEDULES)
    if p.T is not None and (not isinstance(p.T, int) or isinstance(p.T, bool) or p.T < 1):
        raise ConfigError(f"Process: T must be an integer >= 1 (got {p.T!r})", params=("T",))
    if p.betas is None and p.alpha_bar is None:
        if p.schedule is None or p.T is None:
            raise ConfigError(
                "Process: give betas, alpha_bar, or schedule ('linear' or 'cosine') with T",
                params=("betas", "alpha_bar", "schedule", "T"),
            )
        check_steps(p.T, "Process")
        return NoiseSchedule.from_name(p.schedule, p.T).beta
    name = "betas" if p.betas is not None else "alpha_bar"
    values = _vector(name, p.betas if p.betas is not None else p.alpha_bar)
    T = values.numel()
    if p.T is not None and p.T != T:
        raise ConfigError(
            f"Process: T = {p.T} but {name} has {T} entries; drop T or give {p.T} entries",
            params=("T", name),
        )
    check_steps(T, "Process")
    beta = _check_betas(values) if name == "betas" else betas_from_alpha_bar(values)
    if p.schedule is not None:
        check_named(beta[1:], p.schedule, name)
    return beta


def _vector(name: str, value: object) -> Tensor:
    """value as a float64 vector [T], cast exactly from any floating dtype."""
    try:
        if isinstance(value, Tensor):
            v = value.detach().cpu()
        elif isinstance(value, list | tuple):  # Python floats are float64: keep every bit
            v = torch.as_tensor(value, dtype=torch.float64)
        else:  # an array keeps its dtype (float32 casts exactly below)
            v = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        v = None
    if v is None or not v.is_floating_point() or v.ndim != 1 or v.numel() < 1:
        raise ConfigError(
            f"Process: {name} must be a vector of T >= 1 floating-point numbers (a tensor, "
            f"array or list; got {type(value).__name__}"
            f"{'' if v is None else ' of shape ' + str(tuple(v.shape)) + ', ' + str(v.dtype)})",
            params=(name,),
        )
    return v.double()  # every floating dtype embeds exactly in float64


def _first_bad(ok: Tensor) -> int:
    """1-based index t of the first False entry of ok [T]."""
    return int((~ok).nonzero()[0]) + 1


def _check_betas(b: Tensor) -> Tensor:
    ok = (b > 0) & (b < 1)
    if not bool(ok.all()):
        t = _first_bad(ok)
        raise ConfigError(
            f"Process: every beta_t must lie in (0, 1); beta_{t} = {float(b[t - 1])!r} "
            "(betas[0] is beta_1)",
            params=("betas",),
        )
    return torch.cat([torch.zeros(1, dtype=torch.float64), b])


def betas_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """[T + 1] beta with beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, alpha_bar_0 = 1 ([Ho20]
    eq. (4) inverted); alpha_bar [T] float64 must lie in (0, 1] and decrease strictly."""
    ab = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar])
    ok = (alpha_bar > 0) & (alpha_bar <= 1) & (alpha_bar < ab[:-1])
    if not bool(ok.all()):
        t = _first_bad(ok)
        raise ConfigError(
            "Process: alpha_bar must lie in (0, 1] and decrease strictly from alpha_bar_0 = 1 "
            f"(every beta_t in (0, 1)); alpha_bar_{t} = {float(ab[t])!r} after "
            f"{float(ab[t - 1])!r} (alpha_bar[0] is alpha_bar_1)",
            params=("alpha_bar",),
        )
    beta = 1 - ab[1:] / ab[:-1]
    return torch.cat([torch.zeros(1, dtype=torch.float64), beta])


def matches_named(beta: Tensor, name: str) -> bool:
    """True when beta_1..beta_T ([T], float64) equal ddpm's schedule ``name`` of the same T to
    float32 precision (relative NAMED_RTOL)."""
    named = NoiseSchedule.from_name(name, beta.numel()).beta[1:]
    return bool(((beta - named).abs() <= NAMED_RTOL * named).all())


def named_schedule_of(beta: Tensor) -> str | None:
    """The named schedule ('linear', 'cosine') that beta_1..beta_T [T] follow, or None."""
    return next((name for name in SCHEDULES if matches_named(beta, name)), None)


def check_named(beta: Tensor, name: str, field_name: str) -> None:
    """ConfigError unless beta_1..beta_T [T] follow ddpm's schedule ``name``."""
    if matches_named(beta, name):
        return
    named = NoiseSchedule.from_name(name, beta.numel()).beta[1:]
    t = _first_bad((beta - named).abs() <= NAMED_RTOL * named)
    raise ConfigError(
        f"Process: the {field_name} given do not follow the {name!r} schedule of T = "
        f"{beta.numel()} (beta_{t} = {float(beta[t - 1]):.9g}, the schedule's "
        f"{float(named[t - 1]):.9g}); drop schedule (then there is no ODE) or give its betas",
        params=("schedule", field_name),
    )


# --- the time map ------------------------------------------------------------------------------
def time_map_of(time: object, T: int) -> Tensor | None:
    """[T + 1] network time of step t (entry 0 continues the map linearly below t = 1), or None
    for 'step' (the step itself)."""
    if isinstance(time, str):
        require_choice("time", time, get_args(TimeConvention))
        k = torch.arange(T + 1, dtype=torch.long) - 1  # 0-based timestep of step t
        if time == "step":
            return None
        # 'rescaled': k * (1000 / T) in float32, as improved-diffusion's _scale_timesteps
        return k if time == "index" else k.float() * (1000.0 / T)
    try:
        m = torch.as_tensor(time.detach().cpu() if isinstance(time, Tensor) else time)
    except (TypeError, ValueError, RuntimeError):
        m = None
    if m is None or m.dtype == torch.bool or m.is_complex() or m.shape != (T,):
        raise ConfigError(
            f"Process: time must be 'step', 'index', 'rescaled', or the network times of "
            f"t = 1..T as a vector of T = {T} numbers (got "
            f"{type(time).__name__}{'' if m is None else ' of shape ' + str(tuple(m.shape))})",
            params=("time",),
        )
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):
        raise ConfigError("Process: time holds NaN or inf", params=("time",))
    first = 2 * m[:1] - m[1:2] if T >= 2 else m[:1]  # linear continuation below t = 1
    return torch.cat([first, m])


# --- the model ---------------------------------------------------------------------------------
def from_network(
    net: Callable[[Tensor, Tensor], Tensor],
    process: Process,
    data: DataSpec,
    clip: bool | tuple[float, float] = False,
    name: str | None = None,
    check: bool = True,
) -> Model:
    """The ``Model`` of a network trained under ``process`` (module docstring) on data of
    ``data``'s shape and levels (discrete data in model space [-1, 1]: value v is
    2 v / (levels - 1) - 1, ``DataSpec.from_levels``).

    clip: True clips x0_hat to [-1, 1] in every step (discrete data only), a pair (low, high)
    to that range, False not at all. name: what reports call it (default: the network's class
    name). check: run the network once on one example at t = T and check the shape of its
    output (a ConfigError says the shape it returned and the one it must return).
    """
    if not isinstance(process, Process):
        raise ConfigError(
            f"process must be a ddpm.Process (got {type(process).__name__})", params=("process",)
        )
    if not callable(net):
        raise ConfigError(
            f"net must be callable as net(x_t, t) (got {type(net).__name__})", params=("net",)
        )
    if not isinstance(data, DataSpec):
        raise ConfigError(
            f"data must be a ddpm.DataSpec (e.g. DataSpec.from_levels(name, shape, 256); got "
            f"{type(data).__name__})",
            params=("data",),
        )
    label = name if name is not None else type(net).__name__
    source = Source("python", None, f"the network {label} given", name=label)
    model = Model(process.diffusion(), net, data, None, process.continuous(), source)
    if isinstance(clip, bool):
        model = model.clipped(clip)
    else:
        model = dataclasses.replace(model, clip=_clip_range(clip))
    if check:
        check_output_shape(model)
    return model


def _clip_range(clip: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise ConfigError(
            f"clip must be True, False or a pair (low, high) (got {clip!r})", params=("clip",)
        ) from None
    return (low, high)


@torch.no_grad()
def check_output_shape(model: Model) -> None:
    """Run the network once on one example (zeros) at step t = T; its output must be
    [1, out_mult * C, ...]. A network in training mode is put in eval mode for the call (so
    batch norm statistics do not move) and back."""
    net, shape = model.net, model.shape
    params = getattr(net, "parameters", lambda: iter(()))
    dtype = next(iter(params()), torch.zeros(())).dtype  # the network's own dtype, else float32
    x = torch.zeros((1, *shape), dtype=dtype, device=model.device)
    t = torch.full((1,), model.T, dtype=torch.long, device=model.device)
    training = bool(getattr(net, "training", False))
    if training:
        net.eval()  # type: ignore[attr-defined]
    try:
        out = net(x, model.diffusion.net_t(t))
    finally:
        if training:
            net.train()  # type: ignore[attr-defined]
    mult = model.diffusion.param.out_mult
    want = (1, mult * shape[0], *shape[1:])
    if not isinstance(out, Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        parts = "the mean head, then the variance interpolation" if mult == 2 else "the prediction"
        raise ConfigError(
            f"net(x_t, t) returned {got} for x_t of shape {(1, *shape)}; variance "
            f"{model.diffusion.param.variance!r} needs {want} ([B, {mult} x C, ...]: {parts}); "
            "check the network, data's shape and variance",
            params=("net", "data", "variance"),
        )


__all__ = [
    "Process",
    "betas_from_alpha_bar",
    "check_output_shape",
    "from_network",
    "matches_named",
    "named_schedule_of",
    "time_map_of",
]
