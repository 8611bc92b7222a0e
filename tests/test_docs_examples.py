"""The documentation works: every ``python`` block of README.md and docs/**/*.md runs, the site's
navigation lists every page, the API reference covers the public names, and the generated CLI
reference lists every visible option of every command.

Each page's ``python`` blocks run in order, as one program, in a process of its own (forked with
torch already imported: tests/forked.py) and an empty temporary folder, with
``OMP_NUM_THREADS=1`` and ``DDPM_EXAMPLE_STEPS`` set small: examples that train read their
length from that variable in plain sight (docs/getting-started.md says so). A
failure names the page and the Markdown line of the block. A block that is not meant to run uses
another fence (``text``, ``bash``); a fence that looks like Python but is not ``python`` fails.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import signal
from pathlib import Path

import forked
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE_STEPS = "2"  # DDPM_EXAMPLE_STEPS in the examples' environment
RUNNABLE = {"python", "py", "python3"}
# fences that hold Python but would not run here: name them `python`, or `text` if not runnable
PYTHON_LIKE = {"pycon", "python-console", "ipython", "pyi"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, 1-based line of the opening fence, code) of each fenced block of Markdown."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        language = (m["info"].split() or [""])[0].lower().lstrip(".{").rstrip("}")
        start, body = i + 1, []
        i += 1
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        blocks.append((language, start, "\n".join(body) + "\n"))
        i += 1
    return blocks


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _pages_with_python() -> list[Path]:
    return [p for p in pages() if any(b[0] in RUNNABLE for b in code_blocks(p.read_text()))]


# Runs the blocks in one namespace; each block is compiled with blank lines in front, so that a
# traceback gives the page and its line in the Markdown file.
_DRIVER = """
import json, sys, traceback
page, blocks = sys.argv[1], json.load(open(sys.argv[2], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for number, (line, code) in enumerate(blocks, 1):
    try:
        exec(compile("\\n" * line + code, page, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"{page}: python block {number} (line {line}) failed", file=sys.stderr)
        sys.exit(1)
"""


def test_code_block_parser_finds_fences_and_lines():
    text = "# t\n\n```python\nx = 1\n```\n\n    ```bash\n    ls\n    ```\n\n````text\n```\n````\n"
    assert code_blocks(text) == [
        ("python", 3, "x = 1\n"),
        ("bash", 7, "ls\n"),
        ("text", 11, "```\n"),
    ]


@pytest.mark.parametrize("page", pages(), ids=_rel)
def test_no_python_block_hides_under_another_fence(page):
    wrong = [(line, lang) for lang, line, _ in code_blocks(page.read_text()) if lang in PYTHON_LIKE]
    assert not wrong, f"{_rel(page)}: fences {wrong} hold Python: use ```python (or ```text)"


@pytest.mark.parametrize("page", _pages_with_python(), ids=_rel)
def test_python_examples_run(page, tmp_path):
    blocks = [
        (line, code) for lang, line, code in code_blocks(page.read_text()) if lang in RUNNABLE
    ]
    (tmp_path / "blocks.json").write_text(json.dumps(blocks), encoding="utf-8")
    (tmp_path / "driver.py").write_text(_DRIVER, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "OMP_NUM_THREADS": "1",
        "DDPM_EXAMPLE_STEPS": EXAMPLE_STEPS,
        "MPLBACKEND": "Agg",
        "DDPM_CACHE": str(tmp_path / "cache"),  # a classifier an example trains stays here
    }
    proc = forked.script(
        tmp_path / "driver.py", _rel(page), tmp_path / "blocks.json", cwd=work, env=env
    )
    try:
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert code == 0, f"{_rel(page)}: an example failed\n{proc.stderr()[-6000:]}"


# --- the site: navigation, API reference, CLI reference ----------------------------------------


def _nav_pages() -> list[str]:
    """The .md files mkdocs.yml's nav names (a plain reading of the YAML: `title: page.md`)."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:") :]
    return re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w./-]+\.md)\s*$", nav, flags=re.M)


def test_nav_lists_every_page_and_every_page_exists():
    nav = _nav_pages()
    assert len(nav) == len(set(nav)), f"pages listed twice: {nav}"
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert not sorted(set(nav) - on_disk), "nav names pages that do not exist"
    assert not sorted(on_disk - set(nav)), "pages missing from mkdocs.yml's nav"
    assert {"index.md", "views.md", "architecture.md", "cli-reference.md"} <= set(nav)


def test_api_reference_documents_every_public_name():
    import ddpm

    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        for path in re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.M):
            module, _, name = path.rpartition(".")
            obj = getattr(importlib.import_module(module), name)  # every path resolves
            documented.add(id(obj))
    missing = [name for name in ddpm.__all__ if id(getattr(ddpm, name)) not in documented]
    assert not missing, f"public names without an API reference entry: {missing}"


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "hooks/cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section(markdown: str, command: str) -> str:
    start = markdown.index(f"## `ddpm {command}`\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end >= 0 else None]


def test_cli_reference_lists_every_visible_option_of_every_command():
    from ddpm.cli.main import _parser, commands

    hook = _hook()
    assert hook.MARKER in (DOCS / "cli-reference.md").read_text()
    parser = _parser()
    markdown = hook.render(parser)
    found = commands(parser)
    assert set(hook.command_parsers(parser)) == set(found)
    for name, command in found.items():
        section = _section(markdown, name)
        assert section.count("```text\nusage: ddpm " + name) == 1, name
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        for action in command._actions:
            if action.help == argparse.SUPPRESS:
                for flag in action.option_strings:  # hidden spellings: in no table row
                    assert not any(re.search(rf"`{re.escape(flag)}[ `]", r) for r in rows), flag
                continue
            for flag in action.option_strings or [action.metavar or action.dest.upper()]:
                pattern = rf"^\| (`[^|]*`, )?`{re.escape(flag)}[ `]"
                assert any(re.search(pattern, r) for r in rows), f"ddpm {name}: {flag} missing"
        if command.epilog:
            assert command.epilog.strip().splitlines()[-1] in section, f"ddpm {name}: examples"


def test_cli_reference_cells_keep_tables_intact():
    hook = _hook()
    cell = hook._cell("a | b <S> [x] `c` d_e *f*")
    assert "|" not in cell.replace("\\|", "") and "<" not in cell
    assert hook._help_and_default(
        argparse.ArgumentParser(), argparse.Action(["--k"], "k", help="count (default: 64)")
    ) == ("count", "64")
