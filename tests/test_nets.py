"""Tests for ddpm.nets: the forward(x, t) protocol, zero-initialised outputs, time conditioning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ddpm.config import ModelConfig
from ddpm.errors import ConfigError
from ddpm.nets import MLP, FlatMLP, UNet, build_model, timestep_embedding
from ddpm.nets.unet import AttnBlock, Conv1x1, FewOutputsConv, UpsampleConv

IMAGE_CASES = [  # (shape, channel_mults, attn_resolutions)
    ((1, 8, 8), (1, 2), (4,)),
    ((3, 8, 8), (1, 2), (4,)),
    ((1, 28, 28), (1, 2, 2), (7,)),
    ((3, 28, 28), (1, 2, 2), (14,)),
    ((1, 32, 32), (1, 2), (16,)),
    ((3, 32, 32), (1, 2, 2), (8,)),
]


def _perturb(model: nn.Module, generator: torch.Generator, scale: float = 0.05) -> None:
    """Add small noise to every parameter, so zero-initialised layers pass signal on."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _inputs(shape: tuple[int, ...], batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=g)
    t = torch.randint(1, 1001, (batch,), generator=g)
    return x, t


# --- timestep_embedding ---------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 7, 32, 33])
def test_embedding_shape_dtype_and_values_at_t0(dim):
    t = torch.tensor([0, 1, 500, 1000])
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim) and emb.dtype == torch.float32
    half = dim // 2
    expected0 = torch.cat([torch.zeros(half), torch.ones(half), torch.zeros(dim % 2)])
    assert torch.equal(emb[0], expected0)  # sin 0 = 0, cos 0 = 1, zero pad for odd dim


def test_embedding_closed_form_and_distinct_rows():
    t = torch.arange(0, 1001)
    dim = 16
    emb = timestep_embedding(t, dim).double()
    half = dim // 2
    freqs = torch.tensor([10000.0 ** (-i / half) for i in range(half)], dtype=torch.float64)
    args = t.double()[:, None] * freqs
    expected = torch.cat([args.sin(), args.cos()], dim=1)
    assert torch.allclose(emb, expected, atol=2e-4)  # float32 phase error at t ~ 1000
    dist = torch.cdist(emb, emb) + torch.eye(len(t), dtype=torch.float64) * 1e9
    assert dist.min() > 1e-2  # every timestep has its own code
    assert torch.allclose(emb.pow(2).sum(dim=1), torch.full((len(t),), half, dtype=torch.float64))


def test_embedding_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        timestep_embedding(torch.zeros(2, 3, dtype=torch.long), 8)


# --- shapes and the protocol ----------------------------------------------------------------


@pytest.mark.parametrize("out_mult", [1, 2])
@pytest.mark.parametrize("dim", [1, 2, 13])
def test_mlp_output_shape(dim, out_mult):
    model = build_model(ModelConfig(hidden=32, depth=2), (dim,), out_mult=out_mult)
    assert isinstance(model, MLP)
    x, t = _inputs((dim,), batch=5)
    assert model(x, t).shape == (5, out_mult * dim)


@pytest.mark.parametrize("out_mult", [1, 2])
@pytest.mark.parametrize(("shape", "mults", "attn"), IMAGE_CASES)
def test_unet_output_shape(shape, mults, attn, out_mult):
    cfg = ModelConfig(channels=16, channel_mults=mults, attn_resolutions=attn)
    model = build_model(cfg, shape, out_mult=out_mult)
    assert isinstance(model, UNet)
    x, t = _inputs(shape, batch=2)
    out = model(x, t)
    assert out.shape == (2, out_mult * shape[0], *shape[1:])


def test_unet_attention_placed_at_listed_resolutions():
    model = UNet(1, 1, 28, channels=8, channel_mults=(1, 2, 2), attn_resolutions=(7, 4))
    n_attn = sum(type(m).__name__ == "AttnBlock" for m in model.modules())
    assert n_attn == 1 + 1 + 1  # size 7: one down block, one up block, plus the middle
    model = UNet(1, 1, 8, channels=8, channel_mults=(1, 2), num_res_blocks=2)
    n_attn = sum(type(m).__name__ == "AttnBlock" for m in model.modules())
    assert n_attn == 2 + 2 + 1


@pytest.mark.parametrize("out_mult", [1, 2])
def test_mlp_on_images_flattens_and_keeps_channel_layout(out_mult):
    model = build_model(ModelConfig(kind="mlp", hidden=32, depth=1), (3, 4, 4), out_mult=out_mult)
    assert isinstance(model, FlatMLP)
    x, t = _inputs((3, 4, 4), batch=3)
    _perturb(model, torch.Generator().manual_seed(1))
    out = model(x, t)
    assert out.shape == (3, out_mult * 3, 4, 4)
    flat = model.mlp(x.flatten(1), t)
    assert torch.equal(out[:, :3].flatten(1), flat[:, : 3 * 16])  # first C channels = mean part


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)], ids=["mlp", "unet"])
def test_float64_models_work(shape):
    model = build_model(ModelConfig(channels=8, hidden=16), shape, out_mult=2).double()
    x, t = _inputs(shape)
    out = model(x.double(), t)
    assert out.dtype == torch.float64 and out.shape == (4, 2 * shape[0], *shape[1:])


def test_auto_dispatch():
    cfg = ModelConfig()
    assert isinstance(build_model(cfg, (2,)), MLP)
    assert isinstance(build_model(cfg, (1, 8, 8)), UNet)
    assert isinstance(build_model(ModelConfig(kind="unet"), (3, 32, 32)), UNet)


# --- configuration errors -------------------------------------------------------------------


def test_unet_rejects_image_size_not_divisible():
    cfg = ModelConfig(channel_mults=(1, 2, 2))
    with pytest.raises(ConfigError) as info:
        build_model(cfg, (1, 30, 30))
    msg = str(info.value)
    assert "image size 30 is not divisible by 4" in msg
    assert "channel_mults (1, 2, 2)" in msg and "28 or 32" in msg and "fewer channel_mults" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="image size 7 is not divisible by 2"):
        UNet(1, 1, 7, channel_mults=(1, 2))
    with pytest.raises(ConfigError, match=r"image size 2 is not divisible by 4, .*e\.g\. 4\)"):
        UNet(1, 1, 2, channel_mults=(1, 1, 1))


def test_unet_rejects_non_square_images():
    with pytest.raises(ConfigError, match=r"U-Net needs square images, got 8x16"):
        build_model(ModelConfig(), (1, 8, 16))
    assert isinstance(build_model(ModelConfig(kind="mlp"), (1, 8, 16)), FlatMLP)


def test_unet_rejects_vectors_and_bad_shapes():
    with pytest.raises(ConfigError, match=r"kind 'unet' needs images .* vectors of shape \(2,\)"):
        build_model(ModelConfig(kind="unet"), (2,))
    with pytest.raises(ConfigError, match=r"shape \(4, 4\) is not supported"):
        build_model(ModelConfig(), (4, 4))
    with pytest.raises(ConfigError, match="out_mult must be an integer >= 1"):
        build_model(ModelConfig(), (2,), out_mult=0)


# --- the upsampling convolution -------------------------------------------------------------


def _nearest_then_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The definition [Ho20] appendix B: nearest-neighbour x2, then the 3x3 convolution."""
    up = F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.conv2d(up, conv.weight, conv.bias, padding=1)


def _same_as_definition(module: nn.Module, definition, x_shape, seed: int) -> torch.Tensor:
    """Random float64 parameters and input; assert module(x) and the gradients with respect to
    x and every parameter equal the definition's to float64 rounding; return the output."""
    g = torch.Generator().manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(x_shape, generator=g, dtype=torch.float64, requires_grad=True)
    out, ref = module(x), definition(x, module)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    inputs = [x, *module.parameters()]
    for a, b in zip(
        torch.autograd.grad(out, inputs, grad_out),
        torch.autograd.grad(ref, inputs, grad_out),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    return out


@pytest.mark.parametrize("c_in, c_out, h, w", [(3, 5, 1, 1), (4, 2, 3, 5), (16, 8, 7, 7)])
def test_upsample_conv_equals_nearest_then_conv(c_in, c_out, h, w):
    out = _same_as_definition(UpsampleConv(c_in, c_out), _nearest_then_conv, (2, c_in, h, w), 0)
    assert out.shape == (2, c_out, 2 * h, 2 * w)


@pytest.mark.parametrize("h, w", [(4, 4), (7, 9), (8, 8), (14, 14)])  # both sides of H*W = 64
def test_conv1x1_equals_the_convolution(h, w):
    def definition(x, conv):
        return F.conv2d(x, conv.weight, conv.bias)

    out = _same_as_definition(Conv1x1(6, 4), definition, (3, 6, h, w), 1)
    assert out.shape == (3, 4, h, w)


@pytest.mark.parametrize("c_in, c_out, h, w", [(5, 1, 4, 4), (4, 2, 3, 7), (6, 8, 8, 8)])
def test_few_outputs_conv_equals_the_convolution(c_in, c_out, h, w):
    def definition(x, conv):
        return F.conv2d(x, conv.weight, conv.bias, padding=1)

    out = _same_as_definition(FewOutputsConv(c_in, c_out), definition, (2, c_in, h, w), 3)
    assert out.shape == (2, c_out, h, w)
    with pytest.raises(ValueError, match="9 output channels, at most 8"):
        FewOutputsConv(4, 9)


def _attention_definition(x: torch.Tensor, block: AttnBlock) -> torch.Tensor:
    """x + proj(attention(q, k, v)) with qkv and proj as 1x1 convolutions of the [B, C, H, W]
    map and the heads taken from consecutive channel groups [Ho20]."""
    b, c, h, w = x.shape
    heads = block.num_heads
    qkv = F.conv2d(block.norm(x), block.qkv.weight, block.qkv.bias)
    q, k, v = qkv.reshape(b, 3, heads, c // heads, h * w).transpose(-1, -2).unbind(dim=1)
    out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
    return x + F.conv2d(out, block.proj.weight, block.proj.bias)


@pytest.mark.parametrize("c, heads, h, w", [(8, 1, 4, 4), (12, 3, 3, 5), (8, 2, 7, 7)])
def test_attention_equals_its_definition(c, heads, h, w):
    out = _same_as_definition(AttnBlock(c, heads), _attention_definition, (2, c, h, w), 2)
    assert out.shape == (2, c, h, w)


def test_unet_equals_its_definition():
    """The whole U-Net with upsampling, 1x1 convolutions, attention and the output convolution
    written as their definitions (a nearest upsample then the 3x3 convolution; F.conv2d) gives
    the same outputs."""
    model = UNet(1, 2, 28, channels=8, channel_mults=(1, 2, 2), attn_resolutions=(14,)).double()
    _perturb(model, torch.Generator().manual_seed(3))
    x, t = _inputs((1, 28, 28), batch=3)
    out = model(x.double(), t)
    ups = [m for m in model.modules() if isinstance(m, UpsampleConv)]
    ones = [m for m in model.modules() if isinstance(m, Conv1x1)]
    attns = [m for m in model.modules() if isinstance(m, AttnBlock)]
    assert len(ups) == 2 and len(ones) >= 2 and len(attns) == 3
    assert isinstance(model.output, FewOutputsConv)
    model.output.forward = lambda x: F.conv2d(x, model.output.weight, model.output.bias, padding=1)
    for m in ups:
        m.forward = lambda x, m=m: _nearest_then_conv(x, m)  # per instance
    for m in ones:
        m.forward = lambda x, m=m: F.conv2d(x, m.weight, m.bias)
    for m in attns:
        m.forward = lambda x, m=m: _attention_definition(x, m)
    torch.testing.assert_close(out, model(x.double(), t), rtol=0, atol=1e-12)


# --- initialisation, conditioning, determinism ----------------------------------------------


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (3, 32, 32)], ids=["vector", "digits", "cifar"])
@pytest.mark.parametrize("out_mult", [1, 2])
def test_zero_initialised_output(shape, out_mult):
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=16), shape, out_mult=out_mult)
    x, t = _inputs(shape)
    out = model(x, t)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)], ids=["mlp", "unet"])
