"""A denoising-diffusion-pytorch ``GaussianDiffusion`` (or its Trainer's ``model-N.pt``) as a
ddpm model.

``from_denoising_diffusion_pytorch(gd)`` reads the object's attributes and float32 buffers (it
does not need the package itself); ``ddpm.load(FILE, source='denoising-diffusion-pytorch',
flags=JSON)`` builds the ``Unet`` and the ``GaussianDiffusion`` the JSON describes with the
installed package, reads the Trainer's checkpoint into it, and does the same. Every likelihood and
sampling formula is ddpm's. The mapping (their 0-based timestep k is ddpm's step t = k + 1):

    betas           the float32 ``betas`` buffer cast exactly to float64; alpha_bar etc. derived
                    in float64. The ``alphas_cumprod`` buffer must agree to float32 precision.
    beta_schedule   read from the betas: 'linear' and 'cosine' follow ddpm's ``NoiseSchedule``
                    formulas (linear scaled by 1000 / T; cosine s = 0.008, beta <= 0.999), so
                    their continuous forms serve the ODE; 'sigmoid' has none (no ODE)
    objective       pred_noise -> 'eps', pred_x0 -> 'x0', pred_v -> 'v' (their v = sqrt(alpha_bar)
                    eps - sqrt(1 - alpha_bar) x_0, ddpm's [SH22] convention)
    variance        'small': their fixed posterior variance beta_tilde_t
    time map        the network reads t - 1 (int64), as ``model(x, t)`` in their sampler
    clip            x0_hat clipped to [-1, 1], as their p_mean_variance (clip_denoised=True)
    data            channels x image_size x image_size 8-bit images; their auto_normalize maps
                    [0, 1] -> [-1, 1], so value v is 2 v / 255 - 1, ddpm's model space

Convention that differs, at t = 1 only (their k = 0): their posterior variance there is 0 (its
log clamped at log 1e-20) and their sampler adds no noise; ddpm's decoder p_theta(x_0 | x_1)
uses beta_tilde_2 (``NoiseSchedule.sigma2_small``), so sampling is the same and the ELBO has a
finite decoder term.

Refused, each with one line: auto_normalize=False (their process then runs on data in [0, 1]),
self_condition=True (the reverse step feeds the previous step's x_0 prediction to the network,
so p_theta(x_{t-1} | x_t) is not a function of x_t alone), an unknown objective, and other
classes than GaussianDiffusion (its subclasses change the reverse step). Training-only settings
(offset_noise_strength, min_snr_loss_weight, immiscible) and sampling ones (sampling_timesteps,
ddim_sampling_eta) do not change p_theta and are not read.

The checkpoint is read with ``torch.load(..., weights_only=True)`` only: nothing but tensors and
plain values is unpickled. The package is imported inside ``import_package`` only, so
``import ddpm`` never imports it.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [SH22] Salimans, Ho. Progressive Distillation for Fast Sampling of Diffusion Models.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from ddpm.data import DataSpec
from ddpm.errors import CheckpointError, ConfigError, DataError, require_choice
from ddpm.foreign.network import EPS32, NAMED_RTOL, Process, named_schedule_of
from ddpm.foreign.torch_file import first_names, read_torch_file
from ddpm.model import UNIT_RANGE, Model, Source
from ddpm.process.schedule import NoiseSchedule
from ddpm.storage import check_finite

NAME = "denoising-diffusion-pytorch"
INSTALL = "pip install denoising-diffusion-pytorch (with the torchvision built for your torch)"
OBJECTIVES = {"pred_noise": "eps", "pred_x0": "x0", "pred_v": "v"}
LEVELS = 256  # 8-bit images
EMA_PREFIX = "ema_model."  # ema_pytorch's EMA: the averaged GaussianDiffusion's tensors
FLAGS_EXAMPLE = (
    '{"unet": {"dim": 64, "dim_mults": [1, 2, 4, 8]}, '
    '"diffusion": {"image_size": 32, "timesteps": 1000}}'
)
_ATTRIBUTES = (
    "model", "betas", "alphas_cumprod", "objective", "num_timesteps", "image_size", "channels",
    "self_condition", "normalize",
)  # fmt: skip


class DdpUnet(nn.Module):
    """Their Unet behind ddpm's network protocol: forward(x, t) -> unet(x, t).

    x: [B, C, H, W]; t: the network time [B] (their 0-based timestep, int64; a float between
    steps for the ODE). The output [B, C, H, W] comes back in x's dtype."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        t = t.to(dtype) if t.is_floating_point() else t
        return self.unet(x.to(dtype), t).to(x.dtype)


