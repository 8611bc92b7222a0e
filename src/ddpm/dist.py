"""Multi-process training under ``torchrun`` with PyTorch DistributedDataParallel.

``torchrun --nproc-per-node N -m ddpm train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; we join the
process group (NCCL on CUDA, Gloo on CPU), each rank draws its own share of every batch from a
generator seeded by (seed, rank, step), DDP averages the gradients, and rank 0 alone writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group if launched by torchrun (WORLD_SIZE > 1); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend)
    return DistInfo(
        rank=torch_dist.get_rank(),
        world_size=torch_dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def default_device(info: DistInfo) -> torch.device:
    """CUDA device of this local rank when available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def all_gather_cat(x: Tensor, info: DistInfo) -> Tensor:
    """Concatenate x [n, ...] from every rank in rank order (x itself when not distributed)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        torch_dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
