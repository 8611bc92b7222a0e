"""load_model: one loader for ddpm run folders (diffusers folders: test_foreign_diffusers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import copy_run

from ddpm.cli import main
from ddpm.errors import CheckpointError
from ddpm.models import load_model
from ddpm.runs import load_run

TINY = ["--T", "5", "--steps", "3", "--batch-size", "16", "--channels", "8", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(digits_tiny_run, tmp_path_factory) -> Path:
    """A copy of the session's run trained with TINY (and --num-samples 4)."""
    return copy_run(digits_tiny_run, tmp_path_factory.mktemp("models") / "digits")


def test_a_run_folder_loads_as_its_run(run_dir):
    m, run = load_model(run_dir), load_run(run_dir)
    assert m.source == "ddpm" and m.data == run.config.data and m.clip == run.clip
    assert torch.equal(m.diffusion.schedule.beta, run.diffusion.schedule.beta)
    assert m.diffusion.param == run.diffusion.param and m.diffusion.time_map is None
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 3, 5])
    with torch.no_grad():
        assert torch.equal(m.model(x, t), run.model(x, t))


def test_evaluate_data_flag_on_a_run(run_dir, tmp_path, capsys):
    base = ["evaluate", str(run_dir), "--n", "4", "--json", "--out", str(tmp_path)]
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
        load_model(tmp_path)
