"""Convolving before the nearest upsample instead of after it: faster, and what it costs.

ddpm's U-Net upsamples as [Ho20] appendix B does: nearest-neighbour x2, then a 3x3 convolution
(computed exactly at the low resolution by ``UpsampleConv``). Convolving first and upsampling
the result (conv3x3 at the low resolution, then nearest x2) has the same parameters and a
quarter of the work of the definition, but it is another model: every 2x2 block of its output is
constant. This script measures both sides of that trade, with the variant made by patching
``UpsampleConv.forward`` (it is not offered by the package):

  --speed        the train step of ddpm's nets of ``step_speed.py`` (8x8 and 28x28) as they are
                 against the variant, alternating in one process (CPU time, median and range)
  --likelihood   the default digits run (`ddpm train`, 3000 steps, one thread) as it is and as
                 the variant, both scored by `ddpm evaluate` (exact T = 1000 -ELBO on the test
                 split, per image), and their paired difference in bits/dim ± SE

Runs already in --out are scored again, not retrained. Results go to --json.

    OMP_NUM_THREADS=1 python benchmarks/upsample_order.py --speed --likelihood --out runs/upo
    python benchmarks/upsample_order.py --speed --likelihood --quick --out /tmp/u --json u.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from step_speed import alternate, ddpm_net, fixed_batch, train_step_fn, with_forward

from ddpm.cli.main import main as ddpm_main
from ddpm.nets.unet import UpsampleConv


def conv_then_nearest(m: UpsampleConv, x: torch.Tensor) -> torch.Tensor:
    """The variant: the 3x3 convolution at the low resolution, then nearest x2."""
    return F.interpolate(F.conv2d(x, m.weight, m.bias, padding=1), scale_factor=2.0)


@contextlib.contextmanager
def variant() -> Iterator[None]:
    """Every UpsampleConv computes the variant inside the block."""
    definition = UpsampleConv.forward
    UpsampleConv.forward = conv_then_nearest
    try:
        yield
    finally:
        UpsampleConv.forward = definition


# --quick: a smoke test of the script (tiny nets, batches and runs; the numbers mean nothing)
QUICK_TRAIN = ["--max-steps", "2", "--diffusion-steps", "5", "--channels", "8", "--batch-size", "8",
               "--num-samples", "2", "--log-every", "1"]  # fmt: skip
QUICK_EVAL = ["-n", "4"]


def speed(repeats: int, quick: bool) -> dict:
    res = {}
    batch, seconds = (8, 0.01) if quick else (128, None)
    for size in (8, 28):
        net = ddpm_net(size, quick)
        other = with_forward(net, {UpsampleConv: conv_then_nearest})
        x, t, eps = fixed_batch(batch, size)
        steps = {"ddpm": train_step_fn(net, x, t, eps), "variant": train_step_fn(other, x, t, eps)}
        cpu = alternate(steps, repeats, seconds or (4.0 if size == 8 else 8.0))["cpu"]
        ratios = [a / b for a, b in zip(cpu["ddpm"], cpu["variant"], strict=True)]
        res[str(size)] = {
            "ddpm_ms": 1e3 * statistics.median(cpu["ddpm"]),
            "variant_ms": 1e3 * statistics.median(cpu["variant"]),
            "speed_up": {"median": statistics.median(ratios), "min": min(ratios),
                         "max": max(ratios)},
        }  # fmt: skip
        print(f"{size}x{size}: the variant's step is {res[str(size)]['speed_up']['median']:.3f}x "
              f"faster ({min(ratios):.3f} to {max(ratios):.3f})", flush=True)  # fmt: skip
    return res


def trained(run: Path, quick: bool) -> Path:
    if not (run / "checkpoint.safetensors").exists():
        args = ["train", "--out", str(run), "--threads", "1", "--quiet"]
        assert ddpm_main(args + QUICK_TRAIN * quick) == 0
    npy = run / "test_per_example.npy"
    args = ["evaluate", str(run), "--threads", "1", "--per-example", str(npy)]
    assert ddpm_main(args + QUICK_EVAL * quick) == 0
    return npy


def cpu_seconds(run: Path) -> float:
    return json.loads((run / "log.jsonl").read_text().splitlines()[-1])["cpu_seconds"]


def likelihood(out: Path, quick: bool) -> dict:
    a = np.load(trained(out / "as_is", quick))
    with variant():
        b = np.load(trained(out / "variant", quick))
    to_bits = 1 / (64 * math.log(2))  # digits: 64 dimensions
    d = (b - a) * to_bits
    res = {
        "n": len(a),
        "as_is_bpd": float(a.mean() * to_bits),
        "variant_bpd": float(b.mean() * to_bits),
        "paired_difference_bpd": float(d.mean()),
        "paired_difference_se": float(d.std(ddof=1) / math.sqrt(len(d))),
        "cpu_seconds": {"as_is": cpu_seconds(out / "as_is"),
                        "variant": cpu_seconds(out / "variant")},
    }  # fmt: skip
    print(f"digits: {res['as_is_bpd']:.4f} as is, {res['variant_bpd']:.4f} bits/dim "
          f"with the variant: {res['paired_difference_bpd']:+.4f} ± "
          f"{res['paired_difference_se']:.4f} paired", flush=True)  # fmt: skip
    return res


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--speed", action="store_true")
    p.add_argument("--likelihood", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny nets and runs: a smoke test")
    p.add_argument("--out", type=Path, default=Path("runs/upsample_order"))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/upsample_order.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    res = json.loads(args.json.read_text()) if args.json.exists() else {}
    if args.speed:
        res["speed"] = speed(2 if args.quick else args.repeats, args.quick)
    if args.likelihood:
        res["likelihood"] = likelihood(args.out, args.quick)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(args.json)


if __name__ == "__main__":
    main()
