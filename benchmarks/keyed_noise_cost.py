"""Cost of keyed evaluation noise per network call, alternating at the grain of one call.

For a trained run, one chunk of the exact ELBO is max_batch rows (example, t). Times side by
side in one process, alternating, ``repeats`` times, on the same rows:
  (a) one chunk as ``elbo_terms`` computes it with keyed noise (``ddpm.process.rng.KeyedNoise``):
      the x_t draws, the network call and the float64 term arithmetic;
  (b) the bare network call on ready-made inputs of the same size;
  (c) as (a) with the noise drawn in order from a torch.Generator.
Reports the median ratios a/b and c/b with their range. Alternating one call at a time keeps a
busy machine's drift out of the ratios. Target: a/b <= 1.1.

    python benchmarks/keyed_noise_cost.py runs/digits [--repeats 15] [--max-batch 4096]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ddpm.data import load_dataset
from ddpm.likelihood.elbo import vb_term
from ddpm.loader import load
from ddpm.process.rng import KeyedNoise, normal


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--max-batch", type=int, default=4096)
    args = p.parse_args()
    model = load(args.run)
    test = load_dataset(model.data_config()).test
    B = test.shape[0]
    rows = torch.arange(args.max_batch)
    example, t = rows % B, 1 + (rows // B) % model.T
    x0 = test[example]
    g = torch.Generator().manual_seed(0)

    def chunk(noise) -> None:
        eps = normal(noise, x0, example, t)
        vb_term(model, x0, t, noise=eps)

    times: dict[str, list[float]] = {"keyed": [], "bare": [], "generator": []}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, fn in (
                ("keyed", lambda: chunk(KeyedNoise(0))),
                ("bare", lambda: model.net(x0, t)),
                ("generator", lambda: chunk(g)),
            ):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    result = {"rows_per_call": args.max_batch, "seconds": times, "threads": torch.get_num_threads()}
    for name in ("keyed", "generator"):
        r = [a / b for a, b in zip(times[name], times["bare"], strict=True)]
        result[f"ratio_{name}"] = {"median": statistics.median(r), "min": min(r), "max": max(r)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