# --- the object -> Model -----------------------------------------------------------------------
def from_denoising_diffusion_pytorch(
    gaussian_diffusion: nn.Module, data: DataSpec | None = None
) -> Model:
    """The ddpm model of a denoising-diffusion-pytorch ``GaussianDiffusion`` (module docstring):
    its network, process and clipping, scored on ``data`` (default: 8-bit images of its shape,
    channels x image_size). The network stays where it is, in the mode it is in (call
    ``gaussian_diffusion.eval()`` first when its Unet has dropout)."""
    source = Source(NAME, None, "the GaussianDiffusion given", name=NAME)
    return model_of(gaussian_diffusion, data, source)


def model_of(gd: nn.Module, data: DataSpec | None, source: Source) -> Model:
    """The model of gd (checked by ``check_object``) on data, with source."""
    objective, shape = check_object(gd)
    beta = _betas(gd)
    process = Process(
        betas=beta,
        schedule=named_schedule_of(beta.double()),  # linear / cosine: the ODE's form
        prediction=OBJECTIVES[objective],  # type: ignore[arg-type]
        variance="small",
        time="index",
    )
    spec = data if data is not None else DataSpec.from_levels(source.name or NAME, shape, LEVELS)
    if not isinstance(spec, DataSpec) or tuple(spec.shape) != shape:
        got = tuple(spec.shape) if isinstance(spec, DataSpec) else type(spec).__name__
        raise DataError(
            f"data: the GaussianDiffusion takes examples of shape {shape} (channels, "
            f"image_size), data gives {got}; give a DataSpec of that shape",
            params=("data",),
        )
    return Model(
        process.diffusion(), DdpUnet(gd.model), spec, UNIT_RANGE, process.continuous(), source
    )


def check_object(gd: object) -> tuple[str, tuple[int, int, int]]:
    """(objective, (C, H, W)) of a GaussianDiffusion; refuses what ddpm cannot score."""
    cls = type(gd).__name__
    if cls != "GaussianDiffusion":
        raise ConfigError(
            f"{cls} is not supported: give a denoising_diffusion_pytorch GaussianDiffusion (its "
            "subclasses change the reverse step)",
            params=("gaussian_diffusion",),
        )
    missing = [a for a in _ATTRIBUTES if not hasattr(gd, a)]
    if missing:
        raise ConfigError(
            f"GaussianDiffusion: no attribute {missing[0]!r}; give the object that "
            "denoising_diffusion_pytorch.GaussianDiffusion(unet, ...) returns",
            params=("gaussian_diffusion",),
        )
    g: Any = gd
    if g.objective not in OBJECTIVES:
        raise ConfigError(
            f"GaussianDiffusion: objective {g.objective!r} is not supported (supported: "
            f"{', '.join(OBJECTIVES)})"
        )
    if g.self_condition:
        raise ConfigError(
            "GaussianDiffusion: self_condition = True is not supported: its reverse step feeds "
            "the previous step's x_0 prediction to the network, so p_theta(x_{t-1} | x_t) is not "
            "a function of x_t alone; give a model trained without self_condition"
        )
    unit = torch.tensor([0.0, 1.0])
    if not torch.equal(torch.as_tensor(g.normalize(unit)), torch.tensor([-1.0, 1.0])):
        raise ConfigError(
            "GaussianDiffusion: auto_normalize = False is not supported: its process runs on "
            "data in [0, 1], ddpm's on discrete data in [-1, 1]; give a model trained with "
            "auto_normalize=True"
        )
    out_dim = getattr(g.model, "out_dim", g.channels)
    if out_dim != g.channels:
        raise ConfigError(
            f"GaussianDiffusion: the Unet returns {out_dim} channels for {g.channels} input "
            "channels; only a Unet whose out_dim equals channels is supported"
        )
    size = g.image_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and v >= 1 for v in (g.channels, *hw)):
        raise ConfigError(
            f"GaussianDiffusion: image_size {size!r} and channels {g.channels!r} must be "
            "integers >= 1 (image_size: one, or a pair)"
        )
    return g.objective, (int(g.channels), int(hw[0]), int(hw[1]))


def _betas(gd: Any) -> Tensor:
    """The betas buffer [T] (float32, on cpu), checked against num_timesteps, (0, 1), and the
    alphas_cumprod buffer."""
    beta = torch.as_tensor(gd.betas).detach().cpu()
    T = gd.num_timesteps
    if not beta.is_floating_point() or beta.shape != (T,):
        raise ConfigError(
            f"GaussianDiffusion: betas must be a float vector of num_timesteps = {T} entries "
            f"(got {beta.dtype}, shape {tuple(beta.shape)})"
        )
    check_betas(beta, "GaussianDiffusion")
    check_alphas_cumprod(beta.double(), torch.as_tensor(gd.alphas_cumprod).detach().cpu())
    return beta


