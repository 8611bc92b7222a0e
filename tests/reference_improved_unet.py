"""improved-diffusion's U-Net written out as plain tensor operations over a state dict, for the
tests of ``ddpm.nets.improved_unet`` only. Independent of that module: the layer order and the
downsample rates are walked here from the architecture's numbers, every tensor is read by its
checkpoint name, and every name read is recorded (``Reader.unused`` lists the rest), so a
network with a layer missing, extra or misplaced disagrees with this one.

Written from [ND21]'s description of the model (and [DN21]'s options): sinusoidal embedding
[cos, sin], residual blocks with scale-shift conditioning, attention at chosen downsample rates,
strided-conv down, nearest + conv up, skips concatenated on the way up.

References:
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [DN21] Dhariwal, Nichol. Diffusion Models Beat GANs on Image Synthesis. arXiv:2105.05233
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Arch:
    """The architecture in the reference's own terms."""

    C: int  # model channels
    mult: tuple[int, ...]
    blocks: int  # residual blocks per level on the way down
    attn_ds: tuple[int, ...]  # downsample rates with attention
    heads_down: int = 1  # heads at a level (or -1 with head_channels)
    heads_up: int = 1
    head_channels: int = -1  # channels per head when != -1
    scale_shift: bool = True
    updown: bool = False  # residual blocks resample
    new_order: bool = False  # split q, k, v before heads


class Reader:
    """A state dict that remembers which names were read."""

    def __init__(self, state: dict[str, Tensor]) -> None:
        self.state, self.read = state, set()

    def __call__(self, name: str) -> Tensor:
        self.read.add(name)
        return self.state[name]

    def has(self, name: str) -> bool:
        return name in self.state

    @property
    def unused(self) -> list[str]:
        return sorted(set(self.state) - self.read)


