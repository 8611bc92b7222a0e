"""improved-diffusion checkpoints: the U-Net against a plain-tensor reference, the CIFAR-10 model's
names and size, the flags, the process conventions against improved-diffusion's definitions
written out here, the -ELBO against its calc_bpd_loop formulas, and the errors.

References:
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_improved_unet import Arch, forward, seeded_state

import ddpm
from ddpm.errors import CheckpointError, ConfigError
from ddpm.foreign.improved_diffusion import (
    SCRIPT_FLAGS,
    ImprovedDiffusionFlags,
    from_improved_diffusion,
    parse_flags,
    unet_config,
)
from ddpm.likelihood.elbo import bits_per_dim, elbo_terms
from ddpm.model import p_mean_var
from ddpm.nets.improved_unet import ImprovedUNet
from ddpm.process.rng import KeyedNoise

TINY = "--image_size 16 --channel_mult 1,2 --num_channels 32 --num_res_blocks 1"
CIFAR10 = (
    "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 "
    "--diffusion_steps 4000 --noise_schedule cosine"
)


def shapes_of(flags: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        net = ImprovedUNet(unet_config(parse_flags(flags)))
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def seeded_model(flags: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> ddpm.Model:
    state = {k: v.to(dtype) for k, v in seeded_state(shapes_of(flags), seed).items()}
    return from_improved_diffusion(state, flags)


# --- the network against the reference -----------------------------------------------------------
# (extra flags, the same architecture in the reference's terms); attention at 8x8 (ds 2) and in
# the middle, where blocks have 64 channels; with "16,8" also at 16x16 (ds 1, 32 channels).
A = Arch(32, (1, 2), 1, (2,), 4, 4)  # 4 heads down and up
CASES = {
    "plain": ("", A),
    "learn_sigma": (" --learn_sigma True --dropout 0.3", A),
    "no_scale_shift": (" --use_scale_shift_norm False", dataclasses.replace(A, scale_shift=False)),
    "heads_1_up_2": (" --num_heads 1 --num_heads_upsample 2", Arch(32, (1, 2), 1, (2,), 1, 2)),
    "head_channels": (" --num_head_channels 32", Arch(32, (1, 2), 1, (2,), head_channels=32)),
    "new_order": (
        " --use_new_attention_order True --num_heads 2",
        Arch(32, (1, 2), 1, (2,), 2, 2, new_order=True),
    ),
    "resblock_updown": (" --resblock_updown True", dataclasses.replace(A, updown=True)),
    "two_resolutions": ("", dataclasses.replace(A, attn_ds=(1, 2))),
}


def _outputs(flags: str, arch: Arch, batch: int) -> tuple[torch.Tensor, ...]:
    """(reference float64, network float64, network float32) on the same seeded weights and
    inputs; the reference must have read every tensor of the network."""
    shapes = shapes_of(flags)
    state = seeded_state(shapes, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 16, 16, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 37.5, 999.0, 250.0, 3.0][:batch])  # rescaled times, one fractional
    ref, unused = forward(state, arch, x, t)
    assert unused == []  # the reference read every tensor the network has
    out = []
    for dtype in (torch.float64, torch.float32):
        net = ImprovedUNet(unet_config(parse_flags(flags))).to(dtype).eval()
        net.load_state_dict(state)
        with torch.no_grad():
            out.append(net(x.to(dtype), t).double())
    return ref, *out


@pytest.mark.parametrize("case", CASES)
def test_network_equals_the_reference(case):
    extra, arch = CASES[case]
    attention = "16,8" if case == "two_resolutions" else "8"
    flags = f"{TINY} --attention_resolutions {attention}{extra}"
    ref, y64, y32 = _outputs(flags, arch, batch=3)  # an odd batch
    assert y64.shape == ref.shape == (3, 6 if "learn_sigma" in extra else 3, 16, 16)
    scale = float(ref.abs().max())
    assert scale > 0.5  # random weights everywhere: an output of order one, not a zero output
    # Same operations in another order: the difference is rounding, ~40 layers deep. float64
    # (unit roundoff 1.1e-16) agrees to ~2e-15 of the output's scale; float32 (6e-8) to ~1e-6.
    assert float((y64 - ref).abs().max()) <= 1e-12 * scale
    assert float((y32 - ref).abs().max()) <= 1e-5 * scale


def test_the_options_change_the_output():
    """The cases above are not vacuous: heads and attention order change what the same
    weights compute."""
    flags = f"{TINY} --attention_resolutions 8"
    plain = _outputs(flags, CASES["plain"][1], batch=1)[1]
    other = _outputs(flags + " --num_heads 1", Arch(32, (1, 2), 1, (2,), 1, 1), batch=1)[1]
    new = _outputs(flags + " --use_new_attention_order True", dataclasses.replace(
        CASES["plain"][1], new_order=True), batch=1)[1]  # fmt: skip
    assert float((plain - other).abs().max()) > 1e-3
    assert float((plain - new).abs().max()) > 1e-3


# --- the CIFAR-10 model --------------------------------------------------------------------------
def _count_by_formula(C: int, mult: tuple[int, ...], blocks: int, attn: tuple[int, ...]) -> int:
    """Parameters of the U-Net (scale-shift, 6 output channels) from its layer sizes."""
    E = 4 * C

    def res(cin: int, cout: int) -> int:
        skip = cin * cout + cout if cin != cout else 0
        return (
            2 * cin
            + 9 * cin * cout
            + cout
            + E * 2 * cout
            + 2 * cout
            + 2 * cout
            + 9 * cout**2
            + cout
            + skip
        )

    def att(c: int) -> int:
        return 2 * c + 3 * c * c + 3 * c + c * c + c

    total = C * E + E + E * E + E + 3 * 9 * C + C  # time embedding, first conv
    chans, ch, ds = [C], C, 1
    for level, m in enumerate(mult):
        for _ in range(blocks):
            total += res(ch, m * C) + (att(m * C) if ds in attn else 0)
            ch = m * C
            chans.append(ch)
        if level < len(mult) - 1:
            total += 9 * ch * ch + ch
            chans.append(ch)
            ds *= 2
    total += 2 * res(ch, ch) + att(ch)
    for level, m in reversed(list(enumerate(mult))):
        for i in range(blocks + 1):
            total += res(ch + chans.pop(), m * C) + (att(m * C) if ds in attn else 0)
            ch = m * C
            if level and i == blocks:
                total += 9 * ch * ch + ch
                ds //= 2
    return total + 2 * ch + 9 * ch * 6 + 6  # out: norm, conv to 6 channels


def test_cifar10_model_names_shapes_and_size():
    shapes = shapes_of(CIFAR10)
    count = sum(math.prod(s) for s in shapes.values())
    # [ND21]'s CIFAR-10 model is described as about 52M parameters
    assert count == 52_546_438 == _count_by_formula(128, (1, 2, 2, 2), 3, (2, 4))
    inputs = {int(k.split(".")[1]) for k in shapes if k.startswith("input_blocks.")}
    outputs = {int(k.split(".")[1]) for k in shapes if k.startswith("output_blocks.")}
    assert len(inputs) == 1 + 4 * (3 + 1) - 1 == 16 and len(outputs) == 4 * 4 == 16
    assert shapes["time_embed.0.weight"] == (512, 128)
    assert shapes["time_embed.2.weight"] == (512, 512)
    assert shapes["input_blocks.0.0.weight"] == (128, 3, 3, 3)
    assert shapes["input_blocks.1.0.emb_layers.1.weight"] == (256, 512)  # 2 x 128: scale, shift
    assert shapes["input_blocks.4.0.op.weight"] == (128, 128, 3, 3)  # the first downsample
    assert shapes["input_blocks.5.0.skip_connection.weight"] == (256, 128, 1, 1)
    assert shapes["input_blocks.5.1.qkv.weight"] == (768, 256, 1)  # attention at 16x16
    assert shapes["input_blocks.9.1.proj_out.weight"] == (256, 256, 1)  # and at 8x8
    assert (
        "input_blocks.1.1.qkv.weight" not in shapes and "input_blocks.13.1.qkv.weight" not in shapes
    )
    assert shapes["middle_block.1.qkv.weight"] == (768, 256, 1)
    assert shapes["output_blocks.0.0.in_layers.0.weight"] == (512,)  # 256 + the 256 skip
    assert shapes["output_blocks.3.1.conv.weight"] == (256, 256, 3, 3)  # upsample, no attention
    assert shapes["output_blocks.7.2.conv.weight"] == (256, 256, 3, 3)  # after attention
    assert shapes["output_blocks.15.0.skip_connection.weight"] == (128, 256, 1, 1)
    assert shapes["out.0.weight"] == (128,) and shapes["out.2.weight"] == (6, 128, 3, 3)


# --- flags ---------------------------------------------------------------------------------------
def test_flag_defaults_are_improved_diffusions():
    defaults = dict(  # improved-diffusion's model_and_diffusion_defaults()
        image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
        attention_resolutions="16,8", dropout=0.0, learn_sigma=False, sigma_small=False,
        class_cond=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="",
        use_kl=False, predict_xstart=False, rescale_timesteps=True, rescale_learned_sigmas=True,
        use_checkpoint=False, use_scale_shift_norm=True,
    )  # fmt: skip
    flags = parse_flags("")
    assert {k: getattr(flags, k) for k in defaults} == defaults
    assert (flags.num_head_channels, flags.resblock_updown, flags.use_new_attention_order) == (
        -1, False, False,
    )  # fmt: skip
    cfg = unet_config(flags)
    assert cfg.channel_mult == (1, 2, 3, 4) and cfg.attention_rates == (4, 8)  # 64 // 16, 64 // 8


def test_flags_spellings():
    f = parse_flags(CIFAR10 + " --use_kl=yes --sigma_small 1 --predict_xstart FALSE --lr 1e-4 "
                    "--batch_size=128 --use_fp16 True --rescale_timesteps no")  # fmt: skip
    assert (f.image_size, f.num_channels, f.num_res_blocks, f.dropout) == (32, 128, 3, 0.3)
    assert (f.learn_sigma, f.use_kl, f.sigma_small, f.predict_xstart) == (True, True, True, False)
    assert f.rescale_timesteps is False and f.diffusion_steps == 4000
    assert f.noise_schedule == "cosine" and f.ignored == ("lr", "batch_size", "use_fp16")
    assert set(f.ignored) <= set(SCRIPT_FLAGS)
    assert (
        parse_flags("--num_heads_upsample -1 --timestep_respacing ddim50").timestep_respacing
        == "ddim50"
    )
    assert parse_flags("--image_size 32 --image_size=64").image_size == 64  # the last, as argparse
    assert unet_config(parse_flags(CIFAR10)).attention_rates == (2, 4)  # 32 // 16, 32 // 8
    assert unet_config(parse_flags("--image_size 256")).channel_mult == (1, 1, 2, 2, 4, 4)
    assert unet_config(parse_flags("--image_size 128")).channel_mult == (1, 1, 2, 3, 4)


@pytest.mark.parametrize(
    "flags, words",
    [
        (
            "--image_sise 32",
            "unknown flag --image_sise; improved-diffusion's settings are image_size",
        ),
        ("--learn_sigma maybe", "--learn_sigma 'maybe': expected a boolean (True/False"),
        ("--num_channels 12.5", "--num_channels '12.5': expected an integer"),
        ("--image_size", "--image_size needs a value"),
        ("32", "'32' is not a flag"),
        ("--noise_schedule sqrt", "--noise_schedule 'sqrt': choose linear or cosine"),
        ("--image_size 32 --dropout=high", "--dropout 'high': expected a number"),
    ],
)
def test_bad_flags_are_named(flags, words):
    with pytest.raises(ConfigError, match=None) as e:
        parse_flags(flags)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "flags, words",
    [
        ("--class_cond True", "class_cond True is not supported"),
        ("--image_size 48", "image_size 48 has no default channel_mult"),
        ("--image_size 36 --channel_mult 1,2,2,2", "cannot be halved 3 times"),
        ("--num_channels 48", "multiple of 32"),
        ("--attention_resolutions 16,x", "--attention_resolutions '16,x': expected integers"),
        ("--num_head_channels 48", "do not split into heads of 48 channels"),
        ("--num_heads 3", "512 attention channels do not split into 3 heads"),
    ],
)
def test_unsupported_models_are_refused(flags, words):
    with pytest.raises(ConfigError) as e:
        unet_config(parse_flags(flags))
    assert words in str(e.value) and e.value.params == ("flags",)


@pytest.mark.parametrize(
    "flags, words",
    [
        ("--diffusion_steps 0", "T must be an integer >= 1"),
        ("--diffusion_steps 10 --timestep_respacing ddim7", "ddim7: no integer stride"),
        ("--diffusion_steps 10 --timestep_respacing 11", "cannot respace 10 steps into 11"),
        ("--timestep_respacing fast", "steps 'fast': give a count"),
    ],
)
def test_bad_processes_are_refused_before_the_file_is_read(tmp_path, flags, words):
    with pytest.raises(ConfigError) as e:
        from_improved_diffusion(tmp_path / "absent.pt", f"{TINY} {flags}")
    assert words in str(e.value) and str(e.value).startswith("flags: ")


def test_a_state_dict_under_model_or_state_dict():
    assert ddpm.from_improved_diffusion is from_improved_diffusion  # the public name
    state = seeded_state(shapes_of(TINY), seed=0)
    for key in ("model", "state_dict"):
        model = from_improved_diffusion({key: state, "step": 10}, TINY)
        assert model.name == "improved-diffusion" and model.source.path is None


# --- the process, against improved-diffusion's definitions ---------------------------------------
def their_betas(name: str, T: int) -> np.ndarray:
    """get_named_beta_schedule: linear scaled by 1000 / T; cosine [ND21] eq. (17), capped."""
    if name == "linear":
        scale = 1000 / T
        return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)

    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])


def their_variances(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Index k = their timestep (our t - 1): log variances of FIXED_SMALL / FIXED_LARGE and the
    two ends of LEARNED_RANGE, as GaussianDiffusion sets them up."""
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post = betas * (1 - ab_prev) / (1 - ab)
    clipped = np.log(np.append(post[1], post[1:]))
    return {"small": clipped, "large": np.log(np.append(post[1], betas[1:])),
            "min_log": clipped, "max_log": np.log(betas), "ab": ab, "ab_prev": ab_prev}  # fmt: skip


