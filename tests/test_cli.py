"""The command line end to end on tiny configurations, and every bad input it must catch."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_run
from PIL import Image

from ddpm.cli.main import main
from ddpm.config import TrainConfig

TINY = ["--diffusion-steps", "5", "--max-steps", "3", "--batch-size", "16",
        "--channels", "8", "--quiet"]  # fmt: skip


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def digits_run(digits_tiny_run, tmp_path_factory) -> Path:
    """A copy of the session's run trained with TINY and --num-samples 4."""
    return copy_run(digits_tiny_run, tmp_path_factory.mktemp("cli") / "digits")


def test_train_writes_a_complete_run_folder(digits_run, capsys):
    names = {p.name for p in digits_run.iterdir()}
    assert {
        "config.json",
        "checkpoint.safetensors",
        "log.jsonl",
        "samples.png",
        "samples.npy",
    } <= names
    doc = json.loads((digits_run / "config.json").read_text())
    assert doc["config"]["diffusion"]["T"] == 5
    assert doc["data_spec"]["levels"] == 17
    samples = np.load(digits_run / "samples.npy")
    assert samples.shape == (4, 1, 8, 8)
    assert samples.min() >= 0 and samples.max() <= 16  # raw units: grey levels 0..16


def test_sample_and_trajectory(digits_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert (
        run_cli("sample", digits_run, "-n", "6", "--out", out, "--trajectory", "--frames", "3") == 0
    )
    printed = capsys.readouterr().out
    assert str(out) in printed and "trajectory" in printed
    assert Image.open(out).size[0] > 0
    assert Image.open(tmp_path / "s_trajectory.png").size[0] > 0
    assert np.load(tmp_path / "s.npy").shape == (6, 1, 8, 8)


def test_sampling_is_reproducible_by_seed(digits_run, tmp_path):
    for name in ("a", "b"):
        assert (
            run_cli(
                "sample", digits_run, "-n", "3", "--seed", "7", "--out", tmp_path / f"{name}.png"
            )
            == 0
        )
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_forward_strip(tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(img)
    out = tmp_path / "fwd.png"
    assert run_cli("forward", img, "--out", out, "--diffusion-steps", "100", "--frames", "5") == 0
    assert Image.open(out).size[0] > 0


def test_evaluate_json_schema(digits_run, tmp_path, capsys):
    capsys.readouterr()
    assert (
        run_cli("evaluate", digits_run, "-n", "8", "--iw", "1", "2", "--json", "--out", tmp_path)
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    for key in ("neg_elbo", "neg_elbo_se", "terms", "per_timestep", "dims", "bits_per_dim", "iw"):
        assert key in doc
    assert len(doc["per_timestep"]) == 5 and doc["dims"] == 64
    assert sum(doc["terms"].values()) == pytest.approx(doc["neg_elbo"], rel=1e-12)
    assert doc["terms"]["decoder"] == pytest.approx(doc["per_timestep"][0], rel=1e-12)
    assert doc["bits_per_dim"] == pytest.approx(doc["neg_elbo"] / (64 * np.log(2)), rel=1e-12)
    assert [b["K"] for b in doc["iw"]] == [1, 2]
    assert (tmp_path / "eval_test_per_timestep.png").exists()


def test_theory_gaussian_json(tmp_path, capsys):
    args = ["theory", "gaussian", "--dim", "2", "--diffusion-steps", "20", "-n", "400",
            "--iw", "1", "8"]  # fmt: skip
    assert run_cli(*args, "--json", "--out", tmp_path) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("entropy", "kl_joint", "kl_marginal", "neg_log_likelihood", "log_likelihood_exact"):
        assert key in doc
    assert doc["log_likelihood_exact"] is True
    cf = doc["closed_form"]
    assert abs(doc["neg_elbo"] - cf["neg_elbo"]) < 4 * doc["neg_elbo_se"]
    assert cf["kl_joint"] >= cf["kl_marginal"] >= 0
    views = doc["views"]
    assert views["kl_chain"]["holds"] is True
    vae = views["hierarchical_vae"]
    parts = vae["rate_prior"] + vae["diffusion_kls"] + vae["distortion_decoder"]
    assert parts == pytest.approx(doc["neg_elbo"], rel=1e-12)
    easy = views["many_easy_problems"]
    assert 1 <= easy["steps_holding_90_percent"] <= 19 and 2 <= easy["largest_term_t"] <= 20
    kls = doc["per_timestep"][1:]
    assert easy["largest_term"] == max(kls)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "theory.json",
        "theory.html",
        "theory_chain.png",
    }


def test_help_shows_examples(capsys):
    for cmd in ("train", "sample", "forward", "evaluate", "theory"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_python_dash_m_and_console_script_agree():
    script = Path(sys.executable).with_name("ddpm")  # installed beside the interpreter
    outputs = []
    for cmd in ([sys.executable, "-m", "ddpm", "--help"], [str(script), "--help"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.replace("__main__.py", "ddpm"))
    assert "train" in outputs[0] and outputs[0] == outputs[1]


# --- bad input: one line on stderr, exit status 2, no traceback --------------------------------


def _write_idx_broken(folder: Path) -> None:
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        with gzip.open(folder / name, "wb") as f:  # header promises 5 images, holds none
            f.write(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)


def _bad_inputs(tmp: Path) -> list[tuple[list, str]]:
    empty = tmp / "empty"
    empty.mkdir()
    notimg = tmp / "notimg"
    notimg.mkdir()
    (notimg / "a.png").write_bytes(b"this is not a png")
    Image.new("L", (8, 8)).save(notimg / "b.png")
    Image.new("L", (8, 8)).save(notimg / "c.png")
    mixed = tmp / "mixed"
    mixed.mkdir()
    Image.new("L", (8, 8)).save(mixed / "a.png")
    Image.new("L", (9, 9)).save(mixed / "b.png")
    modes = tmp / "modes"
    modes.mkdir()
    Image.new("L", (8, 8)).save(modes / "a.png")
    Image.new("RGB", (8, 8)).save(modes / "b.png")
    nan = tmp / "nan.npy"
    np.save(nan, np.array([[0.0, np.nan]] * 10))
    rank = tmp / "rank.npy"
    np.save(rank, np.zeros(10))
    _write_idx_broken(tmp / "mnist")
    return [
        (["train", "--data", tmp / "missing"], "no such file or folder"),
        (["train", "--data", empty], "found 0 image(s)"),
        (["train", "--data", notimg], "cannot decode image"),
        (["train", "--data", mixed], "--image-size"),
        (["train", "--data", modes], "--grayscale"),
        (["train", "--data", nan], "NaN"),
        (["train", "--data", rank], "rank"),
        (["train", "--data", "mnist"], "--data-root"),
        (["train", "--data", "mnist", "--data-root", tmp / "mnist"], "header says 5 images"),
        (["train", "--diffusion-steps", "0"], "T must be an integer >= 1"),
        (["train", "--schedule", "quadratic"], "unknown --schedule 'quadratic'"),
        (["train", "--loss", "l1"], "unknown --loss 'l1'"),
        (
            ["train", "--data", "gmm8", "--n-train", "10", "--batch-size", "64"],
            "larger than the 10",
        ),
        (["sample", tmp / "nothing"], "no such run folder"),
        (["forward", tmp / "nothing.png"], "no such image file"),
        (["evaluate", tmp / "nothing"], "no such run folder"),
        (["theory", "moons"], "no known density"),
        (
            ["theory", "gaussian", "--variance", "learned"],
            "a Bayes-optimal oracle uses small, large or optimal",
        ),
        (["theory", "gmm8", "-n", "0"], "--num-examples must be an integer >= 2"),
        (["train", "--seed", "-1"], "seed must be >= 0"),
        (["train", "--device", "foo"], "--device 'foo'"),
        (["train", "--device", "cuda:0"], "CUDA is not available"),
        (["train", "--image-size", "16"], "apply to image folders"),
        (["train", "--data", "gmm8", "--data-root", tmp], "--data-root is for the data mnist"),
        (["forward", tmp / "nothing.png", "--image-size", "0"], "--image-size must be >= 2"),
    ]


def test_bad_inputs_give_one_clear_line(tmp_path, capsys):
    for args, message in _bad_inputs(tmp_path):
        code = run_cli(*args, "--out", tmp_path / "out") if args[0] == "train" else run_cli(*args)
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, (args, err)


def test_existing_run_and_corrupted_checkpoint(digits_run, tmp_path, capsys):
    assert run_cli("train", "--out", digits_run, *TINY) == 2
    assert "already holds a run" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "checkpoint.safetensors"):
        data = (digits_run / name).read_bytes()
        (broken / name).write_bytes(data if name == "config.json" else data[:100])
    assert run_cli("sample", broken) == 2
    err = capsys.readouterr().err
    assert "checkpoint.safetensors" in err and len(err.strip().splitlines()) == 1


def test_resume_from_the_cli_keeps_the_runs_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--out", out, *TINY, "--num-samples", "2") == 0
    # only --max-steps given: T, channels, batch size come from the saved run
    assert run_cli("train", "--out", out, "--resume", "--max-steps", "5", "--quiet") == 0
    assert "final loss" in capsys.readouterr().out
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 5
    assert (
        run_cli("train", "--out", out, "--resume", "--max-steps", "6", "--diffusion-steps", "7")
        == 2
    )
    assert "does not match the saved run (diffusion.T: 5 vs 7)" in capsys.readouterr().err


def test_speed_flags_map_onto_the_train_config():
    from ddpm.cli.main import _parser, config_from_args

    args = _parser().parse_args(["train", "--autocast", "bf16", "--compile"])
    assert config_from_args(args).train == TrainConfig(autocast="bf16", compile=True)
    args = _parser().parse_args(["train", "--no-compile"])
    assert config_from_args(args).train == TrainConfig()
