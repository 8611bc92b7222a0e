"""Weights that cannot be trusted are refused with one line naming what is wrong (exit 2).

- NaN or inf in the model or EMA weights of a run: ``sample``, ``evaluate`` and ``train
  --resume`` name the first bad tensor instead of writing NaN samples or training on.
- Flipped bytes in a checkpoint: the per-tensor checksums stored at save time name the first
  damaged tensor; flipped bytes in the header are a one-line error too.
- A diffusers folder whose safetensors file lacks a tensor, has an extra one, or has one of the
  wrong shape: every parameter must come from the file, so the key is named.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

from ddpm.cli.main import main
from ddpm.errors import CheckpointError
from ddpm.runs.checkpoint import load_checkpoint, load_tensors, save_tensors

ARGS = [
    "--data", "gmm8", "--n-train", "256", "--n-test", "16", "--diffusion-steps", "10",
    "--batch-size", "16", "--hidden", "16", "--depth", "1", "--num-samples", "4", "--threads", "1",
    "--quiet",
]  # fmt: skip
STEPS = 4


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights") / "run"
    assert run_cli("train", "--out", out, *ARGS, "--max-steps", STEPS) == 0
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A fresh copy of the trained run folder, free to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


COMMANDS = {
    "sample": lambda run, tmp: ["sample", run, "-n", "4", "--out", tmp / "s.png"],
    "evaluate": lambda run, tmp: ["evaluate", run, "-n", "4", "--out", tmp / "ev"],
    "resume": lambda run, tmp: ["train", "--out", run, *ARGS, "--max-steps", STEPS + 2, "--resume"],
}


# --- non-finite weights ------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("prefix, value", [("model", float("nan")), ("ema", float("inf"))])
def test_non_finite_weights_are_refused(run, tmp_path, capsys, command, prefix, value):
    path = run / "checkpoint.safetensors"
    tensors, meta = load_tensors(path)
    name = next(k for k in tensors if k.startswith(prefix + ".") and k.endswith("weight"))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[1] = value  # a diverged run saves its NaNs with valid checksums
    save_tensors(path, tensors, meta)
    capsys.readouterr()
    assert run_cli(*COMMANDS[command](run, tmp_path)) == 2
    err = one_error_line(capsys)
    assert f"tensor {name!r}" in err and "NaN or infinite" in err and str(path) in err
    assert not (tmp_path / "s.npy").exists()


def test_finite_check_names_the_first_bad_tensor_and_trusts_overflowing_sums():
    from ddpm.runs.checkpoint import check_finite

    big = torch.full((100,), 60000.0, dtype=torch.float16)  # finite, but its sum overflows
    assert not torch.isfinite(big.sum())
    check_finite({"big": big, "ints": torch.tensor([1, 2])}, "here")
    mixed = torch.tensor([float("inf"), -float("inf"), 1.0])  # NaN only in the sum
    with pytest.raises(CheckpointError, match=r"^here: tensor 'b' holds NaN or infinite values"):
        check_finite({"a": torch.zeros(3), "b": mixed, "c": torch.full((2,), float("nan"))}, "here")


def test_files_without_checksums_still_load(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({"model.w": torch.ones(3)}, path, metadata={"step": "7"})
    ckpt = load_checkpoint(path)
    assert ckpt.step == 7 and torch.equal(ckpt.tensors["model.w"], torch.ones(3))


# --- damaged bytes -----------------------------------------------------------------------------
def _body_start(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")  # u64 header length, JSON header, tensors


def test_flipped_bytes_in_the_tensors_are_named_by_checksum(run, tmp_path, capsys):
    path = run / "checkpoint.safetensors"
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    for i in rng.sample(range(_body_start(data), len(data)), 200):
        data[i] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    for command in ("sample", "evaluate", "resume"):
        capsys.readouterr()
        assert run_cli(*COMMANDS[command](run, tmp_path)) == 2, command
        err = one_error_line(capsys)
        assert str(path) in err and "does not match its stored checksum" in err, err
        assert "tensor '" in err and "damaged" in err


def test_one_flipped_byte_names_its_tensor(tmp_path):
    path = save_tensors(tmp_path / "t.safetensors", {"a": torch.zeros(64), "b": torch.ones(64)})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the body belongs to the last tensor, 'b'
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tensor 'b' does not match its stored checksum"):
        load_tensors(path)


@pytest.mark.parametrize("seed", range(8))
def test_flipped_bytes_in_the_header_are_one_line(run, tmp_path, capsys, seed):
    path = run / "checkpoint.safetensors"
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for i in rng.sample(range(8, _body_start(data)), 3):
        data[i] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert run_cli(*COMMANDS["evaluate"](run, tmp_path)) == 2
    assert str(path) in one_error_line(capsys)


def test_metadata_is_covered_by_the_checksums(tmp_path):
    path = save_tensors(tmp_path / "t.safetensors", {"a": torch.zeros(4)}, {"step": "1234"})
    data = path.read_bytes()
    assert data.count(b'"1234"') == 1
    path.write_bytes(data.replace(b'"1234"', b'"9234"'))  # same length, still valid JSON
    with pytest.raises(CheckpointError, match="metadata does not match its stored checksum"):
        load_tensors(path)


# --- diffusers folders -------------------------------------------------------------------------
@pytest.fixture
def pipeline(tmp_path) -> Path:
    pytest.importorskip("diffusers")
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)  # diffusers initialises from the global generator
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    folder = tmp_path / "pipe"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(folder)
    return folder


WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _edit(tensors: dict[str, torch.Tensor], damage: str) -> str:
    if damage == "missing":
        del tensors["conv_out.weight"]
        return "missing 'conv_out.weight'"
    if damage == "unexpected":
        tensors["conv_out.extra"] = torch.zeros(3)
        return "unexpected 'conv_out.extra'"
    if damage == "shape":
        tensors["conv_in.bias"] = torch.zeros(9)
        return "'conv_in.bias' has shape [9] in the file but [8] in the model"
    tensors["conv_out.bias"] = torch.full_like(tensors["conv_out.bias"], float("nan"))
    return "tensor 'conv_out.bias' holds NaN or infinite values"


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape", "nan"])
def test_diffusers_weights_must_all_come_from_the_file(pipeline, tmp_path, capsys, damage):
    from safetensors.torch import load_file, save_file

    path = pipeline / WEIGHTS
    tensors = load_file(path)
    expected = _edit(tensors, damage)
    save_file(tensors, path, metadata={"format": "pt"})
    capsys.readouterr()
    args = ["evaluate", pipeline, "--data", "digits", "-n", "2", "--out", tmp_path / "ev"]
    assert run_cli(*args) == 2
    err = one_error_line(capsys)
    assert expected in err and str(path) in err, err
