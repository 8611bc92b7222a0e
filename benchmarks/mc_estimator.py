"""Cost of the Monte Carlo -ELBO estimate (`ddpm evaluate RUN --mc K`) against the exact loop.

Three contenders score the same n test examples with the same keyed noise, through
``ddpm.likelihood.evaluate.evaluate`` (what ``ddpm evaluate`` computes, without its files):

  exact  every one of the T terms per example: n * T examples through the network
  mc     the stratified estimate alone (``EvaluationRequest(estimator="mc", mc_timesteps=K)``):
         one timestep per stratum of ``ddpm.likelihood.elbo.log_strata(T, K)``, S <= K strata
         (rounded edges that coincide are merged), so n * S examples through the network
  both   the two side by side (``--mc K --estimator both``): n * (T + S)

The prior term L_T is closed form and calls no network, so the ratio of network work mc / exact
is S / T exactly. The network is wrapped in a module that counts what passes through it (the
examples, and the forward calls they came in). The contenders alternate within each repeat
(their order reversed every other repeat) after a warm-up on two examples; reported per
contender are the examples through the network, wall and CPU seconds (median and range), the
per-repeat ratios to the exact loop (median and range), and -ELBO with its standard error over
examples; for the Monte Carlo estimate also its paired difference from the exact -ELBO (same
examples, SE over examples).

Without a run folder the model is the default digits configuration (``ddpm train --data digits``:
T = 1000, the default U-Net) with freshly initialised weights: the network's cost does not
depend on its weights. With one, the run's model (EMA weights) on its own data.

    OMP_NUM_THREADS=1 python benchmarks/mc_estimator.py [RUN] [--n 100] [--K 42] [--repeats 3]
    python benchmarks/mc_estimator.py --quick --out /tmp/mc.json   # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig
from ddpm.data import load_dataset
from ddpm.likelihood.elbo import log_strata
from ddpm.likelihood.evaluate import Evaluation, evaluate
from ddpm.likelihood.stats import mean_se
from ddpm.loader import load
from ddpm.model import UNIT_RANGE, Model, Source
from ddpm.process.rng import KeyedNoise
from ddpm.requests import EvaluationRequest
from ddpm.runs.run import build

ESTIMATORS = ("exact", "mc", "both")
QUICK = {"T": 50, "n": 10, "K": 5, "repeats": 1}  # --quick: with a tiny net (channels 8)


class CountingNet(nn.Module):
    """The network as it is, counting the examples passed through it and the calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.examples = 0
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.examples += x.shape[0]
        self.calls += 1
        return self.net(x, t)

    def reset(self) -> None:
        self.examples = self.calls = 0


def fresh_model(quick: bool) -> Model:
    """The model of the default digits configuration with freshly initialised weights (seed 0);
    --quick: T = 50 and a U-Net of 8 channels."""
    cfg = RunConfig(data=DataConfig(name="digits"))
    if quick:
        cfg = dataclasses.replace(
            cfg, diffusion=DiffusionConfig(T=QUICK["T"]), model=ModelConfig(channels=8)
        )
    spec = load_dataset(cfg.data).spec
    torch.manual_seed(0)
    diffusion, net = build(cfg, spec)
    clip = UNIT_RANGE if spec.discrete and cfg.diffusion.clip_x0 else None
    source = Source("python", weights="freshly initialised weights (seed 0)", data=cfg.data,
                    name="digits, fresh weights")  # fmt: skip
    return Model(diffusion, net.eval(), spec, clip=clip, source=source)


def request_of(estimator: str, K: int) -> EvaluationRequest:
    return EvaluationRequest(estimator=estimator, mc_timesteps=None if estimator == "exact" else K)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(model: Model, x0: torch.Tensor, K: int, repeats: int) -> dict:
    """Per estimator: examples through the network, calls, wall and CPU seconds per repeat,
    and the evaluation of the last repeat (the same every repeat: the noise is keyed)."""
    counter = CountingNet(model.net)
    counted = dataclasses.replace(model, net=counter)
    requests = {e: request_of(e, K) for e in ESTIMATORS}

    def run(estimator: str, x: torch.Tensor) -> Evaluation:
        noise = KeyedNoise(0, torch.arange(x.shape[0]))
        return evaluate(counted, x, requests[estimator], generator=noise)

    for e in ESTIMATORS:  # warm-up: first calls, allocations
        run(e, x0[:2])
    res: dict = {e: {"examples": [], "calls": [], "wall": [], "cpu": []} for e in ESTIMATORS}
    evaluations: dict[str, Evaluation] = {}
    for r in range(repeats):
        for e in ESTIMATORS if r % 2 == 0 else ESTIMATORS[::-1]:
            counter.reset()
            t0, c0 = time.perf_counter(), time.process_time()
            evaluations[e] = run(e, x0)
            res[e]["wall"].append(time.perf_counter() - t0)
            res[e]["cpu"].append(time.process_time() - c0)
            res[e]["examples"].append(counter.examples)
            res[e]["calls"].append(counter.calls)
    return {"times": res, "evaluations": evaluations}