@pytest.mark.parametrize(
    "name, T", [("linear", 50), ("cosine", 50), ("linear", 4000), ("cosine", 4000)]
)
def test_schedules_are_improved_diffusions(name, T):
    model = seeded_model(f"{TINY} --noise_schedule {name} --diffusion_steps {T}")
    beta = model.diffusion.schedule.beta[1:].numpy()
    np.testing.assert_allclose(beta, their_betas(name, T), rtol=1e-10, atol=0)
    assert model.continuous.name == name and model.continuous.T == T


def _p_at(model: ddpm.Model, out: torch.Tensor, t: int):
    """p_theta at step t for a network whose output is ``out`` whatever its input; also the
    network times it was called with."""
    seen = []

    def net(x, s):
        seen.append(s)
        return out.to(x.dtype)

    fixed = dataclasses.replace(model, net=net)
    g = torch.Generator().manual_seed(t)
    xt = torch.randn(out.shape[0], 3, 16, 16, generator=g, dtype=torch.float64)
    return xt, p_mean_var(fixed, xt, torch.full((out.shape[0],), t)), seen


@pytest.mark.parametrize("t", [1, 2, 7, 20])
def test_learned_sigma_split_and_range(t):
    T = 20
    model = seeded_model(f"{TINY} --learn_sigma True --diffusion_steps {T} --noise_schedule cosine")
    g = torch.Generator().manual_seed(100 + t)
    out = torch.randn(2, 6, 16, 16, generator=g, dtype=torch.float64) * 1.5  # v past [-1, 1] too
    xt, p, seen = _p_at(model, out, t)
    theirs = their_variances(their_betas("cosine", T))
    k = t - 1
    frac = (out[:, 3:] + 1) / 2  # the last 3 channels: v
    log_var = frac * theirs["max_log"][k] + (1 - frac) * theirs["min_log"][k]
    torch.testing.assert_close(p.log_var, log_var, rtol=1e-12, atol=1e-12)
    # the first 3 channels: eps -> x0 (clipped to [-1, 1]) -> the posterior mean
    ab, ab_prev, beta = theirs["ab"][k], theirs["ab_prev"][k], their_betas("cosine", T)[k]
    x0 = (math.sqrt(1 / ab) * xt - math.sqrt(1 / ab - 1) * out[:, :3]).clamp(-1, 1)
    mean = (
        beta * math.sqrt(ab_prev) / (1 - ab) * x0
        + (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab) * xt
    )
    torch.testing.assert_close(p.x0_hat, x0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p.mean, mean, rtol=1e-10, atol=1e-12)
    assert float(seen[0][0]) == float(np.float32(k) * np.float32(1000 / T))  # rescaled time


