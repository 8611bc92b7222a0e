"""Residual MLP eps_theta(x_t, t) for vector data: 2-D toys and tabular rows.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddpm.nets.embedding import timestep_embedding


class TimeMLP(nn.Module):
    """t -> sinusoidal embedding [B, time_dim] -> Linear -> SiLU -> Linear -> [B, out_dim]."""

    def __init__(self, time_dim: int, out_dim: int) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.net = nn.Sequential(
            nn.Linear(time_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, t: Tensor) -> Tensor:
        """t: [B] int64 -> [B, out_dim], in the dtype of the weights."""
        emb = timestep_embedding(t, self.time_dim)  # float32
        return self.net(emb.to(self.net[0].weight.dtype))


class _ResidualBlock(nn.Module):
    """h + Linear(SiLU(LayerNorm(h) + W_t SiLU(temb))): one pre-norm residual layer."""

    def __init__(self, hidden: int, temb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.time_proj = nn.Linear(temb_dim, hidden)
        self.linear = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        """h: [B, hidden], temb: [B, temb_dim] -> [B, hidden]."""
        z = self.norm(h) + self.time_proj(nn.functional.silu(temb))
        return h + self.linear(nn.functional.silu(z))


class MLP(nn.Module):
    """Residual MLP: [B, dim] x_t and [B] t -> [B, out_dim].

    Layout: input Linear(dim, hidden); ``depth`` residual blocks, each adding a projection of the
    time embedding (sinusoidal -> Linear -> SiLU -> Linear); then LayerNorm -> SiLU -> Linear
    (hidden, out_dim). The output Linear starts at zero, so eps_hat = 0 at initialisation, the
    mean of the target eps ~ N(0, I) of L_simple, [Ho20] eq. (14).

    Args:
        dim: data dimension D.
        out_dim: output width, ``out_mult * D`` (D for eps/x0/v, 2D with a learned variance).
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_dim: width of the sinusoidal embedding (default: ``hidden``).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        hidden: int = 128,
        depth: int = 3,
        time_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.out_dim = dim, out_dim
        self.time_embed = TimeMLP(time_dim or hidden, hidden)
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: [B, dim] float, t: [B] int64 -> [B, out_dim]."""
        temb = self.time_embed(t).to(x.dtype)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.output(nn.functional.silu(self.out_norm(h)))


class FlatMLP(nn.Module):
    """An MLP on images: flattens [B, C, H, W] to [B, CHW] and reshapes the output back.

    The output [B, out_mult * CHW] becomes [B, out_mult * C, H, W]; since a reshape keeps the
    order, the first C channels are the first CHW outputs (the mean prediction), as the protocol
    in ``ddpm.nets`` requires.
    """

    def __init__(
        self, shape: tuple[int, int, int], out_mult: int = 1, hidden: int = 128, depth: int = 3
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.out_mult = out_mult
        dim = self.shape[0] * self.shape[1] * self.shape[2]
        self.mlp = MLP(dim, out_mult * dim, hidden=hidden, depth=depth)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: [B, C, H, W], t: [B] -> [B, out_mult * C, H, W]."""
        c, h, w = self.shape
        out = self.mlp(torch.flatten(x, start_dim=1), t)
        return out.reshape(x.shape[0], self.out_mult * c, h, w)
