"""A folder written by diffusers' ``DDPMPipeline.save_pretrained`` as a ddpm model.

    DIR/model_index.json                   components: unet (UNet2DModel), scheduler (DDPMScheduler)
    DIR/scheduler/scheduler_config.json    the process: betas, variance_type, prediction_type
    DIR/unet/config.json + diffusion_pytorch_model.safetensors    the network

The scheduler config becomes a ``Diffusion``; the network is wrapped so that ``model(x, t)``
returns a plain tensor. Nothing else is translated: every likelihood and sampling formula is
ddpm's own. The mapping, key by key (diffusers' 0-based timestep k is ddpm's step t = k + 1):

    betas           diffusers' float32 betas (computed as ``DDPMScheduler.__init__`` does),
                    cast exactly to float64; alpha_bar etc. are then derived in float64
    beta_schedule   linear, scaled_linear, squaredcos_cap_v2, or trained_betas
    variance_type   fixed_small -> 'small', fixed_large -> 'large', learned_range -> 'learned'
    prediction_type epsilon -> 'eps', sample -> 'x0', v_prediction -> 'v'
    time map        network time for step t is t - 1
    clip_sample     clip predicted x_0 to [-clip_sample_range, clip_sample_range] while sampling

Conventions that differ, all at t = 1 only (diffusers' k = 0), where diffusers' sampler adds no
noise, so sampling is unaffected; the evaluation uses ddpm's decoder variance beta_tilde_2:
    fixed_small:   diffusers' beta_tilde_1 = 0 is clamped to 1e-20 (a degenerate decoder).
    fixed_large:   diffusers uses beta_1; ddpm uses beta_tilde_2 (as [ND21]'s code).
    learned_range: diffusers interpolates log sigma^2 between log(1e-20) and log beta_1; ddpm
                   between log beta_tilde_2 and log beta_1.
For t >= 2 the three variances are the same functions of the schedule in both libraries
(learned_range: log sigma^2 = u log beta_t + (1 - u) log beta_tilde_t, u = (v + 1) / 2,
[ND21] eq. (15)).

diffusers is imported only inside the functions that load a network, so ``import ddpm`` never
imports it. Files are read from the local folder only; nothing is downloaded.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from ddpm.data import DataSpec
from ddpm.errors import CheckpointError, ConfigError
from ddpm.foreign.network import time_map_of
from ddpm.memory import FLOAT32, check_fits, check_steps
from ddpm.model import Model, Source
from ddpm.process.continuous import ContinuousSchedule
from ddpm.process.diffusion import Diffusion, Parameterisation
from ddpm.process.schedule import NoiseSchedule
from ddpm.runs.checkpoint import check_finite, load_json

INSTALL = 'pip install -e ".[diffusers]"'
MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
UNET_CONFIG = "unet/config.json"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"

VARIANCES = {"fixed_small": "small", "fixed_large": "large", "learned_range": "learned"}
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# beta_schedule -> the continuous form ddpm knows of it (ddpm.process.continuous)
CONTINUOUS = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")  # all equal for the full T-step chain

# DDPMScheduler's keys and defaults (diffusers 0.2x-0.4x); a saved config may omit any of them.
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,  # used only with thresholding
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,  # used only with thresholding
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
_META_KEYS = ("_class_name", "_diffusers_version")


def is_diffusers_folder(path: str | Path) -> bool:
    """True when path is a folder holding a diffusers model_index.json."""
    return (Path(path) / MODEL_INDEX).is_file()


# --- the process: scheduler_config.json -> Diffusion -------------------------------------------
def scheduler_settings(config: dict[str, Any], where: str = "scheduler config") -> dict[str, Any]:
    """The config with DDPMScheduler's defaults filled in; unsupported settings raise a
    ConfigError naming the key."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    cls = config.get("_class_name", "DDPMScheduler")
    if cls != "DDPMScheduler":
        raise ConfigError(f"{where}: _class_name {cls!r} is not supported; only DDPMScheduler is")
    unknown = sorted(set(config) - set(SCHEDULER_DEFAULTS) - set(_META_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unsupported key {unknown[0]!r} (not a DDPMScheduler setting)")
    c = {**SCHEDULER_DEFAULTS, **{k: v for k, v in config.items() if k not in _META_KEYS}}
    T = c["num_train_timesteps"]
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ConfigError(f"{where}: num_train_timesteps must be an integer >= 1 (got {T!r})")
    check_steps(T, f"{where}: num_train_timesteps")
    if c["trained_betas"] is None and c["beta_schedule"] not in BETA_SCHEDULES:
        raise ConfigError(
            f"{where}: beta_schedule {c['beta_schedule']!r} is not supported "
            f"(supported: {', '.join(BETA_SCHEDULES)}, or trained_betas)"
        )
    for key, table in (("variance_type", VARIANCES), ("prediction_type", PREDICTIONS)):
        if c[key] not in table:
            raise ConfigError(
                f"{where}: {key} {c[key]!r} is not supported (supported: {', '.join(table)})"
            )
    for key in ("thresholding", "rescale_betas_zero_snr"):
        if c[key] is not False:
            raise ConfigError(f"{where}: {key} = {c[key]!r} is not supported (only false)")
    if c["steps_offset"] != 0:
        raise ConfigError(
            f"{where}: steps_offset = {c['steps_offset']!r} is not supported (only 0)"
        )
    if c["timestep_spacing"] not in TIMESTEP_SPACINGS:
        raise ConfigError(
            f"{where}: timestep_spacing {c['timestep_spacing']!r} is not supported "
            f"(supported: {', '.join(TIMESTEP_SPACINGS)})"
        )
    if not isinstance(c["clip_sample"], bool):
        raise ConfigError(f"{where}: clip_sample must be true or false (got {c['clip_sample']!r})")
    r = c["clip_sample_range"]
    if c["clip_sample"] and not (isinstance(r, int | float) and r > 0):
        raise ConfigError(f"{where}: clip_sample_range must be a number > 0 (got {r!r})")
    return c


def diffusers_betas(c: dict[str, Any]) -> Tensor:
    """beta_1..beta_T [T] float32, computed as DDPMScheduler.__init__ computes them."""
    T = c["num_train_timesteps"]
    if c["trained_betas"] is not None:
        return torch.tensor(c["trained_betas"], dtype=torch.float32)
    start, end = c["beta_start"], c["beta_end"]
    if c["beta_schedule"] == "linear":
        return torch.linspace(start, end, T, dtype=torch.float32)
    if c["beta_schedule"] == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, T, dtype=torch.float32) ** 2

    # squaredcos_cap_v2: [ND21] eq. (17) with s = 0.008, evaluated in Python floats, capped.
    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - f((k + 1) / T) / f(k / T), 0.999) for k in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def diffusion_from_scheduler(
    config: dict[str, Any], where: str = "scheduler config"
) -> tuple[Diffusion, tuple[float, float] | None, ContinuousSchedule | None]:
    """(Diffusion, sampling clip range, continuous form of the schedule) for a DDPMScheduler
    config (see the module docstring). The continuous form is that of ``linear`` and
    ``squaredcos_cap_v2`` ([ND21]'s cosine, ``ddpm.process.continuous``); other schedules have
    none here."""
    c = scheduler_settings(config, where)
    T = c["num_train_timesteps"]
    try:
        betas = diffusers_betas(c)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{where}: cannot build the betas ({e})") from None
    if betas.shape != (T,):
        raise ConfigError(
            f"{where}: trained_betas has {betas.numel()} entries, num_train_timesteps is {T}"
        )
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ConfigError(f"{where}: every beta must lie in (0, 1); check the beta settings")
    beta = torch.cat([torch.zeros(1, dtype=torch.float64), betas.double()])
    param = Parameterisation(PREDICTIONS[c["prediction_type"]], VARIANCES[c["variance_type"]])
    time_map = time_map_of("index", T)  # step t is diffusers' timestep t - 1
    r = float(c["clip_sample_range"])
    schedule = NoiseSchedule(beta)
    kind = None if c["trained_betas"] is not None else CONTINUOUS.get(c["beta_schedule"])
    continuous = None if kind is None else ContinuousSchedule.of(kind, schedule)
    clip = (-r, r) if c["clip_sample"] else None
    return Diffusion(schedule, param, time_map), clip, continuous


