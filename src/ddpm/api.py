"""High-level calls behind the CLI: each command is one function a Python user can call."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpm import dist, runs
from ddpm.checkpoint import save_json
from ddpm.data.images import read_image
from ddpm.dist import pick_device
from ddpm.errors import ConfigError, DataError
from ddpm.forward import q_sample
from ddpm.report.chains import save_forward_strip, save_trajectory, save_trajectory_2d
from ddpm.report.samples import as_plane, save_samples
from ddpm.rng import KeyedNoise, seeded_generator
from ddpm.sampling import sample
from ddpm.schedule import NoiseSchedule


@dataclass(frozen=True)
class SampleResult:
    samples_path: Path
    array_path: Path
    trajectory_path: Path | None
    x0: torch.Tensor  # [N, *shape] in model space
    clip: tuple[float, float] | None = None  # range x0_hat was clipped to in every step


def evenly_spaced_steps(T: int, frames: int) -> list[int]:
    """frames timesteps from T down to 1, evenly spaced (T first)."""
    if frames < 2:
        raise ConfigError(f"--frames must be >= 2 (got {frames})")
    return sorted({round(T - k * (T - 1) / (frames - 1)) for k in range(frames)}, reverse=True)


def clip_range(run: runs.Run, clip: bool | None) -> tuple[float, float] | None:
    """The range x0_hat is clipped to in p_theta: None as the run samples (clip to [-1, 1]
    for discrete data); True clips (discrete data only), False does not."""
    if clip is None:
        return run.clip
    if not clip:
        return None
    if not run.spec.discrete:
        raise ConfigError(
            f"--clip: {run.spec.name!r} is continuous data, whose x0_hat has no range to clip "
            "to; drop --clip"
        )
    return (-1.0, 1.0)


def clip_words(clip: tuple[float, float] | list[float] | None) -> str:
    """Which p_theta: 'x0_hat clipped to [-1, 1]' or 'x0_hat not clipped'."""
    return "x0_hat " + ("not clipped" if clip is None else f"clipped to [{clip[0]:g}, {clip[1]:g}]")


def sample_run(
    run_dir: str | Path,
    n: int = 64,
    out: str | Path | None = None,
    seed: int = 0,
    trajectory: bool = False,
    frames: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
    clip: bool | None = None,
) -> SampleResult:
    """Ancestral samples from a trained run (EMA weights): PNG grid/scatter and .npy.

    trajectory: also draw x_t and the predicted x_0 at ``frames`` steps of the reverse chain.
    clip: clip x0_hat to [-1, 1] in every step (None: as the run samples, see ``clip_range``).
    """
    if n < 1:
        raise ConfigError(f"--n must be >= 1 (got {n})")
    dev = pick_device(device)
    run = runs.load_run(run_dir, device=dev)
    x0_range = clip_range(run, clip)
    out = Path(out) if out is not None else run.run_dir / f"samples_seed{seed}.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: samples are written as PNG; give a path ending in .png")
    T = run.diffusion.T
    capture = evenly_spaced_steps(T, frames) if trajectory else ()
    g = seeded_generator(seed, dev)
    with tqdm(total=T, desc="sample", unit="t", disable=not progress) as bar:
        res = sample(
            run.diffusion, run.model, run.spec.shape, n, g, dev, x0_range, capture,
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
    return SampleResult(path, out.with_suffix(".npy"), traj_path, res.x0, x0_range)


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
    per_example_path: Path | None = None
    is_main: bool = True  # False on the other processes under torchrun (they write nothing)


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
    clip: bool | None = None,
    per_example: str | Path | None = None,
) -> EvalResult:
    """Exact -ELBO of a trained run on its data split, term by term, in nats and bits/dim,
    with IW bounds for each K in ``iw`` and the KL chain when the data density is known.
    Writes eval_<split>.json and eval_<split>_per_timestep.png into out_dir (default: run_dir),
    and each example's -ELBO (nats, float64 [n]) to the .npy file ``per_example`` if given.

    Noise is keyed by (seed, example index, t, chain) (``ddpm.rng.KeyedNoise``): an example's
    numbers are the same for any n, max_batch and number of processes. Under torchrun each
    process evaluates a contiguous shard of the examples, the per-example terms are gathered
    and rank 0 writes the files. clip: the p_theta scored (None: the one ``ddpm sample`` uses).
    """
    from ddpm.data import load_dataset
    from ddpm.evaluate import check_request, example_terms, summarise
    from ddpm.report import save_array, save_per_timestep

    if split not in ("test", "train"):
        raise ConfigError(f"--split {split!r}: choose 'test' or 'train'")
    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1 (got {n})")
    if per_example is not None and Path(per_example).suffix != ".npy":
        raise ConfigError(f"--per-example {per_example}: give a path ending in .npy")
    info, dev = dist.init_distributed(pick_device(device))
    run = runs.load_run(run_dir, device=dev)
    x0_range = clip_range(run, clip)
    data = load_dataset(run.config.data)
    x0 = getattr(data, split)[:n]
    check_request(x0.shape[0], iw, mc_timesteps)
    density = data.density.to(dev) if data.density is not None else None
    start, stop = dist.shard(x0.shape[0], info)
    t0 = time.perf_counter()
    terms = example_terms(
        run.diffusion, run.model, x0[start:stop].to(dev), data.spec.levels, iw, mc_timesteps,
        density, None, KeyedNoise(seed, torch.arange(start, stop)), max_batch, x0_range,
        progress and info.is_main, run.run_dir.name,
    )  # fmt: skip
    terms = terms.map(lambda v: dist.gather_rows(v, info))
    ev = summarise(
        terms, data.spec, run.run_dir.name, iw, mc_timesteps, x0_range, time.perf_counter() - t0
    )
    out = Path(out_dir) if out_dir is not None else run.run_dir
    json_path, png = out / f"eval_{split}.json", out / f"eval_{split}_per_timestep.png"
    npy = Path(per_example) if per_example is not None else None
    if info.is_main:
        doc = ev.to_dict()
        if npy is not None:
            save_array(ev.per_example, npy)
            doc["per_example_file"] = str(npy)
        doc["processes"] = info.world_size
        save_json(json_path, doc)
        save_per_timestep(
            {f"{run.run_dir.name} ({split}, n={ev.n})": torch.tensor(ev.per_timestep)},
            png,
            title=f"-ELBO per timestep: {ev.neg_elbo:.2f} nats = {ev.bits_per_dim:.3f} bits/dim",
        )
    dist.barrier(info)
    dist.cleanup(info)
    return EvalResult(ev, json_path, png, npy, info.is_main)
