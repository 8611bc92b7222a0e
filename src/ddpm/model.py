"""The model: one value holding everything that defines p_theta(x_{0:T}).

    p_theta(x_{0:T}) = p(x_T) prod_{t=1..T} p_theta(x_{t-1} | x_t),   p(x_T) = N(0, I)

is fixed by the process (the schedule beta_1..beta_T, its continuous form, T, the time map the
network reads and any respacing: a ``Diffusion``), the parameterisation (what the network
predicts, which variance), the range x0_hat is clipped to, the network, and one example's shape
and decoder levels (a ``DataSpec``: [Ho20] Sec. 3.3 discretizes L_0 over the data's grid).
``Source`` says where it came from. Every sampler and estimator takes a ``Model``; a respaced,
foreign or continuous-time process is a new value (``Model.respaced``), never a new code path.

``ddpm.loader.load(path)`` builds one from a run folder or a foreign model's folder.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ddpm.config import DataConfig
from ddpm.data import BUILTIN_NAMES, DataSpec
from ddpm.errors import ConfigError, DataError
from ddpm.process.continuous import ContinuousSchedule
from ddpm.process.diffusion import Denoiser, Diffusion, denoise
from ddpm.process.respace import Spacing, respace
from ddpm.process.reverse import PTheta, p_from_output

UNIT_RANGE = (-1.0, 1.0)  # model space of discrete data: the range x0_hat is clipped to


@dataclass(frozen=True)
class Source:
    """Where a model came from, for reports and JSON."""

    kind: str = "python"  # 'ddpm' (run folder), 'diffusers', 'oracle' or 'python'
    path: Path | None = None
    weights: str = ""  # which weights, in words ("EMA weights of step 3000")
    step: int | None = None  # training step of the weights, where known
    data: DataConfig | None = None  # the data it was trained on, where the source says
    name: str | None = None  # what reports call it; None: the folder's name, else the kind


@dataclass(frozen=True, eq=False)
class Model:
    """p_theta(x_{0:T}) (module docstring). ``net(x_t, net_t)`` is called only through
    ``p_mean_var`` / ``denoise``, which feed it the mapped time."""

    diffusion: Diffusion
    net: Denoiser
    spec: DataSpec  # one example: shape, decoder levels (None: continuous), scaling
    clip: tuple[float, float] | None = None  # x0_hat clipped to this range in every step
    continuous: ContinuousSchedule | None = None  # alpha_bar(s) between steps (the ODE), if known
    source: Source = dataclasses.field(default_factory=Source)

    def __post_init__(self) -> None:
        c = self.continuous
        if c is not None and c.T != self.diffusion.T:
            raise ConfigError(
                f"the continuous schedule has T = {c.T} but the process T = {self.diffusion.T}"
            )
        if self.clip is not None and not self.clip[0] < self.clip[1]:
            raise ConfigError(f"clip must be a range (low, high) with low < high (got {self.clip})")

    # --- what it is ---------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return self.diffusion.T

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape)

    @property
    def levels(self) -> int | None:
        """Decoder levels of L_0 (None: a Gaussian density, continuous data)."""
        return self.spec.levels

    @property
    def name(self) -> str:
        s = self.source
        return s.name if s.name is not None else s.path.name if s.path is not None else s.kind

    @property
    def device(self) -> torch.device:
        """Where the network's tensors live (cpu for a network without any)."""
        for tensors in ("parameters", "buffers"):
            for v in getattr(self.net, tensors, lambda: ())():
                return v.device
        return torch.device("cpu")

    # --- new values of the same network ---------------------------------------------------------
    def respaced(self, steps: int | str, spacing: Spacing | None = None) -> Model:
        """The K-step model that keeps the steps ``steps`` names ([ND21] Sec. 4,
        ``ddpm.process.respace``); it has no continuous form of its own."""
        return dataclasses.replace(
            self, diffusion=respace(self.diffusion, steps, spacing), continuous=None
        )

    def clipped(self, clip: bool | None) -> Model:
        """clip None: as it is; True: x0_hat clipped to [-1, 1] (discrete data only); False:
        not clipped."""
        if clip is None:
            return self
        if not clip:
            return dataclasses.replace(self, clip=None)
        if not self.spec.discrete:
            raise ConfigError(
                f"clip: {self.spec.name!r} is continuous data, whose x0_hat has no range to clip "
                "to; drop clip",
                params=("clip",),
            )
        return dataclasses.replace(self, clip=UNIT_RANGE)

    def named(self, name: str) -> Model:
        """The same model under another name in reports ("run K=50", "bayes-optimal")."""
        return dataclasses.replace(self, source=dataclasses.replace(self.source, name=name))

    def on(self, spec: DataSpec) -> Model:
        """The model scored on data ``spec``: the decoder's grid is that data's levels. The
        shape must be the network's."""
        if tuple(spec.shape) != self.shape:
            raise DataError(
                f"data {spec.name!r} has examples of shape {tuple(spec.shape)} but {self.name} "
                f"takes {self.shape}; give data of that shape"
            )
        return dataclasses.replace(self, spec=spec)

    def data_config(self, data: str | None = None) -> DataConfig:
        """The data to score it on: ``data`` (a name or path) if given, else its own."""
        if data is None:
            if self.source.data is None:
                raise ConfigError(
                    f"{self.source.path or self.name}: a model from {self.source.kind}, which "
                    "does not record its training examples: give data (a name or path) to "
                    "score it on",
                    params=("data",),
                )
            return self.source.data
        folder = data not in BUILTIN_NAMES and Path(data).expanduser().is_dir()
        if folder and self.spec.is_image:  # resize and convert images to what the model takes
            c, h, w = self.shape
            if h != w:
                raise DataError(f"data {data}: image folders are cropped square; {h}x{w} is not")
            return DataConfig(name=data, image_size=h, grayscale=c == 1)
        return DataConfig(name=data)

    def describe(self) -> dict:
        """What the JSON reports say about the model scored."""
        return {
            "source": self.source.kind,
            "path": None if self.source.path is None else str(self.source.path),
            "weights": self.source.weights,
            "T": self.T,
            "prediction": self.diffusion.param.prediction,
            "variance": self.diffusion.param.variance,
            "clip": None if self.clip is None else list(self.clip),
        }


def p_mean_var(model: Model, xt: Tensor, t: Tensor) -> PTheta:
    """Run the network at (x_t, t) and return p_theta(x_{t-1} | x_t), [Ho20] eq. (1), with the
    model's clipping; t: process steps [B]."""
    out = denoise(model.diffusion, model.net, xt, t)
    return p_from_output(model.diffusion, out, xt, t, clip=model.clip)


def clip_words(clip: tuple[float, float] | list[float] | None) -> str:
    """Which p_theta: 'x0_hat clipped to [-1, 1]' or 'x0_hat not clipped'."""
    return "x0_hat " + ("not clipped" if clip is None else f"clipped to [{clip[0]:g}, {clip[1]:g}]")


__all__ = ["Model", "Source", "clip_words", "p_mean_var"]