# --- the network -----------------------------------------------------------------------------
class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel behind ddpm's network protocol: forward(x, t) -> unet(x, t).sample.

    x: [B, C, H, W]; t: the network time [B] (diffusers' 0-based timesteps, see the time map).
    The output [B, out_channels, H, W] is returned in x's dtype.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        return self.unet(x.to(dtype), t).sample.to(x.dtype)


def import_diffusers() -> ModuleType:
    """The diffusers package, or a ConfigError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError(
            f"reading a diffusers folder needs the diffusers package: {INSTALL}"
        ) from None
    return diffusers


def check_pipeline(folder: Path) -> None:
    """model_index.json must name a UNet2DModel and a DDPMScheduler and nothing else."""
    index = load_json(folder / MODEL_INDEX)
    if not isinstance(index, dict):
        raise ConfigError(
            f"{folder / MODEL_INDEX}: expected a JSON object naming the components, got "
            f"{type(index).__name__}; save the pipeline with save_pretrained"
        )
    want = {"unet": "UNet2DModel", "scheduler": "DDPMScheduler"}
    for key, value in index.items():
        if key.startswith("_"):
            continue
        cls = value[1] if isinstance(value, list) and len(value) == 2 else value
        if key not in want:
            raise ConfigError(
                f"{folder / MODEL_INDEX}: component {key!r} is not supported "
                "(a DDPMPipeline folder holds unet and scheduler)"
            )
        if cls != want[key]:
            raise ConfigError(
                f"{folder / MODEL_INDEX}: {key} is {cls!r}; only {want[key]} is supported"
            )
    missing = [k for k in want if k not in index]
    if missing:
        raise ConfigError(f"{folder / MODEL_INDEX}: no {missing[0]!r} component")


def unet_shape(config: dict[str, Any], param: Parameterisation, where: str) -> tuple[int, int, int]:
    """Per-example shape (C, H, W) of the unet; its outputs must fit the parameterisation, and
    its weights and the activations of one example must fit in memory."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(config).__name__}")
    for key in ("num_class_embeds", "class_embed_type"):
        if config.get(key) is not None:
            raise ConfigError(
                f"{where}: {key} = {config[key]!r} is not supported (unconditional only)"
            )
    size, c_in, c_out = (
        config.get("sample_size"),
        config.get("in_channels"),
        config.get("out_channels"),
    )
    hw = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, list) else None
    if hw is None or len(hw) != 2 or not all(_count(v) for v in (c_in, *hw)):
        raise ConfigError(
            f"{where}: needs sample_size (or [H, W]) and in_channels, integers >= 1 (got "
            f"sample_size {size!r}, in_channels {c_in!r})"
        )
    if c_out != param.out_mult * c_in:
        raise ConfigError(
            f"{where}: out_channels = {c_out}, but variance {param.variance!r} needs "
            f"{param.out_mult} x in_channels = {param.out_mult * c_in}"
        )
    check_fits(
        _unet_bytes(config, where, c_in * hw[0] * hw[1]),
        f"{where}: a UNet2DModel of block_out_channels {config.get('block_out_channels')} on "
        f"{c_in}x{hw[0]}x{hw[1]} examples",
        "check block_out_channels and sample_size",
    )
    return (c_in, int(hw[0]), int(hw[1]))


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# UNet2DModel's defaults of the two keys the size estimate reads
_UNET_DEFAULTS = {"block_out_channels": [224, 448, 672, 896], "layers_per_block": 2}


