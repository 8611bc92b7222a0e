"""Shared fixtures: the tiny runs that several test files read, each trained once per session.

A session run is never changed in place: a module or a test that writes into a run takes a copy
(``copy_run``), so the tests see the same folder they would have trained themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import DIGITS_TINY, GMM8_TINY, copy_run

from ddpm.cli.main import main

# The suite runs in two processes (pytest-xdist, pyproject's addopts), one test file each at a
# time (--dist loadfile: a module's fixtures are built once). One torch thread per process, so
# that they do not fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# The files that take longest, longest first. xdist hands out whole files in collection order
# (pyproject passes --no-loadscope-reorder), so starting with these keeps both processes busy
# to the end instead of leaving one long file for last. Only the order changes, never a test.
LONGEST_FIRST = [  # measured on the 2-core machine, 8 to 23 s each
    "test_docs_examples.py",
    "test_train_gmm8.py",
    "test_faults.py",
    "test_cli_foreign_files.py",
    "test_foreign_diffusers.py",
    "test_quality.py",
    "test_elbo.py",
    "test_train.py",
    "test_evaluate_run.py",
    "test_faults_errors.py",
    "test_fuzz.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


def _train(tmp_path_factory: pytest.TempPathFactory, name: str, args: list[str]) -> Path:
    out = tmp_path_factory.mktemp("session_runs") / name
    assert main(["train", "--out", str(out), *args]) == 0
    return out


@pytest.fixture(scope="session")
def digits_tiny_run(tmp_path_factory) -> Path:
    """``ddpm train`` on digits with ``DIGITS_TINY``; read it only (copy it to change it)."""
    return _train(tmp_path_factory, "digits", DIGITS_TINY)


@pytest.fixture(scope="session")
def gmm8_tiny_run(tmp_path_factory) -> Path:
    """``ddpm train`` on gmm8 with ``GMM8_TINY``; read it only (copy it to change it)."""
    return _train(tmp_path_factory, "gmm8", GMM8_TINY)


@pytest.fixture
def fresh_gmm8_run(gmm8_tiny_run, tmp_path) -> Path:
    """A copy of the tiny gmm8 run for one test to change."""
    return copy_run(gmm8_tiny_run, tmp_path / "run")
