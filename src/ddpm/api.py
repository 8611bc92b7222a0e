"""High-level calls behind the CLI: each command is one function a Python user can call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpm import rundir, runs
from ddpm.data.images import read_image
from ddpm.dist import pick_device
from ddpm.errors import ConfigError, DataError
from ddpm.forward import q_sample
from ddpm.report.chains import save_forward_strip, save_trajectory, save_trajectory_2d
from ddpm.report.samples import as_plane, save_samples
from ddpm.rng import seeded_generator
from ddpm.sampling import sample
from ddpm.schedule import NoiseSchedule


@dataclass(frozen=True)
class SampleResult:
    samples_path: Path
    array_path: Path
    trajectory_path: Path | None
    x0: torch.Tensor  # [N, *shape] in model space


def evenly_spaced_steps(T: int, frames: int) -> list[int]:
    """frames timesteps from T down to 1, evenly spaced (T first)."""
    if frames < 2:
        raise ConfigError(f"--frames must be >= 2 (got {frames})")
    return sorted({round(T - k * (T - 1) / (frames - 1)) for k in range(frames)}, reverse=True)


def sample_run(
    run_dir: str | Path,
    n: int = 64,
    out: str | Path | None = None,
    seed: int = 0,
    trajectory: bool = False,
    frames: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> SampleResult:
    """Ancestral samples from a trained run (EMA weights): PNG grid/scatter and .npy.

    trajectory: also draw x_t and the predicted x_0 at ``frames`` steps of the reverse chain.
    Writing into the run folder (the default) holds its lock and records the files.
    """
    out = Path(out) if out is not None else Path(run_dir) / f"samples_seed{seed}.png"
    outputs = [out, out.with_suffix(".npy"), out.with_name(out.stem + "_trajectory.png")]
    if Path(run_dir).is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails before sampling
    with rundir.writing_outputs(run_dir, outputs[: 3 if trajectory else 2], "sample"):
        return _sample_run(run_dir, n, out, seed, trajectory, frames, device, progress)


def _sample_run(run_dir, n, out, seed, trajectory, frames, device, progress) -> SampleResult:
    if n < 1:
        raise ConfigError(f"--n must be >= 1 (got {n})")
    dev = pick_device(device)
    run = runs.load_run(run_dir, device=dev)
    out = Path(out) if out is not None else run.run_dir / f"samples_seed{seed}.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: samples are written as PNG; give a path ending in .png")
    capture = evenly_spaced_steps(run.schedule.T, frames) if trajectory else ()
    g = seeded_generator(seed, dev)
    with tqdm(total=run.schedule.T, desc="sample", unit="t", disable=not progress) as bar:
        res = sample(
            run.schedule, run.param, run.model, run.spec.shape, n, g, dev, run.clip, capture,
            on_step=lambda _: bar.update(1),
        )  # fmt: skip
    path = save_samples(res.x0, out, run.spec)
    traj_path = None
    if trajectory:
        traj_path = out.with_name(out.stem + "_trajectory.png")
        k = min(n, 8)
        if run.spec.is_image:
            save_trajectory(res.xt[:, :k].cpu(), res.x0_hat[:, :k].cpu(), res.steps, traj_path)
        else:
            save_trajectory_2d(as_plane(res.xt), res.steps, traj_path)
    return SampleResult(path, out.with_suffix(".npy"), traj_path, res.x0)


def forward_strip(
    image: str | Path,
    out: str | Path = "forward.png",
    T: int = 1000,
    schedule: str = "linear",
    frames: int = 8,
    size: int | None = None,
    seed: int = 0,
) -> Path:
    """The forward process q(x_t | x_0) applied to one image at ``frames`` values of t,
    from t = 0 (the image) to t = T (almost pure noise), [Ho20] eq. (4)."""
    image = Path(image)
    if size is not None and size < 2:
        raise ConfigError(f"--size must be >= 2 pixels (got {size})")
    if not image.is_file():
        raise DataError(f"{image}: no such image file; give the path of a PNG or JPEG image")
    s = NoiseSchedule.from_name(schedule, T)
    pixels = read_image(image, size, grayscale=False)  # uint8 [C, H, W]
    x0 = torch.tensor(pixels, dtype=torch.float64) / 127.5 - 1
    if frames < 2:
        raise ConfigError(f"--frames must be >= 2 (got {frames})")
    ts = sorted({round(k * T / (frames - 1)) for k in range(frames)})  # t = 0 (the image) .. T
    g = seeded_generator(seed)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor(ts)
    xt = q_sample(s, x0.expand(len(ts), *x0.shape), t, noise=noise.expand(len(ts), *x0.shape))
    alpha_bars = [float(s.alpha_bar[k]) for k in ts]
    return save_forward_strip(xt.clamp(-1, 1).float(), ts, out, alpha_bars=alpha_bars)


@dataclass(frozen=True)
class EvalResult:
    evaluation: object  # ddpm.evaluate.Evaluation
    json_path: Path
    per_timestep_path: Path


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    n: int | None = None,
    iw: tuple[int, ...] = (),
    mc_timesteps: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    max_batch: int = 4096,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> EvalResult:
    """Exact -ELBO of a trained run on its data split, term by term, in nats and bits/dim,
    with IW bounds for each K in ``iw`` and the KL chain when the data density is known.
    Writes eval_<split>.json and eval_<split>_per_timestep.png into out_dir (default: run_dir,
    then holding its lock and recording the files)."""
    if max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1 (got {max_batch})")
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    outputs = [out / f"eval_{split}.json", out / f"eval_{split}_per_timestep.png"]
    with rundir.writing_outputs(run_dir, outputs, "evaluate"):
        return _evaluate_run(
            run_dir, split, n, iw, mc_timesteps, seed, device, max_batch, out_dir, progress
        )


def _evaluate_run(
    run_dir, split, n, iw, mc_timesteps, seed, device, max_batch, out_dir, progress
) -> EvalResult:
    from ddpm.checkpoint import save_json
    from ddpm.data import load_dataset
    from ddpm.evaluate import evaluate
    from ddpm.report import save_per_timestep

    if split not in ("test", "train"):
        raise ConfigError(f"--split {split!r}: choose 'test' or 'train'")
    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1 (got {n})")
    dev = pick_device(device)
    run = runs.load_run(run_dir, device=dev)
    data = load_dataset(run.config.data)
    x0 = getattr(data, split)[:n].to(dev)
    density = data.density.to(dev) if data.density is not None else None
    g = seeded_generator(seed, dev)
    ev = evaluate(
        run.schedule,
        run.param,
        run.model,
        x0,
        data.spec,
        name=run.run_dir.name,
        iw=iw,
        mc_timesteps=mc_timesteps,
        density=density,
        generator=g,
        max_batch=max_batch,
        progress=progress,
    )
    out = Path(out_dir) if out_dir is not None else run.run_dir
    json_path = save_json(out / f"eval_{split}.json", ev.to_dict())
    png = save_per_timestep(
        {f"{run.run_dir.name} ({split}, n={ev.n})": torch.tensor(ev.per_timestep)},
        out / f"eval_{split}_per_timestep.png",
        title=f"-ELBO per timestep: {ev.neg_elbo:.2f} nats = {ev.bits_per_dim:.3f} bits/dim",
    )
    return EvalResult(ev, json_path, png)
