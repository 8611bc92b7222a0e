"""One line, never a traceback: inputs that used to end in a Python traceback.

Each case runs ``ddpm`` in-process (a subprocess where processes must die) and asserts exit
status 2, exactly one line on stderr naming what is wrong, and that nothing was damaged: a
model whose outputs are NaN, a log with bytes that are not UTF-8, file names that are not UTF-8,
diffusers folders with malformed or absurd configs, requests too large for memory, and a
torchrun process that dies under its peer. Requests too large are refused against a fixed
4 GiB of available memory (``small_machine``), so the cases do not depend on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm
from ddpm.cli.main import main
from ddpm.runs import run as runs

TRAIN = [
    "--data", "gmm8", "--n-train", "64", "--n-test", "16", "--diffusion-steps", "10",
    "--max-steps", "6", "--batch-size", "16", "--hidden", "16", "--depth", "1", "--log-every", "1",
    "--checkpoint-every", "3", "--num-samples", "16", "--threads", "1", "--quiet",
]  # fmt: skip
# progress output (a tqdm bar, or LineProgress lines on a stream that is not a terminal)
_PROGRESS = re.compile(r"^[^\n]*?: (\s*\d+%\||start, \d+ \S+$|\d+/\d+ \S+ \(\d+%\))")
NOT_UTF8 = os.fsdecode(b"\xff")  # a name byte that is not UTF-8, as Python keeps it
linux_names = pytest.mark.skipif(
    sys.platform != "linux", reason="file names of arbitrary bytes are a Linux file system's"
)


def cli(capsys, *args) -> tuple[int, list[str]]:
    """Exit status and the stderr lines (progress output left out) of ``ddpm args``."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()
    return code, [ln for ln in err if ln.strip() and not _PROGRESS.match(ln)]


