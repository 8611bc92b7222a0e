"""The released package: one version (pyproject.toml) read back as ``ddpm.__version__``, the
metadata and files a wheel carries, CITATION.cff, and annotations on every public signature."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ddpm

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DISTRIBUTION = "ddpm-likelihood"


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _python(code: str, path: Path, *flags: str) -> str:
    """Run code in a fresh interpreter with ``path`` first on sys.path; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(path)}
    proc = subprocess.run(
        [sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


# ---- the version -------------------------------------------------------------------------------


def test_version_is_the_installed_distributions_and_pyprojects():
    project = _pyproject()["project"]
    assert project["name"] == DISTRIBUTION
    assert ddpm.__version__ == importlib.metadata.version(DISTRIBUTION) == project["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", ddpm.__version__)
    assert "__version__" in dir(ddpm)


def test_an_uninstalled_source_tree_reads_its_pyproject(tmp_path):
    """Without site-packages (-S) and without an egg-info beside the package, no metadata names
    ddpm-likelihood: the version comes from the tree's pyproject.toml, else '0+unknown'."""
    tree = tmp_path / "tree"
    shutil.copytree(SRC / "ddpm", tree / "src" / "ddpm", ignore=shutil.ignore_patterns("*.pyc"))
    code = "import ddpm; print(ddpm.__version__)"
    assert _python(code, tree / "src", "-S") == "0+unknown"  # no pyproject.toml
    (tree / "pyproject.toml").write_text(
        '[project]\nname = "ddpm-likelihood"\nversion = "9.8.7"\n', encoding="utf-8"
    )
    assert _python(code, tree / "src", "-S") == "9.8.7"
    (tree / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "1.0"\n')
    assert _python(code, tree / "src", "-S") == "0+unknown"  # not this distribution's
    (tree / "pyproject.toml").write_text("[project\n")
    assert _python(code, tree / "src", "-S") == "0+unknown"  # not TOML


def test_import_ddpm_reads_no_metadata_until_the_version_is_asked():
    # what `import ddpm` itself adds: under coverage's subprocess patch the interpreter has
    # loaded importlib.metadata before any of this code runs
    code = (
        "import sys\n"
        "names = ('importlib.metadata', 'tomllib')\n"
        "pre = {n for n in names if n in sys.modules}\n"
        "import ddpm\n"
        "added = {n for n in names if n in sys.modules} - pre\n"
        "v = ddpm.__version__\n"
        "print(sorted(added), 'importlib.metadata' in sys.modules, v)"
    )
    assert _python(code, SRC) == f"[] True {ddpm.__version__}"


def test_a_run_folder_records_the_version(gmm8_tiny_run):
    doc = json.loads((gmm8_tiny_run / "config.json").read_text())
    assert doc["ddpm_version"] == ddpm.__version__


@pytest.mark.parametrize("name", ["ddpm.config", "runs.folder", "config.", "", "1x", "no_such"])
def test_unknown_or_dotted_names_are_no_attributes(name):
    assert not hasattr(ddpm, name)
    with pytest.raises(AttributeError, match="has no attribute"):
        getattr(ddpm, name)


def test_a_submodule_not_imported_yet_is_still_an_attribute():
    code = "import sys, ddpm\nprint('ddpm.runs' in sys.modules, ddpm.runs.__name__)"
    assert _python(code, SRC) == "False ddpm.runs"


# ---- metadata, LICENSE, CITATION.cff -------------------------------------------------------------


def test_project_metadata_for_a_release():
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert project["authors"] == [{"name": "ddpm contributors"}]
    assert project["scripts"] == {"ddpm": "ddpm.cli.main:main"}
    extras = project["optional-dependencies"]
    assert {"diffusers", "test", "docs"} <= set(extras)
    names = {re.split(r"[\[<>=!~ ]", r)[0] for r in extras["test"]}
    assert {"build", "twine", "pytest"} <= names
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License\n")
    assert "Copyright (c) 2026 ddpm contributors" in license_text
    assert (SRC / "ddpm" / "py.typed").is_file()


def test_citation_cff_names_the_software_and_the_papers_it_implements():
    import yaml  # pyyaml, of the test extra

    doc = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert doc["cff-version"] == "1.2.0"
    assert doc["type"] == "software" and doc["license"] == "MIT"
    assert doc["version"] == _pyproject()["project"]["version"]
    assert doc["message"] and doc["title"] and doc["authors"] == [{"name": "ddpm contributors"}]
    refs = doc["references"]
    for ref in refs:
        assert ref["type"] and ref["title"] and ref["authors"] and isinstance(ref["year"], int)
        assert all(a.get("family-names") and a.get("given-names") for a in ref["authors"])
    first_author_year = {(r["authors"][0]["family-names"], r["year"]) for r in refs}
    assert {
        ("Ho", 2020),  # DDPM
        ("Nichol", 2021),  # improved DDPM
        ("Song", 2021),  # DDIM and the score SDE (probability-flow ODE)
        ("Kingma", 2014),  # VAE
        ("Burda", 2016),  # IWAE
        ("Sohl-Dickstein", 2015),
        ("Heusel", 2017),  # FID
        ("Bińkowski", 2018),  # KID
    } <= first_author_year
    titles = {r["title"] for r in refs}
    assert "Denoising Diffusion Implicit Models" in titles
    assert "Score-Based Generative Modeling through Stochastic Differential Equations" in titles


def test_the_wheel_carries_every_package_file_the_license_and_the_marker(tmp_path):
    """Build the sdist and the wheel from it as a release does; every file of src/ddpm (code and
    any data read at run time) must be in the wheel. The build runs on a copy of the project, so
    that it rewrites no egg-info under src/ while other tests read it."""
    project = tmp_path / "project"
    shutil.copytree(SRC / "ddpm", project / "src" / "ddpm", ignore=shutil.ignore_patterns("*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, project / name)
    dist = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(project)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    version = _pyproject()["project"]["version"]
    (wheel,) = dist.glob(f"ddpm_likelihood-{version}-py3-none-any.whl")
    assert (dist / f"ddpm_likelihood-{version}.tar.gz").is_file()
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"ddpm_likelihood-{version}.dist-info"
        meta = zf.read(f"{info}/METADATA").decode()
    package = {
        "ddpm/" + p.relative_to(SRC / "ddpm").as_posix()
        for p in (SRC / "ddpm").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "ddpm/py.typed" in package and "ddpm/cli/main.py" in package
    assert package - names == set()
    assert f"{info}/licenses/LICENSE" in names
    assert f"\nName: {DISTRIBUTION}\n" in meta and f"\nVersion: {version}\n" in meta
    assert "\nLicense-Expression: MIT\n" in meta


# ---- annotations on every public signature ------------------------------------------------------


def _missing_annotations(qualname: str, fn: object, bound: bool) -> list[str]:
    """The parameters (and the return) of fn without an annotation; ``bound`` skips self/cls."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1 if bound else 0 :]
    missing = [f"{qualname}({p.name})" for p in params if p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty:
        missing.append(f"{qualname} -> ?")
    return missing


def _public_callables(name: str, obj: object) -> list[tuple[str, object, bool]]:
    """(qualname, function, bound) for a public function, or for each public method,
    classmethod, staticmethod, property and __init__ that a public class defines or inherits
    from a ddpm class."""
    if not inspect.isclass(obj):
        return [(name, obj, False)] if inspect.isfunction(obj) else []
    out = []
    for klass in obj.__mro__:
        if not klass.__module__.startswith("ddpm"):
            continue
        for attr, raw in vars(klass).items():
            if attr.startswith("_") and attr not in ("__init__", "__call__"):
                continue
            qual = f"{name}.{attr}"
            if isinstance(raw, staticmethod):
                out.append((qual, raw.__func__, False))
            elif isinstance(raw, classmethod):
                out.append((qual, raw.__func__, True))
            elif isinstance(raw, property) and raw.fget is not None:
                out.append((qual, raw.fget, True))
            elif inspect.isfunction(raw):
                out.append((qual, raw, True))
    return out


def test_every_public_signature_is_fully_annotated():
    checked, missing = 0, []
    for name in ddpm.__all__:
        for qual, fn, bound in _public_callables(name, getattr(ddpm, name)):
            checked += 1
            missing += _missing_annotations(qual, fn, bound)
    assert checked > 200  # the walk reached the methods, not only the functions
    assert missing == []


def test_the_annotation_check_sees_a_missing_one():
    class Probe:
        def ok(self, x: int) -> int:
            return x

        def bad(self, x, y: int):  # noqa: ANN001, ANN201
            return x

    Probe.__module__ = "ddpm.probe"
    found = [m for c in _public_callables("Probe", Probe) for m in _missing_annotations(*c)]
    assert found == ["Probe.bad(x)", "Probe.bad -> ?"]
