"""Training loop: AdamW with linear warm-up, gradient clipping, EMA weights, atomic checkpoints.

Every random draw of step k (batch indices, timesteps, noise) comes from a generator seeded by
(seed, rank, k) (``ddpm.process.rng``), so training N steps in one go equals training k steps,
resuming, and training N - k more: the checkpoint holds weights, EMA, optimizer and sampler state,
and the CPU time of training so far. ``TrainerBase`` and ``run_training`` are the same for every
model:
``ddpm vae train`` (``ddpm.vae.train``) trains its VAE with them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ddpm.config import RunConfig, TrainConfig
from ddpm.data import Dataset, load_dataset
from ddpm.errors import CheckpointError, ConfigError
from ddpm.model import Model
from ddpm.process.rng import seeded_generator, step_generator, step_seed
from ddpm.progress import progress_bar
from ddpm.report.samples import save_samples
from ddpm.runs import config as runconfig
from ddpm.runs import folder as rundir
from ddpm.runs import run as runs
from ddpm.runs.checkpoint import Checkpoint, TrainingState, load_checkpoint, save_checkpoint
from ddpm.sampling.ancestral import sample
from ddpm.storage import atomic_write_bytes
from ddpm.training import dist
from ddpm.training.losses import make_sampler, training_loss
from ddpm.training.validation import (
    ValidationEstimate,
    ValidationState,
    estimate_neg_elbo,
    validation_split,
)

if TYPE_CHECKING:
    from ddpm.vae.model import VaeRunConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    checkpoint_path: Path
    samples_path: Path | None
    log_path: Path
    steps: int
    final_loss: float
    seconds: float
    start_step: int = 0  # the step it resumed from; == steps when there was nothing to do
    validation: ValidationState | None = None  # best held-out -ELBO, when validating
    cpu_seconds: float = 0.0  # CPU time of the training loop, summed over resumes


def lr_at(step: int, lr: float, warmup: int, schedule: str = "constant", steps: int = 0) -> float:
    """Linear warm-up over the first ``warmup`` steps, then constant, or (schedule "cosine")
    lr * (1 + cos(pi * (k - warmup) / (steps - warmup))) / 2, which reaches 0 at k = steps."""
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant" or steps <= warmup:
        return lr * ramp
    progress = min(1.0, max(0.0, (step - warmup) / (steps - warmup)))
    return lr * ramp * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay ramped as min(decay, (1 + k) / (10 + k)) so early averages are not stale."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter (buffers copied).

    One multi-tensor call instead of a Python loop; each tensor gets the same lerp as
    ``Tensor.lerp_`` would give it.
    """
    ema_params, params = list(ema.parameters()), list(model.parameters())
    assert len(ema_params) == len(params)
    torch._foreach_lerp_(ema_params, params, 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)


def adamw(params, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with cfg's learning rate and weight decay (the rate is reset every step).

    The fused kernel where torch has one (CPU, CUDA): one pass per tensor instead of a dozen
    elementwise ops, about 5x faster on CPU; it differs from the loop only by float rounding.
    """
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def autocast(mode: str, device: torch.device) -> torch.autocast:
    """The context of a training forward pass: bfloat16 autocast for mode 'bf16', else off."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16")


