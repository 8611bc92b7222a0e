"""Small faults whose messages or leftovers misled: a run waiting in its backup after a killed
``--overwrite``, folders that are never run folders, a full disk, files listed but never
written, a failed resume's config.json, a file given as RUN, a report on a locked run."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ddpm.cli.main import main
from ddpm.errors import ConfigError
from ddpm.runs import folder as rundir
from ddpm.runs import run as runs
from ddpm.runs.checkpoint import load_json

ARGS = [
    "--data", "gmm8", "--n-train", "256", "--n-test", "16", "--diffusion-steps", "10",
    "--max-steps", "6", "--batch-size", "16", "--hidden", "16", "--depth", "1", "--log-every", "1",
    "--checkpoint-every", "3", "--sample-every", "0", "--num-samples", "64", "--warmup", "5",
    "--threads", "1", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(out), *ARGS]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run, for one test to change."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def killed_overwrite(run: Path) -> None:
    """The state a kill leaves during ``train --overwrite`` before the new run's first
    checkpoint: the old run in the backup, the new run's config.json and log beside it."""
    rundir.back_up_run(run)
    rundir.record(run, [run / runs.CONFIG, run / runs.LOG])
    shutil.copy(run / rundir.BACKUP / runs.CONFIG, run / runs.CONFIG)
    (run / runs.LOG).write_text("")
    assert not runs.holds_run(run)


def train_steps(run: Path) -> int:
    return load_json(run / runs.CONFIG)["config"]["train"]["steps"]


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_reading_a_run_a_killed_overwrite_left_in_its_backup_restores_it_first(
    run, tmp_path, capsys, command
):
    killed_overwrite(run)
    elsewhere = tmp_path / "elsewhere"
    out = elsewhere / "s.png" if command == "sample" else elsewhere
    code, err = cli(capsys, command, run, "-n", 4, "--out", out, "--threads", 1)
    assert code == 0, err
    assert runs.holds_run(run) and not (run / rundir.BACKUP).exists()
    assert runs.load_run_model(run).source.step == 6


def test_resume_after_a_killed_overwrite_keeps_the_run_settings(run, capsys):
    killed_overwrite(run)
    code, err = cli(capsys, "train", "--out", run, "--resume", "--max-steps", 9, "--quiet",
                    "--threads", 1)  # fmt: skip
    assert code == 0, err
    assert runs.load_run_model(run).source.step == 9 and train_steps(run) == 9
    assert not (run / rundir.BACKUP).exists()


def _no_scan(monkeypatch) -> None:
    def scan(*args):
        raise AssertionError("scanned the folder")

    monkeypatch.setattr(rundir, "foreign_files", scan)
    monkeypatch.setattr(rundir, "remove_temp_files", scan)


@pytest.mark.parametrize("where", ["root", "home", "repository"])
def test_train_refuses_root_home_and_a_repository_top_before_scanning(
    where, tmp_path, monkeypatch, capsys
):
    _no_scan(monkeypatch)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    out = {"root": Path("/"), "home": home, "repository": Path(".")}[where]
    monkeypatch.chdir(tmp_path / "repo")
    code, err = cli(capsys, "train", "--out", out, "--overwrite", *ARGS)
    assert code == 2
    words = {"root": "filesystem root", "home": "home folder", "repository": "git repository"}
    assert words[where] in err and "choose another --out" in err, err
    assert not Path("/", rundir.LOCK).exists() and not (home / rundir.LOCK).exists()
    assert os.listdir(tmp_path / "repo") == [".git"]


def test_sample_refuses_the_home_folder_before_scanning(tmp_path, monkeypatch, capsys):
    _no_scan(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    code, err = cli(capsys, "sample", tmp_path)
    assert code == 2 and "home folder" in err, err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_names_the_file_and_says_the_disk_is_full(
    run, tmp_path, monkeypatch, capsys, code
):
    def fsync(fd):
        raise OSError(code, os.strerror(code))  # as a write to a full disk fails: no file name

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out" / "s.png"
    status, err = cli(capsys, "sample", run, "-n", 4, "--out", out, "--threads", 1)
    assert status == 2
    assert f"{out.with_suffix('.npy')}: the disk is full ({os.strerror(code)})" in err, err
    assert "permissions" not in err
    assert os.listdir(out.parent) == []  # no temp file left behind


def test_a_failed_evaluate_lists_no_file_it_did_not_write(run, tmp_path, capsys):
    before = rundir.read_manifest(run)
    bad = tmp_path / "wide.npy"
    np.save(bad, np.random.default_rng(0).normal(size=(64, 3)))  # 3-D examples; the run takes 2-D
    code, err = cli(capsys, "evaluate", run, "--data", bad, "-n", 4, "--threads", 1)
    assert code == 2 and "shape" in err, err
    assert rundir.read_manifest(run) == before
    assert not list(run.glob("eval_*"))


def test_a_failed_resume_leaves_config_json_as_the_checkpoint_has_it(run, monkeypatch, capsys):
    from ddpm.training.loop import Trainer

    def diverge(self):
        raise ConfigError("training diverged")

    monkeypatch.setattr(Trainer, "train_step", diverge)
    code, err = cli(capsys, "train", "--out", run, "--resume", "--max-steps", 9, "--quiet",
                    "--threads", 1)  # fmt: skip
    assert code == 2 and "diverged" in err, err
    assert train_steps(run) == 6 and runs.load_run_model(run).source.step == 6


def test_a_resume_updates_config_json_with_its_first_checkpoint(run, capsys):
    code, err = cli(capsys, "train", "--out", run, "--resume", "--max-steps", 9, "--quiet",
                    "--threads", 1)  # fmt: skip
    assert code == 0, err
    assert train_steps(run) == 9 and runs.load_run_model(run).source.step == 9


@pytest.mark.parametrize("elsewhere", [False, True])
def test_sample_of_a_file_says_it_is_not_a_run_folder(tmp_path, capsys, elsewhere):
    npy = tmp_path / "some_file.npy"
    np.save(npy, np.zeros((4, 2)))
    extra = ["--out", tmp_path / "s.png"] if elsewhere else []
    code, err = cli(capsys, "sample", npy, *extra)
    assert code == 2
    assert f"{npy}: a file, not a run folder" in err and "choose another" not in err, err


def test_report_on_a_locked_run_fails_before_computing(run, monkeypatch, capsys):
    import ddpm.jobs.report

    def expensive(*args, **kwargs):
        raise AssertionError("computed before taking the lock")

    monkeypatch.setattr(ddpm.jobs.report, "evaluate_run", expensive)
    monkeypatch.setattr(ddpm.jobs.report, "sample_run", expensive)
    with rundir.locked(run, "train"):
        code, err = cli(capsys, "report", run, "--threads", 1)
    assert code == 2 and "in use by another ddpm process" in err, err
