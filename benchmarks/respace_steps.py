"""Wall time of sampling against the number of steps K of a respaced process [ND21] Sec. 4.

For a trained run, draws n samples with ancestral sampling and with DDIM (eta = 0) over the
K-step respaced process for each K, side by side in one process, alternating over K and
sampler within each repeat; reports the median seconds and the range (min, max) per (K, sampler).

    python benchmarks/respace_steps.py runs/digits [--steps 10 25 50 100 250 1000] [--n 64]
        [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ddpm.loader import load
from ddpm.sampling.ancestral import sample
from ddpm.sampling.ddim import ddim_sample


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100, 250, 1000])
    p.add_argument("--n", type=int, default=64, help="samples per draw")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model = load(args.run)
    samplers = {"ancestral": sample, "ddim": ddim_sample}
    seconds: dict[tuple[int, str], list[float]] = {
        (k, name): [] for k in args.steps for name in samplers
    }
    for _ in range(args.repeats):
        for k in args.steps:
            m = model.respaced(k)
            for name, fn in samplers.items():
                g = torch.Generator().manual_seed(0)
                t0 = time.perf_counter()
                fn(m, args.n, g)
                seconds[(k, name)].append(time.perf_counter() - t0)
    rows = [
        {
            "K": k,
            "sampler": name,
            "n": args.n,
            "median_s": statistics.median(v),
            "min_s": min(v),
            "max_s": max(v),
            "seconds": v,
        }
        for (k, name), v in seconds.items()
    ]
    print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
