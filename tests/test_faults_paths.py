"""ddpm never touches a file outside the run folder, nor one it did not write.

Links: ``--overwrite``, a failed run and the recovery of a killed one act only on files whose
folders inside the run folder are real folders; a listed path through a linked folder (where
the user moved ddpm's files) is left alone, a listed file that is now a link goes as the link
alone, and scans never enter a linked folder. Outputs: the files ``ddpm sample`` writes beside
the PNG the user named never replace a file ddpm did not write, and no command replaces a file
the manifest lists as another command's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error, run_cli

from ddpm.runs import folder as rundir
from ddpm.runs import run as runs

TINY = [
    "--data", "gmm8", "--n-train", "64", "--n-test", "16", "--diffusion-steps", "5",
    "--max-steps", "4", "--batch-size", "8", "--hidden", "16", "--depth", "1", "--num-samples", "4",
    "--log-every", "1", "--checkpoint-every", "2", "--warmup", "0", "--quiet", "--threads", "1",
]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (not following links) and its bytes."""
    found = {}
    for top, _, files in os.walk(folder):
        for name in files:
            p = Path(top) / name
            found[p.relative_to(folder).as_posix()] = p.read_bytes()
    return found


def user_folder(path: Path, files: dict[str, str]) -> dict[str, bytes]:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return snapshot(path)


