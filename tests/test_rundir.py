"""Run folders never lose a user's files: overwrite, failed runs, resume truth, locks, temp files,
and the one-line errors of unwritable outputs and bad option values."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, run_cli

from ddpm.runs import folder as rundir
from ddpm.runs import run as runs
from ddpm.runs.checkpoint import load_tensors

TINY = [
    "--data", "gmm8", "--n-train", "64", "--n-test", "16", "--diffusion-steps", "5",
    "--max-steps", "4", "--batch-size", "8", "--hidden", "16", "--depth", "1",
    "--num-samples", "4", "--log-every", "1", "--checkpoint-every", "2", "--warmup", "0", "--quiet",
]  # fmt: skip


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != rundir.LOCK  # the lock file names its last holder
    }


def user_project(folder: Path) -> dict[str, bytes]:
    for name, text in {
        "theory/notes.txt": "notes",
        "progress/thesis.tex": "\\documentclass{article}",
        "eval_test.json": "{}",
        "keep.txt": "keep",
    }.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return tree(folder)


@pytest.fixture(scope="module")
def tiny_run(gmm8_tiny_run, tmp_path_factory) -> Path:
    """The session's run trained with TINY (and --threads 1), copied: tests here write into it."""
    return copy_run(gmm8_tiny_run, tmp_path_factory.mktemp("rundir") / "run")


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for rel, data in tree(src).items():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes(data)
    return dst


# --- 1. data loss ---------------------------------------------------------------------------


