"""diffusers' training recipe against ddpm's defaults on digits, for the same CPU time.

In one process, training alternates in chunks between
  * a diffusers UNet2DModel trained with the recipe of diffusers' train_unconditional example:
    DDPMScheduler (linear, 1000 steps, epsilon), MSE on eps, AdamW (lr 1e-4, betas 0.95/0.999,
    weight decay 1e-6), cosine lr schedule with 500 warm-up steps, grad-norm clip 1, EMA with
    warm-up (inv_gamma 1, power 3/4, max decay 0.9999), batch 16; and
  * a ddpm U-Net of about the same parameter count trained by ``ddpm.training.loop.Trainer``
    with the defaults of ``ddpm train`` (T = 1000 linear, L_simple, batch 128, lr 2e-3, EMA
    0.995),
until each has used --minutes of CPU time (time.process_time: robust to other processes on a
shared machine). The cosine schedule needs a step count: it is the budget divided by the CPU
time per step of the first chunk. Then both are saved (the diffusers one with save_pretrained,
EMA weights) and scored with ``ddpm evaluate --no-clip-denoised``: the exact T = 1000 -ELBO in
bits/dim ± SE on the digits test split.

    OMP_NUM_THREADS=1 python benchmarks/diffusers_vs_ddpm.py --minutes 3 --out runs/vs
    python benchmarks/diffusers_vs_ddpm.py --out runs/vs --eval-only      # score saved models

With --only diffusers, only the diffusers model is trained (for comparing with a run of
`ddpm train` given the same CPU time, e.g. the likelihood preset, in another process).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm.config import DataConfig, RunConfig
from ddpm.data import load_dataset
from ddpm.runs import run as runs
from ddpm.training.loop import Trainer

WARMUP, BATCH = 500, 16  # diffusers' train_unconditional defaults


def diffusers_unet(channels: int):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(channels, 2 * channels),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


class DiffusersRecipe:
    """One training step of diffusers' train_unconditional example, on CPU."""

    def __init__(self, train_x: torch.Tensor, channels: int, seed: int) -> None:
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        torch.manual_seed(seed)  # diffusers initialises weights from the global generator
        self.unet = diffusers_unet(channels)
        self.scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon"
        )
        self.opt = torch.optim.AdamW(
            self.unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
        )
        self.ema = EMAModel(
            self.unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75
        )
        self.lr_schedule, self.horizon = None, None
        self.train_x, self.g = train_x, torch.Generator().manual_seed(seed)
        self.order, self.pos, self.step = torch.empty(0, dtype=torch.long), 0, 0

    def set_horizon(self, total_steps: int) -> None:
        """Create the cosine schedule for total_steps and advance it to the current step."""
        from diffusers.optimization import get_cosine_schedule_with_warmup

        self.horizon = total_steps
        self.lr_schedule = get_cosine_schedule_with_warmup(self.opt, WARMUP, total_steps)
        with warnings.catch_warnings():  # advancing a fresh schedule warns about step order
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(self.step):
                self.lr_schedule.step()

    def train_step(self) -> float:
        if self.pos + BATCH > len(self.order):  # a new shuffled epoch (drop the last partial)
            self.order, self.pos = torch.randperm(len(self.train_x), generator=self.g), 0
        x0 = self.train_x[self.order[self.pos : self.pos + BATCH]]
        self.pos += BATCH
        if self.lr_schedule is None:  # before the horizon is known: the warm-up, lr * k / 500
            for group in self.opt.param_groups:
                group["lr"] = 1e-4 * self.step / WARMUP
        noise = torch.randn(x0.shape, generator=self.g)
        t = torch.randint(0, 1000, (BATCH,), generator=self.g)
        xt = self.scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(self.unet(xt, t).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        if self.lr_schedule is not None:
            self.lr_schedule.step()
        self.opt.zero_grad()
        self.ema.step(self.unet.parameters())
        self.step += 1
        return float(loss.detach())

    def save(self, folder: Path) -> None:
        from diffusers import DDPMPipeline

        unet = copy.deepcopy(self.unet)
        self.ema.copy_to(unet.parameters())
        DDPMPipeline(unet=unet, scheduler=self.scheduler).save_pretrained(folder)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_chunk(step_fn, budget_s: float, times: list[float], losses: list[float]) -> None:
    """Train until this chunk has used budget_s CPU seconds; record CPU time per step."""
    used = 0.0
    while used < budget_s:
        t0 = time.process_time()
        losses.append(step_fn())
        dt = time.process_time() - t0
        times.append(dt)
        used += dt


def train_both(args: argparse.Namespace, out: Path) -> dict:
    data = load_dataset(DataConfig(name="digits"))
    cfg = RunConfig()  # ddpm train's defaults, digits
    ddpm_trainer = Trainer(cfg, data, torch.device("cpu"))
    recipe = DiffusersRecipe(data.train, args.channels, cfg.train.seed)
    budget = 60.0 * args.minutes
    names = ("diffusers", "ddpm") if args.only is None else (args.only,)
    steps = {
        "diffusers": recipe.train_step,
        "ddpm": lambda: float(ddpm_trainer.train_step()["loss"]),
    }
    times = {k: [] for k in names}
    losses = {k: [] for k in names}
    while any(sum(times[k]) < budget for k in names):
        for k in names:
            left = budget - sum(times[k])
            if left > 0:
                run_chunk(steps[k], min(args.chunk_seconds, left), times[k], losses[k])
        if recipe.lr_schedule is None:  # horizon from the first chunk's CPU time per step
            recipe.set_horizon(
                max(WARMUP + 1, round(budget / statistics.median(times["diffusers"])))
            )
        done = {k: f"{sum(times[k]):.0f}/{budget:.0f} s" for k in names}
        print(f"CPU time used: {done}", flush=True)
    if "diffusers" in names:
        recipe.save(out / "diffusers")
    if "ddpm" in names:
        final = dataclasses.replace(cfg.train, steps=ddpm_trainer.step)
        ddpm_trainer.cfg = dataclasses.replace(cfg, train=final)
        (out / "ddpm").mkdir(parents=True, exist_ok=True)
        runs.save_config(out / "ddpm", ddpm_trainer.cfg, data.spec)
        ddpm_trainer.save(out / "ddpm")
    summary = {}
    for k, module in (("diffusers", recipe.unet), ("ddpm", ddpm_trainer.model)):
        if k not in names:
            continue
        t = times[k]
        summary[k] = {
            "params": n_params(module),
            "steps": len(t),
            "batch_size": BATCH if k == "diffusers" else cfg.train.batch_size,
            "cpu_seconds": sum(t),
            "cpu_ms_per_step_median": 1000 * statistics.median(t),
            "cpu_ms_per_step_range": [1000 * min(t), 1000 * max(t)],
            "final_loss": statistics.fmean(losses[k][-100:]),
        }
    if "diffusers" in names:
        summary["diffusers"]["lr_horizon_steps"] = recipe.horizon
    return summary


def evaluate_one(folder: Path, n: int | None) -> dict:
    """`ddpm evaluate FOLDER --data digits --no-clip-denoised`: exact T-step -ELBO of the unclipped
    p_theta (the same for both, whatever their sampling settings) on the digits test split."""
    from ddpm.jobs.evaluate import evaluate_run
    from ddpm.requests import EvaluationRequest

    torch.set_num_threads(1)
    t0 = time.process_time()
    request = EvaluationRequest(data="digits", n=n, clip=False)
    ev = evaluate_run(folder, request, out_dir=folder).evaluation
    return {
        "bits_per_dim": ev.bits_per_dim,
        "bits_per_dim_se": ev.bits_per_dim_se,
        "neg_elbo": ev.neg_elbo,
        "neg_elbo_se": ev.neg_elbo_se,
        "n": ev.n,
        "T": ev.T,
        "eval_cpu_seconds": time.process_time() - t0,
    }


def evaluate_both(out: Path, n: int | None, names: tuple[str, ...]) -> dict:
    """Score the saved models, one process each (the scores do not depend on timing)."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        jobs = {k: pool.submit(evaluate_one, out / k, n) for k in names}
        return {k: jobs[k].result() for k in names}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="CPU minutes per model")
    p.add_argument("--chunk-seconds", type=float, default=5.0, help="CPU seconds per chunk")
    p.add_argument("--channels", type=int, default=28, help="diffusers UNet base channels")
    p.add_argument("--n", type=int, default=None, help="test examples scored (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--out", type=Path, default=Path("runs/diffusers_vs_ddpm"))
    p.add_argument("--eval-only", action="store_true", help="score the models saved in --out")
    p.add_argument("--train-only", action="store_true", help="train and save, do not score")
    p.add_argument("--only", choices=("diffusers", "ddpm"), help="train and score one model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    if args.eval_only:
        summary = json.loads(summary_path.read_text())
    else:
        summary = {"minutes": args.minutes, "threads": args.threads, **train_both(args, args.out)}
        summary_path.write_text(json.dumps(summary, indent=2))
    if args.train_only:
        return
    names = tuple(k for k in ("diffusers", "ddpm") if k in summary)
    for k, v in evaluate_both(args.out, args.n, names).items():
        summary[k].update(v)
    summary_path.write_text(json.dumps(summary, indent=2))
    print(f"\n{summary['minutes']:g} CPU minutes each, {summary['threads']} thread(s)")
    print("| model | params | batch | steps | CPU ms/step (median, range) | test bits/dim ± SE |")
    print("|---|---:|---:|---:|---|---|")
    for k in names:
        s = summary[k]
        lo, hi = s["cpu_ms_per_step_range"]
        print(
            f"| {k} | {s['params']:,} | {s['batch_size']} | {s['steps']:,} | "
            f"{s['cpu_ms_per_step_median']:.1f} ({lo:.1f} to {hi:.1f}) | "
            f"{s['bits_per_dim']:.3f} ± {s['bits_per_dim_se']:.3f} |"
        )
    print(f"wrote {summary_path}")


if __name__ == "__main__":
    main()
