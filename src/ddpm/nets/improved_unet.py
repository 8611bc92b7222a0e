"""The U-Net of improved-diffusion [ND21] (and guided-diffusion's options [DN21]), written for ddpm
so that those projects' checkpoints load into it: the module tree, and so every ``state_dict`` key
and shape, is theirs.

    emb = time_embed(e(t)),  e(t) = [cos(t w_0..w_{h-1}), sin(t w_0..w_{h-1})],
          w_i = 10000^(-i / h), h = C // 2 (cos first, unlike ``nets.embedding``; a zero column
          is appended when C is odd); time_embed = Linear(C, 4C), SiLU, Linear(4C, 4C)
    input_blocks.0     conv3x3(in -> mult_0 C)
    then, level by level (multiplier mult, downsample rate ds = 1, 2, 4, ...):
        num_res_blocks x [ResBlock(ch -> mult C) (+ AttentionBlock if ds is an attention rate)]
        and, after every level but the last, a Downsample (conv3x3 stride 2, or a ResBlock
        that average-pools 2x2 with resblock_updown); each group is one ``input_blocks.N``
    middle_block       ResBlock, AttentionBlock, ResBlock
    output_blocks      levels in reverse, num_res_blocks + 1 each: ResBlock(ch + skip -> mult C)
                       on [h, skip] concatenated along channels (the skips popped from the input
                       blocks' outputs, last first), attention as on the way down, and an
                       Upsample (nearest x2 then conv3x3, or a ResBlock that upsamples) closing
                       every level but the first
    out                GroupNorm, SiLU, conv3x3(ch -> out_channels)

ResBlock (the residual block of [Ho20] appendix B, with [ND21]'s time conditioning):
    h = conv(SiLU(GN(x)));  e = Linear(SiLU(emb))
    scale-shift [ND21] (the default):  h = GN(h) (1 + scale) + shift, (scale, shift) = chunks of e
    otherwise:                         h = GN(h + e)
    h = conv(Dropout(SiLU(h)));  output skip(x) + h, skip = identity or conv1x1
    with up/down (resblock_updown, [DN21]): x and SiLU(GN(x)) are both resampled before the
    first conv.
AttentionBlock [Vas17]: qkv = conv1x1(GN(x)) over the H W positions; per head,
    softmax over keys of (q s)^T (k s), s = d^(-1/4) with d the channels of a head, weights v;
    out = x + proj_out(heads). The legacy order splits [3C] into heads first, each head's
    3d channels into q, k, v; [DN21]'s new order splits q, k, v first, each into heads.
GroupNorm has 32 groups [Wu18] and, like the softmax, is computed in float32 at least (float64
for a float64 network), whatever the network's dtype.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [DN21] Dhariwal, Nichol. Diffusion Models Beat GANs on Image Synthesis. arXiv:2105.05233
    [Vas17] Vaswani et al. Attention Is All You Need. arXiv:1706.03762
    [Wu18] Wu, He. Group Normalization. arXiv:1803.08494
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ddpm.errors import ConfigError, require_choice
from ddpm.nets.embedding import timestep_embedding

GROUPS = 32  # GroupNorm groups of every normalisation in the network
AttentionOrder = Literal["legacy", "new"]
Resample = Literal["none", "up", "down"]


@dataclass(frozen=True)
class ImprovedUNetConfig:
    """The architecture of an improved-diffusion U-Net (module docstring).

    attention_rates: the downsample rates ds (image_size // resolution) with attention.
    num_heads: heads of every attention block, unless num_head_channels != -1 sets the channels
    of a head instead (heads = channels // num_head_channels); num_heads_upsample: heads on the
    way up (-1: num_heads).
    """

    image_size: int
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_rates: tuple[int, ...] = (4, 8)
    in_channels: int = 3
    out_channels: int = 3
    dropout: float = 0.0
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    attention_order: AttentionOrder = "legacy"

    def __post_init__(self) -> None:
        for name in ("image_size", "model_channels", "num_res_blocks", "in_channels"):
            _require_int(name, getattr(self, name), 1)
        _require_int("out_channels", self.out_channels, 1)
        if not self.channel_mult:
            raise ConfigError("channel_mult must name at least one level (e.g. 1,2,2,2)")
        for m in self.channel_mult:
            _require_int("channel_mult", m, 1)
        if self.model_channels % GROUPS:
            raise ConfigError(
                f"model_channels = {self.model_channels}: GroupNorm's {GROUPS} groups need a "
                f"multiple of {GROUPS}"
            )
        steps = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % steps:
            raise ConfigError(
                f"image_size {self.image_size} cannot be halved {len(self.channel_mult) - 1} "
                f"times (channel_mult {self.channel_mult}); give a multiple of {steps}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1) (got {self.dropout})")
        require_choice("attention_order", self.attention_order, get_args(AttentionOrder))
        last = len(self.channel_mult) - 1
        for level, m in enumerate(self.channel_mult):  # levels with attention; the middle
            ups = (False, True) if 2**level in self.attention_rates else ()
            for up in ups + ((False,) if level == last else ()):
                c, heads = m * self.model_channels, self.heads(m * self.model_channels, up)
                if heads < 1 or c % heads:
                    into = (
                        f"{heads} heads" if heads else f"heads of {self.num_head_channels} channels"
                    )
                    raise ConfigError(
                        f"{c} attention channels do not split into {into}; check num_heads, "
                        "num_heads_upsample and num_head_channels"
                    )

    def heads(self, channels: int, up: bool) -> int:
        """Attention heads of a block of ``channels`` channels (on the way up if ``up``)."""
        if self.num_head_channels != -1:
            if self.num_head_channels < 1 or channels % self.num_head_channels:
                return 0
            return channels // self.num_head_channels
        return self.num_heads_upsample if up and self.num_heads_upsample != -1 else self.num_heads


def _require_int(name: str, v: object, low: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ConfigError(f"{name} must be an integer >= {low} (got {v!r})")


def cos_sin_embedding(t: Tensor, dim: int) -> Tensor:
    """[B, dim] float32: [cos(t w), sin(t w)] (improved-diffusion's order; module docstring),
    the halves of ``nets.embedding.timestep_embedding`` swapped."""
    e = timestep_embedding(t, dim)
    h = dim // 2
    return torch.cat([e[:, h : 2 * h], e[:, :h], e[:, 2 * h :]], dim=1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups [Wu18], computed in float32 (float64 for float64 inputs) and
    returned in x's dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(GROUPS, channels)

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        w, b = self.weight.to(dtype), self.bias.to(dtype)
        return F.group_norm(x.to(dtype), GROUPS, w, b, self.eps).to(x.dtype)


def resample(x: Tensor, how: Resample) -> Tensor:
    """x [B, C, H, W] at twice ('up', nearest) or half ('down', 2x2 mean) the resolution."""
    if how == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if how == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    return x


class ResBlock(nn.Module):
    """The residual block of the module docstring; forward(x [B, ch, H, W], emb [B, 4C])."""

    def __init__(self, channels: int, out: int, emb: int, cfg: ImprovedUNetConfig,
                 how: Resample = "none") -> None:  # fmt: skip
        super().__init__()
        self.how, self.scale_shift = how, cfg.use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb, 2 * out if self.scale_shift else out)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out), nn.SiLU(), nn.Dropout(cfg.dropout), nn.Conv2d(out, out, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.how == "none":
            h = self.in_layers(x)
        else:  # resample after the norm and SiLU, before the conv; x alike
            h = self.in_layers[2](resample(self.in_layers[1](self.in_layers[0](x)), self.how))
            x = resample(x, self.how)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H W positions with a residual connection (module docstring)."""

    def __init__(self, channels: int, heads: int, order: AttentionOrder) -> None:
        super().__init__()
        self.heads, self.order = heads, order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # [B, 3C, L]
        d, n = c // self.heads, qkv.shape[-1]
        if self.order == "legacy":  # heads first: [B * heads, 3d, L], then q | k | v
            q, k, v = qkv.reshape(b * self.heads, 3 * d, n).split(d, dim=1)
        else:  # q | k | v first, then each into heads
            q, k, v = (z.reshape(b * self.heads, d, n) for z in qkv.chunk(3, dim=1))
        dtype = torch.promote_types(x.dtype, torch.float32)  # softmax in float32 at least
        # softmax_s(q_t . k_s / sqrt(d)) = softmax of (q s)^T (k s), s = d^(-1/4)
        a = F.scaled_dot_product_attention(*(z.transpose(1, 2).to(dtype) for z in (q, k, v)))
        h = a.transpose(1, 2).to(x.dtype).reshape(b, c, n)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """conv3x3 with stride 2 (parameter ``op``): half the resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then conv3x3 (parameter ``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(resample(x, "up"))


class Block(nn.Sequential):
    """A group of layers applied in turn; residual blocks also read the time embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ImprovedUNet(nn.Module):
    """improved-diffusion's UNetModel (module docstring) behind ddpm's network protocol:
    forward(x [B, in, H, W], t [B] network time, float or int) -> [B, out_channels, H, W]
    in x's dtype. The last conv of each residual branch, of each attention block and of the
    output starts at zero, as there; loaded weights replace them."""

    def __init__(self, cfg: ImprovedUNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, emb = cfg.model_channels, 4 * cfg.model_channels
        self.time_embed = nn.Sequential(nn.Linear(C, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = cfg.channel_mult[0] * C
        self.input_blocks = nn.ModuleList([Block(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * C, emb, cfg)]
                ch = mult * C
                if ds in cfg.attention_rates:
                    layers.append(AttentionBlock(ch, cfg.heads(ch, up=False), cfg.attention_order))
                self.input_blocks.append(Block(*layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = ResBlock(ch, ch, emb, cfg, "down") if cfg.resblock_updown else Downsample(ch)
                self.input_blocks.append(Block(down))
                skips.append(ch)
                ds *= 2
        self.middle_block = Block(
            ResBlock(ch, ch, emb, cfg),
            AttentionBlock(ch, cfg.heads(ch, up=False), cfg.attention_order),
            ResBlock(ch, ch, emb, cfg),
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), mult * C, emb, cfg)]
                ch = mult * C
                if ds in cfg.attention_rates:
                    layers.append(AttentionBlock(ch, cfg.heads(ch, up=True), cfg.attention_order))
                if level and i == cfg.num_res_blocks:
                    up = ResBlock(ch, ch, emb, cfg, "up") if cfg.resblock_updown else Upsample(ch)
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(Block(*layers))
        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        )
        for module in self.modules():  # zero-initialised as in [ND21]'s code
            last = module.out_layers[3] if isinstance(module, ResBlock) else None
            last = module.proj_out if isinstance(module, AttentionBlock) else last
            if last is not None:
                _zero(last)
        _zero(self.out[2])

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        dtype = self.out[2].weight.dtype
        emb = self.time_embed(cos_sin_embedding(t, self.cfg.model_channels).to(dtype))
        h, skips = x.to(dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)


def _zero(module: nn.Module) -> None:
    for p in module.parameters():
        nn.init.zeros_(p)


__all__ = ["ImprovedUNet", "ImprovedUNetConfig", "cos_sin_embedding"]
