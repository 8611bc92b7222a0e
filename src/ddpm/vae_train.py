"""Training and loading of the VAE baseline with the conventions of ``ddpm.train``: a run folder

    config.json              VaeRunConfig + DataSpec (+ "model_kind": "vae")
    checkpoint.safetensors   model.*, ema.*, optim.*; metadata: step, cpu_seconds, config
    log.jsonl                step, loss, rate, distortion, lr, grad_norm, seconds, cpu_seconds
    samples.png / .npy

AdamW with warm-up and gradient clipping, EMA weights, every draw of step k from a generator
seeded by (seed, k), so k steps + resume + N - k steps equal N steps bit for bit. The CPU time
of the training loop (time.process_time, summed over resumes) is logged and checkpointed, and
``cpu_minutes`` caps it, so that a VAE can get the CPU budget a DDPM had.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ddpm import __version__, rundir, runs
from ddpm.checkpoint import load_checkpoint, load_json, save_checkpoint, save_json
from ddpm.data import Dataset, DataSpec, load_dataset
from ddpm.dist import pick_device
from ddpm.errors import CheckpointError, ConfigError
from ddpm.rng import seeded_generator, step_generator
from ddpm.train import (
    _truncate_log,
    check_run_dir,
    ema_decay_at,
    ema_update,
    lr_at,
)
from ddpm.vae import Vae, VaeRunConfig, vae_elbo_terms, vae_sample

KIND = "vae"


@dataclass(frozen=True)
class VaeRun:
    """A VAE loaded from its run folder (EMA weights by default)."""

    run_dir: Path
    config: VaeRunConfig
    spec: DataSpec
    model: Vae
    step: int
    cpu_seconds: float  # CPU time of training so far


@dataclass(frozen=True)
class VaeTrainResult:
    run_dir: Path
    checkpoint_path: Path
    samples_path: Path
    log_path: Path
    steps: int
    final_loss: float
    cpu_seconds: float  # CPU time of the training loop, summed over resumes
    seconds: float  # wall time of this call's loop


def load_config(run_dir: str | Path) -> tuple[VaeRunConfig, DataSpec]:
    """Read config.json of a VAE run folder (CheckpointError when missing or not a VAE run)."""
    run_dir = Path(run_dir)
    if not (run_dir / runs.CONFIG).exists():
        raise CheckpointError(
            f"{run_dir}: no {runs.CONFIG} here, so this is not a run folder; "
            "train one with `ddpm vae train --out DIR`"
        )
    doc = load_json(run_dir / runs.CONFIG)
    if not isinstance(doc, dict) or doc.get("model_kind") != KIND:
        raise CheckpointError(
            f"{run_dir}: holds a DDPM run, not a VAE run; use `ddpm evaluate` for it, or pass "
            "a folder written by `ddpm vae train`"
        )
    try:
        return VaeRunConfig.from_dict(doc["config"]), DataSpec.from_dict(doc["data_spec"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(
            f"{run_dir / runs.CONFIG}: missing entry {e}; the file is damaged"
        ) from e


def _difference(saved: VaeRunConfig, requested: VaeRunConfig) -> str | None:
    """First difference that keeps ``requested`` from resuming ``saved``, else None. Only the
    length of training (steps, cpu_minutes) and how often it logs, samples and saves may change."""
    free = ("steps", "log_every", "sample_every", "checkpoint_every", "num_samples")
    train = replace(requested.train, **{f: getattr(saved.train, f) for f in free})
    aligned = replace(requested, train=train, cpu_minutes=saved.cpu_minutes)
    if aligned == saved:
        return None
    a, b = saved.to_dict(), aligned.to_dict()
    sections = [s for s in a if isinstance(a[s], dict)]
    diffs = [f"{s}.{k}: {a[s][k]!r} vs {b[s][k]!r}" for s in sections for k in a[s]
             if a[s][k] != b[s][k]]  # fmt: skip
    return diffs[0]


class VaeTrainer:
    """State of one VAE training run: model, EMA, optimizer, step, CPU time used."""

    def __init__(self, cfg: VaeRunConfig, data: Dataset, device: torch.device) -> None:
        if cfg.train.batch_size > len(data.train_examples):
            raise ConfigError(
                f"batch size {cfg.train.batch_size} is larger than the {len(data.train_examples)} "
                f"training examples of {data.spec.name!r}: pass a smaller --batch-size"
            )
        self.cfg, self.spec, self.device = cfg, data.spec, device
        with torch.random.fork_rng(devices=[]):  # weights from the seed, global RNG untouched
            torch.manual_seed(cfg.train.seed)
            self.model = Vae(cfg.vae, data.spec.shape).to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        t = cfg.train
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.train_x = data.train_examples.to(device)
        self.step, self.cpu_seconds = 0, 0.0

    def train_step(self) -> dict[str, float]:
        """One AdamW step on -ELBO (one reparameterised draw per example), mean over the batch."""
        cfg = self.cfg.train
        g = step_generator(cfg.seed, 0, self.step, self.device)
        idx = torch.randint(0, self.train_x.shape[0], (cfg.batch_size,), generator=g,
                            device=self.device)  # fmt: skip
        x0 = self.train_x[idx].to(self.device)
        terms = vae_elbo_terms(self.model, x0, self.spec.levels, 1, g)
        loss = terms.total().mean()
        lr = lr_at(self.step, cfg.lr, cfg.warmup)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.opt.step()
        ema_update(self.ema, self.model, ema_decay_at(self.step, cfg.ema_decay))
        self.step += 1
        return {
            "loss": float(loss.detach()),
            "rate": float(terms.rate.detach().mean()),
            "distortion": float(terms.distortion.detach().mean()),
            "lr": lr,
            "grad_norm": grad_norm,
        }

    def save(self, run_dir: Path) -> None:
        rundir.record(run_dir, [run_dir / runs.CHECKPOINT])
        save_checkpoint(
            run_dir / runs.CHECKPOINT,
            self.model,
            ema=self.ema,
            optimizer=self.opt,
            step=self.step,
            config=self.cfg.to_dict(),
            extra_meta={"cpu_seconds": self.cpu_seconds},
        )
        rundir.commit(run_dir)  # a run it replaces (--overwrite) is no longer needed

    def load(self, run_dir: Path) -> None:
        ckpt = load_checkpoint(run_dir / runs.CHECKPOINT, self.device)
        ckpt.load_weights(self.model)
        ckpt.load_weights(self.ema, ema=True)
        ckpt.load_optimizer(self.opt)
        self.step, self.cpu_seconds = ckpt.step, float(ckpt.meta.get("cpu_seconds", 0.0))

    def write_samples(self, path: Path, n: int, reference: torch.Tensor) -> Path:
        from ddpm.report.samples import save_samples

        g = seeded_generator(self.cfg.train.seed, self.device)
        x = vae_sample(self.ema, n, g, mean_only=self.spec.is_image)
        return save_samples(x, path, self.spec, reference=reference)


def train_vae(
    cfg: VaeRunConfig,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    data: Dataset | None = None,
) -> VaeTrainResult:
    """Train a VAE as configured into the run folder out_dir (module docstring).

    Training stops at cfg.train.steps, or earlier once the loop has used cfg.cpu_minutes of CPU
    time (summed over resumes). resume: continue the run in out_dir; overwrite: replace it.
    """
    out = Path(out_dir)
    with rundir.locked(out, "vae train", create=True):
        return _train_vae(cfg, out, resume, overwrite, pick_device(device), progress, data)


def _train_vae(cfg, out: Path, resume, overwrite, dev, progress, data) -> VaeTrainResult:
    check_run_dir(out, cfg, resume, overwrite, lambda d: _difference(load_config(d)[0], cfg))
    data = data if data is not None else load_dataset(cfg.data)
    trainer = VaeTrainer(cfg, data, dev)
    if resume:
        trainer.load(out)
        if trainer.step > cfg.train.steps:
            raise ConfigError(
                f"{out}: the run is already at step {trainer.step}, past --steps "
                f"{cfg.train.steps}; pass a larger --steps to train further"
            )
    guard = contextlib.nullcontext()
    if not resume:  # only now, with data and model set up, is an old run moved aside
        rundir.prepare_new_run(out)
        guard = rundir.undo_on_failure(out)
    with guard:
        return _train_loop(cfg, out, trainer, data, progress)


def _train_loop(cfg, out: Path, trainer, data, progress) -> VaeTrainResult:
    from tqdm.auto import tqdm

    rundir.record(out, [out / runs.CONFIG, out / runs.LOG])
    doc = {"ddpm_version": __version__, "model_kind": KIND, "config": cfg.to_dict()}
    save_json(out / runs.CONFIG, {**doc, "data_spec": data.spec.to_dict()})
    _truncate_log(out / runs.LOG, trainer.step)
    budget = math.inf if cfg.cpu_minutes is None else 60.0 * cfg.cpu_minutes
    t0, cpu0, cpu_before = time.perf_counter(), time.process_time(), trainer.cpu_seconds
    loss, t = math.nan, cfg.train
    bar = tqdm(total=t.steps, initial=trainer.step, disable=not progress, desc="train vae")
    with bar, open(out / runs.LOG, "a") as logf:
        while trainer.step < t.steps and trainer.cpu_seconds < budget:
            stats = trainer.train_step()
            trainer.cpu_seconds = cpu_before + time.process_time() - cpu0
            loss = stats["loss"]
            if not math.isfinite(loss):
                raise ConfigError(
                    f"training diverged at step {trainer.step} (loss {loss}); "
                    "lower --lr or raise --warmup"
                )
            bar.update(1)
            k = trainer.step
            if k % t.log_every == 0 or k == t.steps or trainer.cpu_seconds >= budget:
                bar.set_postfix(loss=f"{loss:.3f}")
                rec = {"step": k, **stats, "seconds": round(time.perf_counter() - t0, 3)}
                logf.write(json.dumps({**rec, "cpu_seconds": round(trainer.cpu_seconds, 3)}))
                logf.write("\n")
                logf.flush()
            if t.checkpoint_every and k % t.checkpoint_every == 0:
                trainer.save(out)
            if t.sample_every and k % t.sample_every == 0:
                path = out / "progress" / f"samples_{k:07d}.png"
                rundir.record(out, [path, path.with_suffix(".npy")])
                trainer.write_samples(path, t.num_samples, data.test)
    seconds = time.perf_counter() - t0
    trainer.save(out)
    rundir.record(out, [out / runs.SAMPLES, (out / runs.SAMPLES).with_suffix(".npy")])
    samples = trainer.write_samples(out / runs.SAMPLES, t.num_samples, data.test)
    return VaeTrainResult(
        out, out / runs.CHECKPOINT, samples, out / runs.LOG, trainer.step, loss,
        trainer.cpu_seconds, seconds,
    )  # fmt: skip


def load_vae_run(run_dir: str | Path, device: str | torch.device = "cpu", ema: bool = True):
    """Load a trained VAE (EMA weights by default) from its run folder -> VaeRun."""
    run_dir = Path(run_dir)
    cfg, spec = load_config(run_dir)
    model = Vae(cfg.vae, spec.shape)
    ckpt = load_checkpoint(run_dir / runs.CHECKPOINT, device)
    meta = ckpt.meta
    saved = VaeRunConfig.from_dict(meta["config"]) if "config" in meta else cfg
    diff = _difference(saved, cfg)
    if diff is not None:
        raise CheckpointError(
            f"{run_dir}: {runs.CONFIG} does not match the checkpoint ({diff}); "
            f"restore the original {runs.CONFIG} or train again"
        )
    ckpt.load_weights(model, ema=ema)
    model.to(device).eval()
    step, cpu = int(meta.get("step", 0)), float(meta.get("cpu_seconds", 0.0))
    return VaeRun(run_dir, cfg, spec, model, step, cpu)
