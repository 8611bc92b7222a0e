"""Cost of verifying checkpoints at load: the SHA-256 digests and the NaN/inf check.

For two run folders written here (model + EMA + AdamW moments, as ``ddpm train`` saves them):
  digits  the default config on 8x8 digits (~0.5M parameters)
  28x28   a U-Net for 28x28 images (channels 60, mults 1 2 2, attention at 7x7; ~2.8M)
times, side by side in one process, alternating (the order swapped every repeat):
  checkpoint  ``load_checkpoint(path, verify=False)`` against ``verify=True`` (the stored
              digests of every tensor and of the metadata, then every floating tensor finite)
  run         ``ddpm.loader.load(folder)`` (config, network built, weights loaded: a Model)
              with and without the verification: what ``ddpm sample`` and ``ddpm evaluate`` pay
Reported: median time and range (min-max) over the repeats of each, and the per-repeat ratio
verified / plain (median and range). The file is in the page cache after the first read, so
these are warm loads: reading from disk only adds time to both sides.

    OMP_NUM_THREADS=1 python benchmarks/checkpoint_digest.py [--repeats 30] [--out FILE.json]
    python benchmarks/checkpoint_digest.py --quick    # seconds: a smoke test of the script
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ddpm import loader
from ddpm.config import DataConfig, ModelConfig, RunConfig
from ddpm.data import DataSpec
from ddpm.runs import checkpoint
from ddpm.runs import run as runs

U_NET_28 = ModelConfig(channels=60, channel_mults=(1, 2, 2), attn_resolutions=(7,))
QUICK_28 = ModelConfig(channels=8, channel_mults=(1, 2, 2), attn_resolutions=(7,))


def write_run(folder: Path, cfg: RunConfig, spec: DataSpec) -> Path:
    """A run folder as training leaves it: config.json and a checkpoint with model, EMA and
    AdamW moments after one step (random gradients), seed 0."""
    torch.manual_seed(0)
    _, model = runs.build(cfg, spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    runs.save_config(folder, cfg, spec)
    path = folder / runs.CHECKPOINT
    state = checkpoint.TrainingState(model, ema=copy.deepcopy(model), optimizer=opt, step=1)
    checkpoint.save_checkpoint(path, state, config=cfg.to_dict())
    return path


def load_model(folder: Path, verify: bool) -> None:
    """``loader.load(folder)`` with the checkpoint's weights read with or without the
    verification (the header that the config check reads is verified either way)."""
    original = runs.load_checkpoint
    runs.load_checkpoint = functools.partial(original, verify=verify)
    try:
        loader.load(folder)
    finally:
        runs.load_checkpoint = original


def alternate(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call per repeat, the calls alternating, their order swapped each time."""
    for fn in fns.values():  # warm-up: imports, page cache
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(times: dict[str, list[float]]) -> dict:
    ratios = [v / p for v, p in zip(times["verified"], times["plain"], strict=True)]
    out: dict = {
        name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t),
               "max_ms": 1e3 * max(t)}
        for name, t in times.items()
    }  # fmt: skip
    out["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def measure(folder: Path, cfg: RunConfig, spec: DataSpec, repeats: int) -> dict:
    path = write_run(folder, cfg, spec)
    tensors = checkpoint.load_checkpoint(path).tensors
    res: dict = {
        "file_mb": path.stat().st_size / 1e6,
        "tensors": len(tensors),
        "parameters": sum(t.numel() for k, t in tensors.items() if k.startswith("model.")),
    }
    ckpt = {
        "plain": lambda: checkpoint.load_checkpoint(path, verify=False),
        "verified": lambda: checkpoint.load_checkpoint(path, verify=True),
    }
    run = {"plain": lambda: load_model(folder, False), "verified": lambda: load_model(folder, True)}
    res["checkpoint"] = summary(alternate(ckpt, repeats))
    res["run"] = summary(alternate(run, repeats))
    return res


def table(results: dict) -> str:
    def ms(d: dict) -> str:
        return f"{d['median_ms']:.1f} ({d['min_ms']:.1f}-{d['max_ms']:.1f})"

    lines = [
        "| net | file MB | load | plain ms | verified ms | verified / plain |",
        "|---|---|---|---|---|---|",
    ]
    for net, r in results["nets"].items():
        for what in ("checkpoint", "run"):
            d = r[what]
            ratio = d["ratio"]
            lines.append(
                f"| {net} | {r['file_mb']:.1f} | {what} | {ms(d['plain'])} | "
                f"{ms(d['verified'])} | {ratio['median']:.2f}x "
                f"({ratio['min']:.2f}-{ratio['max']:.2f}) |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="small nets, 3 repeats: a smoke test")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    repeats = 3 if args.quick else args.repeats
    nets = {
        "digits": (RunConfig(), DataSpec.from_levels("digits", (1, 8, 8), 17)),
        "28x28": (
            RunConfig(model=QUICK_28 if args.quick else U_NET_28, data=DataConfig(name="mnist")),
            DataSpec.from_levels("mnist", (1, 28, 28), 256),
        ),
    }
    results: dict = {"repeats": repeats, "threads": torch.get_num_threads(), "nets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cfg, spec) in nets.items():
            results["nets"][name] = measure(Path(tmp) / name, cfg, spec, repeats)
    print(
        f"load time, median (range) over {repeats} repeats, alternating; "
        f"{results['threads']} torch thread(s), warm page cache"
    )
    print(table(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
