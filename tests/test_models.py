"""load: one loader for ddpm run folders (diffusers folders: test_foreign_diffusers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import copy_run

from ddpm.cli.main import main
from ddpm.errors import CheckpointError
from ddpm.loader import load
from ddpm.runs.checkpoint import load_checkpoint
from ddpm.runs.run import CHECKPOINT, build, load_config

TINY = ["--diffusion-steps", "5", "--max-steps", "3", "--batch-size", "16",
        "--channels", "8", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(digits_tiny_run, tmp_path_factory) -> Path:
    """A copy of the session's run trained with TINY (and --num-samples 4)."""
    return copy_run(digits_tiny_run, tmp_path_factory.mktemp("models") / "digits")


def by_hand(run_dir: Path):
    """The run rebuilt from its config and checkpoint: (config, diffusion, EMA network, clip)."""
    cfg, spec = load_config(run_dir)
    diffusion, net = build(cfg, spec)
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    ckpt.load_weights(net, ema=True, best=ckpt.has_best)
    clip = (-1.0, 1.0) if spec.discrete and cfg.diffusion.clip_x0 else None
    return cfg, diffusion, net.eval(), clip


def test_a_run_folder_loads_as_its_run(run_dir):
    m = load(run_dir)
    cfg, diffusion, net, clip = by_hand(run_dir)
    assert m.source.kind == "ddpm" and m.source.data == cfg.data and m.clip == clip
    assert torch.equal(m.diffusion.schedule.beta, diffusion.schedule.beta)
    assert m.diffusion.param == diffusion.param and m.diffusion.time_map is None
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 3, 5])
    with torch.no_grad():
        assert torch.equal(m.net(x, t), net(x, t))


def test_evaluate_data_flag_on_a_run(run_dir, tmp_path, capsys):
    base = ["evaluate", str(run_dir), "-n", "4", "--json", "--out", str(tmp_path)]
    assert main(base) == 0
    own = json.loads(capsys.readouterr().out)
    assert main([*base, "--data", "digits"]) == 0
    named = json.loads(capsys.readouterr().out)
    assert named["neg_elbo"] == own["neg_elbo"]  # the run's own data, named: the same numbers
    assert main([*base, "--data", "moons"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(2,)" in err and "(1, 8, 8)" in err


def test_a_folder_of_neither_kind_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="model_index.json"):
        load(tmp_path)
