"""Training: it resumes exactly, never loses a run, never overwrites one unasked.

That it learns (a 3000-step gmm8 run) is tested in test_train_gmm8.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ddpm.data import load_dataset
from ddpm.errors import CheckpointError, ConfigError, DataError
from ddpm.loader import load
from ddpm.requests import SamplingRequest
from ddpm.runs import run as runs
from ddpm.runs.checkpoint import load_checkpoint, load_tensors
from ddpm.runs.logs import run_best_step
from ddpm.training import dist
from ddpm.training.loop import train


def _tiny_digits(
    steps: int, dropout: float = 0.0, autocast: str = "off", lr: float = 2e-3, **kw
) -> RunConfig:
    return RunConfig(
        diffusion=DiffusionConfig(T=5, **kw),
        model=ModelConfig(channels=8, attn_resolutions=(), dropout=dropout),
        data=DataConfig(name="digits"),
        train=TrainConfig(
            steps=steps,
            batch_size=16,
            lr=lr,
            warmup=3,
            log_every=2,
            checkpoint_every=0,
            num_samples=4,
            autocast=autocast,
        ),
    )


@pytest.mark.parametrize(
    "diffusion",
    [
        {},
        {"loss": "vlb", "timestep_sampler": "importance"},
        {"loss": "hybrid", "variance": "learned"},
        {"dropout": 0.3},
        {"autocast": "bf16"},
    ],
    ids=["simple", "vlb-importance", "hybrid-learned", "dropout", "bf16-autocast"],
)
def test_resume_equals_training_in_one_go(tmp_path, diffusion):
    straight = tmp_path / "straight"
    train(_tiny_digits(12, **diffusion), straight, progress=False)
    split = tmp_path / "split"
    train(_tiny_digits(5, **diffusion), split, progress=False)
    train(_tiny_digits(12, **diffusion), split, resume=True, progress=False)
    a, meta_a = load_tensors(straight / runs.CHECKPOINT)
    b, meta_b = load_tensors(split / runs.CHECKPOINT)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads(meta_a["step"]) == json.loads(meta_b["step"]) == 12
    # the importance sampler's history is part of the state and past its warm-up here
    if diffusion.get("timestep_sampler") == "importance":
        assert int(a["sampler.counts"].min()) >= 10
    log_a = {r["step"]: r["loss"] for r in map(json.loads, (straight / runs.LOG).open())}
    log_b = {r["step"]: r["loss"] for r in map(json.loads, (split / runs.LOG).open())}
    assert sorted(log_a) == [2, 4, 6, 8, 10, 12]
    assert sorted(log_b) == [2, 4, 5, 6, 8, 10, 12]  # the first part also logged its last step
    assert all(log_a[k] == log_b[k] for k in log_a)


def test_ema_update_is_the_per_parameter_lerp():
    from ddpm.training.loop import ema_update

    torch.manual_seed(0)
    model, ema = (runs.build(_tiny_digits(1), load_dataset(DataConfig()).spec)[1] for _ in "ab")
    expected = [pe.detach().lerp(pm.detach(), 1 - 0.99) for pe, pm in
                zip(ema.parameters(), model.parameters(), strict=True)]  # fmt: skip
    ema_update(ema, model, 0.99)
    assert all(torch.equal(p, e) for p, e in zip(ema.parameters(), expected, strict=True))


def test_divergence_stops_training_at_a_logged_step(tmp_path):
    with pytest.raises(ConfigError, match="training diverged by step 2"):
        train(_tiny_digits(6, lr=1e30), tmp_path / "run", progress=False)


def test_existing_run_is_never_overwritten_without_being_asked(tmp_path):
    out = tmp_path / "run"
    train(_tiny_digits(2), out, progress=False)
    before = (out / runs.CHECKPOINT).read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run; pass resume"):
        train(_tiny_digits(2), out, progress=False)
    assert (out / runs.CHECKPOINT).read_bytes() == before
    train(_tiny_digits(3), out, overwrite=True, progress=False)
    assert json.loads(load_tensors(out / runs.CHECKPOINT)[1]["step"]) == 3


def test_resume_with_a_different_model_is_refused(tmp_path):
    out = tmp_path / "run"
    train(_tiny_digits(2), out, progress=False)
    other = _tiny_digits(4, schedule="cosine")
    with pytest.raises(CheckpointError, match=r"does not match the saved run \(diffusion.schedule"):
        train(other, out, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(_tiny_digits(2), tmp_path / "empty", resume=True, progress=False)


def test_corrupted_or_mismatched_checkpoints_are_reported(tmp_path):
    out = tmp_path / "run"
    train(_tiny_digits(2), out, progress=False)
    ckpt = out / runs.CHECKPOINT
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="checkpoint.safetensors"):
        load(out)
    ckpt.write_bytes(good)
    doc = json.loads((out / runs.CONFIG).read_text())
    doc["config"]["model"]["channels"] = 16
    (out / runs.CONFIG).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="config.json: key model.channels is 16 but"):
        load(out)


def test_batch_larger_than_the_data_is_refused(tmp_path):
    cfg = RunConfig(
        diffusion=DiffusionConfig(T=5),
        data=DataConfig(name="gmm8", n_train=10, n_test=5),
        train=TrainConfig(steps=1, batch_size=64),
    )
    with pytest.raises(ConfigError, match="batch size 64 is larger than the 10 training"):
        train(cfg, tmp_path / "run", progress=False)


def test_no_rank_leaves_the_process_group_before_all_got_there(monkeypatch):
    """dist.cleanup: a rank closes its connections only when every rank has reached cleanup
    (closing right after a collective can abort a rank whose last message is still in flight)."""
    store, left = torch.distributed.HashStore(), []
    monkeypatch.setattr(dist.torch_dist, "is_initialized", lambda: True)
    monkeypatch.setattr(
        dist.torch_dist, "destroy_process_group", lambda: left.append(threading.current_thread())
    )
    first = threading.Thread(target=dist.cleanup, args=(dist.DistInfo(0, 2, 0, store),))
    first.start()
    time.sleep(0.5)  # rank 1 still in its last collective
    assert left == [] and first.is_alive()
    dist.cleanup(dist.DistInfo(1, 2, 0, store))
    first.join(timeout=60)
    assert not first.is_alive() and len(left) == 2


def test_torchrun_ddp_on_two_cpu_processes(tmp_path):
    """Two Gloo processes under torchrun train one model; rank 0 writes the run folder."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--standalone", "-m", "ddpm", "train", "--data", "gmm8", "--diffusion-steps", "10",
        "--max-steps", "6", "--batch-size", "32", "--n-train", "200", "--n-test", "50",
        "--num-samples", "8", "--out", str(out), "--device", "cpu", "--quiet",
        "--val-every", "3", "--val-timesteps", "4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = [json.loads(x) for x in (out / runs.LOG).read_text().splitlines()]
    losses = [r for r in log if "loss" in r]
    assert losses[-1]["step"] == 6 and math.isfinite(losses[-1]["loss"])
    model = load(out)
    assert load_checkpoint(out / runs.CHECKPOINT, metadata_only=True).step == 6
    # validation is sharded over the two processes and gathered: one process re-estimating the
    # kept (best) weights on the same held-out examples gets the logged value
    from ddpm.training.validation import estimate_neg_elbo, validation_split

    vals = [r for r in log if "val_neg_elbo" in r]
    assert [r["step"] for r in vals] == [3, 6]
    best = min(vals, key=lambda r: r["val_neg_elbo"])
    assert run_best_step(out) == model.source.step == best["step"]
    x = load_dataset(model.data_config()).train
    x_val = x[validation_split(x.shape[0], 0.1)[1]]
    est = estimate_neg_elbo(model, x_val, 4, 0)
    assert est.neg_elbo == pytest.approx(best["val_neg_elbo"], abs=1e-5)