@pytest.mark.parametrize("variance", ["small", "large"])
def test_fixed_variances(variance):
    T = 30
    flags = f"{TINY} --diffusion_steps {T}" + (" --sigma_small True" if variance == "small" else "")
    model = seeded_model(flags)
    assert model.diffusion.param.variance == variance
    theirs = their_variances(their_betas("linear", T))[variance]
    for t in (1, 2, 15, 30):
        _, p, _ = _p_at(model, torch.zeros(1, 3, 16, 16, dtype=torch.float64), t)
        assert torch.allclose(
            p.log_var, torch.tensor(theirs[t - 1], dtype=torch.float64), rtol=1e-12
        )


def test_predict_xstart_and_clip():
    model = seeded_model(f"{TINY} --predict_xstart True --diffusion_steps 10")
    assert model.diffusion.param.prediction == "x0" and model.clip == (-1.0, 1.0)
    out = torch.linspace(-2, 2, 3 * 16 * 16, dtype=torch.float64).reshape(1, 3, 16, 16)
    _, p, _ = _p_at(model, out, 5)
    assert torch.equal(p.x0_hat, out.clamp(-1, 1))
    assert seeded_model(f"{TINY} --clip_denoised False --diffusion_steps 10").clip is None


def test_time_maps():
    T = 40
    rescaled = seeded_model(f"{TINY} --diffusion_steps {T}").diffusion.time_map
    k = torch.arange(T)
    assert rescaled.dtype == torch.float32
    assert torch.equal(rescaled[1:], k.float() * (1000.0 / T))  # as their _scale_timesteps
    plain = seeded_model(
        f"{TINY} --diffusion_steps {T} --rescale_timesteps False"
    ).diffusion.time_map
    assert plain.dtype == torch.int64 and torch.equal(plain[1:], k)