@pytest.fixture(scope="module")
def trained(gmm8_tiny_run) -> Path:
    return gmm8_tiny_run  # trained with TINY (conftest.GMM8_TINY); only copied here


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A fresh copy of the tiny run, manifest included."""
    dst = tmp_path / "run"
    shutil.copytree(trained, dst, ignore=shutil.ignore_patterns(rundir.LOCK))
    return dst


# --- end to end: --overwrite and a linked folder in the run ---------------------------------


def test_overwrite_keeps_the_files_the_user_moved_out_behind_a_linked_folder(run, tmp_path, capsys):
    """`ddpm evaluate RUN --out RUN/ev`, the user moves RUN/ev/* to a folder of their own and
    leaves RUN/ev as a link to it; `ddpm train --out RUN --overwrite` keeps their files."""
    assert run_cli("evaluate", run, "--out", run / "ev", "-n", "8") == 0
    assert "ev/eval_test.json" in rundir.read_manifest(run)
    mine = tmp_path / "mine"
    shutil.move(run / "ev", mine)
    (run / "ev").symlink_to(mine, target_is_directory=True)
    before = snapshot(mine)
    assert set(before) == {"eval_test.json", "eval_test_per_timestep.png", "eval_test_mse.png"}
    capsys.readouterr()
    assert run_cli("train", "--out", run, *TINY, "--overwrite") == 0
    assert snapshot(mine) == before  # byte for byte
    assert not (run / rundir.BACKUP).exists()
    assert not any(f.startswith("ev/") for f in rundir.read_manifest(run))


def test_overwrite_never_follows_a_listed_path_through_a_linked_folder(run, tmp_path, capsys):
    """The manifest lists sub/v.txt; the user moved sub/ elsewhere and left RUN/sub a link."""
    (run / "sub").mkdir()
    rundir.record(run, [run / "sub" / "v.txt"])
    (run / "sub" / "v.txt").write_text("written by ddpm, now the user's")
    outside = tmp_path / "outside"
    shutil.move(run / "sub", outside)
    (run / "sub").symlink_to(outside, target_is_directory=True)
    before = user_folder(outside, {"w.txt": "the user's own"})
    assert run_cli("train", "--out", run, *TINY, "--overwrite") == 0
    assert snapshot(outside) == before


# --- end to end: outputs that are not the command's -----------------------------------------


def test_sample_refuses_to_replace_an_array_it_did_not_write(run, tmp_path, capsys):
    """`ddpm sample RUN --out X.png` writes X.npy beside the PNG: a user's X.npy stays."""
    folder = tmp_path / "x"
    before = user_folder(folder, {"X.npy": "the user's array", "Y_trajectory.png": "a figure"})
    err = one_line_error(capsys, "sample", run, "-n", "4", "--out", folder / "X.png")
    assert err == (
        f"ddpm sample: error: {folder / 'X.npy'}: already exists and is not a file ddpm wrote; "
        "`ddpm sample` writes it beside the --out you named: move it away or choose another --out"
    )
    err = one_line_error(
        capsys, "sample", run, "-n", "4", "--out", folder / "Y.png", "--trajectory"
    )
    assert f"{folder / 'Y_trajectory.png'}: already exists and is not a file ddpm wrote" in err
    assert snapshot(folder) == before  # X.png and Y.png not written either
    # Its own outputs in the run folder are replaced by the same command run again.
    for _ in range(2):
        assert run_cli("sample", run, "-n", "4") == 0
    assert rundir.written_by(run)["samples_seed0.npy"] == "sample"


def test_sample_to_a_named_png_again_replaces_only_what_it_wrote_there(run, tmp_path, capsys):
    """Outside a run folder the PNG records the files written beside it: the same
    `ddpm sample --out X.png` runs again, but an X.npy that someone changed since stays."""
    out = tmp_path / "elsewhere" / "X.png"
    for seed in (0, 1, 2):  # each run replaces the last one's PNG, .npy and trajectory
        assert run_cli("sample", run, "-n", "4", "--seed", seed, "--out", out, "--trajectory") == 0
        assert np.load(out.with_suffix(".npy")).shape == (4, 2)
    capsys.readouterr()
    out.with_suffix(".npy").write_bytes(b"the user's own array now")
    err = one_line_error(capsys, "sample", run, "-n", "4", "--out", out, "--trajectory")
    assert f"{out.with_suffix('.npy')}: already exists and is not a file ddpm wrote" in err
    assert out.with_suffix(".npy").read_bytes() == b"the user's own array now"


def test_sample_refuses_the_run_own_samples(run, capsys):
    before = snapshot(run)
    err = one_line_error(capsys, "sample", run, "-n", "4", "--out", run / runs.SAMPLES)
    assert err == (
        f"ddpm sample: error: {run / runs.SAMPLES}: written by `ddpm train` into the run "
        "folder; `ddpm sample` never replaces another command's file: choose another path"
    )
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k != rundir.LOCK} == {
        k: v for k, v in before.items() if k != rundir.LOCK
    }


@pytest.mark.parametrize("manifest", ["with writers", "plain list of an older run"])
def test_evaluate_per_example_refuses_the_run_samples(run, capsys, manifest):
    """`ddpm evaluate --per-example RUN/samples.npy` would replace the run's final samples."""
    if manifest != "with writers":
        doc = json.loads((run / rundir.MANIFEST).read_text())
        (run / rundir.MANIFEST).write_text(json.dumps({"files": doc["files"]}))
    samples = (run / "samples.npy").read_bytes()
    err = one_line_error(capsys, "evaluate", run, "-n", "8", "--per-example", run / "samples.npy")
    assert err == (
        f"ddpm evaluate: error: {run / 'samples.npy'}: written by `ddpm train` into the run "
        "folder; `ddpm evaluate` never replaces another command's file: choose another path"
    )
    assert (run / "samples.npy").read_bytes() == samples
    assert not (run / "eval_test.json").exists()
    # Its own per-example file is replaced by the same command run again.
    for _ in range(2):
        assert run_cli("evaluate", run, "-n", "8", "--per-example", run / "nll.npy") == 0
    assert rundir.written_by(run)["nll.npy"] == "evaluate"


# --- rundir functions with links ------------------------------------------------------------


def fake_run(path: Path, listed: dict[str, str]) -> Path:
    """A run folder: a checkpoint and the files listed in its manifest."""
    path.mkdir()
    for rel, text in {runs.CHECKPOINT: "weights", **listed}.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    rundir.record(path, [path / runs.CHECKPOINT, *(path / rel for rel in listed)])
    return path


def link_folder_out(run: Path, sub: str, outside: Path) -> None:
    """Move run/sub to outside and leave a link to it in its place."""
    shutil.move(run / sub, outside)
    (run / sub).symlink_to(outside, target_is_directory=True)


def test_remove_owned_leaves_a_linked_folder_and_what_it_holds(tmp_path):
    run = fake_run(tmp_path / "run", {"ev/a.txt": "a", "log.jsonl": "{}"})
    link_folder_out(run, "ev", tmp_path / "mine")
    before = user_folder(tmp_path / "mine", {"b.txt": "b"})
    assert rundir.owned_files(run) == [runs.CHECKPOINT, "log.jsonl"]
    rundir.remove_owned(run)
    assert snapshot(tmp_path / "mine") == before
    assert sorted(os.listdir(run)) == ["ev"]  # the link itself may stay


def test_backup_commit_and_restore_never_follow_a_listed_path_through_a_link(tmp_path):
    run = fake_run(tmp_path / "run", {"sub/v.txt": "v", "log.jsonl": "{}"})
    link_folder_out(run, "sub", tmp_path / "outside")
    before = snapshot(tmp_path / "outside")
    rundir.back_up_run(run)
    assert not (run / rundir.BACKUP / "sub").exists()
    rundir.abandon(run)  # the new run failed: the old one comes back
    assert (run / runs.CHECKPOINT).read_text() == "weights"
    rundir.back_up_run(run)
    (run / runs.CHECKPOINT).write_text("new weights")
    rundir.commit(run)  # the new run has its checkpoint: the backup goes
    assert snapshot(tmp_path / "outside") == before


def test_a_listed_file_that_is_a_link_goes_as_the_link_alone(tmp_path):
    target = tmp_path / "data.npy"
    target.write_text("the user's data")
    run = fake_run(tmp_path / "run", {"samples.npy": "samples", "log.jsonl": "{}"})
    (run / "samples.npy").unlink()
    (run / "samples.npy").symlink_to(target)
    rundir.back_up_run(run)
    rundir.commit(run)
    assert target.read_text() == "the user's data"
    run2 = fake_run(tmp_path / "run2", {"samples.npy": "samples"})
    (run2 / "samples.npy").unlink()
    (run2 / "samples.npy").symlink_to(target)
    rundir.remove_owned(run2)
    assert not os.path.lexists(run2 / "samples.npy")
    assert target.read_text() == "the user's data"


def test_scans_never_enter_a_linked_folder(tmp_path):
    outside = tmp_path / "outside"
    before = user_folder(outside, {"notes.txt": "n", ".log.jsonl.abc123.tmp": "not a torn write"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "ln").symlink_to(outside, target_is_directory=True)
    assert rundir.foreign_files(run) == ["ln"]  # the link, not what lies behind it
    assert rundir.remove_temp_files(run) == []
    assert snapshot(outside) == before


def test_restore_never_writes_back_through_a_link(tmp_path):
    """A killed --overwrite left the old run in the backup; sub/ has become a link since."""
    run = fake_run(tmp_path / "run", {"sub/v.txt": "old run's"})
    rundir.back_up_run(run)
    outside = tmp_path / "outside"
    before = user_folder(outside, {"v.txt": "the user's"})
    (run / "sub").symlink_to(outside, target_is_directory=True)
    rundir.recover(run)
    assert snapshot(outside) == before
    assert (run / runs.CHECKPOINT).read_text() == "weights"


def test_a_linked_backup_folder_is_not_ddpm_backup(tmp_path):
    outside = tmp_path / "outside"
    before = user_folder(outside, {"thesis.tex": "t", "config.json": "{}"})
    run = fake_run(tmp_path / "run", {"log.jsonl": "{}"})
    (run / rundir.BACKUP).symlink_to(outside, target_is_directory=True)
    with rundir.locked(run, "test"):  # recovers on entry: nothing to recover here
        pass
    rundir.commit(run)
    assert snapshot(outside) == before
    with pytest.raises(rundir.CheckpointError, match="a link or a file where ddpm keeps"):
        rundir.back_up_run(run)
    assert snapshot(outside) == before


def test_the_lock_never_truncates_a_file_behind_a_link(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    run = fake_run(tmp_path / "run", {})
    (run / rundir.LOCK).symlink_to(target)
    with pytest.raises(rundir.ConfigError, match="cannot write into the folder"):
        with rundir.locked(run, "test"):
            pass
    assert target.read_text() == "precious"


def test_manifest_records_the_writer_and_reads_older_manifests(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.MANIFEST).write_text(json.dumps({"files": ["samples.npy", "a.png"]}))
    assert rundir.read_manifest(run) == ["samples.npy", "a.png"]
    assert rundir.written_by(run) == {"samples.npy": "train", "a.png": None}
    rundir.record(run, [run / "a.png", run / "b.npy"], "sample")
    doc = json.loads((run / rundir.MANIFEST).read_text())
    assert doc == {
        "files": ["a.png", "b.npy", "samples.npy"],
        "written_by": {"a.png": "sample", "b.npy": "sample"},
    }
    (run / "a.png").write_text("a")
    rundir.forget_missing(run)  # b.npy and samples.npy were never written
    assert rundir.written_by(run) == {"a.png": "sample"}
    with pytest.raises(rundir.CheckpointError, match="written by `ddpm sample`"):
        rundir.check_replaceable(run, [run / "a.png"], "evaluate")
    rundir.check_replaceable(run, [run / "a.png"], "sample")