def _unet_bytes(config: dict[str, Any], where: str, example_numel: int) -> int:
    """A lower bound of the memory loading the network and running it on one example takes:
    the float32 weights of its 3x3 convolutions, twice (the network is built, then the saved
    weights are read into it), and the first convolution's output at full resolution.
    Counted: two convolutions per resnet, ``layers_per_block`` resnets in each down block, one
    more in each up block, two resnets in the middle block."""
    chans = config.get("block_out_channels", _UNET_DEFAULTS["block_out_channels"])
    layers = config.get("layers_per_block", _UNET_DEFAULTS["layers_per_block"])
    if not (isinstance(chans, list) and chans and all(_count(c) for c in chans)):
        raise ConfigError(f"{where}: block_out_channels must be a list of integers >= 1")
    if not _count(layers):
        raise ConfigError(f"{where}: layers_per_block must be an integer >= 1 (got {layers!r})")
    resnets = 2 * layers + 1  # down and up blocks of one resolution
    params = sum(2 * resnets * 9 * c * c for c in chans) + 2 * 2 * 9 * chans[-1] ** 2
    return 2 * FLOAT32 * params + FLOAT32 * example_numel * (1 + chans[0])


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> Model:
    """The model of a diffusers folder: its process, the wrapped network, 8-bit images of the
    UNet's shape in [-1, 1] (decoder levels 256), and the scheduler's sampling clip."""
    folder = Path(folder)
    check_pipeline(folder)
    for name in (SCHEDULER_CONFIG, UNET_CONFIG, UNET_WEIGHTS):
        if not (folder / name).is_file():
            raise CheckpointError(
                f"{folder / name}: missing; save the pipeline with "
                "save_pretrained(DIR, safe_serialization=True)"
            )
    diffusion, clip, continuous = diffusion_from_scheduler(
        load_json(folder / SCHEDULER_CONFIG), str(folder / SCHEDULER_CONFIG)
    )
    shape = unet_shape(load_json(folder / UNET_CONFIG), diffusion.param, str(folder / UNET_CONFIG))
    diffusers = import_diffusers()
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # what it would warn about is raised below
    try:
        unet, info = diffusers.UNet2DModel.from_pretrained(
            str(folder / "unet"),
            local_files_only=True,  # a local folder: never look anything up online
            use_safetensors=True,  # never unpickle
            low_cpu_mem_usage=False,
            ignore_mismatched_sizes=True,  # listed in info, then refused with the others
            output_loading_info=True,
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{folder / 'unet'}: cannot load the UNet2DModel ({first})") from None
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    check_loading_info(info, list(unet.state_dict()), str(folder / UNET_WEIGHTS))
    check_finite(unet.state_dict(), str(folder / UNET_WEIGHTS))
    net = DiffusersUNet(unet).to(device).eval()
    spec = DataSpec.from_levels(folder.name or "diffusers", shape, 256)
    source = Source("diffusers", folder, "the diffusers folder's UNet2DModel")
    return Model(diffusion, net, spec, clip, continuous, source)


def check_loading_info(info: dict[str, list], order: list[str], where: str) -> None:
    """Every tensor of the network must come from the file: missing and unexpected keys and
    shape mismatches (``from_pretrained``'s loading info) raise one CheckpointError naming the
    first few of each. ``order``: the network's keys, to list missing ones in its order."""

    def first(keys: list[str]) -> str:
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        return ", ".join(repr(k) for k in keys[:3]) + more

    rank = {k: i for i, k in enumerate(order)}
    missing = sorted(info.get("missing_keys") or [], key=lambda k: rank.get(k, len(rank)))
    unexpected = sorted(info.get("unexpected_keys") or [])
    problems = [f"missing {first(missing)}"] if missing else []
    problems += [f"unexpected {first(unexpected)}"] if unexpected else []
    shapes = sorted(info.get("mismatched_keys") or [], key=lambda m: rank.get(m[0], len(rank)))
    if shapes:
        key, in_file, in_model = shapes[0]
        more = f" (and {len(shapes) - 1} more shapes differ)" if len(shapes) > 1 else ""
        problems.append(
            f"{key!r} has shape {list(in_file)} in the file but {list(in_model)} in the model"
            + more
        )
    if problems:
        raise CheckpointError(
            f"{where}: the tensors do not match the UNet2DModel of {UNET_CONFIG} "
            f"({'; '.join(problems)}); every weight must come from the file: save the pipeline "
            "again with save_pretrained"
        )