def check_betas(beta: Tensor, where: str) -> None:
    """Every beta must lie in (0, 1): their linear schedule does not for timesteps <= 20."""
    ok = (beta > 0) & (beta < 1)
    if not bool(ok.all()):
        k = int((~ok).nonzero()[0])
        raise ConfigError(
            f"{where}: beta at timestep {k} is {float(beta[k])!r}, outside (0, 1) (their linear "
            "schedule reaches 1 for timesteps <= 20); give a model whose betas lie in (0, 1)"
        )


def check_alphas_cumprod(beta: Tensor, alphas_cumprod: Tensor) -> None:
    """Their alphas_cumprod buffer must equal ddpm's alpha_bar_1..alpha_bar_T from the same
    betas to float32 precision. Both are roundings of the float64 product: the buffer rounded
    once (EPS32 / 2), ddpm's from betas each rounded to float32, which moves log alpha_bar_t by
    up to EPS32 / 2 * sum_{s<=t} beta_s / (1 - beta_s); the tolerance is 4 times the sum."""
    alpha_bar = NoiseSchedule(torch.cat([beta.new_zeros(1), beta])).alpha_bar[1:]
    tol = 4 * EPS32 * (1 + torch.cumsum(beta / (1 - beta), 0))
    theirs = alphas_cumprod.double()
    ok = (theirs - alpha_bar).abs() <= tol * alpha_bar
    if theirs.shape != alpha_bar.shape or not bool(ok.all()):
        k = 0 if theirs.shape != alpha_bar.shape else int((~ok).nonzero()[0])
        raise ConfigError(
            f"GaussianDiffusion: the alphas_cumprod buffer is not the cumulative product of "
            f"1 - betas (timestep {k}); its buffers disagree: rebuild it with GaussianDiffusion"
        )


# --- the checkpoint ----------------------------------------------------------------------------
def parse_flags(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Unet keywords, GaussianDiffusion keywords) of flags = '{"unet": {...}, "diffusion":
    {...}}' (JSON; both objects required, nothing else)."""
    try:
        flags = json.loads(text)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"flags: not JSON ({e}); give {FLAGS_EXAMPLE}", params=("flags",)
        ) from None
    if not isinstance(flags, dict):
        raise ConfigError(f"flags: expected a JSON object: {FLAGS_EXAMPLE}", params=("flags",))
    for key in flags:
        if key not in ("unet", "diffusion"):
            raise ConfigError(
                f"flags: unknown key {key!r}; the keys are 'unet' (Unet keywords) and "
                "'diffusion' (GaussianDiffusion keywords)",
                params=("flags",),
            )
    for key in ("unet", "diffusion"):
        if not isinstance(flags.get(key), dict):
            raise ConfigError(
                f"flags: {key!r} must be a JSON object of keywords (got "
                f"{type(flags.get(key)).__name__}); e.g. {FLAGS_EXAMPLE}",
                params=("flags",),
            )
    if "model" in flags["diffusion"]:
        raise ConfigError(
            "flags: diffusion must not hold 'model' (the Unet of flags['unet'] is passed)",
            params=("flags",),
        )
    return flags["unet"], flags["diffusion"]


def import_package() -> ModuleType:
    """The denoising_diffusion_pytorch package, or a ConfigError saying how to install it."""
    try:
        # deferred: an optional dependency that imports torchvision, accelerate and ema_pytorch
        import denoising_diffusion_pytorch
    except ImportError:
        raise ConfigError(f"{NAME} is not installed: {INSTALL}") from None
    except (RuntimeError, OSError) as e:  # e.g. a torchvision built for another torch
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{NAME} is installed but cannot be imported ({first[:200]}); install the "
            "torchvision built for this torch"
        ) from None
    return denoising_diffusion_pytorch


def build_diffusion(package: Any, unet: dict[str, Any], diffusion: dict[str, Any]) -> nn.Module:
    """``GaussianDiffusion(Unet(**unet), **diffusion)`` of ``package``; a bad keyword or value
    is a ConfigError naming the class."""
    net = _construct(package.Unet, (), unet, "Unet(**flags['unet'])")
    return _construct(package.GaussianDiffusion, (net,), diffusion, "GaussianDiffusion(unet, "
                      "**flags['diffusion'])")  # fmt: skip


