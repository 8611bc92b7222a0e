"""Checkpoint files of other libraries through the command line: `--from LIBRARY --flags TEXT`
on evaluate, sample and report, with results in CKPT_ddpm/ beside the file.

The model is improved-diffusion's UNet with every weight drawn from a seeded generator, scored on
a fake CIFAR-10 test batch in the published binary layout; each command's numbers are those of
the library called on the same model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_improved_unet import seeded_state

import ddpm
from ddpm.cli.main import FOREIGN_FILES, main
from ddpm.foreign.improved_diffusion import parse_flags, unet_config
from ddpm.loader import SOURCES, source_names
from ddpm.nets.improved_unet import ImprovedUNet
from ddpm.requests import EvaluationRequest

# a CIFAR-shaped model small enough for the tests: 32x32x3, channel_mult (1, 2, 2, 2)
FLAGS = (
    "--image_size 32 --num_channels 32 --num_res_blocks 1 --learn_sigma True "
    "--diffusion_steps 12 --noise_schedule cosine --attention_resolutions 8"
)


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(checkpoint file, CIFAR-10 test batch) in a fresh folder."""
    root = tmp_path_factory.mktemp("foreign")
    with torch.device("meta"):
        shapes = {
            k: tuple(v.shape)
            for k, v in ImprovedUNet(unet_config(parse_flags(FLAGS))).state_dict().items()
        }
    state = {k: v.float() for k, v in seeded_state(shapes, 0).items()}
    ckpt = root / "ema_0.9999_000100.pt"
    torch.save(state, ckpt)
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-bin"  # CIFAR-10's binary layout: 5 training batches, 1 test
    folder.mkdir()
    for name, n in [(f"data_batch_{i}.bin", 4) for i in range(1, 6)] + [("test_batch.bin", 24)]:
        records = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, n)  # label bytes
        (folder / name).write_bytes(records.tobytes())
    batch = folder / "test_batch.bin"  # alone, the test split
    return ckpt, batch


def test_the_command_line_names_every_library_the_loader_reads_only_when_named():
    named_only = tuple(name for name, recognises, _ in SOURCES if recognises is None)
    assert FOREIGN_FILES == named_only
    assert set(named_only) <= set(source_names())


def test_evaluate_a_checkpoint_file_equals_the_library(files, capsys):
    ckpt, batch = files
    args = ["evaluate", ckpt, "--from", "improved-diffusion", "--flags", FLAGS]
    assert run_cli(*args, "--data", batch, "-n", 3, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    out = ckpt.with_name(ckpt.stem + "_ddpm")
    assert (out / "eval_test.json").exists() and (out / "eval_test_per_timestep.png").exists()
    assert doc["model"]["source"] == "improved-diffusion" and doc["n"] == 3 and doc["T"] == 12
    model = ddpm.load(ckpt, source="improved-diffusion", flags=FLAGS)
    request = EvaluationRequest(data=str(batch), n=3)
    ev = ddpm.evaluate_run(model, request, out_dir=out / "library").evaluation
    assert doc["bits_per_dim"] == pytest.approx(ev.bits_per_dim, rel=1e-12)
    assert doc["neg_elbo"] == pytest.approx(ev.neg_elbo, rel=1e-12)
    # the same examples in the file's order: the split 'all' of a lone test batch is that batch
    assert run_cli(*args, "--data", batch, "--split", "all", "-n", 3, "--json") == 0
    assert json.loads(capsys.readouterr().out)["neg_elbo"] == pytest.approx(ev.neg_elbo, rel=1e-12)


def test_respaced_bounds_and_the_ode_on_a_checkpoint_file(files, capsys, tmp_path):
    ckpt, batch = files
    args = ["evaluate", ckpt, "--from", "improved-diffusion", "--flags", FLAGS, "--data", batch]
    assert run_cli(*args, "-n", 2, "--respacing", "4", "12", "--out", tmp_path) == 0
    steps = json.loads((tmp_path / "eval_test_steps.json").read_text())["steps"]
    assert [r["K"] for r in steps] == [4, 12]
    capsys.readouterr()
    assert run_cli(*args, "-n", 2, "--ode", "--ode-rtol", "1e-2", "--ode-atol", "1e-2",
                   "--out", tmp_path, "--json") == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert np.isfinite(doc["ode"]["bits_per_dim"])


def test_sample_and_report_a_checkpoint_file(files, capsys):
    ckpt, batch = files
    args = ["--from", "improved-diffusion", "--flags", FLAGS]
    assert run_cli("sample", ckpt, *args, "-n", 2, "--respacing", 4) == 0
    out = ckpt.with_name(ckpt.stem + "_ddpm")
    x = np.load(out / "samples_seed0_K4.npy")
    assert x.shape == (2, 3, 32, 32)
    # sample quality against the data given (a foreign model records none)
    assert run_cli("sample", ckpt, *args, "-n", 20, "--respacing", 2, "--metrics") == 2
    assert "give --data" in capsys.readouterr().err
    metrics = ["--metrics", "--data", batch.parent, "--classifier-dir", out / "classifiers"]
    assert run_cli("sample", ckpt, *args, "-n", 20, "--respacing", 2, *metrics) == 0
    scores = json.loads((out / "samples_seed0_K2_quality.json").read_text())
    assert scores["data"] == "cifar10" and scores["rows"][0]["n"] == 20
    assert run_cli("report", ckpt, *args, "--data", batch, "-n", 2) == 0
    page = (out / "report.html").read_text()
    assert "improved-diffusion" in page


@pytest.mark.parametrize(
    "args, words",
    [
        (["--from", "improved-diffusion"], "flags"),  # its settings are not in the file
        (
            ["--from", "improved-diffusion", "--flags", "--image_size 32 --no_such_flag 1"],
            "no_such_flag",
        ),  # fmt: skip
        (["--flags", FLAGS], "--from"),  # flags without a library
        (
            [
                "--from",
                "improved-diffusion",
                "--flags",
                FLAGS.replace("32 --num_channels 32", "32 --num_channels 64"),
            ],
            "num_channels",
        ),  # fmt: skip
    ],
)
def test_bad_foreign_input_is_one_line(files, capsys, args, words):
    ckpt, batch = files
    assert run_cli("evaluate", ckpt, *args, "--data", batch, "-n", 2) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err


def test_two_processes_give_the_single_process_result_on_a_checkpoint_file(files, tmp_path):
    """torchrun with 2 Gloo processes shards the examples of a foreign checkpoint as of a run;
    the gathered per-example -ELBO equals one process's with another batch size. The network
    runs in float32, whose result may depend on how a batch is tiled, so the bound is float32's
    relative precision (2^-23) times a generous 64 roundings, of the per-example values."""
    ckpt, batch = files
    src = str(Path(ddpm.__file__).parents[1])
    args = ["--from", "improved-diffusion", "--flags", FLAGS, "--data", str(batch), "-n", "4"]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
        "-m", "ddpm", "evaluate", str(ckpt), *args, "--device", "cpu", "--max-batch", "3",
        "--out", str(tmp_path / "two"), "--per-example", str(tmp_path / "two.npy"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads((tmp_path / "two" / "eval_test.json").read_text())
    assert two["processes"] == 2 and two["n"] == 4
    one = tmp_path / "one.npy"
    assert run_cli("evaluate", ckpt, *args, "--out", tmp_path / "one", "--per-example", one) == 0
    per_one, per_two = np.load(one), np.load(tmp_path / "two.npy")
    assert per_one.shape == (4,)
    np.testing.assert_allclose(per_two, per_one, rtol=64 * 2.0**-23, atol=0)
