"""Helpers shared by the test files: the arguments of the session's tiny runs, copying a run."""

from __future__ import annotations

import shutil
from pathlib import Path

from ddpm import rundir

# a tiny digits run (8x8 images, a UNet of 8 channels)
DIGITS_TINY = [
    "--T", "5", "--steps", "3", "--batch-size", "16", "--channels", "8", "--num-samples", "4",
    "--quiet",
]  # fmt: skip
# a tiny gmm8 run (2-d points, an MLP) with a checkpoint every 2 steps and a log line per step
GMM8_TINY = [
    "--data", "gmm8", "--n-train", "64", "--n-test", "16", "--T", "5", "--steps", "4",
    "--batch-size", "8", "--hidden", "16", "--depth", "1", "--num-samples", "4",
    "--log-every", "1", "--checkpoint-every", "2", "--warmup", "0", "--quiet", "--threads", "1",
]  # fmt: skip


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of the run folder ``src`` at ``dst`` (its lock file left behind)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(rundir.LOCK))
    return dst
