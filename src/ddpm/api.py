"""High-level calls behind the CLI: each command is one function a Python user can call."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpm import runs
from ddpm.data.images import read_image
from ddpm.ddim import check_eta, ddim_sample
from ddpm.dist import pick_device
from ddpm.errors import ConfigError, DataError, require_choice
from ddpm.forward import q_sample
from ddpm.report.chains import save_forward_strip, save_trajectory, save_trajectory_2d
from ddpm.report.samples import as_plane, save_samples
from ddpm.respace import respace
from ddpm.rng import seeded_generator
from ddpm.sampling import sample
from ddpm.schedule import NoiseSchedule

SAMPLERS = ("ancestral", "ddim")


@dataclass(frozen=True)
class SampleResult:
    samples_path: Path
    array_path: Path
    trajectory_path: Path | None
    x0: torch.Tensor  # [N, *shape] in model space
    quality: object | None = None  # ddpm.quality.QualityReport with metrics=True
    quality_path: Path | None = None


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
    steps: int | None = None,
    sampler: str = "ancestral",
    eta: float | None = None,
    metrics: bool = False,
    classifier_dir: str | Path | None = None,
) -> SampleResult:
    """Samples from a trained run (EMA weights): PNG grid/scatter and .npy.

    trajectory: also draw x_t and the predicted x_0 at ``frames`` steps of the reverse chain.
    steps: sample the K-step respaced process ([ND21] Sec. 4) instead of all T steps.
    sampler: 'ancestral' ([Ho20] Alg. 2) or 'ddim' ([SME21] eq. (12)) with ``eta`` (default 0:
    deterministic; 1: ancestral with sigma_t^2 = beta_tilde_t).
    metrics: also score the samples (``ddpm.quality``) and write <out stem>_quality.json;
    classifier_dir: where the feature classifier of labelled data is kept.
    """
    if n < 1:
        raise ConfigError(f"--n must be >= 1 (got {n})")
    require_choice("sampler", sampler, SAMPLERS)
    if eta is not None and sampler != "ddim":
        raise ConfigError(f"--eta {eta} applies to --sampler ddim only (got --sampler {sampler})")
    eta = check_eta(0.0 if eta is None else eta)
    dev = pick_device(device)
    run = runs.load_run(run_dir, device=dev)
    diffusion = run.diffusion if steps is None else respace(run.diffusion, steps)
    if out is None:
        how = "" if steps is None else f"_K{steps}"
        how += f"_ddim_eta{eta:g}" if sampler == "ddim" else ""
        out = run.run_dir / f"samples_seed{seed}{how}.png"
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: samples are written as PNG; give a path ending in .png")
    T = diffusion.T
    capture = evenly_spaced_steps(T, frames) if trajectory else ()
    g = seeded_generator(seed, dev)
    draw = sample if sampler == "ancestral" else partial(ddim_sample, eta=eta)
    with tqdm(total=T, desc=f"sample ({sampler})", unit="t", disable=not progress) as bar:
        res = draw(
            diffusion, run.model, run.spec.shape, n, g, dev, run.clip, capture,
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
    quality, quality_path = None, None
    if metrics:
        from ddpm.checkpoint import save_json
        from ddpm.quality.run import score_run_samples

        quality = score_run_samples(run, res.x0, seed, classifier_dir, dev)
        quality_path = save_json(out.with_name(out.stem + "_quality.json"), quality.to_dict())
    return SampleResult(path, out.with_suffix(".npy"), traj_path, res.x0, quality, quality_path)


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
    quality: object | None = None  # ddpm.quality.QualityReport when samples were scored


def _eval_inputs(run_dir, split: str, n: int | None, device):
    """(run, data, x0, density) for evaluating a run on the first n examples of a split."""
    from ddpm.data import load_dataset

    if split not in ("test", "train"):
        raise ConfigError(f"--split {split!r}: choose 'test' or 'train'")
    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1 (got {n})")
    dev = pick_device(device)
    run = runs.load_run(run_dir, device=dev)
    data = load_dataset(run.config.data)
    x0 = getattr(data, split)[:n].to(dev)
    density = data.density.to(dev) if data.density is not None else None
    return run, data, x0, density


def _evaluate_process(inputs, diffusion, name: str, seed: int, **options):
    """``evaluate`` of the run's network in ``diffusion`` on the inputs of ``_eval_inputs``,
    with x_t draws from a fresh generator seeded with ``seed``."""
    from ddpm.evaluate import evaluate

    run, data, x0, density = inputs
    g = seeded_generator(seed, x0.device)
    return evaluate(diffusion, run.model, x0, data.spec, name=name, density=density, generator=g,
                    **options)  # fmt: skip


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
    samples: int | None = None,
    classifier_dir: str | Path | None = None,
) -> EvalResult:
    """Exact -ELBO of a trained run on its data split, term by term, in nats and bits/dim,
    with IW bounds for each K in ``iw`` and the KL chain when the data density is known.
    Writes eval_<split>.json and eval_<split>_per_timestep.png into out_dir (default: run_dir).
    samples: also draw this many samples (seed ``seed``) and score their quality beside the
    likelihood (``ddpm.quality``; the JSON gets a "sample_quality" entry)."""
    from ddpm.checkpoint import save_json
    from ddpm.report import save_per_timestep

    if samples is not None and samples < 2:
        raise ConfigError(f"--samples must be >= 2 (got {samples})")
    options = dict(iw=iw, mc_timesteps=mc_timesteps, max_batch=max_batch, progress=progress)

    inputs = _eval_inputs(run_dir, split, n, device)
    run, dev = inputs[0], inputs[2].device
    ev = _evaluate_process(inputs, run.diffusion, run.run_dir.name, seed, **options)
    out = Path(out_dir) if out_dir is not None else run.run_dir
    doc, quality = ev.to_dict(), None
    if samples is not None:
        quality = _scored_samples(run, samples, seed, classifier_dir, dev, progress)
        doc["sample_quality"] = quality.to_dict()
    json_path = save_json(out / f"eval_{split}.json", doc)
    png = save_per_timestep(
        {f"{run.run_dir.name} ({split}, n={ev.n})": torch.tensor(ev.per_timestep)},
        out / f"eval_{split}_per_timestep.png",
        title=f"-ELBO per timestep: {ev.neg_elbo:.2f} nats = {ev.bits_per_dim:.3f} bits/dim",
    )
    return EvalResult(ev, json_path, png, quality)


def _scored_samples(run, n, seed, classifier_dir, device, progress):
    """Draw n samples of run (timed) and score them: a ddpm.quality.QualityReport."""
    import time

    from ddpm.quality.run import score_run_samples

    start = time.perf_counter()
    g = seeded_generator(seed, device)
    with tqdm(total=run.diffusion.T, desc="sample", unit="t", disable=not progress) as bar:
        x = sample(
            run.diffusion, run.model, run.spec.shape, n, g, device, run.clip,
            on_step=lambda _: bar.update(1),
        ).x0  # fmt: skip
    seconds = time.perf_counter() - start
    report = score_run_samples(run, x, seed, classifier_dir, device)
    report.seconds["draw"] = seconds
    return report


@dataclass(frozen=True)
class StepsEvalResult:
    evaluations: list  # ddpm.evaluate.Evaluation, one per K (its T is K)
    json_path: Path
    steps_path: Path  # PNG: bits/dim against K
    quality: list | None = None  # ddpm.quality.steps.StepRow per (sampler, K) with samples=N
    quality_json_path: Path | None = None
    quality_png_path: Path | None = None


def evaluate_steps_run(
    run_dir: str | Path,
    steps: tuple[int, ...],
    split: str = "test",
    n: int | None = None,
    iw: tuple[int, ...] = (),
    mc_timesteps: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    max_batch: int = 4096,
    out_dir: str | Path | None = None,
    progress: bool = False,
    samples: int | None = None,
    classifier_dir: str | Path | None = None,
    samplers: tuple[str, ...] = ("ancestral", "ddim"),
    eta: float = 0.0,
) -> StepsEvalResult:
    """The exact K-step -ELBO of a trained run for each K in ``steps``: the run's network in
    the K-step respaced process ([ND21] Sec. 4), each a bound on the log-likelihood of that
    K-step model, evaluated on the same examples with the same seed. Writes
    eval_<split>_steps.json (``steps``: one report per K) and eval_<split>_steps.png
    (bits/dim against K) into out_dir (default: run_dir).
    samples: also draw this many samples with each of ``samplers`` and K, and write the
    quality-vs-K table quality_steps.json and figure quality_steps.png (``ddpm.quality``)."""
    from ddpm.checkpoint import save_json
    from ddpm.report import save_steps_curve

    options = dict(iw=iw, mc_timesteps=mc_timesteps, max_batch=max_batch, progress=progress)
    if not steps:
        raise ConfigError("--steps needs at least one K")
    if samples is not None and samples < 2:
        raise ConfigError(f"--samples must be >= 2 (got {samples})")
    for name in samplers:
        require_choice("sampler", name, SAMPLERS)
    check_eta(eta)
    inputs = _eval_inputs(run_dir, split, n, device)
    run, x0 = inputs[0], inputs[2]
    ks = sorted(set(int(k) for k in steps))
    diffusions = [respace(run.diffusion, k) for k in ks]  # check every K before evaluating
    evaluations = [
        _evaluate_process(inputs, d, f"{run.run_dir.name} K={k}", seed, **options)
        for k, d in zip(ks, diffusions, strict=True)
    ]
    out = Path(out_dir) if out_dir is not None else run.run_dir
    doc = {
        "run": str(run.run_dir),
        "split": split,
        "T": run.diffusion.T,
        "steps": [{"K": ev.T, **ev.to_dict()} for ev in evaluations],
    }
    json_path = save_json(out / f"eval_{split}_steps.json", doc)
    png = save_steps_curve(
        [ev.T for ev in evaluations],
        [ev.bits_per_dim for ev in evaluations],
        [ev.bits_per_dim_se for ev in evaluations],
        out / f"eval_{split}_steps.png",
        title=f"{run.run_dir.name} ({split}, n={x0.shape[0]}): -ELBO of the K-step model",
    )
    if samples is None:
        return StepsEvalResult(evaluations, json_path, png)
    from ddpm.quality.run import run_quality_vs_steps, write_quality_steps

    bpd = {ev.T: (ev.bits_per_dim, ev.bits_per_dim_se) for ev in evaluations}
    rows = run_quality_vs_steps(
        run, ks, samplers, samples, seed, eta, classifier_dir, x0.device, bits_per_dim=bpd
    )
    q_json, q_png = write_quality_steps(rows, out, f"{run.run_dir.name}: {samples} samples")
    return StepsEvalResult(evaluations, json_path, png, rows, q_json, q_png)