def check_run_dir(
    out: Path,
    cfg: RunConfig | VaeRunConfig,
    resume: bool,
    overwrite: bool,
    saved_config: Callable[[Path], RunConfig | VaeRunConfig] | None = None,
) -> None:
    """Refuse to write over an existing run unless asked to resume or overwrite it (reads only).

    A resume must agree with the saved run as ``runs.config_difference`` rules; saved_config(out)
    reads the run's config (default: ``runconfig.saved_config``, a DDPM run's).
    """
    if resume and overwrite:
        raise ConfigError(
            "resume and overwrite contradict each other: pass one of them",
            params=("resume", "overwrite"),
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; choose another out", params=("out",))
    if resume:
        if not runs.holds_run(out):
            raise CheckpointError(
                f"{out}: nothing to resume (no checkpoint here); run the same command without "
                "resume",
                params=("resume",),
            )
        saved = saved_config(out) if saved_config else runconfig.saved_config(out)[0]
        diff = runs.config_difference(saved, cfg)
        if diff is not None:
            raise CheckpointError(
                f"{out}: the requested configuration does not match the saved run ({diff}); "
                "resume with the run's own settings or train into a new out",
                params=("out",),
            )
    elif runs.holds_run(out) and not overwrite:
        raise CheckpointError(
            f"{out}: already holds a run; pass resume to continue it, overwrite to "
            "replace it, or choose another out",
            params=("resume", "overwrite", "out"),
        )
    else:
        rundir.check_fresh_folder(out, overwrite)


class TrainerBase:
    """The state of a training run, whatever its model: the examples it trains on and those it
    holds out for validation, the weights, their EMA and the best EMA weights by validation,
    AdamW at the scheduled learning rate with clipped gradients, autocast and compile, the step
    and the training CPU time (summed over resumes). A subclass builds the network (``build``),
    takes a step on its loss (``train_step``), estimates the held-out -ELBO (``estimate``),
    draws samples and writes config.json (``Trainer``: a DDPM; ``ddpm.vae.train.VaeTrainer``).
    """

    command = "train"  # the command that writes the run folder, as its manifest names it
    cpu_budget = math.inf  # training stops once cpu_seconds reaches it

    def __init__(
        self,
        cfg: RunConfig | VaeRunConfig,
        data: Dataset,
        device: torch.device,
        info: dist.DistInfo | None = None,
    ) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        self.info = info or dist.DistInfo()
        examples, self.val_x = data.train_examples, None
        if cfg.train.val_every:
            keep, held = validation_split(len(examples), cfg.train.val_fraction)
            self.val_x = examples[held].to(device)  # float32 model space
            examples = examples.take(keep)
        if cfg.train.batch_size > len(examples):
            held_out = ""
            if self.val_x is not None:
                held_out = f" (after holding out {self.val_x.shape[0]} for validation)"
            raise ConfigError(
                f"batch size {cfg.train.batch_size} is larger than the {len(examples)} "
                f"training examples of {data.spec.name!r}{held_out}: pass a smaller batch_size",
                params=("batch_size",),
            )
        if cfg.train.batch_size % self.info.world_size:
            raise ConfigError(
                f"batch size {cfg.train.batch_size} must be divisible by the "
                f"{self.info.world_size} processes"
            )
        # Weight init from the seed (same on every rank) without touching the global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            model = self.build()
        self.model = model.to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.ddp = self.model  # what the loss calls: wrapped for torchrun, compiled
        if self.info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.train.compile:  # compiled lazily, at the first step; weights stay self.model's
            self.ddp = self.compiled(self.ddp)
        self.opt = adamw(self.model.parameters(), cfg.train)
        self.train_x = examples.to(device)  # raw levels: batches are mapped per step
        self.step, self.cpu_seconds = 0, 0.0
        self.validation = ValidationState()
        self.best: nn.Module | None = None  # the EMA weights of the best validation

    def build(self) -> nn.Module:
        """A freshly initialised network (called with the global RNG seeded by --seed)."""
        raise NotImplementedError

    def compiled(self, net: nn.Module) -> nn.Module:
        """net under torch.compile."""
        return torch.compile(net)

    @property
    def selected(self) -> nn.Module:
        """The weights the run stands for: the best by validation if validating, else the EMA."""
        return self.best if self.best is not None else self.ema

    # --- one optimisation step ---------------------------------------------------------------
    def train_step(self) -> dict[str, Tensor | float]:
        """One optimisation step -> {"loss": this rank's loss, ..., "lr", "grad_norm"}, tensors
        left on the device so that a step never waits for it (``logged_stats``)."""
        raise NotImplementedError

    def batch(self) -> tuple[torch.Generator, Tensor]:
        """The generator of every draw of this step, seeded by (seed, rank, step), and the
        batch x0 [batch_size / processes, ...] drawn from it first."""
        t, info = self.cfg.train, self.info
        g = step_generator(t.seed, info.rank, self.step, self.device)
        n = t.batch_size // info.world_size
        idx = torch.randint(0, self.train_x.shape[0], (n,), generator=g, device=self.device)
        return g, self.train_x[idx].to(self.device)  # a memory-mapped file gives host tensors

    @contextlib.contextmanager
    def forward_pass(self) -> Iterator[None]:
        """The context of the loss's forward pass: autocast as configured; layers that draw
        from the global RNG (dropout) get a state fixed by (seed, rank, step) too, inside a fork
        so that the caller's RNG state is left as it was."""
        t = self.cfg.train
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), autocast(t.autocast, self.device):
            torch.manual_seed(step_seed(t.seed, self.info.rank, self.step, stream=1))
            yield

    def optimize(self, loss: Tensor) -> tuple[float, Tensor]:
        """One AdamW step on loss at the scheduled learning rate, gradients clipped, then the
        EMA update -> (learning rate, gradient norm before clipping)."""
        t = self.cfg.train
        lr = lr_at(self.step, t.lr, t.warmup, t.lr_schedule, t.steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = t.grad_clip if t.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.opt.step()
        ema_update(self.ema, self.model, ema_decay_at(self.step, t.ema_decay))
        return lr, grad_norm

    def logged_stats(self, stats: dict[str, Tensor | float]) -> dict[str, float]:
        """stats of train_step as numbers, the loss averaged over all ranks (every rank calls
        this at the same steps)."""
        loss = dist.all_gather_cat(stats["loss"][None], self.info).mean()
        return {**{k: float(v) for k, v in stats.items()}, "loss": float(loss)}

    # --- validation -------------------------------------------------------------------------
    def estimate(self) -> ValidationEstimate:
        """The held-out -ELBO of the EMA weights on val_x, the same noise every time."""
        raise NotImplementedError

    def validate(self) -> tuple[ValidationEstimate, bool]:
        """Estimate -ELBO of the EMA weights on the held-out examples; keep them if best, and
        mark the state stopped early when --patience has run out."""
        est = self.estimate()
        self.validation = self.validation.after(est).with_patience(self.cfg.train.patience)
        improved = self.validation.best_step == self.step
        if improved:
            if self.best is None:
                self.best = copy.deepcopy(self.ema)
            else:
                self.best.load_state_dict(self.ema.state_dict())
        return est, improved

    # --- checkpoints ------------------------------------------------------------------------
    def sampler_state(self) -> dict[str, Tensor] | None:
        """State of a timestep sampler that the checkpoint holds (None: none)."""
        return None

    def save(self, run_dir: Path, config: bool = False) -> None:
        """Write the checkpoint; config: then config.json too (a resumed run's new settings,
        such as --max-steps, hold once a checkpoint holds them)."""
        rundir.record(run_dir, [run_dir / runs.CHECKPOINT], self.command)
        meta: dict = {"cpu_seconds": self.cpu_seconds}
        if self.cfg.train.val_every:
            meta["validation"] = self.validation.to_dict()
        state = TrainingState(
            self.model, self.ema, self.best, self.opt, self.sampler_state(), self.step
        )
        save_checkpoint(run_dir / runs.CHECKPOINT, state, self.cfg.to_dict(), meta)
        rundir.commit(run_dir)  # a run it replaces (--overwrite) is no longer needed
        if config:
            self.save_config(run_dir)

    def load(self, run_dir: Path) -> Checkpoint:
        ckpt = load_checkpoint(run_dir / runs.CHECKPOINT, self.device)
        ckpt.load_weights(self.model)
        ckpt.load_weights(self.ema, ema=True)
        ckpt.load_optimizer(self.opt)
        self.step, self.cpu_seconds = ckpt.step, float(ckpt.meta.get("cpu_seconds", 0.0))
        if "validation" in ckpt.meta:
            self.validation = ValidationState.from_dict(ckpt.meta["validation"])
        if ckpt.has_best:
            self.best = copy.deepcopy(self.ema)
            ckpt.load_weights(self.best, best=True)
        return ckpt

    def save_config(self, run_dir: Path) -> None:
        """Write config.json (the config and the data spec)."""
        raise NotImplementedError

    def write_samples(self, path: Path, n: int, progress: bool = False) -> Path:
        """n samples of the selected weights as path (PNG) and its .npy."""
        raise NotImplementedError


class Trainer(TrainerBase):
    """A DDPM's training run: the diffusion, the network, the timestep sampler."""

    def __init__(self, cfg: RunConfig, data: Dataset, device: torch.device, info=None) -> None:
        super().__init__(cfg, data, device, info)
        self.sampler = make_sampler(cfg.diffusion)

    def build(self) -> nn.Module:
        self.diffusion, model = runs.build(self.cfg, self.data.spec)
        return model

    @property
    def clip(self) -> tuple[float, float] | None:
        """The range x0_hat is clipped to in the p_theta that is sampled and validated."""
        return (-1.0, 1.0) if self.data.spec.discrete and self.cfg.diffusion.clip_x0 else None

    def model_of(self, net: nn.Module) -> Model:
        """p_theta with the network ``net`` (the one trained, its EMA or the best)."""
        return Model(self.diffusion, net, self.data.spec, clip=self.clip)

    def train_step(self) -> dict[str, Tensor | float]:
        """One step on the DDPM's loss: timesteps from the sampler, then ``training_loss``."""
        g, x0 = self.batch()
        t, p_t = self.sampler.sample(x0.shape[0], g, self.device)
        with self.forward_pass():
            out = training_loss(
                Model(self.diffusion, self.ddp, self.data.spec), self.cfg.diffusion, x0, t, p_t,
                generator=g,
            )  # fmt: skip
        loss = out.loss.mean()
        lr, grad_norm = self.optimize(loss)
        if out.vb is not None:
            info = self.info
            self.sampler.update(dist.all_gather_cat(t, info), dist.all_gather_cat(out.vb, info))
        self.step += 1
        return {"loss": loss.detach(), "lr": lr, "grad_norm": grad_norm.detach()}

    def estimate(self) -> ValidationEstimate:
        """``val_timesteps``-timestep -ELBO estimate (``ddpm.training.validation``)."""
        return estimate_neg_elbo(
            self.model_of(self.ema), self.val_x, self.cfg.train.val_timesteps, self.step, self.info
        )

    def sampler_state(self) -> dict[str, Tensor]:
        return self.sampler.state_dict()

    def load(self, run_dir: Path) -> Checkpoint:
        ckpt = super().load(run_dir)
        self.sampler.load_state_dict(ckpt.sampler_state())
        return ckpt

    def save_config(self, run_dir: Path) -> None:
        runs.save_config(run_dir, self.cfg, self.data.spec)

    def write_samples(self, path: Path, n: int, progress: bool = False) -> Path:
        g = seeded_generator(self.cfg.train.seed, self.device)
        model = self.model_of(self.selected.eval())
        bar = progress_bar(self.diffusion.T, "sample", "t", enabled=progress)
        with bar:
            out = sample(model, n, g, on_step=lambda _: bar.update(1))
        # the test points are drawn beside 2-d samples only: images need none (a source may
        # hold no test split, and converting a large one costs memory)
        reference = None if self.data.spec.is_image else self.data.test
        return save_samples(out.x0, path, self.data.spec, reference=reference)


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    data: Dataset | None = None,
) -> TrainResult:
    """Train a DDPM as configured and write the run folder ``out_dir`` (see ``ddpm.runs.run``).

    resume: continue the run in out_dir up to cfg.train.steps; overwrite: replace it.
    Under torchrun each process calls this; rank 0 holds the folder's lock and writes the files.
    """
    out = Path(out_dir)
    info, dev = dist.init_distributed(dist.pick_device(device))
    lock = rundir.locked(out, "train", create=True) if info.is_main else contextlib.nullcontext()
    with lock:
        check_run_dir(out, cfg, resume, overwrite)  # every rank: a refusal stops them all alike
        data = data if data is not None else load_dataset(cfg.data)
        return run_training(Trainer(cfg, data, dev, info), out, resume, progress)


