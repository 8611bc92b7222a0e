"""A checkpoint of improved-diffusion [ND21] (``model*.pt`` / ``ema_*.pt``) as a ddpm model.

Such a file holds one state dict of the U-Net and nothing about the model: the process and the
architecture are the flags its scripts were run with, in the same spelling
(``--image_size 32 --num_channels 128 --learn_sigma True ...``), parsed by ``parse_flags`` with
the defaults of improved-diffusion's ``model_and_diffusion_defaults()``. The network is ddpm's
own ``ImprovedUNet``; every likelihood and sampling formula is ddpm's. The mapping (their
0-based timestep k is ddpm's step t = k + 1):

    diffusion_steps, noise_schedule   T, NoiseSchedule.linear / .cosine (both as there: linear
                                      scaled by 1000 / T; cosine with s = 0.008, beta <= 0.999;
                                      ddpm caps linear betas at 0.999 too, so at T <= 20, where
                                      theirs reach 1, the last beta differs)
    predict_xstart                    prediction 'x0', else 'eps'
    learn_sigma / sigma_small         variance 'learned' ([ND21] eq. 15), else 'small', else
                                      'large' (beta_tilde_2 at t = 1, as their FIXED_LARGE)
    rescale_timesteps                 network time (t - 1) * 1000 / T (float32, computed as
                                      there), else the integer t - 1
    timestep_respacing                ``Model.respaced`` ("250", "10,15,20", "ddim50"): the
                                      network still reads the original step's time
    clip_denoised (image_nll.py)      x0_hat clipped to [-1, 1] unless --clip_denoised False
    data                              3 x image_size x image_size, 8-bit, v -> v / 127.5 - 1

Training-only flags (use_kl, rescale_learned_sigmas, use_checkpoint) are recorded and change
nothing here. The script flags listed in ``SCRIPT_FLAGS`` (batch sizes, learning rates, paths,
use_fp16, use_ddim ...) are accepted and ignored: they do not change the model. num_heads does
not change the shape of any weight, so a wrong num_heads cannot be detected from the file.
guided-diffusion's U-Net options [DN21] (num_head_channels, resblock_updown,
use_new_attention_order, channel_mult) are accepted too, with its defaults. Class-conditional
models (class_cond) are not supported: their likelihood needs the labels.

The likelihood differs from improved-diffusion's calc_bpd_loop in one place: its discretized
decoder uses a tanh approximation of the normal CDF, ddpm the exact one.

The file is read with ``torch.load(..., weights_only=True)``: nothing is unpickled but tensors.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [DN21] Dhariwal, Nichol. Diffusion Models Beat GANs on Image Synthesis. arXiv:2105.05233
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ddpm.data import DataSpec
from ddpm.errors import CheckpointError, ConfigError, require_choice
from ddpm.foreign.network import time_map_of
from ddpm.foreign.torch_file import first_names, read_torch_file
from ddpm.memory import FLOAT32, check_fits
from ddpm.model import UNIT_RANGE, Model, Source
from ddpm.nets.improved_unet import ImprovedUNet, ImprovedUNetConfig
from ddpm.process.continuous import ContinuousSchedule
from ddpm.process.diffusion import Diffusion, Parameterisation
from ddpm.process.respace import respaced_steps
from ddpm.process.schedule import SCHEDULES, NoiseSchedule
from ddpm.storage import check_finite

# Flags of the training and sampling scripts that do not change the model.
SCRIPT_FLAGS = (
    "batch_size", "microbatch", "lr", "weight_decay", "lr_anneal_steps", "ema_rate",
    "log_interval", "save_interval", "resume_checkpoint", "use_fp16", "fp16_scale_growth",
    "schedule_sampler", "data_dir", "num_samples", "model_path", "use_ddim",
)  # fmt: skip
# channel_mult of each image size when --channel_mult is not given (improved-diffusion's 32,
# 64, 256; guided-diffusion's 128)
CHANNEL_MULT = {32: (1, 2, 2, 2), 64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}
TRUE, FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")  # as its str2bool
LEVELS = 256  # 8-bit images


@dataclass(frozen=True)
class ImprovedDiffusionFlags:
    """The flags of improved-diffusion's scripts (``model_and_diffusion_defaults()``, same
    defaults), guided-diffusion's U-Net options, and image_nll.py's clip_denoised.
    ``ignored``: the script flags given that do not change the model (``SCRIPT_FLAGS``)."""

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    num_heads: int = 4
    num_heads_upsample: int = -1
    attention_resolutions: str = "16,8"
    dropout: float = 0.0
    learn_sigma: bool = False
    sigma_small: bool = False
    class_cond: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    timestep_respacing: str = ""
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = True
    rescale_learned_sigmas: bool = True
    use_checkpoint: bool = False
    use_scale_shift_norm: bool = True
    num_head_channels: int = -1
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    channel_mult: str = ""
    clip_denoised: bool = True
    ignored: tuple[str, ...] = ()


FLAG_NAMES = tuple(f.name for f in dataclasses.fields(ImprovedDiffusionFlags))[:-1]


_EXPECTED = {
    "bool": "a boolean (True/False, yes/no, 1/0)",
    "int": "an integer",
    "float": "a number",
}
_BOOLEANS = {**dict.fromkeys(TRUE, True), **dict.fromkeys(FALSE, False)}


def _flag_error(message: str) -> ConfigError:
    return ConfigError(f"flags: {message}", params=("flags",))


def _parse_value(name: str, kind: str, text: str) -> object:
    """One flag's value from its text, as improved-diffusion's argparse types read it."""
    try:
        if kind == "bool":
            return _BOOLEANS[text.strip().lower()]
        return {"int": int, "float": float, "str": str}[kind](text)
    except (KeyError, ValueError):
        raise _flag_error(f"--{name} {text!r}: expected {_EXPECTED[kind]}") from None


def parse_flags(text: str) -> ImprovedDiffusionFlags:
    """The flags of a command line as given to improved-diffusion's scripts: ``--name value``
    or ``--name=value``, names as there (module docstring); a flag given twice takes its last
    value, as argparse does. Unknown flags and missing or bad values raise a ConfigError naming
    the flag."""
    if not isinstance(text, str):
        raise _flag_error("give a string such as '--image_size 32'")
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise _flag_error(f"cannot split {text!r} ({e})") from None
    kinds = {f.name: f.type for f in dataclasses.fields(ImprovedDiffusionFlags)}
    values: dict[str, object] = {}
    ignored: list[str] = []
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or token == "--":
            raise _flag_error(f"{token!r} is not a flag; write --name value (or --name=value)")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if not tokens or tokens[0].startswith("--"):
                raise _flag_error(f"--{name} needs a value")
            value = tokens.pop(0)
        if name in SCRIPT_FLAGS:
            ignored += [] if name in ignored else [name]
        elif name in FLAG_NAMES:
            values[name] = _parse_value(name, kinds[name], value)
        else:
            raise _flag_error(
                f"unknown flag --{name}; improved-diffusion's settings are {', '.join(FLAG_NAMES)} "
                f"(and, ignored, {', '.join(SCRIPT_FLAGS)})"
            )
    flags = ImprovedDiffusionFlags(**values, ignored=tuple(ignored))
    if flags.noise_schedule not in SCHEDULES:
        raise _flag_error(
            f"--noise_schedule {flags.noise_schedule!r}: choose {' or '.join(SCHEDULES)}"
        )
    return flags


# --- flags -> network, process ---------------------------------------------------------------
def _int_list(name: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise _flag_error(f"--{name} {text!r}: expected integers >= 1 separated by commas")
    return values


def unet_config(flags: ImprovedDiffusionFlags) -> ImprovedUNetConfig:
    """The U-Net the flags describe, as improved-diffusion's create_model builds it."""
    if flags.class_cond:
        raise _flag_error(
            "class_cond True is not supported: the likelihood of a class-conditional model "
            "needs the labels; give an unconditional model"
        )
    size = flags.image_size
    if not flags.channel_mult and size not in CHANNEL_MULT:
        raise _flag_error(
            f"image_size {size} has no default channel_mult (sizes with one: "
            f"{', '.join(map(str, CHANNEL_MULT))}); give --channel_mult, e.g. 1,2,2,2"
        )
    mult = _int_list("channel_mult", flags.channel_mult) if flags.channel_mult else None
    resolutions = _int_list("attention_resolutions", flags.attention_resolutions)
    try:
        return ImprovedUNetConfig(
            image_size=size,
            model_channels=flags.num_channels,
            channel_mult=mult or CHANNEL_MULT[size],
            num_res_blocks=flags.num_res_blocks,
            attention_rates=tuple(size // r for r in resolutions),
            out_channels=6 if flags.learn_sigma else 3,
            dropout=flags.dropout,
            num_heads=flags.num_heads,
            num_head_channels=flags.num_head_channels,
            num_heads_upsample=flags.num_heads_upsample,
            use_scale_shift_norm=flags.use_scale_shift_norm,
            resblock_updown=flags.resblock_updown,
            attention_order="new" if flags.use_new_attention_order else "legacy",
        )
    except ConfigError as e:
        raise _flag_error(str(e)) from None


def process(flags: ImprovedDiffusionFlags) -> tuple[Diffusion, ContinuousSchedule]:
    """The T-step process of the flags (before any respacing, whose spelling is checked) and
    its continuous form."""
    T = flags.diffusion_steps
    try:
        schedule = NoiseSchedule.from_name(flags.noise_schedule, T)
        if flags.timestep_respacing:
            respaced_steps(T, flags.timestep_respacing)
    except ConfigError as e:
        raise _flag_error(f"diffusion_steps {T}, timestep_respacing: {e}") from None
    variance = "learned" if flags.learn_sigma else "small" if flags.sigma_small else "large"
    param = Parameterisation("x0" if flags.predict_xstart else "eps", variance)
    # their network reads the 0-based timestep t - 1, times 1000 / T with rescale_timesteps
    time = "rescaled" if flags.rescale_timesteps else "index"
    diffusion = Diffusion(schedule, param, time_map_of(time, T))
    return diffusion, ContinuousSchedule.of(flags.noise_schedule, schedule)


# --- the checkpoint ----------------------------------------------------------------------------
def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of an improved-diffusion checkpoint file, read without unpickling anything
    but tensors (a dict holding them under 'model' or 'state_dict' is accepted too)."""
    give = "a file that holds the U-Net's state_dict() alone, as its training script saves"
    return _tensors_of(read_torch_file(path, give), str(path))


def _tensors_of(state: object, where: str) -> dict[str, Tensor]:
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            inner = state.get(key)
            if isinstance(inner, dict) and not any(isinstance(v, Tensor) for v in state.values()):
                state = inner
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{where}: expected a state dict (names -> tensors), found none")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise CheckpointError(
            f"{where}: entry {bad[0]!r} is not a named tensor; give the U-Net's state_dict()"
        )
    return state


def _likely_flags(
    flags: ImprovedDiffusionFlags, expected: dict[str, tuple[int, ...]], state: dict[str, Tensor]
) -> list[str]:
    """Which flags the file's tensors say differ, where that is plain from a shape or a name."""
    hints = []
    out = state.get("out.2.weight")
    if out is not None and out.ndim == 4 and out.shape[0] in (3, 6):
        if (out.shape[0] == 6) != flags.learn_sigma:
            hints.append(f"learn_sigma {out.shape[0] == 6}")
    emb = state.get("time_embed.0.weight")
    if emb is not None and emb.ndim == 2 and emb.shape[1] != flags.num_channels:
        hints.append(f"num_channels {emb.shape[1]}")
    e, w = (state.get(f"input_blocks.1.0.{k}.weight") for k in ("emb_layers.1", "in_layers.2"))
    if e is not None and w is not None and e.ndim == 2 and w.ndim == 4:
        if (e.shape[0] == 2 * w.shape[0]) != flags.use_scale_shift_norm:
            hints.append(f"use_scale_shift_norm {e.shape[0] == 2 * w.shape[0]}")
    if any(k.startswith("label_emb.") for k in state):
        hints.append("class_cond True (a class-conditional model: not supported)")
    n_file, n_model = (
        len({k.split(".")[1] for k in names if k.startswith("input_blocks.")})
        for names in (state, expected)
    )
    levels = len(unet_config(flags).channel_mult)
    if n_file != n_model and n_file % levels == 0:  # 1 + levels * blocks + (levels - 1)
        hints.append(f"num_res_blocks {n_file // levels - 1} (or channel_mult, image_size)")
    elif n_file != n_model:
        hints.append("num_res_blocks, channel_mult or image_size")
    else:  # the same blocks: a downsample is a conv 'op' or a residual block
        ops = {k[: -len("op.weight")] for k in expected if k.endswith(".op.weight")}
        if ops and all(f"{p}in_layers.2.weight" in state for p in ops):
            hints.append("resblock_updown True")
        ops = {k[: -len("op.weight")] for k in state if k.endswith(".op.weight")}
        if ops and all(f"{p}in_layers.2.weight" in expected for p in ops):
            hints.append("resblock_updown False")
    if not hints:
        hints.append("attention_resolutions, channel_mult or num_head_channels")
    return hints


def check_tensors(
    flags: ImprovedDiffusionFlags, expected: dict[str, tuple[int, ...]],
    state: dict[str, Tensor], where: str,
) -> None:  # fmt: skip
    """Every tensor of the network must come from the file with its shape: missing and
    unexpected names and shape mismatches raise one CheckpointError naming the first few, and
    the flags that likely differ."""
    missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = [f"missing {first_names(missing)}"] if missing else []
    problems += [f"unexpected {first_names(unexpected)}"] if unexpected else []
    if shapes:
        k = shapes[0]
        more = f" (and {len(shapes) - 1} more shapes differ)" if len(shapes) > 1 else ""
        problems.append(
            f"{k!r} has shape {list(state[k].shape)} in the file but {list(expected[k])} in "
            f"the model{more}"
        )
    if problems:
        hints = _likely_flags(flags, expected, state)
        raise CheckpointError(
            f"{where}: the tensors do not match the U-Net the flags describe "
            f"({'; '.join(problems)}); likely differs: {'; '.join(hints)}; give the flags the "
            "model was trained with",
            params=("flags",),
        )


def _network(cfg: ImprovedUNetConfig, flags: ImprovedDiffusionFlags, state: dict[str, Tensor],
             where: str, device: torch.device | str) -> ImprovedUNet:  # fmt: skip
    """The U-Net of the flags holding the file's weights, in eval mode on device."""
    with torch.device("meta"):  # the names and shapes, without allocating
        expected = {k: tuple(v.shape) for k, v in ImprovedUNet(cfg).state_dict().items()}
    check_tensors(flags, expected, state, where)
    check_finite(state, where)
    numel = sum(v.numel() for v in state.values())
    what = f"{where}: an improved-diffusion U-Net of {numel / 1e6:.1f}M parameters"
    check_fits(FLOAT32 * numel, what, "check num_channels, or use another device", device=device)
    net = ImprovedUNet(cfg)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.to(device).eval()


def from_improved_diffusion(
    checkpoint: str | Path | dict[str, Tensor], flags: str, device: torch.device | str = "cpu"
) -> Model:
    """The ddpm model of an improved-diffusion checkpoint: ``checkpoint`` is the .pt file its
    training script saved (model*.pt or ema_*.pt) or that state dict, ``flags`` the command
    line it was trained with, in its spelling (``--image_size 32 --learn_sigma True ...``;
    module docstring). The network is ddpm's ``ImprovedUNet`` in eval mode on ``device``;
    x0_hat is clipped to [-1, 1] unless --clip_denoised False."""
    parsed = parse_flags(flags)
    cfg = unet_config(parsed)
    diffusion, continuous = process(parsed)  # bad flags are refused before the file is read
    if isinstance(checkpoint, dict):
        path, where, name = None, "the state dict", "improved-diffusion"
        state, weights = _tensors_of(checkpoint, where), "the weights of the state dict given"
    else:
        path = Path(checkpoint)
        where, name, state = str(path), path.stem, read_state_dict(path)
        weights = f"weights of {path.name}"
    net = _network(cfg, parsed, state, where, device)
    size = parsed.image_size
    spec = DataSpec.from_levels(name, (3, size, size), LEVELS)
    source = Source("improved-diffusion", path, weights, name=None if path is None else name)
    clip = UNIT_RANGE if parsed.clip_denoised else None
    model = Model(diffusion, net, spec, clip, continuous, source)
    return model.respaced(parsed.timestep_respacing) if parsed.timestep_respacing else model


def load_checkpoint(
    path: Path, device: torch.device | str, weights: str, flags: str | None
) -> Model:
    """``ddpm.load(path, source='improved-diffusion', flags=...)``: the file holds one set of
    weights (the raw or the EMA ones, whichever was saved), so ``weights`` 'ema' and 'raw'
    read the same."""
    require_choice("weights", weights, ("ema", "raw"))
    if flags is None:
        raise ConfigError(
            f"{path}: an improved-diffusion checkpoint does not record its settings; give "
            "flags, the command line it was trained with (e.g. '--image_size 32 "
            "--num_channels 128 --learn_sigma True')",
            params=("flags",),
        )
    return from_improved_diffusion(path, flags, device)


__all__ = [
    "ImprovedDiffusionFlags",
    "from_improved_diffusion",
    "load_checkpoint",
    "parse_flags",
    "unet_config",
]
