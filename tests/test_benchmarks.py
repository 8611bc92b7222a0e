"""The benchmark scripts run end to end with --quick on tiny nets (smoke tests; no timings
asserted). Those that run a script are marked ``benchmark_smoke``: out of the default run, they
are a separate step of .ci/run (``python -m pytest -m benchmark_smoke``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm.likelihood.elbo import log_strata
from ddpm.nets.unet import AttnBlock, Conv1x1, FewOutputsConv, UpsampleConv

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.benchmark_smoke
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


@pytest.mark.benchmark_smoke
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


@pytest.mark.benchmark_smoke
def test_upsample_order_quick_measures_both_sides(tmp_path):
    out, doc = tmp_path / "runs", tmp_path / "u.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "upsample_order.py"), "--speed",
           "--likelihood", "--quick", "--out", str(out), "--json", str(doc)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, env=env)
    res = json.loads(doc.read_text())
    assert set(res["speed"]) == {"8", "28"} and res["speed"]["8"]["speed_up"]["median"] > 0
    lk = res["likelihood"]
    assert lk["n"] == 4 and lk["as_is_bpd"] > 0 and lk["variant_bpd"] > 0
    assert lk["as_is_bpd"] != lk["variant_bpd"]  # the variant is another model
    # a second call scores the runs again without retraining them
    stamp = (out / "as_is" / "checkpoint.safetensors").stat().st_mtime_ns
    subprocess.run([*cmd[:2], "--likelihood", *cmd[4:]], check=True, capture_output=True,
                   timeout=600, env=env)  # fmt: skip
    assert (out / "as_is" / "checkpoint.safetensors").stat().st_mtime_ns == stamp
    assert json.loads(doc.read_text())["likelihood"] == lk


@pytest.mark.benchmark_smoke
def test_checkpoint_digest_quick_times_both_loads(tmp_path):
    out = tmp_path / "digest.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "checkpoint_digest.py"), "--quick"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    res = json.loads(out.read_text())
    assert set(res["nets"]) == {"digits", "28x28"} and res["repeats"] == 3
    for r in res["nets"].values():
        assert r["file_mb"] > 0 and r["parameters"] > 0
        for what in ("checkpoint", "run"):
            assert set(r[what]) == {"plain", "verified", "ratio"}
            assert r[what]["ratio"]["median"] > 0
    assert "verified / plain" in proc.stdout


def test_step_speed_definitions_compute_the_same_net():
    """(f) times the same function: the net with its rewrites undone gives the same outputs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import step_speed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    net = step_speed.ddpm_net(28, quick=True)
    for p in net.parameters():  # the zero-initialised output layers would hide differences
        p.data.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    x, t, _ = step_speed.fixed_batch(2, 28)
    plain = step_speed.as_definitions(net)
    rewritten = (AttnBlock, Conv1x1, FewOutputsConv, UpsampleConv)
    undone = [("forward" in vars(m)) for m in plain.modules() if isinstance(m, rewritten)]
    assert len(undone) >= 8 and all(undone)  # each module computes its definition
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t), net(x, t))


@pytest.mark.benchmark_smoke
def test_contention_quick_times_each_contender_in_each_surrounding(tmp_path):
    out = tmp_path / "contention.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "contention.py"), "--quick", "--contenders",
           "before", "default", "--surroundings", "alone", "busy2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"before", "default"}
    for by in res.values():
        assert set(by) == {"alone", "busy2"}
        assert by["alone"]["median_s"] > 0 and by["busy2"]["vs_alone"] > 0
    assert res["default"]["alone"]["vs_before_alone"] > 0
    assert "| default |" in proc.stdout


@pytest.mark.benchmark_smoke
def test_mc_estimator_quick_counts_the_network_work_of_each_estimator(tmp_path):
    out = tmp_path / "mc.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "mc_estimator.py"), "--quick"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    res = json.loads(out.read_text())
    T, n, K, strata = res["T"], res["n"], res["K"], res["strata"]
    assert (T, n, K, res["repeats"]) == (50, 10, 5, 1)
    assert strata == len(log_strata(T, K)) - 1 and res["strata_over_T"] == strata / T
    assert res["K_over_T"] == K / T
    est = res["estimators"]
    assert set(est) == {"exact", "mc", "both"}
    # L_T is closed form: the network sees one x_t per (example, t), or per (example, stratum)
    assert est["exact"]["calls"] == n * T and est["mc"]["calls"] == n * strata
    assert est["both"]["calls"] == n * (T + strata)
    assert res["mc_vs_exact"]["calls"] == pytest.approx(strata / T)
    for name, row in est.items():
        assert row["seconds"]["median"] > 0 and len(row["seconds"]["runs"]) == 1, name
        assert row["neg_elbo"] > 0 and row["neg_elbo_se"] > 0, name
    assert res["mc_vs_exact"]["seconds"]["median"] > 0
    # 'both' reports the exact -ELBO and, beside it, the same Monte Carlo estimate as 'mc' alone
    assert est["both"]["neg_elbo"] == pytest.approx(est["exact"]["neg_elbo"])
    assert est["both"]["neg_elbo_mc"] == pytest.approx(est["mc"]["neg_elbo"])
    assert "| mc |" in proc.stdout and "| exact |" in proc.stdout
