"""Fault suite: kill -9 at random moments, two writers on one run folder.

Every trial checks the promises of the README's "Never lose a run" section: after a kill the
folder loads (or, before the first checkpoint, the same command simply runs again); after the
resume the log has no duplicate or cut line and the final weights equal those of an
uninterrupted run bit for bit. Run with ``-s`` to see where each kill landed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import forked
import numpy as np
import pytest
import torch

from ddpm.cli.main import main
from ddpm.runs import folder as rundir
from ddpm.runs import run as runs
from ddpm.runs.checkpoint import load_tensors

ARGS = [
    "--data", "gmm8", "--n-train", "256", "--n-test", "16", "--diffusion-steps", "10",
    "--max-steps", "60", "--batch-size", "16", "--hidden", "16", "--depth", "1", "--log-every", "1",
    "--checkpoint-every", "3", "--sample-every", "20", "--num-samples", "64", "--warmup", "5",
    "--threads", "1", "--quiet",
]  # fmt: skip
KILL_TRIALS = 6
# Moments to kill at (polling the folder), each followed by a random delay in this range (s).
MOMENTS = {
    "started": (0.0, 0.05),  # before the first checkpoint
    "step": (0.0, 0.01),  # at a random step: in the step or in a checkpoint write
    "checkpoint write": (0.0, 0.0),  # as soon as a checkpoint temp file shows
    "step 20": (0.0, 0.3),  # while drawing the progress samples of step 20
    "step 60": (0.0, 0.5),  # while drawing the final samples
}


def _start(out: Path, *extra: str) -> forked.Child:
    """``ddpm train`` as a process of its own (forked ready to run: see tests/forked.py)."""
    return forked.ddpm("train", "--out", out, *ARGS, *extra, env={"OMP_NUM_THREADS": "1"})


def _wait_for(path: Path, proc: forked.Child, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.005)


def _phase(out: Path) -> str:
    """Where a kill landed, read from what the folder holds afterwards."""
    names = {p.name for p in out.rglob("*")}
    if any(n.startswith(".checkpoint.safetensors.") for n in names):
        return "checkpoint write"
    if not (out / runs.CHECKPOINT).exists():
        return "before the first checkpoint"
    if any(n.startswith(".samples") and n.endswith(".tmp") for n in names):
        return "sampling"
    step = runs.load_run_model(out).source.step
    if step == 60:
        return "final sampling"
    progress = out / "progress"
    if progress.exists() and any(n.endswith(".tmp") for n in os.listdir(progress)):
        return "sampling"
    return "training steps"


def _log(out: Path) -> list[dict]:
    text = (out / runs.LOG).read_text()
    assert text.endswith("\n"), "cut last line"
    records = [json.loads(line) for line in text.splitlines()]  # a cut line fails here
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"duplicate or out-of-order steps {steps}"
    timings = ("seconds", "cpu_seconds")
    return [{k: v for k, v in r.items() if k not in timings} for r in records]


def _finish(out: Path, capsys) -> None:
    """What a user does after a crash: resume if there is a checkpoint, else run again."""
    if (out / runs.CHECKPOINT).exists():
        assert main(["train", "--out", str(out), "--resume", "--threads", "1", "--quiet"]) == 0
    else:
        assert main(["train", "--out", str(out), *ARGS]) == 0
    capsys.readouterr()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted run, in its own process (as the trials are), and how long it took."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    proc = _start(out)
    _wait_for(out / runs.CONFIG, proc)
    t_started = time.monotonic()
    assert proc.wait(timeout=300) == 0, proc.communicate()[1].decode()[-2000:]
    return out, time.monotonic() - t_started


def _logged_lines(out: Path) -> int:
    try:
        return (out / runs.LOG).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_at(proc: forked.Child, out: Path, moment: str, rng: random.Random) -> None:
    """Wait for the moment, then kill -9 after a random delay."""
    _wait_for(out / runs.CONFIG, proc)
    start, target = _logged_lines(out), None
    if moment == "step":
        target = rng.randint(start + 1, 60) if start < 60 else 60
    elif moment.startswith("step "):
        target = int(moment.split()[1])
    end = time.monotonic() + 60
    while moment != "started" and proc.poll() is None and time.monotonic() < end:
        if moment == "checkpoint write" and any(out.glob(".checkpoint.safetensors.*.tmp")):
            break
        if target is not None and _logged_lines(out) >= target:
            break
        time.sleep(0.0005)
    time.sleep(rng.uniform(*MOMENTS[moment]))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_9_at_random_moments_then_resume_is_bit_identical(reference, tmp_path, capsys):
    ref, _ = reference
    ref_tensors, _ = load_tensors(ref / runs.CHECKPOINT)
    ref_log = _log(ref)
    phases: Counter[str] = Counter()
    for trial in range(KILL_TRIALS):
        rng = random.Random(trial)
        out = tmp_path / f"trial{trial}"
        for kill in range(1 + (trial >= KILL_TRIALS - 2)):  # the last two: killed twice
            resuming = (out / runs.CHECKPOINT).exists()
            proc = _start(out, "--resume") if resuming else _start(out)
            moment = list(MOMENTS)[(trial + kill) % len(MOMENTS)]
            _kill_at(proc, out, moment, rng)
            landed = _phase(out) if proc.returncode != 0 else "after the end (no kill)"
            phases[f"{moment} -> {landed}"] += 1
            # the dead process's lock file stays but blocks nothing (the OS released the lock);
            # the folder loads, or holds no run and the same command runs again
            assert (out / rundir.LOCK).exists()
            if (out / runs.CHECKPOINT).exists():
                assert runs.load_run_model(out).source.step > 0
        _finish(out, capsys)
        tensors, _ = load_tensors(out / runs.CHECKPOINT)
        assert tensors.keys() == ref_tensors.keys()
        for k in tensors:
            assert torch.equal(tensors[k], ref_tensors[k]), (trial, k)
        assert _log(out) == ref_log, trial
        assert np.array_equal(np.load(out / "samples.npy"), np.load(ref / "samples.npy"))
        assert not list(out.rglob("*.tmp")) and not (out / rundir.BACKUP).exists()
        assert rundir.foreign_files(out) == [], trial  # the manifest lists every file
    print(f"\n{KILL_TRIALS} trials, {sum(phases.values())} kills: {dict(phases)}")
    assert sum(phases.values()) >= KILL_TRIALS


def test_two_writers_the_second_gets_one_line_and_the_first_run_is_intact(tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start(out, "--max-steps", "400")
    _wait_for(out / runs.CONFIG, proc)
    for args in (
        ["train", "--out", out, *ARGS],
        ["train", "--out", out, *ARGS, "--overwrite"],
        ["train", "--out", out, "--resume", "--max-steps", "500"],
        ["sample", out, "-n", "2"],
        ["evaluate", out, "-n", "4"],
        ["theory", out, "-n", "4"],
    ):
        if proc.poll() is not None:
            break
        code = main([str(a) for a in args])
        err = capsys.readouterr().err.strip().splitlines()
        if proc.poll() is not None:
            break  # the first writer finished meanwhile: nothing left to race
        assert code == 2 and len(err) == 1, (args, err)
        assert f"in use by another ddpm process (pid {proc.pid}, ddpm train)" in err[0], err
    assert proc.wait(timeout=300) == 0, proc.communicate()[1].decode()[-2000:]
    model, (config, _) = runs.load_run_model(out), runs.load_config(out)
    assert model.source.step == 400 and config.train.steps == 400
    assert [r["step"] for r in _log(out)] == list(range(1, 401))


def test_two_trainings_started_at_once_one_wins_one_gets_one_line(tmp_path):
    out = tmp_path / "run"
    procs = [_start(out, "--max-steps", "200") for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.communicate()[1].decode()) for p in procs)
    (code_a, _), (code_b, err_b) = results
    assert (code_a, code_b) == (0, 2), results
    assert len(err_b.splitlines()) == 1, err_b
    # the loser meets the lock, or (had the winner finished first) the finished run
    assert "in use by another ddpm process (pid " in err_b or "already holds a run" in err_b
    assert runs.load_run_model(out).source.step == 200
    assert [r["step"] for r in _log(out)] == list(range(1, 201))
