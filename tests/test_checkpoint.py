"""Checkpoint files: bit-exact round trips, atomic writes, clear errors, optimizer resume."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from ddpm.errors import CheckpointError, DdpmError
from ddpm.runs.checkpoint import (
    TrainingState,
    atomic_write_bytes,
    load_checkpoint,
    load_json,
    load_module_tensors,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
    save_json,
    save_tensors,
)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.reshape(-1).contiguous(), b.reshape(-1).contiguous()  # 0-dim cannot be viewed
    return a.view(torch.uint8).equal(b.view(torch.uint8))


def _leftover_temp_files(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- JSON ------------------------------------------------------------------------------------


def test_json_round_trip_sorted_and_indented(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"T": 1000, "name": "linear"}}
    path = save_json(tmp_path / "config.json", obj)
    assert load_json(path) == obj
    text = path.read_text()
    assert text == json.dumps(obj, indent=2, sort_keys=True) + "\n"
    assert _leftover_temp_files(tmp_path) == []


def test_load_json_truncated_names_file_and_fix(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"T": 10, "sched')
    with pytest.raises(CheckpointError) as info:
        load_json(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not valid JSON (")
    assert "truncated or corrupted" in msg and "re-run training or restore" in msg
    assert "\n" not in msg


def test_load_json_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: file not found"):
        load_json(tmp_path / "config.json")


def test_checkpoint_error_is_a_ddpm_error():
    assert issubclass(CheckpointError, DdpmError)


# --- atomic writes ---------------------------------------------------------------------------


def test_atomic_write_creates_parents(tmp_path):
    path = atomic_write_bytes(tmp_path / "a" / "b" / "f.bin", b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert path.stat().st_mode & 0o777 == 0o644  # not the 0o600 of the temporary file


def test_atomic_write_replaces_content_and_keeps_permissions(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    path.chmod(0o640)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640
    assert _leftover_temp_files(tmp_path) == []


def test_failed_replace_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "weights.safetensors"
    save_tensors(path, {"w": torch.arange(6.0)})
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(path, {"w": torch.zeros(1000)})
    with pytest.raises(OSError, match="disk full"):
        save_json(tmp_path / "config.json", {"a": 1})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]


# --- tensors ---------------------------------------------------------------------------------


def test_tensors_round_trip_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45])
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        "f64": torch.randn(5, generator=g, dtype=torch.float64),
        "f16": torch.randn(2, 2, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "i64": torch.randint(-(2**40), 2**40, (4,), generator=g),
        "u8": torch.randint(0, 256, (2, 3), generator=g, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 3),
        "special": special,
        "noncontiguous": torch.randn(4, 6, generator=g).t(),
    }
    meta = {"config": json.dumps({"T": 1000}), "format": "ddpm"}
    path = save_tensors(tmp_path / "t.safetensors", tensors, meta)
    loaded, loaded_meta = load_tensors(path)
    assert loaded_meta == meta
    assert loaded.keys() == tensors.keys()
    for k, t in tensors.items():
        assert _bits_equal(loaded[k], t), k


def test_shared_storage_is_saved_as_independent_copies(tmp_path):
    base = torch.randn(4, 4)
    tensors = {"a": base, "b": base, "row": base[1], "view": base.view(16)}
    loaded, _ = load_tensors(save_tensors(tmp_path / "s.safetensors", tensors))
    for k, t in tensors.items():
        assert _bits_equal(loaded[k], t), k


def test_metadata_must_be_strings(tmp_path):
    with pytest.raises(CheckpointError, match="metadata must map str to str"):
        save_tensors(tmp_path / "m.safetensors", {"a": torch.zeros(1)}, {"T": 1000})


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_safetensors_file_raises_one_clear_line(tmp_path, damage):
    path = save_tensors(tmp_path / "w.safetensors", {"w": torch.randn(64, 64)}, {"k": "v"})
    data = path.read_bytes()
    bad = {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 20, "empty": b""}
    path.write_bytes(bad[damage])
    with pytest.raises(CheckpointError) as info:
        load_tensors(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not a readable safetensors file (")
    assert "truncated or corrupted; re-run training or restore the file" in msg
    assert "\n" not in msg


def test_missing_safetensors_file(tmp_path):
    with pytest.raises(CheckpointError, match="w.safetensors: file not found"):
        load_tensors(tmp_path / "w.safetensors")


# --- modules ---------------------------------------------------------------------------------


def _mlp(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.BatchNorm1d(width), nn.Linear(width, 2))


def save_module(path, module: nn.Module, metadata=None):
    return save_tensors(path, module.state_dict(), metadata)


def load_module_state(path, module: nn.Module, strict: bool = True) -> dict[str, str]:
    tensors, metadata = load_tensors(path)
    load_module_tensors(module, tensors, str(path), strict)
    return metadata


def test_module_round_trip_bit_exact(tmp_path):
    torch.manual_seed(0)
    src, dst = _mlp(), _mlp()
    src.train()
    src(torch.randn(16, 2))  # move BatchNorm running stats away from their defaults
    path = save_module(tmp_path / "model.safetensors", src, {"step": "12"})
    assert load_module_state(path, dst) == {"step": "12"}
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k == k2 and _bits_equal(a, b), k


def test_tied_weights_are_saved(tmp_path):
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    src[1].weight = src[0].weight
    path = save_module(tmp_path / "tied.safetensors", src)
    dst = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    load_module_state(path, dst)
    assert _bits_equal(dst[0].weight, src[0].weight) and _bits_equal(dst[1].weight, src[0].weight)


def test_module_shape_mismatch(tmp_path):
    path = save_module(tmp_path / "model.safetensors", _mlp(8))
    with pytest.raises(CheckpointError) as info:
        load_module_state(path, _mlp(16))
    msg = str(info.value)
    assert msg.startswith(f"{path}: weights do not match the model built from config.json (")
    assert "'0.weight' has shape [8, 2] in the file but [16, 2] in the model" in msg
    assert msg.endswith("the checkpoint was written by a different model configuration")


def test_module_missing_and_unexpected_keys(tmp_path):
    path = save_module(tmp_path / "model.safetensors", _mlp())
    bigger = nn.Sequential(*_mlp(), nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match=r"\(missing key '4.weight' and 1 more\)"):
        load_module_state(path, bigger)
    smaller = nn.Sequential(*list(_mlp())[:3])
    with pytest.raises(CheckpointError, match=r"\(unexpected key '3.bias' and 1 more\)"):
        load_module_state(path, smaller)
    load_module_state(path, smaller, strict=False)  # the common keys load


# --- optimizer -------------------------------------------------------------------------------


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)  # data depends on the step only
        x = torch.randn(32, 2, generator=g)
        loss = (model(x) - x.flip(-1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    return model, opt


def test_optimizer_state_flattens_to_named_tensors_and_json():
    model, opt = _model_and_optimizer()
    _train(model, opt, range(2))
    tensors, meta_json = optimizer_to_tensors(opt.state_dict())
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= tensors.keys()
    json.loads(meta_json)  # plain JSON, no tensors inside
    restored = optimizer_from_tensors(tensors, meta_json)
    assert restored["param_groups"] == opt.state_dict()["param_groups"]
    assert isinstance(restored["param_groups"][0]["betas"], tuple)
    assert isinstance(restored["state"][0]["step"], torch.Tensor)  # AdamW keeps step a tensor


def test_optimizer_resume_is_bit_identical(tmp_path):
    straight, opt = _model_and_optimizer()
    _train(straight, opt, range(10))

    model, opt = _model_and_optimizer()
    _train(model, opt, range(5))
    save_checkpoint(
        tmp_path / "checkpoint.safetensors", TrainingState(model, optimizer=opt, step=5)
    )
    del model, opt

    resumed, opt = _model_and_optimizer()  # fresh weights and an empty optimizer
    ckpt = load_checkpoint(tmp_path / "checkpoint.safetensors")
    ckpt.load_weights(resumed)
    ckpt.load_optimizer(opt)
    assert ckpt.step == 5
    _train(resumed, opt, range(5, 10))
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert _bits_equal(a.detach(), b.detach())


def test_optimizer_file_for_another_model(tmp_path):
    model, opt = _model_and_optimizer()
    state = TrainingState(model, optimizer=opt)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "a.safetensors", state))
    other = torch.optim.AdamW([nn.Parameter(torch.zeros(3))])
    with pytest.raises(CheckpointError, match="optimizer state does not match"):
        ckpt.load_optimizer(other)
    with pytest.raises(CheckpointError, match="not an optimizer checkpoint"):
        plain = save_checkpoint(tmp_path / "m.safetensors", TrainingState(_mlp()))
        load_checkpoint(plain).load_optimizer(opt)


def test_run_checkpoint_keeps_every_part_apart(tmp_path):
    # model and EMA weights, optimizer, sampler state, step and config in one file, each
    # restored from its own part; the weights' mismatch message names the part.
    model, opt = _model_and_optimizer()
    _train(model, opt, range(2))
    ema = _model_and_optimizer()[0]
    sampler = {"terms": torch.arange(6, dtype=torch.float64).reshape(3, 2)}
    state = TrainingState(model, ema, optimizer=opt, sampler_state=sampler, step=7)
    path = save_checkpoint(tmp_path / "c.safetensors", state, {"a": [1]})
    ckpt = load_checkpoint(path)
    assert ckpt.step == 7 and ckpt.config == {"a": [1]}
    assert _bits_equal(ckpt.sampler_state()["terms"], sampler["terms"])
    for use_ema, src in ((False, model), (True, ema)):
        dst = _model_and_optimizer()[0]
        torch.nn.init.zeros_(dst[0].weight)
        ckpt.load_weights(dst, ema=use_ema)
        for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True):
            assert _bits_equal(a, b)
    wide = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 2))
    with pytest.raises(CheckpointError, match=r"c\.safetensors \(ema weights\): weights do not"):
        ckpt.load_weights(wide, ema=True)
    with pytest.raises(CheckpointError, match="missing; the run never saved a checkpoint"):
        load_checkpoint(tmp_path / "none.safetensors")


def test_optimizer_state_with_unstorable_value():
    with pytest.raises(CheckpointError, match="cannot be stored without pickle"):
        optimizer_to_tensors({"state": {0: {"fn": object()}}, "param_groups": []})
