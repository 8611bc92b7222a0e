"""`import ddpm` stays light: no plotting library until a figure is drawn."""

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
    mods = _modules_after("import ddpm, ddpm.report, ddpm.cli, ddpm.cli_eval")
    assert "ddpm.report" in mods and "ddpm.api" in mods  # the plotting modules are loaded ...
    assert not any(m == "matplotlib" or m.startswith("matplotlib.") for m in mods)  # ... lazily


def test_drawing_a_figure_imports_matplotlib():
    code = (
        "import torch, tempfile, os\n"
        "from ddpm.report import save_per_timestep\n"
        "d = tempfile.mkdtemp()\n"
        "save_per_timestep({'a': torch.ones(3)}, os.path.join(d, 'p.png'))"
    )
    assert "matplotlib.figure" in _modules_after(code)