def embedding(t: Tensor, dim: int) -> Tensor:
    """[B, dim] float32: cos(t w_i) for i < dim // 2, then sin(t w_i), w_i = 10000^(-i / half)."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32)
    w = torch.exp(-math.log(10000.0) * i / half)
    a = t.float()[:, None] * w[None, :]
    out = torch.cat([torch.cos(a), torch.sin(a)], dim=1)
    return F.pad(out, (0, dim - 2 * half))


def norm(r: Reader, x: Tensor, name: str) -> Tensor:
    return F.group_norm(x, 32, r(name + ".weight"), r(name + ".bias"), eps=1e-5)


def conv(r: Reader, x: Tensor, name: str, stride: int = 1) -> Tensor:
    w = r(name + ".weight")
    return F.conv2d(x, w, r(name + ".bias"), stride=stride, padding=w.shape[-1] // 2)


def resample(x: Tensor, how: str | None) -> Tensor:
    if how == "up":
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest x2
    if how == "down":
        b, c, h, w = x.shape
        return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))  # 2x2 means
    return x


def res_block(r: Reader, x: Tensor, emb: Tensor, name: str, a: Arch, how: str | None = None):
    h = F.silu(norm(r, x, f"{name}.in_layers.0"))
    h, x = resample(h, how), resample(x, how)
    h = conv(r, h, f"{name}.in_layers.2")
    e = F.linear(F.silu(emb), r(f"{name}.emb_layers.1.weight"), r(f"{name}.emb_layers.1.bias"))
    e = e[:, :, None, None]
    if a.scale_shift:
        c = h.shape[1]
        h = norm(r, h, f"{name}.out_layers.0") * (1 + e[:, :c]) + e[:, c:]
    else:
        h = norm(r, h + e, f"{name}.out_layers.0")
    h = conv(r, F.silu(h), f"{name}.out_layers.3")  # dropout: identity in eval
    skip = x if x.shape[1] == h.shape[1] else conv(r, x, f"{name}.skip_connection")
    return skip + h


def attention(r: Reader, x: Tensor, name: str, heads: int, a: Arch) -> Tensor:
    b, c, hh, ww = x.shape
    if a.head_channels != -1:
        heads = c // a.head_channels
    d, n = c // heads, hh * ww
    flat = x.reshape(b, c, n)
    qkv = (
        torch.einsum("oc,bcn->bon", r(f"{name}.qkv.weight")[:, :, 0], norm(r, flat, f"{name}.norm"))
        + r(f"{name}.qkv.bias")[None, :, None]
    )
    if a.new_order:
        q, k, v = (z.reshape(b * heads, d, n) for z in torch.split(qkv, c, dim=1))
    else:
        per_head = qkv.reshape(b * heads, 3 * d, n)
        q, k, v = per_head[:, :d], per_head[:, d : 2 * d], per_head[:, 2 * d :]
    s = d**-0.25
    w = torch.softmax(torch.einsum("zct,zcs->zts", q * s, k * s), dim=-1)
    out = torch.einsum("zts,zcs->zct", w, v).reshape(b, c, n)
    out = torch.einsum("oc,bcn->bon", r(f"{name}.proj_out.weight")[:, :, 0], out)
    out = out + r(f"{name}.proj_out.bias")[None, :, None]
    return x + out.reshape(b, c, hh, ww)


def forward(state: dict[str, Tensor], a: Arch, x: Tensor, t: Tensor) -> tuple[Tensor, list[str]]:
    """(network output [B, out, H, W], names of the state dict never read)."""
    r = Reader(state)
    dtype = x.dtype
    e = embedding(t, a.C).to(dtype)
    e = F.linear(e, r("time_embed.0.weight"), r("time_embed.0.bias"))
    emb = F.linear(F.silu(e), r("time_embed.2.weight"), r("time_embed.2.bias"))
    h = conv(r, x, "input_blocks.0.0")
    skips, idx, ds = [h], 1, 1
    for level in range(len(a.mult)):
        for _ in range(a.blocks):
            h = res_block(r, h, emb, f"input_blocks.{idx}.0", a)
            if ds in a.attn_ds:
                h = attention(r, h, f"input_blocks.{idx}.1", a.heads_down, a)
            skips.append(h)
            idx += 1
        if level < len(a.mult) - 1:
            if a.updown:
                h = res_block(r, h, emb, f"input_blocks.{idx}.0", a, "down")
            else:
                h = conv(r, h, f"input_blocks.{idx}.0.op", stride=2)
            skips.append(h)
            idx, ds = idx + 1, ds * 2
    h = res_block(r, h, emb, "middle_block.0", a)
    h = attention(r, h, "middle_block.1", a.heads_down, a)
    h = res_block(r, h, emb, "middle_block.2", a)
    idx = 0
    for level in reversed(range(len(a.mult))):
        for i in range(a.blocks + 1):
            name = f"output_blocks.{idx}"
            h = res_block(r, torch.cat([h, skips.pop()], dim=1), emb, f"{name}.0", a)
            sub = 1
            if ds in a.attn_ds:
                h = attention(r, h, f"{name}.1", a.heads_up, a)
                sub = 2
            if level > 0 and i == a.blocks:
                if a.updown:
                    h = res_block(r, h, emb, f"{name}.{sub}", a, "up")
                else:
                    h = conv(r, resample(h, "up"), f"{name}.{sub}.conv")
                ds //= 2
            idx += 1
    assert not skips
    h = conv(r, F.silu(norm(r, h, "out.0")), "out.2")
    return h, r.unused


def seeded_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Tensor]:
    """Every tensor drawn from a seeded generator (float64): weights ~ N(0, 1 / fan_in),
    GroupNorm scales ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2); none zero."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        if len(shape) >= 2:
            out[name] = z / math.sqrt(math.prod(shape[1:]))
        elif name.endswith(".weight"):  # the only vectors named weight: GroupNorm scales
            out[name] = 1 + 0.1 * z
        else:
            out[name] = 0.1 * z
    return out