def their_space_timesteps(T: int, counts: str) -> list[int]:
    """improved-diffusion's space_timesteps, from its docstring: sections of equal size (the
    first T % n one longer), counts[i] indices per section at a fractional stride, rounded;
    "ddimN": the integer stride giving N indices."""
    if counts.startswith("ddim"):
        n = int(counts[4:])
        return next(list(range(0, T, s)) for s in range(1, T) if len(range(0, T, s)) == n)
    sections = [int(c) for c in counts.split(",")]
    size, extra = divmod(T, len(sections))
    steps, start = [], 0
    for i, c in enumerate(sections):
        n = size + (1 if i < extra else 0)
        stride, idx = (1 if c <= 1 else (n - 1) / (c - 1)), 0.0
        for _ in range(c):  # the stride summed in floating point, then rounded
            steps.append(start + round(idx))
            idx += stride
        start += n
    return sorted(set(steps))


@pytest.mark.parametrize(
    "T, spacing", [(300, "10,15,20"), (200, "ddim50"), (1000, "250"), (4000, "100")]
)
def test_respacing_keeps_their_timesteps(T, spacing):
    model = seeded_model(
        f"{TINY} --noise_schedule cosine --diffusion_steps {T} --timestep_respacing {spacing}"
    )
    kept = their_space_timesteps(T, spacing)
    assert model.T == len(kept) and model.continuous is None
    # their _WrappedModel: timestep_map[k] (0-based original), times 1000 / original T
    their_map = torch.tensor(kept).float() * (1000.0 / T)
    assert torch.equal(model.diffusion.time_map[1:], their_map)
    ab = np.cumprod(1 - their_betas("cosine", T))[kept]  # SpacedDiffusion's new betas
    new_beta = 1 - ab / np.append(1.0, ab[:-1])
    np.testing.assert_allclose(model.diffusion.schedule.beta[1:].numpy(), new_beta, rtol=1e-9)


