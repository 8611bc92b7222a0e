"""The package's layers read downward (docs/architecture.md): every import of a ddpm module,
at module level or inside a function, goes to the same layer or one below it; imports inside
functions outside the command line only defer a heavy optional dependency."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top; a module may import from its own layer and the layers before it.
LAYERS = [
    ("errors", "config", "memory", "progress", "threads", "storage"),
    ("process", "data", "nets"),
    ("model", "requests"),
    ("likelihood", "sampling"),
    ("report", "quality"),
    ("runs", "foreign"),
    ("training", "vae", "loader"),
    ("jobs",),
    ("cli", "__main__"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
# Optional or heavy packages a library function may import when it runs, not at import time.
# heavy or optional packages a function may import when first used; importlib.metadata (30 ms)
# and tomllib are read only by ddpm.__version__
DEFERRED = {
    "diffusers", "denoising_diffusion_pytorch", "matplotlib", "scipy", "sklearn", "msvcrt", "PIL",
    "importlib", "tomllib",
}  # fmt: skip


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted((SRC / "ddpm").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out.append((name.removesuffix(".__init__"), ast.parse(path.read_text())))
    return out


def _part(module: str) -> str | None:
    """The top-level part of ddpm a module belongs to (None: the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(tree: ast.Module):
    """(imported module, inside a function, under TYPE_CHECKING) for every import."""
    type_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            type_only |= {id(n) for n in ast.walk(node)}
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            base = node.module or ""
            names = [f"{base}.{a.name}" if base == "ddpm" else base for a in node.names]
        else:
            continue
        for name in names:
            yield name, id(node) in in_function, id(node) in type_only


MODULES = _modules()


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(name) for name, _ in MODULES} - {None}
    missing = sorted(parts - set(RANK))
    assert not missing, f"add {missing} to LAYERS and to docs/architecture.md"


@pytest.mark.parametrize("name,tree", MODULES, ids=[n for n, _ in MODULES])
def test_imports_go_to_the_same_layer_or_below(name, tree):
    own = _part(name)
    if own is None:  # the package root re-exports the public names lazily
        return
    upward = []
    for imported, _, type_only in _imports(tree):
        if not imported.startswith("ddpm.") or type_only:
            continue
        target = _part(imported)
        if target in RANK and RANK[target] > RANK[own]:
            upward.append(imported)
    assert not upward, f"{name} ({own}) imports upward: {upward}"


@pytest.mark.parametrize("name,tree", MODULES, ids=[n for n, _ in MODULES])
def test_imports_inside_functions_only_defer_heavy_optional_packages(name, tree):
    if _part(name) in ("cli", "__main__"):  # `ddpm --help` answers before torch is imported
        return
    inside = [i for i, in_function, _ in _imports(tree) if in_function]
    assert all(i.split(".")[0] in DEFERRED for i in inside), f"{name}: {inside}"


def test_every_help_answers_without_loading_torch():
    """The command line imports the library inside its commands, so `ddpm COMMAND --help`
    (and a typo in a flag) answers in a tenth of a second, before torch is loaded."""
    code = (
        "import contextlib, io, sys\n"
        "from ddpm.cli.main import main\n"
        "for command in sys.argv[1:]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main([*command.split(), '--help'])\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    commands = ["train", "sample", "evaluate", "report", "theory", "forward", "vae train",
                "vae evaluate", "vae compare"]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code, *commands], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout[:300]