def run_training(trainer: TrainerBase, out: Path, resume: bool, progress: bool) -> TrainResult:
    """Train into the run folder out (checked by ``check_run_dir``, locked by the caller) until
    --max-steps, trainer.cpu_budget or --patience stops it, logging, validating, checkpointing and
    sampling as configured; resume: continue the run there. The one loop of every model."""
    cfg, info, command = trainer.cfg.train, trainer.info, trainer.command
    if resume:
        trainer.load(out)
        if trainer.step > cfg.steps:
            raise ConfigError(
                f"{out}: the run is already at step {trainer.step}, past steps "
                f"{cfg.steps}; pass a larger steps to train further",
                params=("steps",),
            )
    start = trainer.step
    trainer.validation = trainer.validation.with_patience(cfg.patience)
    validation = trainer.validation if cfg.val_every else None
    spent = trainer.cpu_seconds >= trainer.cpu_budget
    if start == cfg.steps or trainer.validation.stopped_early or spent:  # resumed at its end
        samples = out / runs.SAMPLES
        if info.is_main and not (samples.exists() and samples.with_suffix(".npy").exists()):
            # killed while drawing its final samples: draw them (the same ones) again
            rundir.record(out, [samples, samples.with_suffix(".npy")], command)
            trainer.write_samples(samples, cfg.num_samples, progress)
        dist.barrier(info)
        dist.cleanup(info)
        return TrainResult(
            out, out / runs.CHECKPOINT, samples, out / runs.LOG, start, math.nan, 0.0, start,
            validation, trainer.cpu_seconds,
        )  # fmt: skip
    guard = contextlib.nullcontext()
    if info.is_main:
        # Only now, with data and model set up, is an old run moved aside (kept until the
        # new run's first checkpoint) or what a failed run left removed.
        if not resume:
            rundir.prepare_new_run(out)
            guard = rundir.undo_on_failure(out)
        rundir.record(out, [out / runs.CONFIG, out / runs.LOG], command)
        if not resume:  # a resumed run's config.json changes with its checkpoints (save)
            trainer.save_config(out)
        _truncate_log(out / runs.LOG, trainer.step)
    dist.barrier(info)
    t0, cpu0, cpu_before = time.perf_counter(), time.process_time(), trainer.cpu_seconds

    def clock() -> float:  # the training CPU time, summed over resumes
        trainer.cpu_seconds = cpu_before + time.process_time() - cpu0
        return trainer.cpu_seconds

    enabled = progress and info.is_main
    bar = progress_bar(cfg.steps, command, "step", enabled=enabled, initial=trainer.step)
    loss = math.nan
    with guard, bar, open(out / runs.LOG, "a") if info.is_main else _Null() as logf:
        while trainer.step < cfg.steps and trainer.cpu_seconds < trainer.cpu_budget:
            stats = trainer.train_step()
            bar.update(1)
            k, cpu = trainer.step, clock()
            last = k == cfg.steps or cpu >= trainer.cpu_budget
            log_now = k % cfg.log_every == 0 or last
            save_now = bool(cfg.checkpoint_every) and k % cfg.checkpoint_every == 0
            # Numbers (a wait for the device) only where they are logged or a checkpoint is
            # written, so that a diverged run is never saved; the last step is logged.
            if log_now or save_now:
                stats = trainer.logged_stats(stats)
                loss = stats["loss"]
                if not math.isfinite(loss):
                    raise ConfigError(
                        f"training diverged by step {k} (loss {loss}); lower lr or raise warmup",
                        params=("lr", "warmup"),
                    )
            if log_now:
                bar.set_postfix(loss=f"{loss:.4f}")
                _log(logf, {"step": k, **stats}, t0, cpu)
            # On the validation steps alone (and where the CPU budget ends a run): a run that
            # stops at a --max-steps between them and is resumed validates at the same steps as one
            # trained in one go, so both keep the same best weights and patience count.
            budget_stop = last and k != cfg.steps
            if cfg.val_every and (k % cfg.val_every == 0 or budget_stop):
                est, improved = trainer.validate()
                v = trainer.validation
                bar.set_postfix(val_bpd=f"{est.bits_per_dim:.4f}", best=f"{v.best_bpd:.4f}")
                _log(logf, est.to_log(improved), t0, clock())
                if v.stopped_early:
                    break
            if info.is_main and save_now:
                trainer.save(out, config=resume)
            if info.is_main and cfg.sample_every and k % cfg.sample_every == 0:
                path = out / "progress" / f"samples_{k:07d}.png"
                rundir.record(out, [path, path.with_suffix(".npy")], command)
                trainer.write_samples(path, cfg.num_samples)
    samples_path = None
    if info.is_main:
        trainer.save(out, config=resume)
        rundir.record(out, [out / runs.SAMPLES, (out / runs.SAMPLES).with_suffix(".npy")], command)
        samples_path = trainer.write_samples(out / runs.SAMPLES, cfg.num_samples, progress)
    dist.barrier(info)
    dist.cleanup(info)
    return TrainResult(
        run_dir=out,
        checkpoint_path=out / runs.CHECKPOINT,
        samples_path=samples_path,
        log_path=out / runs.LOG,
        steps=trainer.step,
        final_loss=loss,
        seconds=time.perf_counter() - t0,
        start_step=start,
        validation=trainer.validation if cfg.val_every else None,
        cpu_seconds=trainer.cpu_seconds,
    )