def test_overwrite_refuses_a_folder_that_holds_no_run(tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    before = user_project(proj)
    err = one_line_error(capsys, "train", "--out", proj, "--overwrite", *TINY)
    assert "not a ddpm run" in err
    assert tree(proj) == before
    # nor does a plain train write into (or next to) the user's files
    one_line_error(capsys, "train", "--out", proj, *TINY)
    assert tree(proj) == before


def test_overwrite_deletes_only_what_ddpm_wrote(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    assert run_cli("sample", run, "-n", "2") == 0  # recorded in the manifest
    assert run_cli("evaluate", run, "-n", "4") == 0
    assert (run / "samples_seed0.png").exists() and (run / "eval_test.json").exists()
    assert {"samples_seed0.npy", "eval_test.json"} <= set(rundir.read_manifest(run))
    (run / "my_notes.txt").write_text("mine")
    (run / "progress").mkdir(exist_ok=True)
    (run / "progress" / "thesis.tex").write_text("mine too")
    assert run_cli("train", "--out", run, "--overwrite", *TINY, "--seed", "1") == 0
    assert (run / "my_notes.txt").read_text() == "mine"
    assert (run / "progress" / "thesis.tex").read_text() == "mine too"
    for name in ("samples_seed0.png", "samples_seed0.npy", "eval_test.json"):
        assert not (run / name).exists(), name  # the old run's outputs are gone
    assert json.loads((run / "config.json").read_text())["config"]["train"]["seed"] == 1
    capsys.readouterr()


def test_second_writer_gets_one_line_naming_the_holder(tiny_run, capsys):
    with rundir.locked(tiny_run, "train"):
        err = one_line_error(capsys, "train", "--out", tiny_run, "--resume", *TINY)
        assert f"pid {os.getpid()}" in err
        for args in (["sample", tiny_run, "-n", "2"], ["evaluate", tiny_run, "-n", "4"]):
            assert f"pid {os.getpid()}" in one_line_error(capsys, *args)
    # released: the next command works
    assert run_cli("sample", tiny_run, "-n", "2") == 0


def test_overwrite_keeps_the_old_run_until_the_new_one_checkpoints(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    before = tree(run)
    err = one_line_error(capsys, "train", "--out", run, "--overwrite", *TINY, "--lr", "inf")
    assert "diverged" in err
    assert tree(run) == before
    assert runs.load_run_model(run).source.step == 4


def test_a_failed_vae_overwrite_brings_the_old_vae_run_back_at_once(tmp_path, capsys):
    vae = [
        "vae", "train", "--data", "gmm8", "--n-train", "64", "--n-test", "16", "--hidden", "8",
        "--latent-dim", "2", "--max-steps", "3", "--batch-size", "8", "--warmup", "0",
        "--log-every", "1", "--num-samples", "4", "--quiet", "--out", tmp_path / "vae",
    ]  # fmt: skip
    assert run_cli(*vae) == 0
    before = tree(tmp_path / "vae")
    err = one_line_error(capsys, *vae, "--overwrite", "--lr", "inf")
    assert "diverged" in err
    assert tree(tmp_path / "vae") == before  # without waiting for the next command
    assert not (tmp_path / "vae" / rundir.BACKUP).exists()


def test_old_run_comes_back_after_an_overwrite_killed_before_its_checkpoint(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    before = tree(run)
    # what a kill -9 right after the new run started leaves behind
    rundir.back_up_run(run)
    (run / "config.json").write_text("{}")
    rundir.record(run, [run / "config.json", run / "log.jsonl"])
    (run / "log.jsonl").write_text("")
    assert not (run / runs.CHECKPOINT).exists()
    with rundir.locked(run, "sample"):  # any command on the folder recovers it first
        pass
    assert tree(run) == before


def test_a_run_that_failed_before_its_first_checkpoint_can_simply_be_run_again(tmp_path, capsys):
    out = tmp_path / "run"
    one_line_error(capsys, "train", "--out", out, *TINY, "--lr", "inf")
    assert not (out / runs.CHECKPOINT).exists()
    assert run_cli("train", "--out", out, *TINY) == 0
    assert runs.load_run_model(out).source.step == 4
    capsys.readouterr()


def test_resume_without_a_checkpoint_says_to_run_without_resume(tmp_path, capsys):
    out = tmp_path / "run"
    one_line_error(capsys, "train", "--out", out, *TINY, "--lr", "inf")
    err = one_line_error(capsys, "train", "--out", out, "--resume", *TINY)
    assert "no checkpoint" in err and "without --resume" in err


def test_resume_trusts_the_checkpoint_and_names_the_missing_key(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    doc = json.loads((run / "config.json").read_text())
    del doc["config"]["diffusion"]["T"]
    (run / "config.json").write_text(json.dumps(doc))
    for args in (
        ["train", "--out", run, "--resume", "--max-steps", "6", "--quiet"],
        ["sample", run, "-n", "2"],
        ["evaluate", run, "-n", "4"],
    ):
        err = one_line_error(capsys, *args)
        assert "config.json: key diffusion.T is missing" in err, err
    doc["config"]["diffusion"]["T"] = 7
    (run / "config.json").write_text(json.dumps(doc))
    err = one_line_error(capsys, "train", "--out", run, "--resume", "--max-steps", "6", "--quiet")
    assert "config.json: key diffusion.T is 7 but checkpoint.safetensors has 5" in err, err


def test_resume_and_the_next_save_remove_torn_checkpoint_temp_files(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    torn = run / ".checkpoint.safetensors.k3j4h.tmp"
    torn.write_bytes(b"half a checkpoint")
    mine = run / ".my_editor_file.tmp"
    mine.write_text("not ddpm's")
    assert run_cli("train", "--out", run, "--resume", "--max-steps", "6", "--quiet") == 0
    assert not torn.exists() and mine.exists()
    capsys.readouterr()


# --- 2. tracebacks and silence --------------------------------------------------------------


def test_unwritable_outputs_and_bad_values_give_one_line(tiny_run, capsys):
    assert "/proc/x" in one_line_error(capsys, "train", "--out", "/proc/x", *TINY)
    err = one_line_error(capsys, "sample", tiny_run, "-n", "2", "--out", "/proc/x/s.png")
    assert "/proc/x" in err
    assert "--max-batch" in one_line_error(capsys, "evaluate", tiny_run, "--max-batch", "0")
    assert "--threads" in one_line_error(capsys, "sample", tiny_run, "--threads", "0")


def test_garbage_npy_is_not_called_pickled(tmp_path, capsys):
    bad = tmp_path / "x.npy"
    bad.write_bytes(b"hello, this is not numpy at all" * 4)
    err = one_line_error(capsys, "train", "--data", bad, "--out", tmp_path / "o")
    assert "not a numpy file" in err and "pickle" not in err


def test_resume_at_the_final_step_says_there_was_nothing_to_do(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    before = (run / runs.CHECKPOINT).read_bytes()
    assert run_cli("train", "--out", run, "--resume", "--max-steps", "4", "--quiet") == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "nan" not in out
    assert (run / runs.CHECKPOINT).read_bytes() == before


def test_threads_flag_and_first_line(tmp_path, capsys):
    before = torch.get_num_threads()
    assert run_cli("train", "--out", tmp_path / "r", *TINY, "--threads", "1") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "1 thread" in first, first
    assert torch.get_num_threads() == before  # restored for in-process callers


def test_huge_T_warns_and_sampling_shows_progress(tmp_path, capsys):
    args = [a for a in TINY if a != "--quiet"]
    assert run_cli("train", "--out", tmp_path / "r", *args) == 0
    # the end-of-training sampling shows its progress (plain lines: stderr is not a terminal)
    assert any(
        line.startswith("sample") and "100%" in line
        for line in capsys.readouterr().err.splitlines()
    )
    # the warning comes before the data is even checked
    args[args.index("--diffusion-steps") + 1] = "5000"
    assert run_cli("train", "--out", tmp_path / "q", *args, "--batch-size", "999") == 2
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("ddpm train: warning: T = 5000 is far beyond the T = 1000")
    assert "larger than the 64 training examples" in error


def test_manifest_lists_what_a_run_wrote(tiny_run):
    listed = set(rundir.read_manifest(tiny_run))
    assert {"config.json", "checkpoint.safetensors", "log.jsonl", "samples.png"} <= listed
    assert "samples.npy" in listed
    on_disk = {
        p.relative_to(tiny_run).as_posix()
        for p in tiny_run.rglob("*")
        if p.is_file() and p.name not in (rundir.LOCK, rundir.MANIFEST)
    }
    assert on_disk <= listed


def test_checkpoint_is_bit_identical_after_resume(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("train", "--out", a, *TINY) == 0
    half = list(TINY)
    half[half.index("--max-steps") + 1] = "2"
    assert run_cli("train", "--out", b, *half) == 0
    assert run_cli("train", "--out", b, "--resume", "--max-steps", "4", "--quiet") == 0
    ta, _ = load_tensors(a / runs.CHECKPOINT)
    tb, _ = load_tensors(b / runs.CHECKPOINT)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    capsys.readouterr()
    assert math.isfinite(float(np.load(a / "samples.npy").sum()))
