"""A short device check (under 4 minutes on one GPU): the library trains, scores the same
weights alike on the CPU and the GPU, and how fast the exact -ELBO of a CIFAR-10-sized
improved-diffusion U-Net runs.

  train     ``ddpm.train`` on digits (T = 1000, the default 32-channel U-Net, 300 steps of
            128) into a temporary folder, on the device: steps/s and the last loss.
  cpu_gpu   the exact -ELBO (``elbo_terms``, every t, keyed noise) of that run's EMA weights for
            the same 16 test examples on the CPU and on the device: the relative difference of
            each example's total and the largest one of its T terms.
  cifar     an improved-diffusion U-Net of the CIFAR-10 flags ([ND21]: 32x32, 128 channels,
            3 blocks, learned sigma, T = 4000, cosine; 52.5M parameters) with seeded random
            weights, 64 images: the exact -ELBO's network calls, max_batch = 512 inputs each
            (8 timesteps x 64 images), timed one by one (synchronised) for a time budget, then
            extrapolated to all 4000 timesteps (the calls cost the same at every t); and the
            100-step respaced model's whole -ELBO, measured. Images/s = 64 / seconds per -ELBO.

--quick runs all three tiny on the CPU (T = 20, a few steps, an 8-channel U-Net; the CIFAR
flags with 32 channels and 1 block; 2 images) as a smoke test; "device" is then the CPU and
the second score uses another batching (max_batch 7) instead. Prints a table and writes JSON.

    python benchmarks/gpu_check.py --out gpu_check.json [--device cuda] [--budget 60]
    python benchmarks/gpu_check.py --quick --out /tmp/gpu_check.json

References:
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

import ddpm
from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ddpm.data import load_dataset
from ddpm.foreign.improved_diffusion import parse_flags, unet_config
from ddpm.likelihood.elbo import bits_per_dim, elbo_terms, vb_step
from ddpm.nets.improved_unet import ImprovedUNet
from ddpm.process.rng import KeyedNoise, normal

CIFAR10 = (
    "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 "
    "--diffusion_steps 4000 --noise_schedule cosine"
)
FULL = {"T": 1000, "steps": 300, "batch": 128, "channels": 32, "n": 16, "flags": CIFAR10,
        "images": 64, "max_batch": 512, "respaced": 100}  # fmt: skip
QUICK = {"T": 20, "steps": 4, "batch": 16, "channels": 8, "n": 4, "images": 2, "max_batch": 8,
         "respaced": 10,
         "flags": CIFAR10.replace("128 --num_res_blocks 3", "32 --num_res_blocks 1")}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def section_train(s: dict, device: torch.device, folder: Path) -> dict:
    cfg = RunConfig(
        data=DataConfig(name="digits"),
        diffusion=DiffusionConfig(T=s["T"]),
        model=ModelConfig(channels=s["channels"]),
        train=TrainConfig(
            steps=s["steps"],
            batch_size=s["batch"],
            warmup=s["steps"] // 4,
            num_samples=16,
            log_every=max(1, s["steps"] // 3),
            checkpoint_every=s["steps"],
        ),  # fmt: skip
    )
    start = time.perf_counter()
    res = ddpm.train(cfg, folder, device=device, progress=False)
    wall = time.perf_counter() - start
    return {"steps": res.steps, "batch": s["batch"], "T": s["T"], "loop_seconds": res.seconds,
            "wall_seconds": wall, "steps_per_s": res.steps / res.seconds,
            "final_loss": res.final_loss}  # fmt: skip


def _score(run: Path, x0: torch.Tensor, dev: str, max_batch: int) -> tuple:
    model = ddpm.load(run, device=dev)
    sync(torch.device(dev))
    start = time.perf_counter()
    terms = elbo_terms(model, x0.to(dev), KeyedNoise(0), max_batch=max_batch)
    sync(torch.device(dev))
    D = model.spec.num_dims
    return terms.per_timestep.cpu(), terms.total().cpu(), time.perf_counter() - start, D, model.T


def _compare(a: tuple, b: tuple, label: str) -> dict:
    """b against a: bits/dim, seconds, relative differences of the totals and of the terms."""
    rel = ((b[1] - a[1]).abs() / a[1].abs()).tolist()
    term_rel = ((b[0] - a[0]).abs() / a[0].abs().clamp(min=1e-30)).max().item()
    return {"scored": label, "bpd": float(bits_per_dim(b[1].mean(), b[3])), "seconds": b[2],
            "total_rel_diff_max": max(rel), "total_rel_diff_mean": statistics.fmean(rel),
            "term_rel_diff_max": term_rel}  # fmt: skip


def section_cpu_gpu(s: dict, run: Path, device: torch.device) -> dict:
    """The exact -ELBO of the run's EMA weights for the same examples on the CPU and on the
    device (as it is: cuDNN may use TF32; and with TF32 off). On the CPU alone: another
    batching (max_batch 7) instead."""
    x0 = load_dataset(DataConfig(name="digits")).test_examples[: s["n"]]
    cpu = _score(run, x0, "cpu", 4096)
    out = {"n": s["n"], "T": cpu[4], "cpu_bpd": float(bits_per_dim(cpu[1].mean(), cpu[3])),
           "cpu_seconds": cpu[2]}  # fmt: skip
    if device.type == "cpu":
        out["others"] = [_compare(cpu, _score(run, x0, "cpu", 7), "cpu, max_batch 7")]
        return out
    out["others"] = [_compare(cpu, _score(run, x0, str(device), 4096), f"{device} as set")]
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out["others"].append(_compare(cpu, _score(run, x0, str(device), 4096), f"{device} no TF32"))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    return out


def seeded_weights(flags: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of the U-Net drawn from N(0, 1 / fan_in) (GroupNorm scales 1 + N(0, 0.01))
    with a seeded generator: random, but with activations of order one."""
    with torch.device("meta"):
        shapes = ImprovedUNet(unet_config(parse_flags(flags))).state_dict()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in shapes.items():
        z = torch.randn(v.shape, generator=g)
        fan_in = math.prod(v.shape[1:]) if v.ndim > 1 else 0
        out[k] = (
            z / math.sqrt(fan_in) if fan_in else (1 + 0.1 * z if k.endswith("weight") else 0.1 * z)
        )
    return out


def section_cifar(s: dict, device: torch.device, budget: float) -> dict:
    model = ddpm.from_improved_diffusion(seeded_weights(s["flags"]), s["flags"], device=device)
    B, T, max_batch = s["images"], model.T, s["max_batch"]
    g = torch.Generator().manual_seed(1)
    x0 = (torch.randint(0, 256, (B, *model.shape), generator=g).float() / 127.5 - 1).to(device)
    chunk = max(1, max_batch // B)  # timesteps per network call, as elbo_terms groups them
    noise, example = KeyedNoise(0), torch.arange(B, device=device).repeat(chunk)
    x0_rep = x0.repeat(chunk, 1, 1, 1)

    def call(start: int) -> float:
        t = torch.arange(start, start + chunk, device=device).repeat_interleave(B)
        sync(device)
        begin = time.perf_counter()
        vb_step(model, x0_rep, t, noise=normal(noise, x0_rep, example, t))
        sync(device)
        return time.perf_counter() - begin

    call(1)  # warm-up (kernels chosen, memory allocated)
    starts = torch.linspace(1, T - chunk + 1, 64).long().tolist()  # spread over 1..T
    times: list[float] = []
    spent = time.perf_counter()
    while starts and (not times or time.perf_counter() - spent < budget):
        times.append(call(starts.pop(0)))
    per_call = statistics.median(times)
    full_seconds = math.ceil(T / chunk) * per_call
    respaced = model.respaced(str(s["respaced"]))
    sync(device)
    begin = time.perf_counter()
    terms = elbo_terms(respaced, x0, noise, max_batch=max_batch)
    sync(device)
    respaced_seconds = time.perf_counter() - begin
    params = sum(p.numel() for p in model.net.parameters())
    bpd = float(bits_per_dim(terms.total().mean(), model.spec.num_dims))
    return {"params": params, "images": B, "T": T, "max_batch": max_batch,
            "timesteps_per_call": chunk, "calls_timed": len(times),
            "seconds_timed": sum(times), "per_call_median": per_call,
            "per_call_min": min(times), "per_call_max": max(times),
            "full_T_seconds_extrapolated": full_seconds, "full_T_images_per_s": B / full_seconds,
            "respaced_K": respaced.T, "respaced_seconds_measured": respaced_seconds,
            "respaced_images_per_s": B / respaced_seconds,
            "respaced_seconds_extrapolated": math.ceil(respaced.T / chunk) * per_call,
            "respaced_bpd": bpd}  # fmt: skip


def table(res: dict) -> str:
    tr, cg, cf = res["train"], res["cpu_gpu"], res["cifar"]
    return "\n".join([
        f"device: {res['device']} ({res['device_name']}), torch {res['torch']}, "
        f"cudnn tf32 {res['cudnn_tf32']}, matmul tf32 {res['matmul_tf32']}",
        f"train   digits T={tr['T']}: {tr['steps']} steps of {tr['batch']} in "
        f"{tr['loop_seconds']:.1f} s ({tr['steps_per_s']:.1f} steps/s, wall "
        f"{tr['wall_seconds']:.1f} s), last loss {tr['final_loss']:.4f}",
        f"cpu_gpu exact -ELBO, {cg['n']} examples, T={cg['T']}: cpu {cg['cpu_bpd']:.6f} bpd "
        f"({cg['cpu_seconds']:.1f} s)",
        *(f"        {o['scored']}: {o['bpd']:.6f} bpd ({o['seconds']:.1f} s); relative "
          f"difference of totals max {o['total_rel_diff_max']:.2e} mean "
          f"{o['total_rel_diff_mean']:.2e}, of terms max {o['term_rel_diff_max']:.2e}"
          for o in cg["others"]),
        f"cifar   {cf['params'] / 1e6:.1f}M-parameter U-Net, {cf['images']} images, "
        f"{cf['timesteps_per_call']} timesteps x {cf['images']} per call: "
        f"{cf['calls_timed']} calls timed ({cf['seconds_timed']:.1f} s), "
        f"{cf['per_call_median'] * 1e3:.1f} ms per call (min {cf['per_call_min'] * 1e3:.1f}, max "
        f"{cf['per_call_max'] * 1e3:.1f})",
        f"        T={cf['T']}: ~{cf['full_T_seconds_extrapolated']:.1f} s per -ELBO "
        f"(extrapolated) = {cf['full_T_images_per_s']:.3g} images/s",
        f"        respaced K={cf['respaced_K']}: {cf['respaced_seconds_measured']:.2f} s "
        f"measured (extrapolated {cf['respaced_seconds_extrapolated']:.2f} s) = "
        f"{cf['respaced_images_per_s']:.3g} images/s",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds of timed CIFAR calls (default 60; --quick 2)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="everything tiny, on the CPU")
    args = p.parse_args(argv)
    s = QUICK if args.quick else FULL
    device = torch.device("cpu" if args.quick else args.device or
                          ("cuda" if torch.cuda.is_available() else "cpu"))  # fmt: skip
    res = {"device": str(device), "torch": torch.__version__, "quick": args.quick,
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "cudnn_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        res["train"] = section_train(s, device, Path(tmp) / "digits")
        res["cpu_gpu"] = section_cpu_gpu(s, Path(tmp) / "digits", device)
    res["cifar"] = section_cifar(s, device, 2.0 if args.quick else args.budget)
    print(table(res))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