def refused(capsys, *args) -> str:
    """The one-line error of ``ddpm args``, which must exit with status 2."""
    code, lines = cli(capsys, *args)
    assert code == 2 and len(lines) == 1, (code, lines)
    assert lines[0].startswith(f"ddpm {args[0]}: error: "), lines
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock and the manifest (which names outputs before writing)."""
    skip = {".ddpm.lock", "manifest.json"}
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("errors") / "gmm8"
    assert main(["train", "--out", str(out), *TRAIN]) == 0
    return out


@pytest.fixture
def small_machine(monkeypatch):
    """4 GiB of memory available, whatever the machine has."""
    from ddpm import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 4 * memory.GiB)


# --- a model whose outputs are NaN although its weights are finite -----------------------------
@pytest.fixture
def nan_outputs(monkeypatch):
    """Every MLP returns NaN (as a network whose activations overflow would)."""
    from ddpm.nets import mlp

    forward = mlp.MLP.forward
    monkeypatch.setattr(mlp.MLP, "forward", lambda self, x, t: forward(self, x, t) * np.nan)


@pytest.mark.parametrize(
    "command, words",
    [
        (["evaluate", "-n", "8"], ["-ELBO term is NaN or inf at t = 1", "8 of 8 examples"]),
        (
            ["evaluate", "-n", "8", "--respacing", "3", "7"],
            ["K=3", "NaN or inf at t = 1, 2, 3 for"],
        ),
        (["report", "-n", "8"], ["NaN or inf"]),
        (["sample", "-n", "8"], ["8 of 8 samples are NaN or inf"]),
    ],
    ids=["evaluate", "evaluate-steps", "report", "sample"],
)
def test_a_model_whose_outputs_are_nan_is_refused_before_plotting(
    run, nan_outputs, capsys, command, words
):
    before = tree(run)
    line = refused(capsys, command[0], run, *command[1:])
    assert all(w in line for w in words) and "not finite" in line, line
    assert tree(run) == before


# --- a log with bytes that are not UTF-8 -------------------------------------------------------
def test_resume_skips_and_reports_log_lines_that_are_not_utf8(run, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    lines = (out / runs.LOG).read_bytes().splitlines(keepends=True)
    (out / runs.LOG).write_bytes(b"".join([lines[0], b'{"step": \xff\xfe}\n', *lines[1:]]))
    code, err = cli(capsys, "train", "--out", out, "--resume", "--max-steps", "9", "--quiet")
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 1 and "skipped 1 unreadable line" in warned[0], warned
    assert warned[0].endswith("line 2")
    records = [json.loads(x) for x in (out / runs.LOG).read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 10))


# --- file names that are not UTF-8 ---------------------------------------------------------------
@linux_names
def test_a_data_file_whose_name_is_not_utf8_trains(tmp_path, capsys):
    data = tmp_path / f"points{NOT_UTF8}.npy"
    np.save(data, np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))
    args = [a for a in TRAIN if a != "gmm8"]
    args.remove("--data")
    code, err = cli(capsys, "train", "--out", tmp_path / "run", "--data", data, *args)
    assert code == 0 and err == [], err
    assert (tmp_path / "run" / runs.SAMPLES).is_file()


@linux_names
def test_a_run_folder_whose_name_is_not_utf8_can_be_read_again(tmp_path, capsys):
    out = tmp_path / f"run{NOT_UTF8}"
    assert cli(capsys, "train", "--out", out, *TRAIN) == (0, [])
    for args in (
        ["sample", out, "-n", "4"],
        ["evaluate", out, "-n", "4"],
        ["report", out, "-n", "4"],
        ["train", "--out", out, "--resume", "--max-steps", "9", "--quiet"],
    ):
        code, err = cli(capsys, *args)
        assert code == 0 and err == [], (args, err)
    assert (out / "report.html").is_file() and runs.load_run_model(out).source.step == 9


# --- diffusers folders ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """A tiny DDPMPipeline folder written by diffusers itself."""
    diffusers = pytest.importorskip("diffusers")
    folder = tmp_path_factory.mktemp("diffusers") / "pipe"
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=10)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def _set(key: str, value):
    return lambda config: {**config, key: value}


DIFFUSERS_CASES = {
    "index-not-an-object": ("model_index.json", lambda c: [c], ["model_index.json", "JSON object"]),
    "unet-not-an-object": ("unet/config.json", lambda c: "UNet2DModel", ["JSON object, got str"]),
    "negative-channels": (
        "unet/config.json",
        lambda c: {**c, "in_channels": -1, "out_channels": -1},
        ["in_channels -1", "integers >= 1"],
    ),
    "sample-size-1e9": (
        "unet/config.json",
        _set("sample_size", 10**9),
        ["1x1000000000x1000000000", "GiB, 4 GiB available"],
    ),
    "timesteps-1e9": (
        "scheduler/scheduler_config.json",
        _set("num_train_timesteps", 10**9),
        ["num_train_timesteps", "T = 1000000000", "GiB, 4 GiB available"],
    ),
    "channels-1e5": (
        "unet/config.json",
        _set("block_out_channels", [10**5, 2 * 10**5]),
        ["block_out_channels [100000, 200000]", "GiB, 4 GiB available"],
    ),
}


@pytest.mark.parametrize("case", DIFFUSERS_CASES)
def test_a_diffusers_folder_that_cannot_load_is_one_line(
    pipeline, tmp_path, capsys, small_machine, case
):
    name, edit, words = DIFFUSERS_CASES[case]
    folder = tmp_path / "pipe"
    shutil.copytree(pipeline, folder)
    config = folder / name
    config.write_text(json.dumps(edit(json.loads(config.read_text()))))
    before = tree(folder)
    line = refused(capsys, "sample", folder, "-n", "2", "--out", tmp_path / "s.png")
    assert all(w in line for w in words), line
    assert tree(folder) == before and not (tmp_path / "s.png").exists()


# --- sizes that cannot fit -----------------------------------------------------------------------
def test_train_with_a_T_that_cannot_fit_is_refused_up_front(tmp_path, capsys, small_machine):
    args = ["--diffusion-steps", "1000000000", "--quiet"]
    line = refused(capsys, "train", "--out", tmp_path / "run", *args)
    assert "--diffusion-steps: T = 1000000000 steps needs ~" in line
    assert "GiB, 4 GiB available" in line
    assert not (tmp_path / "run").exists()


def test_forward_at_a_size_that_cannot_fit_is_refused(tmp_path, capsys, small_machine):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    out = tmp_path / "f.png"
    line = refused(capsys, "forward", image, "--image-size", "100000", "--out", out)
    assert "--image-size 100000: 8 frames of a 3x100000x100000 image needs ~" in line
    assert "4 GiB available" in line and not out.exists()


def test_theory_gaussian_of_a_dimension_that_cannot_fit_is_refused(tmp_path, capsys, small_machine):
    out = tmp_path / "theory"
    line = refused(capsys, "theory", "gaussian", "--dim", "100000000", "--out", out)
    assert "--dim 100000000" in line and "4 GiB available" in line and not out.exists()


def test_a_large_sample_is_drawn_in_chunks_into_a_memory_mapped_npy(
    run, tmp_path, capsys, monkeypatch
):
    """Requests beyond one chunk are drawn chunk by chunk (here of 7) into the .npy; the first
    chunk is what a request of 7 draws, and the PNG shows it."""
    from ddpm.jobs import sample

    first = tmp_path / "first.png"
    assert cli(capsys, "sample", run, "-n", "7", "--out", first)[0] == 0
    monkeypatch.setattr(sample, "SAMPLE_CHUNK_EXAMPLES", 7)
    out = tmp_path / "all.png"
    code, err = cli(capsys, "sample", run, "-n", "30", "--out", out, "--trajectory")
    metrics = refused(capsys, "sample", run, "-n", "30", "--out", tmp_path / "m.png", "--metrics")
    assert code == 0 and err == [], err
    x = np.load(out.with_suffix(".npy"))
    assert x.shape == (30, 2) and np.isfinite(x).all()
    np.testing.assert_array_equal(x[:7], np.load(first.with_suffix(".npy")))
    assert len(np.unique(x, axis=0)) == 30  # every chunk draws new noise
    assert out.is_file() and (tmp_path / "all_trajectory.png").is_file()
    assert "--metrics" in metrics and "at most 7" in metrics
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "all.npy", "all.png", "all_request.json", "all_trajectory.png", "first.npy",
        "first.png", "first_request.json",
    ]  # fmt: skip


def test_a_sample_whose_npy_cannot_fit_on_the_disk_is_refused(run, tmp_path, capsys, monkeypatch):
    from ddpm import memory

    monkeypatch.setattr(memory.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 0, 1))
    out = tmp_path / "s.png"
    line = refused(capsys, "sample", run, "-n", "100000000", "--out", out)
    assert "--num-samples 100000000: the samples' s.npy needs ~1.49 GiB of disk" in line, line
    assert list(tmp_path.iterdir()) == []


# --- a torchrun process that dies ----------------------------------------------------------------
def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_when_a_torchrun_peer_dies_the_survivor_says_which_in_one_line(tmp_path):
    """Rank 1 is killed mid-training; rank 0 exits with status 2 and one line naming rank 1.
    torchrun itself is paused meanwhile, so that it does not stop rank 0 before rank 0 has
    noticed (it polls its workers); its summary then gives rank 0's own exit status."""
    out, logs = tmp_path / "ddp", tmp_path / "logs"
    src = str(Path(ddpm.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
        "--log-dir", str(logs), "--redirects", "2", "-m", "ddpm", "train", "--data", "gmm8",
        "--diffusion-steps", "10", "--max-steps", "1000000", "--batch-size", "32",
        "--n-train", "200", "--n-test", "50", "--out", str(out), "--device", "cpu", "--quiet",
        "--log-every", "1",
    ]  # fmt: skip
    agent = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 120
        while not ((out / runs.LOG).exists() and (out / runs.LOG).stat().st_size > 100):
            assert agent.poll() is None, agent.communicate()[1].decode()[-2000:]
            assert time.monotonic() < end, "training never started"
            time.sleep(0.05)
        ranks = {}
        for pid in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            ranks[int(next(v for v in environ if v.startswith(b"RANK="))[5:])] = int(pid)
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            os.kill(ranks[1], signal.SIGKILL)
            end = time.monotonic() + 60
            while _state(ranks[0]) not in ("Z", "gone") and time.monotonic() < end:
                time.sleep(0.02)
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        _, err = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    exits = dict(re.findall(r"rank\s*:\s*(\d+).*\n\s*exitcode\s*:\s*(-?\d+)", err.decode()))
    assert exits == {"0": "2", "1": "-9"}, err.decode()[-3000:]
    (survivor,) = logs.rglob("attempt_0/0/stderr.log")
    lines = survivor.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddpm train: error: rank 1 of 2 stopped"), lines
    assert "rank 0 waited" in lines[0]
