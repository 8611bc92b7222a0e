"""Sinusoidal embedding of the timestep t, shared by every network in ``ddpm.nets``.

References:
    [Vas17] Vaswani et al. Attention Is All You Need. arXiv:1706.03762, section 3.5
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239,
        appendix B ("diffusion time t is specified by adding the Transformer sinusoidal
        position embedding into each residual block")
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of timesteps, [Vas17] section 3.5.

    Row b is ``[sin(t_b w_0), ..., sin(t_b w_{h-1}), cos(t_b w_0), ..., cos(t_b w_{h-1})]`` with
    ``h = dim // 2`` and frequencies ``w_i = max_period^(-i / h)``, so w_0 = 1 and the slowest
    period is just under ``max_period``. When ``dim`` is odd a zero column is appended. We divide
    by h (as in [ND21]'s code) rather than h - 1 (as in [Ho20]'s code) so that dim = 2 and 3 work;
    the two differ only in the spacing of the frequencies.

    Args:
        t: [B] timesteps (int64, 0..T; floats are accepted too).
        dim: embedding width, >= 1.
        max_period: longest wavelength scale.

    Returns:
        [B, dim] float32 on t's device. At t = 0 a row is ``[0, ..., 0, 1, ..., 1]``.
    """
    if t.dim() != 1:
        raise ValueError(f"timestep_embedding expects t of shape [B], got {tuple(t.shape)}")
    if dim < 1:
        raise ValueError(f"timestep_embedding: dim must be >= 1 (got {dim})")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)  # [h]
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # [B, h]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # [B, 2h]
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
