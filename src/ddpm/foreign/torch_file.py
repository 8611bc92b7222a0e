"""Another library's ``torch.save`` file, read without unpickling anything but tensors.

Checkpoints of improved-diffusion and denoising-diffusion-pytorch are pickles. They are read with
``torch.load(..., weights_only=True)``, whose unpickler builds tensors, containers and plain
values only; a file that holds any other object (an ``argparse.Namespace``, a model) is refused
with the name of that object rather than executed.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from ddpm.errors import CheckpointError
from ddpm.memory import check_fits


def read_torch_file(path: Path, give: str) -> object:
    """What ``torch.save`` wrote to ``path``, on the CPU; ``give`` names the file the user should
    give instead, for the one line that says why this one cannot be read."""
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file; give {give}")
    size = path.stat().st_size
    check_fits(
        2 * size,  # the file's tensors, then the network they are copied into
        f"{path}: loading {size / 2**20:.0f} MiB of weights",
        "free memory or load it on a larger machine",
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is not None:
            raise CheckpointError(
                f"{path}: holds a pickled {found.group(1)}, and only tensors and plain values are "
                f"read (nothing else is unpickled); give {give}"
            ) from None
        why = str(e).partition("WeightsUnpickler error:")[2].strip() or str(e).strip()
        why = why.splitlines()[0][:200] if why else type(e).__name__
        raise CheckpointError(f"{path}: not a torch checkpoint ({why}); give {give}") from None


def first_names(keys: Iterable[str], shown: int = 3) -> str:
    """'a', 'b', 'c' and N more: the first names of a list, for a one-line message."""
    keys = list(keys)
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(repr(k) for k in keys[:shown]) + more


__all__ = ["first_names", "read_torch_file"]
