"""A compact U-Net eps_theta(x_t, t) for small images (8x8 digits, 28x28 MNIST, 32x32).

The layout follows [Ho20] appendix B (itself PixelCNN++ / Wide ResNet style) at a smaller size:
a time-embedding MLP, residual blocks that add a projection of it, self-attention at chosen
feature-map sizes and always in the middle, stride-2 convolutions down, nearest-neighbour +
conv up (computed exactly as one transposed convolution, see ``UpsampleConv``), and skip
connections concatenated on the way up. The last convolution of every residual
branch, of every attention block and of the output starts at zero (as in the code of [ND21]):
at initialisation each residual branch adds nothing and the network outputs exactly 0.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [Wu18] Wu, He. Group Normalization. arXiv:1803.08494
    [Shi16] Shi et al. Real-Time Single Image and Video Super-Resolution Using an Efficient
            Sub-Pixel Convolutional Neural Network. arXiv:1609.05158
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ddpm.errors import ConfigError
from ddpm.nets.mlp import TimeMLP


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm [Wu18] with the largest number of groups <= max_groups that divides channels."""
    groups = next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def zero_(module: nn.Module) -> nn.Module:
    """Set every parameter of module to zero in place and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Conv1x1(nn.Conv2d):
    """A 1x1 convolution, y[b] = W x[b] + bias with x[b] as a [C_in, H*W] matrix.

    The parameters are those of ``nn.Conv2d(in_ch, out_ch, 1)``. From H*W = 64 up it runs as
    one batched matrix product: on CPU, forward and backward together take 10% to 55% less
    time than oneDNN's 1x1 convolution at the sizes measured (8x8 to 28x28 maps, 32 to 240
    channels); on smaller maps the convolution is faster and is used.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if h * w < 64:
            return super().forward(x)
        weight = self.weight.view(1, self.out_channels, c).expand(b, -1, -1)
        bias = self.bias.view(1, -1, 1).expand(b, -1, h * w)
        return torch.baddbmm(bias, weight, x.reshape(b, c, h * w)).view(b, -1, h, w)


