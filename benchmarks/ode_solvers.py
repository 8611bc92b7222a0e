"""Cost and agreement of the probability-flow ODE likelihood across solvers and tolerances.

For a trained run, on its first n test examples, compute -log p_ODE (``ddpm.likelihood.ode``)
with each setting in turn, alternating over ``repeats`` rounds, in one process. Reports per
setting the median seconds with their range, the NFE, and -log p_ODE with its SE and its paired
difference (per example, with SE) from the tightest setting, so the tolerance's effect on the
value is measured against the spread over examples. Hutchinson probes and dequantization noise
are the same for every setting (same seed).

    python benchmarks/ode_solvers.py runs/gmm8 [--n 200] [--repeats 3]
        [--settings RK45:1e-3 RK45:1e-5 DOP853:1e-5 RK45:1e-7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from ddpm.data import load_dataset
from ddpm.likelihood.ode import OdeConfig, ProbabilityFlow, ode_likelihood
from ddpm.likelihood.stats import mean_se
from ddpm.loader import load
from ddpm.process.rng import seeded_generator


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=int, default=200, help="test examples (default: 200)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes (images)")
    p.add_argument(
        "--settings",
        nargs="+",
        default=["RK45:1e-3", "RK45:1e-5", "DOP853:1e-5", "RK45:1e-7"],
        help="METHOD:TOL (rtol = atol = TOL); the last is the reference",
    )
    args = p.parse_args()
    model = load(args.run)
    data = load_dataset(model.data_config())
    model = model.on(data.spec)
    x0 = data.test[: args.n]
    ProbabilityFlow.of(model)  # refused here when the model's schedule has no continuous form
    configs = {}
    for s in args.settings:
        method, tol = s.split(":")
        configs[s] = OdeConfig(rtol=float(tol), atol=float(tol), method=method, probes=args.probes)
    seconds = {s: [] for s in configs}
    results = {}
    for _ in range(args.repeats):
        for s, cfg in configs.items():
            t0 = time.perf_counter()
            results[s] = ode_likelihood(model, x0, cfg, seeded_generator(0))
            seconds[s].append(time.perf_counter() - t0)
    ref = results[args.settings[-1]].per_example
    rows = {}
    for s, res in results.items():
        diff, diff_se = mean_se(res.per_example - ref)
        rows[s] = {
            "seconds_median": statistics.median(seconds[s]),
            "seconds_min": min(seconds[s]),
            "seconds_max": max(seconds[s]),
            "nfe": res.nfe,
            "neg_log_likelihood": res.neg_log_likelihood,
            "neg_log_likelihood_se": res.neg_log_likelihood_se,
            "minus_reference": diff,
            "minus_reference_se": diff_se,
            "divergence": res.divergence,
        }
    print(json.dumps({"run": str(args.run), "examples": x0.shape[0], "settings": rows}, indent=2))


if __name__ == "__main__":
    main()
