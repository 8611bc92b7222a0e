"""Cost of the exact T-step ELBO evaluation relative to the bare network forward passes it needs.

For a trained run (default: the digits test split, every t = 1..T), time side by side in one
process, alternating, ``repeats`` times:
  (a) ``ddpm.likelihood.elbo.elbo_terms`` as ``ddpm evaluate`` runs it: every term of -ELBO for
      every example (keyed x_t draws, network calls, float64 Gaussian KLs and the discretized
      decoder);
  (b) the same number of network forward passes, in the same batch sizes, on ready-made inputs;
  (c) as (a) with the noise drawn in order from a torch.Generator instead of keyed.
Reports the median ratios a/b and c/b with their spread (min, max). Target: a/b <= 1.1.

    python benchmarks/eval_overhead.py runs/digits [--n 297] [--repeats 5] [--max-batch 4096]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ddpm.data import load_dataset
from ddpm.likelihood.elbo import elbo_terms
from ddpm.loader import load
from ddpm.process.rng import KeyedNoise


@torch.no_grad()
def bare_forwards(net, x0: torch.Tensor, T: int, max_batch: int) -> None:
    """The network calls of elbo_terms alone: same inputs per call, no likelihood arithmetic."""
    B = x0.shape[0]
    chunk = max(1, max_batch // B)
    for start in range(1, T + 1, chunk):
        k = min(chunk, T + 1 - start)
        t = torch.arange(start, start + k).repeat_interleave(B)
        net(x0.repeat(k, *([1] * (x0.ndim - 1))), t)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=int, default=None, help="test examples (default: all)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-batch", type=int, default=4096)
    args = p.parse_args()
    model = load(args.run)
    x0 = load_dataset(model.data_config()).test[: args.n]
    T = model.T
    g = torch.Generator().manual_seed(0)
    full, bare, ordered = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        elbo_terms(model, x0, KeyedNoise(0), args.max_batch)
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bare_forwards(model.net, x0, T, args.max_batch)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        elbo_terms(model, x0, g, args.max_batch)
        ordered.append(time.perf_counter() - t0)
    ratios = [f / b for f, b in zip(full, bare, strict=True)]
    ratios_ordered = [f / b for f, b in zip(ordered, bare, strict=True)]
    result = {
        "examples": x0.shape[0],
        "T": T,
        "forward_passes": x0.shape[0] * T,
        "elbo_seconds": full,
        "bare_seconds": bare,
        "elbo_generator_seconds": ordered,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_generator_median": statistics.median(ratios_ordered),
        "ratio_generator_min": min(ratios_ordered),
        "ratio_generator_max": max(ratios_ordered),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
