"""Training and loading of the VAE baseline on the machinery of ``ddpm train``: the same loop
(``ddpm.training.loop.run_training``), run folder, lock, manifest, backup, resume rules
(``runs.config_difference``), learning-rate schedule, autocast, compile, and held-out validation
with early stopping and the best weights kept. The run folder:

    config.json              VaeRunConfig + DataSpec (+ "model_kind": "vae")
    checkpoint.safetensors   model.*, ema.*, best.* (when validating), optim.*; metadata: step,
                             cpu_seconds, validation, config
    log.jsonl                step, loss, rate, distortion, lr, grad_norm, seconds, cpu_seconds;
                             val_neg_elbo, val_bpd ... at each validation
    samples.png / .npy

The validation estimate is the VAE's own bound, -ELBO = rate + distortion on the held-out
training examples, as ``ddpm vae evaluate`` computes it (``ddpm.vae.evaluate.evaluate_vae``), with
the same draws of z at every validation. Every draw of step k comes from a generator seeded by
(seed, k), so k steps + resume + N - k steps equal N steps bit for bit. ``cpu_minutes`` caps the
CPU time of the training loop (summed over resumes), so that a VAE can get the CPU budget a
DDPM had.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ddpm import __version__
from ddpm.data import Dataset, DataSpec, load_dataset
from ddpm.errors import CheckpointError
from ddpm.process.rng import seeded_generator
from ddpm.report.samples import save_samples
from ddpm.runs import config as runconfig
from ddpm.runs import folder as rundir
from ddpm.runs import run as runs
from ddpm.runs.checkpoint import load_checkpoint, load_json, save_json
from ddpm.training.dist import pick_device
from ddpm.training.loop import TrainerBase, TrainResult, check_run_dir, run_training
from ddpm.training.validation import VALIDATION_SEED, ValidationEstimate
from ddpm.vae.evaluate import evaluate_vae
from ddpm.vae.model import Vae, VaeRunConfig, vae_elbo_terms, vae_sample

KIND = "vae"


@dataclass(frozen=True)
class VaeRun:
    """A VAE loaded from its run folder (EMA weights by default, the best by validation when
    the run validated)."""

    run_dir: Path
    config: VaeRunConfig
    spec: DataSpec
    model: Vae
    step: int
    cpu_seconds: float  # CPU time of training so far
    best_step: int | None = None  # the loaded weights are the best by validation, from this step
    weights: str = ""  # which weights were loaded, in words


def load_config(run_dir: str | Path) -> tuple[VaeRunConfig, DataSpec]:
    """Read config.json of a VAE run folder (CheckpointError when missing or not a VAE run),
    after restoring a run that a killed ``--overwrite`` left in its backup."""
    run_dir = Path(run_dir)
    rundir.recover_interrupted(run_dir)
    if not (run_dir / runs.CONFIG).exists():
        raise CheckpointError(
            f"{run_dir}: no {runs.CONFIG} here, so this is not a run folder; "
            "train one first (ddpm vae train)"
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


def saved_config(run_dir: str | Path) -> tuple[VaeRunConfig, DataSpec, int]:
    """(VaeRunConfig, DataSpec, step) of a VAE run, the config read from its checkpoint;
    config.json must agree with it key by key, as for a DDPM run (``ddpm.runs.config``)."""
    run_dir = Path(run_dir)
    file_cfg, spec = load_config(run_dir)
    cfg, step, _ = runconfig.checkpoint_config(run_dir, VaeRunConfig)
    return (file_cfg if cfg is None else cfg), spec, step


class VaeTrainer(TrainerBase):
    """A VAE's training run: AdamW steps on -ELBO; all else as a DDPM's (``TrainerBase``)."""

    command = "vae train"

    def __init__(self, cfg: VaeRunConfig, data: Dataset, device: torch.device) -> None:
        super().__init__(cfg, data, device)
        if cfg.cpu_minutes is not None:
            self.cpu_budget = 60.0 * cfg.cpu_minutes

    def build(self) -> nn.Module:
        return Vae(self.cfg.vae, self.data.spec.shape)

    def compiled(self, net: nn.Module) -> nn.Module:
        """The encoder and the decoder compiled in place: the loss calls them, not forward."""
        net.encoder.compile()
        net.decoder.compile()
        return net

    def train_step(self) -> dict[str, Tensor | float]:
        """One step on -ELBO = rate + distortion, one reparameterised draw of z per example,
        mean over the batch."""
        g, x0 = self.batch()
        with self.forward_pass():
            terms = vae_elbo_terms(self.ddp, x0, self.data.spec.levels, 1, g)
        loss = terms.total().mean()
        lr, grad_norm = self.optimize(loss)
        self.step += 1
        return {
            "loss": loss.detach(),
            "rate": terms.rate.detach().mean(),
            "distortion": terms.distortion.detach().mean(),
            "lr": lr,
            "grad_norm": grad_norm.detach(),
        }

    def estimate(self) -> ValidationEstimate:
        """-ELBO of the EMA weights on the held-out examples as ``ddpm vae evaluate`` has it
        (rate in closed form, distortion over 16 draws of z per example)."""
        t0 = time.perf_counter()
        g = seeded_generator(VALIDATION_SEED, self.device)  # the same draws every validation
        ev = evaluate_vae(self.ema, self.val_x, self.data.spec, generator=g)
        return ValidationEstimate(
            self.step, ev.neg_elbo, ev.neg_elbo_se, ev.bits_per_dim, ev.bits_per_dim_se,
            time.perf_counter() - t0,
        )  # fmt: skip

    def save_config(self, run_dir: Path) -> None:
        doc = {"ddpm_version": __version__, "model_kind": KIND, "config": self.cfg.to_dict()}
        save_json(run_dir / runs.CONFIG, {**doc, "data_spec": self.data.spec.to_dict()})

    def write_samples(self, path: Path, n: int, progress: bool = False) -> Path:
        g = seeded_generator(self.cfg.train.seed, self.device)
        x = vae_sample(self.selected, n, g, mean_only=self.data.spec.is_image)
        # the test points are drawn beside 2-d samples only: images need none (a source may
        # hold no test split, and converting a large one costs memory)
        reference = None if self.data.spec.is_image else self.data.test
        return save_samples(x, path, self.data.spec, reference=reference)


def train_vae(
    cfg: VaeRunConfig,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    data: Dataset | None = None,
) -> TrainResult:
    """Train a VAE as configured into the run folder out_dir (module docstring), by the rules
    of ``ddpm.training.loop.train``.

    Training stops at cfg.train.steps, after --patience validations without improvement, or
    once the loop has used cfg.cpu_minutes of CPU time (summed over resumes). resume: continue
    the run in out_dir; overwrite: replace it.
    """
    out = Path(out_dir)
    with rundir.locked(out, VaeTrainer.command, create=True):
        check_run_dir(out, cfg, resume, overwrite, lambda d: saved_config(d)[0])
        data = data if data is not None else load_dataset(cfg.data)
        return run_training(VaeTrainer(cfg, data, pick_device(device)), out, resume, progress)


def load_vae_run(
    run_dir: str | Path, device: str | torch.device = "cpu", ema: bool = True
) -> VaeRun:
    """Load a trained VAE from its run folder: the EMA weights by default, and of those the
    best by held-out validation when the run validated (as ``ddpm.runs.run.load_run_model``)."""
    run_dir = Path(run_dir)
    cfg, spec, _ = saved_config(run_dir)
    model = Vae(cfg.vae, spec.shape)
    ckpt = load_checkpoint(run_dir / runs.CHECKPOINT, device)
    best = ema and ckpt.has_best
    ckpt.load_weights(model, ema=ema, best=best)
    model.to(device).eval()
    best_step = int(ckpt.meta["validation"]["best_step"]) if best else None
    cpu = float(ckpt.meta.get("cpu_seconds", 0.0))
    words = runs.weights_in_words(ckpt.step, best_step, ema)
    return VaeRun(run_dir, cfg, spec, model, ckpt.step, cpu, best_step, words)
