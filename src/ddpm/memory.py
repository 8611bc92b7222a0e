"""Will a request fit? Estimate the memory (or disk) it needs before allocating, and refuse
with one line that gives the estimate and the limit instead of failing deep inside torch.

The limit is what the machine can give now: MemAvailable of /proc/meminfo (physical memory when
that is not there) and, for a CUDA device, the device's free memory. The estimates are lower
bounds of what the request allocates at its peak, so a refusal is never a false alarm; requests
under ``SMALL`` bytes are not checked at all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ddpm.errors import TooLargeError

GiB = 1024**3
SMALL = 256 * 1024**2  # requests below this are not checked (no system call on hot paths)
FLOAT64 = 8
FLOAT32 = 4
# Peak float64 arrays of length T + 1 held at once while a schedule and its derived quantities
# are computed (beta, its cumulative products, the posterior coefficients; measured: ~6).
SCHEDULE_ARRAYS = 6


def available_bytes(device: torch.device | str | None = None) -> int:
    """Memory available for new allocations on device (the machine's for CPU or None)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 2**62  # unknown: do not refuse


def gib(n: float) -> str:
    """Bytes as GiB with three significant digits: '1.5 GiB', '7.45e+06 GiB'."""
    return f"{n / GiB:.3g} GiB"


def describe(needed: float, available: float, kind: str = "") -> str:
    """'needs ~X GiB, Y GiB available' (kind: e.g. 'of disk')."""
    kind = f" {kind}" if kind else ""
    return f"needs ~{gib(needed)}{kind}, {gib(available)} available"


def check_fits(
    needed: float,
    what: str,
    hint: str,
    device: torch.device | str | None = None,
    params: tuple[str, ...] = (),
) -> None:
    """Raise TooLargeError '<what> needs ~X GiB, Y GiB available; <hint>' when needed bytes
    exceed the memory available on device (None: the machine's); params: the parameters the
    message names."""
    if needed < SMALL:
        return
    available = available_bytes(device)
    if needed > available:
        on = device is not None and torch.device(device).type != "cpu"
        where = f" on {device}" if on else ""
        raise TooLargeError(f"{what} {describe(needed, available)}{where}; {hint}", params=params)


def check_disk(
    needed: float, path: str | os.PathLike, what: str, hint: str, params: tuple[str, ...] = ()
) -> None:
    """Raise TooLargeError when needed bytes exceed the free disk space where path goes."""
    if needed < SMALL:
        return
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise TooLargeError(f"{what} {describe(needed, free, 'of disk')}; {hint}", params=params)


def schedule_bytes(T: int) -> int:
    """Peak memory of a T-step noise schedule and the quantities derived from it."""
    return SCHEDULE_ARRAYS * FLOAT64 * (T + 1)


def check_steps(T: int, where: str) -> None:
    """Refuse a T-step process whose schedule alone does not fit in memory."""
    check_fits(
        schedule_bytes(T),
        f"{where}: T = {T} steps",
        "use fewer diffusion steps (T = 1000 is the usual choice)",
    )