def test_interrupted_resume_and_a_torn_log_line_leave_the_run_usable(tmp_path):
    out = tmp_path / "run"
    train(_tiny_digits(4), out, progress=False)
    # a resume to 8 steps rewrites config.json at once; stop it before its first checkpoint
    runs.save_config(out, _tiny_digits(8), runs.load_config(out)[1])
    assert load(out).source.step == 4
    with open(out / runs.LOG, "a") as f:
        f.write('{"step": 6, "lo')  # a line cut short by a crash
    train(_tiny_digits(8), out, resume=True, progress=False)
    steps = [json.loads(x)["step"] for x in (out / runs.LOG).read_text().splitlines()]
    assert steps == [2, 4, 6, 8]


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path):
    out = tmp_path / "run"
    train(_tiny_digits(2), out, progress=False)
    before = (out / runs.CHECKPOINT).read_bytes()
    bad = dataclasses.replace(_tiny_digits(2), data=DataConfig(name="digitz"))
    with pytest.raises(DataError, match="unknown data 'digitz'"):
        train(bad, out, overwrite=True, progress=False)
    assert (out / runs.CHECKPOINT).read_bytes() == before


def test_one_dimensional_mixture_trains_and_samples(tmp_path):
    from ddpm.jobs.sample import sample_run

    spec = tmp_path / "m1.json"
    spec.write_text(
        json.dumps({"weights": [0.5, 0.5], "means": [[-1.0], [1.0]], "stds": [0.2, 0.2]})
    )
    cfg = RunConfig(
        diffusion=DiffusionConfig(T=10),
        data=DataConfig(name=str(spec), n_train=200, n_test=50),
        train=TrainConfig(steps=3, batch_size=16, num_samples=8),
    )
    train(cfg, tmp_path / "run", progress=False)
    res = sample_run(tmp_path / "run", SamplingRequest(n=5, trajectory=True, frames=3))
    assert res.x0.shape == (5, 1) and res.trajectory_path.exists()
