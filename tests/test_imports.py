"""`import ddpm` stays light: no torch until a name is used, no plotting library until a figure
is drawn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _modules_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, env=env, timeout=300,
    )  # fmt: skip
    return set(out.stdout.split())


# What the library's heavy modules pull in, and what the public names are afterwards: one fresh
# interpreter for the tests below that read it (each would start the same one).
LIBRARY = (
    "ddpm, ddpm.jobs.evaluate, ddpm.jobs.sample, ddpm.report, ddpm.cli.main, ddpm.cli.evaluate, "
    "ddpm.loader, ddpm.foreign.diffusers, ddpm.training.loop, ddpm.likelihood.evaluate, "
    "ddpm.process.respace"
)


@pytest.fixture(scope="module")
def library_imported() -> tuple[set[str], str]:
    """(sys.modules, the public names train, evaluate, respace) after importing LIBRARY."""
    code = f"import {LIBRARY}\nprint(ddpm.train, ddpm.evaluate, ddpm.respace, sep='\\n')"
    lines = _run(code + "\nimport sys\nprint('\\n'.join(sys.modules))").splitlines()
    return set(lines[3:]), "\n".join(lines[:3])


def test_import_ddpm_does_not_import_matplotlib(library_imported):
    mods, _ = library_imported
    assert "ddpm.report" in mods and "ddpm.jobs.evaluate" in mods  # the plotting modules ...
    assert not any(m == "matplotlib" or m.startswith("matplotlib.") for m in mods)  # ... lazily


def test_import_ddpm_does_not_import_diffusers(library_imported):
    mods, _ = library_imported
    assert "ddpm.foreign.diffusers" in mods and "diffusers" not in mods


def test_drawing_a_figure_imports_matplotlib_but_never_pyplot():
    """A figure is drawn on a matplotlib.figure.Figure: no pyplot, no global figure state."""
    code = (
        "import torch, tempfile, os\n"
        "from ddpm.report import save_per_timestep\n"
        "d = tempfile.mkdtemp()\n"
        "save_per_timestep({'a': torch.ones(3)}, os.path.join(d, 'p.png'))"
    )
    mods = _modules_after(code)
    assert "matplotlib.figure" in mods and "matplotlib.pyplot" not in mods


def test_import_ddpm_loads_no_torch_until_a_name_is_used():
    assert "torch" not in _modules_after("import ddpm")
    mods = _modules_after("import ddpm\nddpm.NoiseSchedule")
    assert "torch" in mods and "ddpm.process.schedule" in mods


def test_public_names_stay_the_functions_after_their_modules_are_imported(library_imported):
    _, names = library_imported
    assert "<function train" in names and "<function evaluate" in names
    assert "<function respace" in names


def _run(code: str, env: dict[str, str] | None = None, args: list[str] | None = None) -> str:
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    cmd = [sys.executable, *(args or ["-c", code])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr
