"""`import ddpm` stays light: no torch until a name is used, no plotting library until a figure
is drawn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _modules_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, env=env, timeout=300,
    )  # fmt: skip
    return set(out.stdout.split())


def test_import_ddpm_does_not_import_matplotlib():
    mods = _modules_after(
        "import ddpm, ddpm.jobs.evaluate, ddpm.jobs.sample, ddpm.report, ddpm.cli.main, "
        "ddpm.cli.evaluate"
    )
    assert (
        "ddpm.report" in mods and "ddpm.jobs.evaluate" in mods
    )  # the plotting modules are loaded ...
    assert not any(m == "matplotlib" or m.startswith("matplotlib.") for m in mods)  # ... lazily


def test_drawing_a_figure_imports_matplotlib():
    code = (
        "import torch, tempfile, os\n"
        "from ddpm.report import save_per_timestep\n"
        "d = tempfile.mkdtemp()\n"
        "save_per_timestep({'a': torch.ones(3)}, os.path.join(d, 'p.png'))"
    )
    assert "matplotlib.figure" in _modules_after(code)


def test_import_ddpm_loads_no_torch_until_a_name_is_used():
    assert "torch" not in _modules_after("import ddpm")
    mods = _modules_after("import ddpm\nddpm.NoiseSchedule")
    assert "torch" in mods and "ddpm.process.schedule" in mods


def test_public_names_stay_the_functions_after_their_modules_are_imported():
    code = (
        "import ddpm, ddpm.training.loop, ddpm.likelihood.evaluate, ddpm.process.respace\n"
        "print(ddpm.train, ddpm.evaluate, ddpm.respace)"
    )
    out = _run(code)
    assert "<function train" in out and "<function evaluate" in out and "<function respace" in out


def _run(code: str, env: dict[str, str] | None = None, args: list[str] | None = None) -> str:
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    cmd = [sys.executable, *(args or ["-c", code])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr
