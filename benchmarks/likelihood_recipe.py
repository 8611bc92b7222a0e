"""The recipe table of the README: each training recipe, its CPU-minutes, its test -ELBO.

Each row trains one run with `ddpm train` (one thread, so CPU-minutes = the process CPU time
that log.jsonl records, validation included) and scores it on the test split:
  * digits rows with `ddpm evaluate RUN` (exact T = 1000 -ELBO of the p_theta that `ddpm sample`
    draws from, bits/dim ± SE over the 297 test images);
  * gmm8 rows with `ddpm theory RUN -n 2000` (exact -ELBO in nats on the 2000 test points,
    beside the Bayes-optimal model of the same family and the paired gap to it).
The diffusers row comes from `benchmarks/diffusers_vs_ddpm.py --only diffusers --minutes 30`.

With --ablation it runs instead short variants of the likelihood preset, one change each, and
scores them by their best held-out validation -ELBO (the stratified estimate of
``ddpm.training.validation``, on the same held-out examples and the same keyed noise for every
variant).

    python benchmarks/likelihood_recipe.py --out runs/recipes                 # every row
    python benchmarks/likelihood_recipe.py --out runs/recipes --rows gmm8-small --eval-only
    python benchmarks/likelihood_recipe.py --out runs/ablation --ablation
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROWS: dict[str, list[str]] = {
    "digits-default": ["--data", "digits"],
    "digits-likelihood": ["--data", "digits", "--preset", "likelihood", "--max-steps", "10000"],
    "gmm8-default": ["--data", "gmm8", "--max-steps", "6000"],
    "gmm8-small": [
        "--data",
        "gmm8",
        "--preset",
        "likelihood",
        "--variance",
        "small",
        "--max-steps",
        "30000",
    ],  # fmt: skip
    "gmm8-learned": ["--data", "gmm8", "--preset", "likelihood", "--max-steps", "30000"],
}


def _preset(data: str, steps: int, val_every: int, *flags: str) -> list[str]:
    """The flags of a short run of the likelihood preset on data, with flags added."""
    return ["--data", data, "--preset", "likelihood", "--max-steps", str(steps),
            "--val-every", str(val_every), *flags]  # fmt: skip


_DIGITS = _preset("digits", 1200, 200)
_GMM8 = _preset("gmm8", 6000, 500)
ABLATION: dict[str, list[str]] = {
    "digits preset": _DIGITS,
    "digits hybrid, uniform t": [*_DIGITS, "--loss", "hybrid", "--timestep-sampler", "uniform"],
    "digits no dropout": [*_DIGITS, "--dropout", "0"],
    "digits cosine noise schedule": [*_DIGITS, "--schedule", "cosine"],
    "digits constant lr": [*_DIGITS, "--lr-schedule", "constant"],
    "digits EMA 0.995": [*_DIGITS, "--ema-decay", "0.995"],
    "digits channels 48": [*_DIGITS, "--channels", "48"],
    "digits fixed small variance": [*_DIGITS, "--variance", "small"],
    "digits weight decay 0.01": [*_DIGITS, "--weight-decay", "0.01"],
    "digits batch 256, half the steps": _preset("digits", 600, 100, "--batch-size", "256"),
    "gmm8 preset": _GMM8,
    "gmm8 uniform t": [*_GMM8, "--timestep-sampler", "uniform"],
    "gmm8 hidden 128": [*_GMM8, "--hidden", "128"],
    "gmm8 batch 512, 1/4 the steps": _preset("gmm8", 1500, 125, "--batch-size", "512"),
}


def ddpm(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ddpm", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


def cpu_minutes(run: Path) -> float:
    """CPU time of the training, from the last record of its log (validation included)."""
    last = (run / "log.jsonl").read_text().splitlines()[-1]
    return json.loads(last)["cpu_seconds"] / 60


def score(name: str, run: Path) -> dict:
    if name.startswith("digits"):
        ev = json.loads(ddpm("evaluate", str(run), "--json", "--threads", "1"))
        keys = ("bits_per_dim", "bits_per_dim_se", "neg_elbo", "neg_elbo_se", "n")
        return {k: ev[k] for k in keys}
    th = json.loads(ddpm("theory", str(run), "-n", "2000", "--iw", "--json", "--threads", "1"))
    return {
        "neg_elbo": th["neg_elbo"],
        "neg_elbo_se": th["neg_elbo_se"],
        "oracle_neg_elbo": th["oracle"]["neg_elbo"],
        "gap_to_oracle": th["gap_to_oracle"],
        "gap_to_oracle_se": th["gap_to_oracle_se"],
        "entropy": th["entropy"],
        "n": th["n"],
    }


def best_validation(run: Path) -> dict:
    """The best validation record of a run's log."""
    vals = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    best = min((r for r in vals if "val_neg_elbo" in r), key=lambda r: r["val_neg_elbo"])
    return {k: best[k] for k in ("step", "val_neg_elbo", "val_neg_elbo_se", "val_bpd")}


def ablation(out: Path) -> None:
    """Run the variants not yet in out/ablation.json (so an interrupted sweep continues)."""
    path = out / "ablation.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for i, (name, flags) in enumerate(ABLATION.items()):
        if name in results:
            continue
        run = out / f"ablation{i:02d}"
        ddpm("train", *flags, "--out", str(run), "--threads", "1", "--quiet", "--overwrite")
        results[name] = {"flags": " ".join(flags), "cpu_minutes": cpu_minutes(run),
                         **best_validation(run)}  # fmt: skip
        path.write_text(json.dumps(results, indent=2))
        print(json.dumps({name: results[name]}), flush=True)
    print("| variant | CPU-min | best validation -ELBO ± SE | bits/dim | at step |")
    print("|---|---:|---|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['cpu_minutes']:.1f} | {r['val_neg_elbo']:.3f} ± "
              f"{r['val_neg_elbo_se']:.3f} nats | {r['val_bpd']:.4f} | {r['step']} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/recipes"))
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--eval-only", action="store_true", help="score runs already in --out")
    p.add_argument("--ablation", action="store_true", help="short variants of the preset")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ablation:
        ablation(args.out)
        return
    results_path = args.out / "recipes.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.rows:
        run = args.out / name
        if not args.eval_only:
            ddpm("train", *ROWS[name], "--out", str(run), "--threads", "1", "--quiet",
                 "--overwrite")  # fmt: skip
        results[name] = {"command": "ddpm train " + " ".join(ROWS[name]),
                         "cpu_minutes": cpu_minutes(run), **score(name, run)}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
        print(json.dumps({name: results[name]}), flush=True)
    print("| recipe | CPU-min | test -ELBO ± SE | gap to the Bayes-optimal model |")
    print("|---|---:|---|---|")
    for r in results.values():
        if "bits_per_dim" in r:
            value, gap = f"{r['bits_per_dim']:.3f} ± {r['bits_per_dim_se']:.3f} bits/dim", "-"
        else:
            value = f"{r['neg_elbo']:.3f} ± {r['neg_elbo_se']:.3f} nats"
            gap = f"{r['gap_to_oracle']:.3f} ± {r['gap_to_oracle_se']:.3f} nats"
        print(f"| `{r['command']}` | {r['cpu_minutes']:.1f} | {value} | {gap} |")
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