def _construct(cls: Any, args: tuple, kwargs: dict[str, Any], call: str) -> nn.Module:
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:  # their checks are asserts
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"flags: {call} fails: {first[:300]}", params=("flags",)) from None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The dict in ``path``, read with ``weights_only=True``: tensors and plain values only."""
    ckpt = read_torch_file(path, "the model-N.pt that Trainer.save writes (state dicts alone)")
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path}: expected the dict Trainer.save writes ('step', 'model', 'ema', ...), "
            f"found {type(ckpt).__name__}"
        )
    return ckpt


def pick_weights(
    ckpt: dict[str, Any], weights: str, where: str
) -> tuple[dict[str, Tensor], str, int | None]:
    """(GaussianDiffusion state dict, which weights in words, training step) of a checkpoint:
    the EMA's (``ema_model.`` prefix stripped) when weights == 'ema' and the file has them,
    else the training weights ('model'). A bare GaussianDiffusion state dict is read as the
    training weights."""
    if isinstance(ckpt.get("model"), dict):
        raw, ema = ckpt["model"], ckpt.get("ema")
    elif ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        raw, ema = ckpt, None  # torch.save(gaussian_diffusion.state_dict(), path)
    else:
        raise CheckpointError(
            f"{where}: no 'model' state dict; give the model-N.pt that Trainer.save writes"
        )
    step = ckpt.get("step")  # Trainer.step: an int
    step = int(step) if isinstance(step, int | Tensor) and not isinstance(step, bool) else None
    of_step = "" if step is None else f" of step {step}"
    ema_state, why = {}, "the file holds no EMA weights"
    if isinstance(ema, dict):
        n = len(EMA_PREFIX)
        ema_state = {k[n:]: v for k, v in ema.items() if k.startswith(EMA_PREFIX)}
        if ema_state and not bool(torch.as_tensor(ema.get("initted", True))):
            ema_state, why = {}, "its EMA was never updated"  # it holds the initial weights
    if weights == "ema" and ema_state:
        state, words = ema_state, f"EMA weights{of_step}"
    elif weights == "ema":
        state, words = raw, f"training weights{of_step} ({why})"
    else:
        state, words = raw, f"training weights{of_step}"
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise CheckpointError(f"{where}: entry {bad[0]!r} of the weights is not a tensor")
    return state, words, step


def load_weights(gd: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Read state into gd: every tensor of gd must come from the file, with its shape, and the
    file's betas must be those gd was built with; else one CheckpointError naming them."""
    expected = gd.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [f"missing {first_names(missing)}"] if missing else []
    problems += [f"unexpected {first_names(unexpected)}"] if unexpected else []
    if shapes:
        k, more = shapes[0], f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""
        problems.append(
            f"{k!r} has shape {list(state[k].shape)} in the file but {list(expected[k].shape)} "
            f"in the model{more}"
        )
    if problems:
        raise CheckpointError(
            f"{where}: the tensors do not match the GaussianDiffusion of the settings given "
            f"({'; '.join(problems)}); give the Unet and GaussianDiffusion settings it was "
            "trained with",
            params=("flags",),
        )
    mine, theirs = expected["betas"].double(), state["betas"].double()
    check_betas(theirs, where)  # before NaN is found in the buffers derived from them
    if not bool(((mine - theirs).abs() <= NAMED_RTOL * mine).all()):
        raise CheckpointError(
            f"{where}: the file's betas are not those of the diffusion settings given; give the "
            "timesteps, beta_schedule and schedule_fn_kwargs it was trained with",
            params=("flags",),
        )
    check_finite(state, where)
    gd.load_state_dict(state)


def from_checkpoint(
    path: str | Path,
    gaussian_diffusion: nn.Module,
    weights: str = "ema",
    device: torch.device | str = "cpu",
) -> Model:
    """The model of a Trainer checkpoint ``path`` (``model-N.pt``) read into
    ``gaussian_diffusion``, a GaussianDiffusion built with the settings it was trained with:
    its EMA weights ('ema', where the file has them) or the training weights ('raw'), in eval
    mode on device."""
    require_choice("weights", weights, ("ema", "raw"))
    path = Path(path)
    state, words, step = pick_weights(read_checkpoint(path), weights, str(path))
    load_weights(gaussian_diffusion, state, str(path))
    gaussian_diffusion.to(device).eval()
    return model_of(gaussian_diffusion, None, Source(NAME, path, words, step, name=path.stem))


def load_checkpoint(
    path: Path, device: torch.device | str, weights: str, flags: str | None
) -> Model:
    """``ddpm.load(path, source='denoising-diffusion-pytorch', flags=JSON)``: flags is
    '{"unet": {Unet keywords}, "diffusion": {GaussianDiffusion keywords}}', the settings the
    model was trained with (``parse_flags``)."""
    require_choice("weights", weights, ("ema", "raw"))
    if flags is None:
        raise ConfigError(
            f"{path}: a {NAME} checkpoint does not record its settings; give flags, the Unet "
            f"and GaussianDiffusion keywords it was trained with, as JSON: {FLAGS_EXAMPLE}",
            params=("flags",),
        )
    unet, diffusion = parse_flags(flags)
    gd = build_diffusion(import_package(), unet, diffusion)
    return from_checkpoint(path, gd, weights, device)


__all__ = [
    "DdpUnet",
    "from_checkpoint",
    "from_denoising_diffusion_pytorch",
    "load_checkpoint",
    "parse_flags",
]
