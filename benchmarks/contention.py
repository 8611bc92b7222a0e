"""The default `ddpm train` on a shared machine: alone, beside one busy process, beside two.

Each contender trains the bundled digits for --steps steps with one sample at the end
(`ddpm train --data digits --max-steps S --num-samples 1`), timed end to end (wall), in
three surroundings:

  alone      nothing else running
  busy1      beside one busy loop (a Python `while True: pass`)
  busy2      beside a busy loop and another ddpm training run of the same contender

The contenders:

  before     torch's default thread count, fixed (`--threads N`, N = torch's default): what
             `ddpm train` did before it adapted its threads to the load
  default    `ddpm train` as it is now: torch's default count, fewer while other processes keep
             the cores busy (ddpm.threads)
  threads1   `ddpm train --threads 1`
  passive    torch's default count, fixed, with OMP_WAIT_POLICY=PASSIVE (idle threads sleep at
             once); not run unless named in --contenders

Contenders and surroundings alternate within each repeat; the table gives the median and range
(min to max) of the wall time and each one's factor against the same contender alone and
against `before` alone. Results go to --out as JSON.

    python benchmarks/contention.py --repeats 3 --out benchmarks/results/contention.json
    python benchmarks/contention.py --quick --out /tmp/contention.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


@functools.cache
def torch_default_threads() -> int:
    """torch's default intra-op thread count on this machine (one per core)."""
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], env=_env({}), capture_output=True,
                              text=True, check=True).stdout)  # fmt: skip


CONTENDERS = {
    "before": ({}, ["--threads", "{default}"]),
    "default": ({}, []),
    "threads1": ({}, ["--threads", "1"]),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", "{default}"]),
}
DEFAULT_CONTENDERS = ("before", "default", "threads1")
SURROUNDINGS = ("alone", "busy1", "busy2")
BUSY_LOOP = [sys.executable, "-c", "while True: pass"]
# Environment variables that choose OpenMP's behaviour: removed, so each contender sets its own.
_OPENMP_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OPENMP_VARS}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return {**env, **extra}


def _train_cmd(out: Path, steps: int, flags: list[str], extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "ddpm", "train", "--data", "digits", "--max-steps", str(steps),
            "--num-samples", "1", "--out", str(out), "--overwrite", "--quiet",
            *flags, *extra]  # fmt: skip


def measure(contender: str, surrounding: str, steps: int, work: Path, extra: list[str]) -> float:
    """Wall seconds of one training run of `contender` in `surrounding`."""
    env_extra, flags = CONTENDERS[contender]
    flags = [f.format(default=torch_default_threads()) for f in flags]
    env = _env(env_extra)
    others: list[subprocess.Popen] = []
    try:
        if surrounding in ("busy1", "busy2"):
            others.append(subprocess.Popen(BUSY_LOOP))
        if surrounding == "busy2":
            # another run of the same contender, long enough to outlast the measured one
            cmd = _train_cmd(work / "other", 10**6, flags, extra)
            others.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))  # fmt: skip
            time.sleep(3.0)  # past its start-up, into its training loop
        start = time.perf_counter()
        cmd = _train_cmd(work / "run", steps, flags, extra)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{contender} {surrounding}: ddpm train failed: {proc.stderr[-2000:]}")
        return wall
    finally:
        for p in others:
            p.kill()
            p.wait()


def summarise(times: dict[str, dict[str, list[float]]]) -> dict:
    base = statistics.median(times["before"]["alone"]) if "before" in times else None
    res: dict = {}
    for c, by in times.items():
        alone = statistics.median(by["alone"]) if by.get("alone") else None
        for s, ts in by.items():
            row = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                   "runs_s": ts}  # fmt: skip
            if alone:
                row["vs_alone"] = row["median_s"] / alone
            if base:
                row["vs_before_alone"] = row["median_s"] / base
            res.setdefault(c, {})[s] = row
    return res


def table(res: dict) -> str:
    lines = ["| contender | " + " | ".join(SURROUNDINGS) + " |", "|---" * 4 + "|"]
    for c, by in res.items():
        cells = []
        for s in SURROUNDINGS:
            r = by.get(s)
            if r is None:
                cells.append("")
                continue
            cell = f"{r['median_s']:.1f} s ({r['min_s']:.1f} to {r['max_s']:.1f})"
            if s != "alone" and "vs_alone" in r:
                cell += f", {r['vs_alone']:.2f}x"
            cells.append(cell)
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell (default 3)")
    ap.add_argument(
        "--contenders", nargs="+", default=list(DEFAULT_CONTENDERS), choices=list(CONTENDERS)
    )
    ap.add_argument("--surroundings", nargs="+", default=list(SURROUNDINGS), choices=SURROUNDINGS)
    ap.add_argument("--quick", action="store_true", help="a smoke test: tiny runs, one repeat")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/contention.json"))
    args = ap.parse_args()
    extra: list[str] = []
    if args.quick:
        args.steps, args.repeats = 2, 1
        extra = ["--diffusion-steps", "5", "--channels", "8", "--batch-size", "8"]
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for s in args.surroundings:
                for c in args.contenders:
                    t = measure(c, s, args.steps, Path(tmp), extra)
                    times.setdefault(c, {}).setdefault(s, []).append(t)
                    print(f"repeat {r + 1}/{args.repeats}  {s:6s} {c:9s} {t:7.1f} s", flush=True)
    res = summarise(times)
    command = "ddpm train --data digits --max-steps S --num-samples 1"
    doc = {"steps": args.steps, "repeats": args.repeats, "cpus": os.cpu_count(),
           "command": command, "results": res}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(table(res))


if __name__ == "__main__":
    main()