def test_output_depends_on_t_after_training_steps(shape):
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=16, hidden=32), shape)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((8, *shape), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):  # Adam steps towards target t / T, which differs by ~1 for t = 1, T
        t = torch.randint(1, 1001, (8,), generator=g)
        target = (t.float() / 1000).reshape(-1, *[1] * len(shape)) * torch.ones_like(x)
        loss = (model(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out_early = model(x, torch.full((8,), 1))
        out_late = model(x, torch.full((8,), 1000))
    assert (out_early - out_late).abs().mean() > 0.2  # about 0.8 (MLP), 0.5 (U-Net)


def test_unet_conditioning_after_manual_perturbation():
    torch.manual_seed(0)
    model = UNet(1, 2, 8, channels=16)
    _perturb(model, torch.Generator().manual_seed(3))
    x, _ = _inputs((1, 8, 8))
    with torch.no_grad():
        a = model(x, torch.full((4,), 10))
        b = model(x, torch.full((4,), 900))
    assert (a - b).abs().mean() > 1e-3


@pytest.mark.parametrize("shape", [(3,), (1, 8, 8)], ids=["mlp", "unet"])
def test_same_seed_same_weights_and_outputs(shape):
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(ModelConfig(channels=16, hidden=32), shape, out_mult=2)
        _perturb(model, torch.Generator().manual_seed(7))
        x, t = _inputs(shape, seed=5)
        outs.append((model.state_dict(), model(x, t)))
    (sd1, y1), (sd2, y2) = outs
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(y1, y2)
    torch.manual_seed(124)
    other = build_model(ModelConfig(channels=16, hidden=32), shape, out_mult=2)
    assert not all(torch.equal(sd1[k], v) for k, v in other.state_dict().items())


def test_library_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    model = UNet(1, 1, 8, channels=8)  # construction draws from the global RNG ...
    torch.set_rng_state(state)
    x, t = _inputs((1, 8, 8))
    model(x, t)
    model.eval()
    model(x, t)  # ... the forward pass (no dropout) does not
    assert torch.equal(torch.get_rng_state(), state)


def test_dropout_is_active_only_in_training_mode():
    torch.manual_seed(0)
    model = UNet(1, 1, 8, channels=8, dropout=0.5)
    _perturb(model, torch.Generator().manual_seed(0))
    x, t = _inputs((1, 8, 8))
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    assert not torch.equal(model(x, t), model(x, t))


# --- a tiny regression ----------------------------------------------------------------------


def test_tiny_mlp_fits_a_time_dependent_regression():
    """Fit y = sin(pi x_1) cos(2 pi t / T) + x_2 t / T: needs both x and t."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = MLP(2, 1, hidden=64, depth=2)
    x = torch.rand((512, 2), generator=g) * 2 - 1
    t = torch.randint(1, 101, (512,), generator=g)
    s = t.float() / 100
    y = (torch.sin(math.pi * x[:, 0]) * torch.cos(2 * math.pi * s) + x[:, 1] * s)[:, None]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        loss0 = (model(x, t) - y).pow(2).mean().item()
    for _ in range(400):
        loss = (model(x, t) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss1 = (model(x, t) - y).pow(2).mean().item()
    assert loss0 == pytest.approx(y.pow(2).mean().item())  # output starts at exactly 0
    assert loss1 < loss0 / 500, (loss0, loss1)  # about 4000x with this seed