def test_data_and_source():
    model = seeded_model(CIFAR10.replace("--num_channels 128", "--num_channels 32"))
    v = torch.tensor([0.0, 1.0, 127.0, 128.0, 255.0], dtype=torch.float64)
    assert torch.allclose(model.spec.to_model(v), v / 127.5 - 1, rtol=0, atol=1e-15)
    assert model.shape == (3, 32, 32) and model.levels == 256
    assert model.source.kind == "improved-diffusion" and model.T == 4000
    assert not model.net.training  # eval: dropout 0.3 is off


# --- the -ELBO against calc_bpd_loop -------------------------------------------------------------
def _approx_cdf(x: torch.Tensor) -> torch.Tensor:
    """improved-diffusion's approx_standard_normal_cdf: a tanh approximation of Phi."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def their_decoder_nll(x0, mean, log_var):
    """-discretized_gaussian_log_likelihood per element, in nats, as improved-diffusion computes
    it: bins of half-width 1/255, the edge bins open, Phi by ``_approx_cdf``, probabilities
    clamped at 1e-12 before the log."""
    inv_std = torch.exp(-0.5 * log_var)
    plus = _approx_cdf(inv_std * (x0 - mean + 1 / 255))
    minus = _approx_cdf(inv_std * (x0 - mean - 1 / 255))
    low, high = plus.clamp(min=1e-12).log(), (1 - minus).clamp(min=1e-12).log()
    mid = (plus - minus).clamp(min=1e-12).log()
    return -torch.where(x0 < -0.999, low, torch.where(x0 > 0.999, high, mid))


def exact_decoder_nll(x0, mean, log_var):
    """The same bins with the exact Phi and no clamp, in 30-digit arithmetic (mpmath): the
    mass of a bin far in a tail is computed on the mirrored side, where it does not cancel."""
    import mpmath

    mpmath.mp.dps = 30
    out = torch.empty_like(x0)
    flat = zip(*(z.flatten().tolist() for z in (x0, mean, log_var)), strict=True)
    for i, (x, m, lv) in enumerate(flat):
        s = mpmath.exp(mpmath.mpf(lv) / 2)
        a = -mpmath.inf if x < -0.999 else (x - 1 / 255 - m) / s
        b = mpmath.inf if x > 0.999 else (x + 1 / 255 - m) / s
        if a + b > 0:  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
            a, b = -b, -a
        out.view(-1)[i] = float(-mpmath.log(mpmath.ncdf(b) - mpmath.ncdf(a)))
    return out


@dataclasses.dataclass(frozen=True)
class Setting:
    """The flags an ELBO check is run with, and what they mean in improved-diffusion."""

    schedule: str
    learned: bool  # LEARNED_RANGE, else FIXED_LARGE
    rescale: bool
    predict_xstart: bool

    def flags(self, T: int) -> str:
        return (
            f"{TINY} --attention_resolutions 8 --diffusion_steps {T} --noise_schedule "
            f"{self.schedule} --learn_sigma {self.learned} --rescale_timesteps {self.rescale} "
            f"--predict_xstart {self.predict_xstart}"
        )


def their_bpd(net, x0, setting: Setting, T, eps_at, decoder_nll):
    """calc_bpd_loop with clip_denoised: per example, prior bpd and [B, T] the bpd of the term
    of their timestep k = t - 1; float64 math around the float32 network."""
    betas = their_betas(setting.schedule, T)
    v = their_variances(betas)
    ab, ab_prev = v["ab"], v["ab_prev"]
    post_var = betas * (1 - ab_prev) / (1 - ab)
    coef1 = betas * np.sqrt(ab_prev) / (1 - ab)
    coef2 = (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab)
    mean_flat = lambda z: z.flatten(1).mean(dim=1) / math.log(2.0)  # noqa: E731
    terms = []
    for k in range(T):
        xt = math.sqrt(ab[k]) * x0 + math.sqrt(1 - ab[k]) * eps_at(k + 1)
        time = torch.full((x0.shape[0],), k)
        time = time.float() * (1000.0 / T) if setting.rescale else time
        with torch.no_grad():
            out = net(xt.float(), time).double()
        if setting.learned:
            frac = (out[:, 3:] + 1) / 2
            log_var = frac * v["max_log"][k] + (1 - frac) * v["min_log"][k]
        else:
            log_var = torch.full_like(x0, v["large"][k])
        head = out[:, :3]
        x0_hat = head if setting.predict_xstart else math.sqrt(1 / ab[k]) * xt - math.sqrt(
            1 / ab[k] - 1) * head  # fmt: skip
        mean = coef1[k] * x0_hat.clamp(-1, 1) + coef2[k] * xt
        if k == 0:
            terms.append(mean_flat(decoder_nll(x0, mean, log_var)))
            continue
        true_mean, true_log_var = coef1[k] * x0 + coef2[k] * xt, math.log(post_var[k])
        kl = 0.5 * (-1 + log_var - true_log_var + math.exp(true_log_var) * torch.exp(-log_var)
                    + (true_mean - mean) ** 2 * torch.exp(-log_var))  # fmt: skip
        terms.append(mean_flat(kl))
    mean_T, log_var_T = math.sqrt(ab[-1]) * x0, math.log(1 - ab[-1])
    prior = mean_flat(0.5 * (-1 - log_var_T + math.exp(log_var_T) + mean_T**2))
    return prior, torch.stack(terms, dim=1)


@pytest.mark.parametrize(
    "setting",
    [Setting("cosine", True, True, False), Setting("linear", False, False, True)],
    ids=["cosine-learned-rescaled-eps", "linear-large-int_time-x0"],
)
def test_elbo_equals_calc_bpd_loop(tmp_path, setting):
    T = 24  # linear: beta_T = 0.02 * 1000 / T = 0.83 (at T <= 20 theirs reaches 1, ours 0.999)
    flags = setting.flags(T)
    state = {k: v.float() for k, v in seeded_state(shapes_of(flags), seed=3).items()}
    state["out.2.weight"] *= 0.1  # outputs of order 0.1-1, as a trained model's
    path = tmp_path / "ema_0.9999_000100.pt"
    torch.save(state, path)
    model = ddpm.load(path, source="improved-diffusion", flags=flags, weights="raw")
    assert model.source.weights == "weights of ema_0.9999_000100.pt"
    g = torch.Generator().manual_seed(4)
    raw = torch.randint(0, 256, (3, 3, 16, 16), generator=g)
    raw[0, 0, 0, :2] = torch.tensor([0, 255])  # both edge bins
    x0 = raw.double() / 127.5 - 1
    noise = KeyedNoise(seed=5)
    terms = elbo_terms(model, x0.float(), noise)
    D = model.spec.num_dims
    ours = bits_per_dim(terms.total(), D)

    def eps_at(t):  # the keyed draws elbo_terms made for x_t at step t
        return noise.normal(x0, torch.arange(3), t)

    prior, vb = their_bpd(model.net, x0, setting, T, eps_at, exact_decoder_nll)
    # The same x_t up to float64 rounding; the float32 network sees them in other batches, so
    # its outputs agree to ~1e-7 relative, and so do the terms (each 1e-3 to 1e2 bits/dim).
    torch.testing.assert_close(bits_per_dim(terms.per_timestep, D), vb, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(bits_per_dim(terms.prior_kl, D), prior, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours, prior + vb.sum(dim=1), rtol=1e-5, atol=0)
    # improved-diffusion's own decoder (tanh approximation of Phi, clamped at 1e-12) changes
    # the term of t = 1 only; the difference is printed (-s), not hidden
    _, vb_theirs = their_bpd(model.net, x0, setting, T, eps_at, their_decoder_nll)
    assert torch.equal(vb_theirs[:, 1:], vb[:, 1:])
    diff = vb_theirs[:, 0] - vb[:, 0]
    print(f"\n{setting}: total -ELBO {ours.tolist()} bits/dim; their decoder - exact: "
          f"{diff.tolist()} bits/dim")  # fmt: skip
    assert bool((diff != 0).all())


# --- errors --------------------------------------------------------------------------------------
def _save(tmp_path, flags, edit=None):
    state = {k: v.float() for k, v in seeded_state(shapes_of(flags), seed=0).items()}
    if edit is not None:
        edit(state)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    return path


MISMATCHES = [  # (flags saved, flags loaded, edit of the saved tensors, words of the error)
    (
        " --learn_sigma True", "", None,
        ["'out.2.weight' has shape [6, 32, 3, 3] in the file but [3, 32, 3, 3]",
         "likely differs: learn_sigma True"],
    ),
    ("", " --num_channels 64", None, ["(and ", "more shapes differ)", "num_channels 32"]),
    (
        "", " --use_scale_shift_norm False", None,
        ["'input_blocks.1.0.emb_layers.1.weight' has shape [64, 128]",
         "use_scale_shift_norm True"],
    ),
    (
        " --num_res_blocks 2", "", None,
        ["unexpected 'input_blocks.2.0.emb_layers.1.bias'",
         "likely differs: num_res_blocks 2 ("],
    ),
    ("", "", lambda s: s.pop("out.2.bias"), ["missing 'out.2.bias'"]),
    ("", "", lambda s: s.update(extra=torch.zeros(1)), ["unexpected 'extra'"]),
    (
        "", " --resblock_updown True", None,
        ["missing 'input_blocks.2.0.in_layers.0.weight'", "likely differs: resblock_updown False;"],
    ),
]  # fmt: skip


@pytest.mark.parametrize("saved, loaded, edit, words", MISMATCHES)
def test_mismatched_weights_are_named(tmp_path, saved, loaded, edit, words):
    path = _save(tmp_path, TINY + saved, edit)
    with pytest.raises(CheckpointError) as e:
        ddpm.load(path, source="improved-diffusion", flags=TINY + loaded)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path))
    for w in words:
        assert w in message, message


def test_files_that_are_not_weights(tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"args": argparse.Namespace(lr=1e-4)}, pickled)
    refused = "holds a pickled argparse.Namespace, and only tensors"
    with pytest.raises(CheckpointError, match=refused) as e:
        ddpm.load(pickled, source="improved-diffusion", flags=TINY)
    assert "\n" not in str(e.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        ddpm.load(garbage, source="improved-diffusion", flags=TINY)
    nan = _save(tmp_path, TINY, lambda s: s["out.2.weight"].view(-1)[0].fill_(math.nan))
    with pytest.raises(CheckpointError, match="'out.2.weight' holds NaN"):
        ddpm.load(nan, source="improved-diffusion", flags=TINY)
    with pytest.raises(ConfigError, match="does not record its settings; give flags"):
        ddpm.load(nan, source="improved-diffusion")
    with pytest.raises(ConfigError, match="unknown weights 'best'"):
        ddpm.load(nan, source="improved-diffusion", weights="best", flags=TINY)


def test_flags_dataclass_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ImprovedDiffusionFlags().image_size = 32  # type: ignore[misc]


# --- the device check's smoke test (out of the default run: pytest -m benchmark_smoke) -----------
@pytest.mark.benchmark_smoke
def test_gpu_check_quick_runs_every_section(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--quick", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300, env=env)
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["train"]["steps"] == 4
    (other,) = res["cpu_gpu"]["others"]  # the same keyed noise in other batches: rounding only
    assert other["total_rel_diff_max"] < 1e-6 and res["cpu_gpu"]["T"] == 20
    cifar = res["cifar"]
    assert cifar["T"] == 4000 and cifar["respaced_K"] == 10 and cifar["calls_timed"] >= 1
    flags = CIFAR10.replace("128 --num_res_blocks 3", "32 --num_res_blocks 1")
    assert cifar["params"] == sum(math.prod(s) for s in shapes_of(flags).values())
    assert "images/s" in proc.stdout and "extrapolated" in proc.stdout