def report(model: Model, x0: torch.Tensor, K: int, repeats: int, measured: dict) -> dict:
    T, n = model.T, x0.shape[0]
    strata = len(log_strata(T, K)) - 1
    times, evs = measured["times"], measured["evaluations"]
    out: dict = {
        "model": {"name": model.name, **model.describe()},
        "T": T,
        "n": n,
        "K": K,
        "strata": strata,
        "K_over_T": K / T,
        "strata_over_T": strata / T,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "max_batch": EvaluationRequest().max_batch,
        "estimators": {},
    }
    for e in ESTIMATORS:
        tm, ev = times[e], evs[e]
        assert len(set(tm["examples"])) == 1, f"{e}: the network work varied over the repeats"
        row = {
            "calls": tm["examples"][0],  # examples through the network
            "forward_calls": tm["calls"][0],  # the batches they came in
            "seconds": {**spread(tm["wall"]), "runs": tm["wall"]},
            "cpu_seconds": {**spread(tm["cpu"]), "runs": tm["cpu"]},
            "neg_elbo": ev.neg_elbo,
            "neg_elbo_se": ev.neg_elbo_se,
            "bits_per_dim": ev.bits_per_dim,
            "bits_per_dim_se": ev.bits_per_dim_se,
        }
        if e == "both":
            row.update(neg_elbo_mc=ev.neg_elbo_mc, neg_elbo_mc_se=ev.neg_elbo_mc_se)
        out["estimators"][e] = row
    exact = out["estimators"]["exact"]
    for e in ("mc", "both"):
        row = out["estimators"][e]
        out[f"{e}_vs_exact"] = {
            "calls": row["calls"] / exact["calls"],
            "seconds": spread([a / b for a, b in zip(times[e]["wall"], times["exact"]["wall"],
                                                     strict=True)]),
            "cpu_seconds": spread([a / b for a, b in zip(times[e]["cpu"], times["exact"]["cpu"],
                                                         strict=True)]),
        }  # fmt: skip
    diff, diff_se = mean_se(evs["mc"].per_example - evs["exact"].per_example)
    out["mc_minus_exact"] = {"neg_elbo": diff, "se": diff_se}
    return out


def table(res: dict) -> str:
    def secs(d: dict) -> str:
        return f"{d['median']:.3g} ({d['min']:.3g} to {d['max']:.3g})"

    lines = [
        f"{res['model']['name']}: T = {res['T']}, n = {res['n']}, K = {res['K']} "
        f"({res['strata']} strata, K/T = {res['K_over_T']:.4g}, strata/T = "
        f"{res['strata_over_T']:.4g}); wall time, median (range) over {res['repeats']} "
        f"repeat(s), {res['threads']} thread(s)",
        "",
        "| estimator | examples through the net | seconds | / exact: calls | / exact: time "
        "| -ELBO ± SE (nats) |",
        "|---|---:|---|---:|---|---|",
    ]
    for e, row in res["estimators"].items():
        vs = res.get(f"{e}_vs_exact")
        calls = f"{vs['calls']:.4g}" if vs else "1"
        ratio = secs(vs["seconds"]) if vs else "1"
        value = f"{row['neg_elbo']:.2f} ± {row['neg_elbo_se']:.2f}"
        if e == "both":
            value += f" (MC {row['neg_elbo_mc']:.2f} ± {row['neg_elbo_mc_se']:.2f})"
        lines.append(
            f"| {e} | {row['calls']:,} | {secs(row['seconds'])} | {calls} | {ratio} | {value} |"
        )
    d = res["mc_minus_exact"]
    lines += ["", f"MC - exact, paired over examples: {d['neg_elbo']:+.3f} ± {d['se']:.3f} nats"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "run", nargs="?", default=None, help="run folder (default: none: digits, fresh weights)"
    )
    p.add_argument("--n", type=int, default=100, help="test examples (default: 100)")
    p.add_argument("--K", type=int, default=42, help="timesteps of the MC estimate (default: 42)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="n = 10, K = 5, 1 repeat; without a run T = 50 and a tiny net: a smoke test",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/mc_estimator.json"))
    args = p.parse_args()
    if args.quick:
        args.n, args.K, args.repeats = QUICK["n"], QUICK["K"], QUICK["repeats"]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.run is None:
        model = fresh_model(args.quick)
    else:
        model = load(args.run)
    data = load_dataset(model.data_config())
    model = model.on(data.spec)
    x0 = data.test_examples[: args.n]
    res = report(model, x0, args.K, args.repeats, measure(model, x0, args.K, args.repeats))
    res["run"] = None if args.run is None else str(args.run)
    res["quick"] = args.quick
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"\n{args.out}")


if __name__ == "__main__":
    main()
