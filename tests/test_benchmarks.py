"""The step-speed benchmark runs end to end on tiny nets (a smoke test; no timings asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_step_speed_quick_writes_every_section(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "step_speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_speed.py"), "--quick", "--threads", "1"]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True, timeout=300)
    res = json.loads(out.read_text())
    assert set(res["nets"]) == {"8", "28"}
    for r in res["nets"].values():
        assert r["train_step"]["cpu"]["ratio"]["median"] > 0 and r["params"]["ddpm"] > 0
    assert res["sampling_vs_bare"]["T"] == 20 and "loop" in res["loop_vs_bare"]["cpu"]
    assert "threads_vs_one" not in res and "rewrites" not in res  # (e), (f) only when asked for


def test_step_speed_threads_and_rewrites_sections_alone(tmp_path):
    out = tmp_path / "threads.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_speed.py"), "--quick", "--sections",
           "threads", "rewrites", "--compare-threads", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    res = json.loads(out.read_text())
    assert set(res) >= {"threads_vs_one"} and "nets" not in res
    assert res["threads_vs_one"]["threads"] == 2
    assert set(res["threads_vs_one"]["wall"]) == {"1", "2", "ratio"}
    assert "1 vs 2 threads" in proc.stdout
    assert set(res["rewrites"]) == {"8", "28"}
    assert set(res["rewrites"]["8"]["cpu"]) == {"ddpm", "definitions", "ratio"}
    assert "28x28 train step vs plain kernels" in proc.stdout
