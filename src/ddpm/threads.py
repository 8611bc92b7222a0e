"""How many CPU threads torch uses, set for the length of one command.

torch's default (one thread per core) is fastest on an idle machine; on a busy one, or with
several runs side by side, small models train many times faster with ``--threads 1``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ddpm.errors import ConfigError


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Use n intra-op threads inside the block (None: torch's default); yields the count."""
    import torch

    before = torch.get_num_threads()
    if n is None:
        yield before
        return
    if n < 1:
        raise ConfigError(f"--threads must be >= 1 (got {n})")
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
