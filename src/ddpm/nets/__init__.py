"""Networks eps_theta(x_t, t) for the diffusion code, and ``build_model`` to pick one.

The protocol: any ``nn.Module`` whose ``forward(x, t)`` maps

    x: [B, *shape] float -- images [B, C, H, W] or vectors [B, D], and
    t: [B] int64 -- timesteps in 1..T as in [Ho20] (0 is allowed too),

to a tensor of shape [B, out_mult * C, H, W] (images) or [B, out_mult * D] (vectors) works
with the rest of ``ddpm``. ``out_mult`` is 1 when the network predicts only the mean
parameterisation (eps, x0 or v) and 2 when it also predicts the variance interpolation v of
[ND21] eq. (15) (learned variances): then the first C (or D) channels are the mean
prediction and the next C (or D) are the variance output. Networks here are device-agnostic
(they follow the device and dtype of x) and never seed a random generator; their output layer
starts at zero, so a fresh network predicts eps_hat = 0.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

from torch import nn

from ddpm.config import ModelConfig
from ddpm.errors import ConfigError
from ddpm.nets.embedding import timestep_embedding
from ddpm.nets.mlp import MLP, FlatMLP
from ddpm.nets.unet import UNet

__all__ = ["build_model", "MLP", "UNet", "FlatMLP", "timestep_embedding"]


def build_model(cfg: ModelConfig, shape: tuple[int, ...], out_mult: int = 1) -> nn.Module:
    """Build the network that ``cfg`` describes for data of one example's ``shape``.

    ``cfg.kind``: 'auto' gives a UNet for images (shape (C, H, W)) and an MLP for vectors
    (shape (D,)); 'unet' needs square images; 'mlp' also works on images by flattening them
    (``FlatMLP``). The network maps [B, *shape] and [B] t to [B, out_mult * shape[0], ...].

    Raises:
        ConfigError: unsupported shape, 'unet' on vectors, non-square images for a U-Net, an
            image size the U-Net cannot halve ``len(channel_mults) - 1`` times, or out_mult < 1.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 3) or any(s < 1 for s in shape):
        raise ConfigError(
            f"model: data of shape {shape} is not supported; use vectors (D,) or images (C, H, W)"
        )
    if not isinstance(out_mult, int) or out_mult < 1:
        raise ConfigError(f"model: out_mult must be an integer >= 1 (got {out_mult!r})")
    kind = cfg.kind
    if kind == "auto":
        kind = "unet" if len(shape) == 3 else "mlp"
    if kind == "mlp":
        if len(shape) == 3:
            return FlatMLP(shape, out_mult, hidden=cfg.hidden, depth=cfg.depth)  # type: ignore[arg-type]
        return MLP(shape[0], out_mult * shape[0], hidden=cfg.hidden, depth=cfg.depth)
    if len(shape) == 1:
        raise ConfigError(
            f"model: kind 'unet' needs images (C, H, W) but the data are vectors of shape {shape}; "
            "set the model kind to 'mlp' or 'auto'"
        )
    c, h, w = shape
    if h != w:
        raise ConfigError(
            f"model: the U-Net needs square images, got {h}x{w}; resize or crop the data to a "
            "square (data image_size) or set the model kind to 'mlp'"
        )
    return UNet(
        in_channels=c,
        out_channels=out_mult * c,
        image_size=h,
        channels=cfg.channels,
        channel_mults=tuple(cfg.channel_mults),
        num_res_blocks=cfg.num_res_blocks,
        attn_resolutions=tuple(cfg.attn_resolutions),
        dropout=cfg.dropout,
    )