class FewOutputsConv(nn.Conv2d):
    """A 3x3 convolution (padding 1) to at most 8 output channels, such as the U-Net's output.

    The parameters are those of ``nn.Conv2d(in_ch, out_ch, 3, padding=1)``. A stride-1
    convolution equals the transposed convolution with the kernel flipped in both axes and its
    channel axes swapped, y = conv(x, w) = conv_transpose(x, flip(w)^T). oneDNN pads the output
    channels of a convolution to a block of 16, so on CPU a 1-channel output costs as much as 16;
    the transposed form runs 1.6x to 1.8x faster at 1 and 2 output channels (forward and
    backward) and 1.03x to 1.4x at 3 to 8; from 12 on it is slower.
    """

    MAX_OUT_CHANNELS = 8

    def __init__(self, in_ch: int, out_ch: int) -> None:
        if out_ch > self.MAX_OUT_CHANNELS:
            raise ValueError(
                f"FewOutputsConv: {out_ch} output channels, at most {self.MAX_OUT_CHANNELS}"
            )
        super().__init__(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.weight.flip(2, 3).transpose(0, 1)  # [C_in, C_out, 3, 3]
        return F.conv_transpose2d(x, kernel, self.bias, padding=1)


class ResBlock(nn.Module):
    """x + F(x, temb): GN-SiLU-conv3x3, + Linear(SiLU(temb)), GN-SiLU-dropout-conv3x3 (zero).

    x: [B, in_ch, H, W], temb: [B, temb_dim] -> [B, out_ch, H, W]; the skip path is a 1x1
    convolution when in_ch != out_ch, else the identity.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else Conv1x1(in_ch, out_ch)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """x + proj(softmax(q k^T / sqrt(d)) v) over the H*W positions; proj starts at zero.

    x: [B, C, H, W] -> [B, C, H, W]. ``num_heads`` must divide C. qkv and proj are 1x1
    convolutions (their parameters, as in [Ho20]) applied as linear maps over the channels of
    the H*W positions laid out as [B, HW, C], the layout attention works in: one matrix product
    each and no transposes of q, k, v (on CPU the block takes 7% to 18% less time, forward and
    backward, than with 1x1 convolutions, at 4x4 to 14x14).
    """

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        assert channels % num_heads == 0, (channels, num_heads)
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        qkv = F.linear(tokens, self.qkv.weight.view(3 * c, c), self.qkv.bias)  # [B, HW, 3C]
        q, k, v = qkv.view(b, h * w, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, d]
        out = out.transpose(1, 2).reshape(b, h * w, c)  # heads back to channel order
        out = F.linear(out, self.proj.weight.view(c, c), self.proj.bias)  # [B, HW, C]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def _fold_taps(w: Tensor, dim: int) -> Tensor:
    """The 3 taps (w0, w1, w2) of w along dim as the 4 taps (w2, w1 + w2, w0 + w1, w0) of the
    stride-2 transposed convolution that equals "nearest x2, then convolve with w".

    After a nearest x2 upsample, output 2i (phase 0) reads input pixels (i-1, i) with taps
    (w0, w1 + w2) and output 2i + 1 (phase 1) reads (i, i+1) with taps (w0 + w1, w2). A
    transposed convolution with stride 2 and padding 1 sends input i to output 2i - 1 + k
    through tap k, so k = 0..3 carry w2 (to 2i - 1), w1 + w2 (2i), w0 + w1 (2i + 1), w0 (2i + 2).
    """
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


class UpsampleConv(nn.Conv2d):
    """conv3x3(nearest_x2(x)) [Ho20] appendix B, computed exactly at the low resolution.

    x: [B, C_in, S, S] -> [B, C_out, 2S, 2S]. The parameters are those of the 3x3 convolution
    (so a checkpoint holds the same tensors as a plain ``nn.Conv2d``). A nearest-neighbour
    upsample repeats each pixel 2x2 times, so each output pixel reads a 2x2 patch of x with
    taps of the 3x3 kernel summed (the sub-pixel convolution of [Shi16] with tied kernels).
    All four output phases together are one transposed convolution of x with stride 2 and the
    folded 4x4 kernel (``_fold_taps`` along both axes): 16 S^2 instead of 36 S^2 multiply-adds
    per channel pair, one kernel call, and no 4x-sized input; on CPU 2.1x to 2.7x faster than
    the definition, forward and backward, at S = 4 to 14.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        kernel = _fold_taps(_fold_taps(self.weight, 2), 3)  # [C_out, C_in, 4, 4]
        # conv_transpose2d takes its kernel as [C_in, C_out, kH, kW].
        return F.conv_transpose2d(x, kernel.transpose(0, 1), self.bias, stride=2, padding=1)


class _Level(nn.Module):
    """Residual blocks (each followed by attention or nothing) at one feature-map size."""

    def __init__(self, blocks: list[ResBlock], attns: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)


class UNet(nn.Module):
    """U-Net: [B, in_channels, S, S] x_t and [B] t -> [B, out_channels, S, S].

    Level i (i = 0..L-1, L = len(channel_mults)) works at size S / 2^i with
    ``channels * channel_mults[i]`` channels and ``num_res_blocks`` residual blocks on the way
    down and as many on the way up, each up block taking the matching down block's output
    concatenated to its input (a leaner variant of [Ho20], which also saves the input conv and
    the downsampled maps and so has one more block per level on the way up). Attention follows
    each block whose feature-map size is in ``attn_resolutions``; sizes never reached are
    unused. The middle (size S / 2^(L-1)) is ResBlock-Attention-ResBlock as in [Ho20].

    Args:
        in_channels: C of the data.
        out_channels: ``out_mult * C`` (2C when the variance is learned, [ND21]).
        image_size: S; must be divisible by 2^(L-1).
        channels: base width.
        channel_mults: width multiplier per level; L - 1 downsamplings.
        num_res_blocks: residual blocks per level on the way down.
        attn_resolutions: feature-map sizes (H) that get self-attention.
        dropout: dropout rate inside residual blocks.

    Raises:
        ConfigError: image_size is not divisible by 2^(L-1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (4,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        factor = 2 ** (len(channel_mults) - 1)
        if image_size < factor or image_size % factor != 0:
            raise ConfigError(
                f"U-Net: image size {image_size} is not divisible by {factor}, which "
                f"channel_mults {tuple(channel_mults)} ({len(channel_mults) - 1} downsamplings) "
                f"need; use an image size that is a multiple of {factor} "
                f"(e.g. {_multiples_near(image_size, factor)}) or fewer channel_mults"
            )
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        temb_dim = 4 * channels
        self.time_embed = TimeMLP(channels, temb_dim)
        self.input = nn.Conv2d(in_channels, channels, 3, padding=1)

        def level(in_chs: list[int], out_ch: int, size: int) -> _Level:
            blocks = [ResBlock(c, out_ch, temb_dim, dropout) for c in in_chs]
            use_attn = size in attn_resolutions
            attns = [AttnBlock(out_ch) if use_attn else nn.Identity() for _ in in_chs]
            return _Level(blocks, attns)

        # Down path: every residual block's output is saved for the up path.
        ch, size, skip_chs = channels, image_size, []
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, mult in enumerate(channel_mults):
            out_ch = channels * mult
            self.down.append(level([ch] + [out_ch] * (num_res_blocks - 1), out_ch, size))
            ch = out_ch
            skip_chs += [ch] * num_res_blocks
            if i < len(channel_mults) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                size //= 2

        self.mid1 = ResBlock(ch, ch, temb_dim, dropout)
        self.mid_attn = AttnBlock(ch)
        self.mid2 = ResBlock(ch, ch, temb_dim, dropout)

        # Up path: each block takes the running features concatenated with one saved skip, in
        # reverse order; the upsampling conv already narrows to the next level's width.
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(channel_mults))):
            out_ch = channels * channel_mults[i]
            in_chs = []
            for _ in range(num_res_blocks):
                in_chs.append(ch + skip_chs.pop())
                ch = out_ch
            self.up.append(level(in_chs, out_ch, size))
            if i > 0:
                next_ch = channels * channel_mults[i - 1]
                self.upsample.append(UpsampleConv(ch, next_ch))
                ch, size = next_ch, size * 2
        assert not skip_chs and size == image_size

        self.out_norm = group_norm(ch)
        few = out_channels <= FewOutputsConv.MAX_OUT_CHANNELS  # data channels (x2: learned var)
        self.output = zero_(
            FewOutputsConv(ch, out_channels) if few else nn.Conv2d(ch, out_channels, 3, padding=1)
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: [B, in_channels, S, S] float, t: [B] int64 -> [B, out_channels, S, S]."""
        temb = self.time_embed(t).to(x.dtype)
        h = self.input(x)
        skips = []
        for i, lvl in enumerate(self.down):
            for block, attn in zip(lvl.blocks, lvl.attns, strict=True):
                h = attn(block(h, temb))
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for i, lvl in enumerate(self.up):
            for block, attn in zip(lvl.blocks, lvl.attns, strict=True):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), temb))
            if i < len(self.upsample):
                h = self.upsample[i](h)  # nearest-neighbour x2, then a 3x3 conv
        return self.output(F.silu(self.out_norm(h)))


def _multiples_near(size: int, factor: int) -> str:
    """'24 or 32': the multiples of factor on either side of size (for error messages)."""
    below = (size // factor) * factor
    above = below + factor
    return f"{below} or {above}" if below >= factor else str(above)
