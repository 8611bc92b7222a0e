"""Helpers shared by the test files: the arguments of the session's tiny runs, copying a run,
calling the command line in-process."""

from __future__ import annotations

import shutil
from pathlib import Path

from ddpm.cli.main import main
from ddpm.runs import folder as rundir

# a tiny digits run (8x8 images, a UNet of 8 channels)
DIGITS_TINY = [
    "--diffusion-steps", "5", "--max-steps", "3", "--batch-size", "16", "--channels", "8",
    "--num-samples", "4", "--quiet",
]  # fmt: skip
# a tiny gmm8 run (2-d points, an MLP) with a checkpoint every 2 steps and a log line per step
GMM8_TINY = [
    "--data", "gmm8", "--n-train", "64", "--n-test", "16", "--diffusion-steps", "5",
    "--max-steps", "4", "--batch-size", "8", "--hidden", "16", "--depth", "1", "--num-samples", "4",
    "--log-every", "1", "--checkpoint-every", "2", "--warmup", "0", "--quiet", "--threads", "1",
]  # fmt: skip


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of the run folder ``src`` at ``dst`` (its lock file left behind)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(rundir.LOCK))
    return dst


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def one_line_error(capsys, *args) -> str:
    """Run a command that must fail with one line on stderr and exit status 2; return the line."""
    code = run_cli(*args)
    err = capsys.readouterr().err.strip()
    assert code == 2, (args, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)
    return err