def _log(logf, rec: dict, t0: float, cpu_seconds: float) -> None:
    """One line of log.jsonl: rec with the wall seconds since the loop started and the training
    CPU seconds, summed over resumes (other processes under torchrun write to a null file)."""
    rec = {**rec, "seconds": round(time.perf_counter() - t0, 3)}
    rec["cpu_seconds"] = round(cpu_seconds, 3)
    logf.write(json.dumps(rec) + "\n")
    logf.flush()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpointed step, so a resumed run's log has no duplicates.

    A last line cut short by a crash (no newline) goes silently; other lines that cannot be read
    (not UTF-8, not a JSON record with a step) are dropped too and reported in a warning."""
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    lines.pop()  # after the last newline: empty, or a line cut short by a crash
    keep, unreadable = [], []
    for number, line in enumerate(lines, start=1):
        logged = _logged_step(line)
        if logged is None:
            unreadable += [number] if line.strip() else []
        elif logged <= step:
            keep.append(line + b"\n")
    if unreadable:
        shown = ", ".join(map(str, unreadable[:10])) + (", ..." if len(unreadable) > 10 else "")
        log.warning(
            "%s: skipped %d unreadable line(s) (not UTF-8 JSON records): line %s",
            path, len(unreadable), shown,
        )  # fmt: skip
    atomic_write_bytes(path, b"".join(keep))


def _logged_step(line: bytes) -> float | None:
    """Step of one log line; None for a line that is not a UTF-8 JSON record with a step."""
    try:
        logged = json.loads(line.decode("utf-8"))["step"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError):
        return None
    ok = isinstance(logged, int | float) and not isinstance(logged, bool)
    return logged if ok and not math.isnan(logged) else None


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, _: str) -> None:
        pass

    def flush(self) -> None:
        pass
