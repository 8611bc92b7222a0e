"""Cost of the VAE's importance-weighted bounds K = 1 .. K_max against the bare decoder calls.

For a VAE run (default: the digits test split, 297 examples), time side by side in one process,
alternating, ``repeats`` times, in CPU seconds (time.process_time):
  (a) ddpm.vae.model.vae_iw_curve: K_max draws per example, decoder calls, float64 log-weights;
  (b) the same number of decoder forward passes, in the same batch sizes, on ready-made z.
Reports the median of each with its range (min, max) and the median ratio a/b.

    python benchmarks/vae_iw.py runs/vae_digits [--k 1000] [--repeats 3] [--max-batch 4096]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ddpm import load_dataset, load_vae_run
from ddpm.vae.model import vae_iw_curve


@torch.no_grad()
def bare_decodes(model, n: int, K: int, max_batch: int) -> None:
    """The decoder calls of vae_iw_log_weights alone: groups of max(1, max_batch // n) draws."""
    group = max(1, max_batch // n)
    z = torch.zeros(group * n, model.latent_dim)
    for start in range(0, K, group):
        model.decode(z[: min(group, K - start) * n])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", help="VAE run folder")
    p.add_argument("--n", type=int, default=None, help="test examples (default: all)")
    p.add_argument("--k", type=int, default=1000, help="largest K (default: 1000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=4096)
    args = p.parse_args()
    run = load_vae_run(args.run)
    x0 = load_dataset(run.config.data).test[: args.n]
    Ks = sorted({1, 10, 100, args.k} & set(range(1, args.k + 1)))
    g = torch.Generator().manual_seed(0)
    full, bare = [], []
    for _ in range(args.repeats):
        t0 = time.process_time()
        vae_iw_curve(run.model, x0, run.spec.levels, Ks, g, args.max_batch)
        full.append(time.process_time() - t0)
        t0 = time.process_time()
        bare_decodes(run.model, x0.shape[0], args.k, args.max_batch)
        bare.append(time.process_time() - t0)
    ratios = [f / b for f, b in zip(full, bare, strict=True)]
    result = {
        "examples": x0.shape[0],
        "K": Ks,
        "iw_cpu_seconds": {"median": statistics.median(full), "min": min(full), "max": max(full)},
        "bare_cpu_seconds": {"median": statistics.median(bare), "min": min(bare), "max": max(bare)},
        "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
