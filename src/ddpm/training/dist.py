"""Multiple processes under ``torchrun``: DDP training and sharded evaluation.

``torchrun --nproc-per-node N -m ddpm train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; we join the
process group (NCCL on CUDA, Gloo on CPU), each rank draws its own share of every batch from a
generator seeded by (seed, rank, step), DDP averages the gradients, and rank 0 alone writes files.
``torchrun ... -m ddpm evaluate ...`` gives each rank a contiguous shard of the examples
(``shard``), gathers the per-example terms (``gather_rows``) and rank 0 writes the report.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import torch
import torch.distributed as torch_dist
from torch import Tensor

from ddpm.errors import ConfigError, PeerLostError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # the rendezvous store of the process group we joined (None when not distributed or when
    # the group was joined before us); ``cleanup`` meets the other ranks there
    store: torch_dist.Store | None = field(default=None, compare=False, repr=False)
    # (host, process id) of every rank, in rank order, read at the start (``peer_lost``)
    processes: tuple[tuple[str, int], ...] = field(default=(), compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or CUDA when available, else CPU (ConfigError if unusable)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f"device {device!r}: {e}; use cpu, cuda or cuda:N", params=("device",)
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device}: CUDA is not available here; use device cpu", params=("device",)
        )
    return dev


def launched_as_main() -> bool:
    """True unless torchrun started this process with a rank other than 0 (read before the
    process group is joined, from the RANK variable torchrun sets)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun (WORLD_SIZE > 1); else single process.

    Returns the process's info and its device: under torchrun a CUDA device is the one of
    this process's LOCAL_RANK (set as the current device, so NCCL collectives use it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    store = None
    if not torch_dist.is_initialized():
        # The rendezvous init_process_group would make itself (env:// from torchrun's
        # variables), kept so that ``cleanup`` can use the store.
        store, rank, world = next(torch_dist.rendezvous("env://"))
        group = {"store": torch_dist.PrefixStore("default_pg", store), "rank": rank}
        if device.type == "cuda":
            torch_dist.init_process_group("nccl", **group, world_size=world, device_id=device)
        else:
            torch_dist.init_process_group("gloo", **group, world_size=world)
        store = torch_dist.PrefixStore("ddpm", store)
    rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
    processes = ()
    if store is not None:  # who is who, to name a rank that stops (``peer_lost``)
        store.set(f"process/{rank}", f"{socket.gethostname()} {os.getpid()}")
        processes = tuple(_process(store.get(f"process/{r}")) for r in range(world))
    info = DistInfo(rank, world, local_rank, store, processes)
    global _joined
    _joined = info
    return info, device


# The process group torch keeps is process-wide; so is this record of the one we joined, read
# only to name a lost rank in an error (``peer_lost``) and cleared by ``cleanup``.
_joined: DistInfo | None = None


def _process(entry: bytes) -> tuple[str, int]:
    host, pid = entry.decode().rsplit(" ", 1)
    return host, int(pid)


def peer_lost(error: BaseException) -> PeerLostError | None:
    """The one-line error for ``error`` when it is a collective (Gloo or NCCL) that failed
    because another process of the launch stopped: it names the rank when that process ran on
    this host and is gone. None for any other error, or when no process group was joined."""
    info = _joined
    if info is None or not info.enabled or not torch_dist.is_initialized():
        return None
    text = str(error).strip()
    if not isinstance(error, torch_dist.DistError) and not (
        isinstance(error, RuntimeError) and ("gloo" in text.lower() or "nccl" in text.lower())
    ):
        return None
    lost = _lost_ranks(info)
    which = (
        f"rank {', '.join(map(str, lost))} of {info.world_size} stopped (its process is gone)"
        if lost
        else f"another rank of the {info.world_size} stopped or lost its connection"
    )
    return PeerLostError(
        f"{which} while rank {info.rank} waited for it, so this rank stops too; see that rank's "
        "output for why"
    )


def _lost_ranks(info: DistInfo) -> list[int]:
    """Ranks whose process ran on this host and has ended."""
    host = socket.gethostname()
    return [
        rank
        for rank, (where, pid) in enumerate(info.processes)
        if rank != info.rank and where == host and not _running(pid)
    ]


def _running(pid: int) -> bool:
    """True while process pid runs (a zombie, ended but not yet reaped, has stopped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


def all_gather_cat(x: Tensor, info: DistInfo) -> Tensor:
    """Concatenate x [n, ...] from every rank in rank order (x itself when not distributed)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_rows(x: Tensor, info: DistInfo) -> Tensor:
    """Concatenate x [n_r, ...] from every rank in rank order, where n_r may differ by rank
    (padded to the largest n_r for the collective, then trimmed)."""
    if not info.enabled:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = all_gather_cat(n, info).tolist()
    pad = max(counts) - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    parts = all_gather_cat(padded, info).split(max(counts))
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def shard(n: int, info: DistInfo) -> tuple[int, int]:
    """The contiguous slice [start, stop) of n items that this rank handles (sizes differ by
    at most one; rank order is item order, so gathered results line up with the items)."""
    size, extra = divmod(n, info.world_size)
    start = info.rank * size + min(info.rank, extra)
    return start, start + size + (info.rank < extra)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        torch_dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group once every rank has got here.

    A rank may return from a collective while its own last message to another rank is still
    queued; closing its connections then can abort that rank (SIGABRT in Gloo: pytorch/gloo#155,
    barrier followed by context destruction). So the ranks first meet in the rendezvous store,
    which no rank reaches before its last collective has returned, i.e. before it has received
    every message meant for it.
    """
    global _joined
    _joined = None
    if not (info.enabled and torch_dist.is_initialized()):
        return
    if info.store is not None:
        if info.store.add("left", 1) == info.world_size:
            info.store.set("all_left", "1")
        info.store.wait(["all_left"])
    torch_dist.destroy_process_group()
