"""High-level calls behind the CLI: each command is one function a Python user can call."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ddpm import dist, rundir
from ddpm.checkpoint import save_json
from ddpm.data import DataSpec
from ddpm.data.images import read_image
from ddpm.ddim import check_eta, ddim_sample
from ddpm.dist import pick_device
from ddpm.errors import ConfigError, DataError, NonFiniteError, require_choice
from ddpm.forward import q_sample
from ddpm.memory import FLOAT64, check_disk, check_fits
from ddpm.models import LoadedModel, load_model
from ddpm.ode import OdeConfig, ProbabilityFlow, ode_likelihood
from ddpm.progress import progress_bar
from ddpm.report.chains import save_forward_strip, save_trajectory, save_trajectory_2d
from ddpm.report.samples import as_plane, record_written_beside, save_samples, written_beside
from ddpm.respace import parse_steps, respace, steps_by_K, steps_label
from ddpm.rng import KeyedNoise, seeded_generator
from ddpm.sampling import sample
from ddpm.schedule import NoiseSchedule

SAMPLERS = ("ancestral", "ddim")


@dataclass(frozen=True)
class SampleResult:
    samples_path: Path
    array_path: Path
    trajectory_path: Path | None
    x0: torch.Tensor  # [N, *shape] in model space; beyond sample_chunk, the first chunk only
    clip: tuple[float, float] | None = None  # range x0_hat was clipped to in every step
    quality: object | None = None  # ddpm.quality.QualityReport with metrics=True
    quality_path: Path | None = None


# Examples drawn at once by ``sample_run``: more are drawn in chunks of this many (fewer for
# large examples: at most SAMPLE_CHUNK_ELEMENTS numbers per chunk), written through a memory map.
SAMPLE_CHUNK_EXAMPLES = 2**16
SAMPLE_CHUNK_ELEMENTS = 2**24


def sample_chunk(shape: tuple[int, ...]) -> int:
    """Examples of the given shape that ``sample_run`` draws at once."""
    return max(1, min(SAMPLE_CHUNK_EXAMPLES, SAMPLE_CHUNK_ELEMENTS // math.prod(shape)))


def check_finite_samples(x0: torch.Tensor, where: object) -> None:
    """Refuse samples [N, ...] holding NaN or inf: the network's outputs were not finite."""
    bad = int((~torch.isfinite(x0.flatten(1))).any(dim=1).sum())
    if bad:
        raise NonFiniteError(
            f"{where}: {bad} of {x0.shape[0]} samples are NaN or inf: the network's outputs "
            "are not finite; check its weights, or retrain it (e.g. with a lower --lr)"
        )


def write_npy_in_chunks(
    first: torch.Tensor,
    draw_more: Callable[[int], torch.Tensor],
    n: int,
    chunk: int,
    spec: DataSpec,
    path: Path,
) -> Path:
    """All n samples, in raw units, to the .npy file at path: ``first`` (model space, the first
    chunk), then ``draw_more(k)`` of at most ``chunk`` until there are n. They go through a
    memory map into a temporary file beside path that is moved into place at the end, so memory
    holds one chunk at a time and path is whole or untouched."""
    from numpy.lib.format import open_memmap

    tmp = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    tmp.close()
    try:
        arr = open_memmap(tmp.name, mode="w+", dtype=np.float64, shape=(n, *spec.shape))
        done, x = 0, first
        while True:
            arr[done : done + x.shape[0]] = spec.to_raw(x.detach().cpu().double()).numpy()
            done += x.shape[0]
            if done == n:
                break
            x = draw_more(min(chunk, n - done))
        arr.flush()
        del arr
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    return path


def evenly_spaced_steps(T: int, frames: int) -> list[int]:
    """frames timesteps from T down to 1, evenly spaced (T first)."""
    if frames < 2:
        raise ConfigError(f"--frames must be >= 2 (got {frames})")
    return sorted({round(T - k * (T - 1) / (frames - 1)) for k in range(frames)}, reverse=True)


def clip_range(run: LoadedModel, clip: bool | None) -> tuple[float, float] | None:
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
    steps: int | str | None = None,
    spacing: str | None = None,
    sampler: str = "ancestral",
    eta: float | None = None,
    metrics: bool = False,
    classifier_dir: str | Path | None = None,
) -> SampleResult:
    """Samples from a trained run (EMA weights) or a diffusers DDPMPipeline folder: PNG
    grid/scatter and .npy.

    trajectory: also draw x_t and the predicted x_0 at ``frames`` steps of the reverse chain.
    clip: clip x0_hat to [-1, 1] in every step (None: as the run samples, see ``clip_range``).
    steps: sample the K-step respaced process ([ND21] Sec. 4) instead of all T steps: a count
    K, section counts "10,15,20" or "ddimK", with ``spacing`` 'linspace' | 'leading' |
    'trailing' for one count K (``ddpm.respace.respaced_steps``).
    sampler: 'ancestral' ([Ho20] Alg. 2) or 'ddim' ([SME21] eq. (12)) with ``eta`` (default 0:
    deterministic; 1: ancestral with sigma_t^2 = beta_tilde_t).
    metrics: also score the samples (``ddpm.quality``) and write <out stem>_quality.json;
    classifier_dir: where the feature classifier of labelled data is kept.
    Writing into the run folder (the default) holds its lock and records the files. The files
    written beside ``out`` (and ``out`` itself when not given) never replace a file that ddpm
    did not write, and no file the run folder lists as another command's is replaced
    (CheckpointError naming it).
    """
    if n < 1:
        raise ConfigError(f"--n must be >= 1 (got {n})")
    require_choice("sampler", sampler, SAMPLERS)
    if eta is not None and sampler != "ddim":
        raise ConfigError(f"--eta {eta} applies to --sampler ddim only (got --sampler {sampler})")
    eta = check_eta(0.0 if eta is None else eta)
    if spacing is not None and steps is None:
        raise ConfigError(f"--spacing {spacing} applies with --steps; add --steps K or drop it")
    if steps is not None:
        parse_steps(steps, spacing)  # a bad spelling is refused before any file is touched
    named = out is not None
    if out is None:
        how = "" if steps is None else f"_K{steps_label(steps, spacing)}"
        how += f"_ddim_eta{eta:g}" if sampler == "ddim" else ""
        out = Path(run_dir) / f"samples_seed{seed}{how}.png"
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: samples are written as PNG; give a path ending in .png")
    # The files beside the PNG (and the PNG when ddpm chose its name) were named by no one:
    # they never replace a file that ddpm did not write.
    beside = [out.with_suffix(".npy")]
    beside += [out.with_name(out.stem + "_trajectory.png")] if trajectory else []
    beside += [out.with_name(out.stem + "_quality.json")] if metrics else []
    if Path(run_dir).is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails before sampling
    if named:  # files that an earlier `ddpm sample --out` of this name wrote may be replaced
        ours = set(written_beside(out))
        paths, beside = (
            [out, *(p for p in beside if p in ours)],
            [p for p in beside if p not in ours],
        )
    else:
        paths, beside = [], [out, *beside]
    with rundir.writing_outputs(run_dir, paths, "sample", beside=beside):
        dev = pick_device(device)
        m = load_model(run_dir, device=dev)
        x0_range = clip_range(m, clip)
        diffusion = m.diffusion if steps is None else respace(m.diffusion, steps, spacing)
        T = diffusion.T
        capture = evenly_spaced_steps(T, frames) if trajectory else ()
        g = seeded_generator(seed, dev)
        draw = sample if sampler == "ancestral" else partial(ddim_sample, eta=eta)
        chunk = sample_chunk(m.spec.shape)
        npy = out.with_suffix(".npy")
        if n > chunk:  # drawn chunk by chunk into a memory-mapped .npy
            if metrics:
                raise ConfigError(
                    f"--metrics scores samples held in memory, at most {chunk} of this model "
                    f"(got --n {n}); drop --metrics or use --n {chunk}"
                )
            check_disk(
                FLOAT64 * n * math.prod(m.spec.shape), npy, f"--n {n}: the samples' {npy.name}",
                "use a smaller --n",
            )  # fmt: skip
        with progress_bar(T * -(-n // chunk), f"sample ({sampler})", "t", enabled=progress) as bar:

            def draw_some(k: int, capture: tuple[int, ...] = ()):
                res = draw(
                    diffusion, m.model, m.spec.shape, k, g, dev, x0_range, capture,
                    on_step=lambda _: bar.update(1),
                )  # fmt: skip
                check_finite_samples(res.x0, m.path)
                return res

            res = draw_some(min(n, chunk), capture)
            if n > chunk:
                write_npy_in_chunks(res.x0, lambda k: draw_some(k).x0, n, chunk, m.spec, npy)
        path = save_samples(res.x0, out, m.spec, total=n if n > chunk else None)
        traj_path = None
        if trajectory:
            traj_path = out.with_name(out.stem + "_trajectory.png")
            k = min(n, 8)
            if m.spec.is_image:
                save_trajectory(res.xt[:, :k].cpu(), res.x0_hat[:, :k].cpu(), res.steps, traj_path)
            else:
                save_trajectory_2d(as_plane(res.xt), res.steps, traj_path)
        quality, quality_path = None, None
        if metrics:
            from ddpm.quality.run import score_run_samples

            quality = score_run_samples(m, res.x0, seed, classifier_dir, dev)
            quality_path = save_json(out.with_name(out.stem + "_quality.json"), quality.to_dict())
        written = [p for p in (out.with_suffix(".npy"), traj_path, quality_path) if p is not None]
        record_written_beside(path, written)
        return SampleResult(
            path, out.with_suffix(".npy"), traj_path, res.x0, x0_range, quality, quality_path
        )


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
    if size is not None:  # float64 noise and x_t per frame, a float32 copy; refused up front
        k = max(2, min(frames, T + 1))
        check_fits(
            (12 * k + 16) * 3 * size**2,
            f"--size {size}: {k} frames of a 3x{size}x{size} image",
            "use a smaller --size",
        )
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
    mse_path: Path | None = None  # eps-MSE and x0-MSE per timestep
    quality: object | None = None  # ddpm.quality.QualityReport when samples were scored
    weights: str = ""  # which weights were scored, in words


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
    data: str | None = None,
    samples: int | None = None,
    classifier_dir: str | Path | None = None,
    ode: OdeConfig | None = None,
) -> EvalResult:
    """Exact -ELBO of a trained model on a data split, term by term, in nats and bits/dim,
    with IW bounds for each K in ``iw`` and the KL chain when the data density is known.

    run_dir: a ddpm run folder or a diffusers DDPMPipeline folder (``ddpm.models.load_model``).
    data: a data name or path to score on (default: the run's own data; a diffusers folder
    names none, so it needs one). Writes eval_<split>.json, eval_<split>_per_timestep.png and
    eval_<split>_mse.png (eps- and x0-prediction errors per timestep) into out_dir (default:
    run_dir), and each example's -ELBO (nats, float64 [n]) to the .npy
    file ``per_example`` if given. samples: also draw this many samples (seed ``seed``) and
    score their quality beside the likelihood (``ddpm.quality``; the JSON gets a
    "sample_quality" entry).

    Writing into the run folder (the default) holds its lock and records the files.

    Noise is keyed by (seed, example index, t, chain) (``ddpm.rng.KeyedNoise``): an example's
    numbers are the same for any n, max_batch and number of processes. Under torchrun each
    process evaluates a contiguous shard of the examples, the per-example terms are gathered
    and rank 0 writes the files. clip: the p_theta scored (None: the one ``ddpm sample`` uses).
    ode: also the likelihood of the probability-flow ODE sharing the network (``ddpm.ode``),
    computed by rank 0 alone.
    """
    from ddpm.data import load_dataset
    from ddpm.evaluate import check_request, example_terms, summarise
    from ddpm.report import save_array, save_per_timestep

    if split not in ("test", "train"):
        raise ConfigError(f"--split {split!r}: choose 'test' or 'train'")
    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1 (got {n})")
    if samples is not None and samples < 2:
        raise ConfigError(f"--samples must be >= 2 (got {samples})")
    if per_example is not None and Path(per_example).suffix != ".npy":
        raise ConfigError(f"--per-example {per_example}: give a path ending in .npy")
    if max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1 (got {max_batch})")
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    outputs = [
        out / f"eval_{split}{suffix}" for suffix in (".json", "_per_timestep.png", "_mse.png")
    ]
    outputs += [Path(per_example)] if per_example is not None else []
    # Under torchrun rank 0 alone writes, so it alone holds the run folder's lock.
    lock = dist.launched_as_main()
    with rundir.writing_outputs(run_dir, outputs if lock else [], "evaluate"):
        info, dev = dist.init_distributed(pick_device(device))
        m = load_model(run_dir, device=dev)
        if ode is not None and m.schedule_name is None:
            raise ConfigError(
                f"--ode: {m.path} is a {m.source} folder; the probability-flow likelihood needs "
                "the continuous form of a ddpm run's linear or cosine schedule"
            )
        x0_range = clip_range(m, clip)
        dataset = load_dataset(m.data_config(data))
        m.check_data(dataset.spec)
        x0 = getattr(dataset, f"{split}_examples")[:n]
        check_request(x0.shape[0], iw, mc_timesteps)
        density = dataset.density.to(dev) if dataset.density is not None else None
        start, stop = dist.shard(x0.shape[0], info)
        t0 = time.perf_counter()
        terms = example_terms(
            m.diffusion, m.model, x0[start:stop].to(dev), dataset.spec.levels, iw, mc_timesteps,
            density, None, KeyedNoise(seed, torch.arange(start, stop)), max_batch, x0_range,
            progress and info.is_main, m.name,
        )  # fmt: skip
        terms = terms.map(lambda v: dist.gather_rows(v, info))
        ev = summarise(
            terms, dataset.spec, m.name, iw, mc_timesteps, x0_range, time.perf_counter() - t0
        )
        if ode is not None and info.is_main:
            flow = ProbabilityFlow.of(m.diffusion, m.schedule_name)
            res = ode_likelihood(
                flow, m.model, x0.to(dev), dataset.spec, ode, KeyedNoise(seed), max_batch, progress
            )
            ev = dataclasses.replace(ev, ode=res)
        out = Path(out_dir) if out_dir is not None else m.path
        json_path, png = out / f"eval_{split}.json", out / f"eval_{split}_per_timestep.png"
        mse = out / f"eval_{split}_mse.png"
        npy = Path(per_example) if per_example is not None else None
        quality = None
        if info.is_main:
            from ddpm.report.theory import save_mse_per_timestep

            doc = ev.to_dict()
            if samples is not None:
                quality = _scored_samples(m, samples, seed, classifier_dir, dev, progress)
                doc["sample_quality"] = quality.to_dict()
            if npy is not None:
                save_array(ev.per_example, npy)
                doc["per_example_file"] = str(npy)
            doc["processes"] = info.world_size
            doc["weights"] = m.weights
            save_json(json_path, doc)
            save_per_timestep(
                {f"{m.name} ({split}, n={ev.n})": torch.tensor(ev.per_timestep)},
                png,
                title=(
                    f"-ELBO per timestep: {ev.neg_elbo:.2f} nats = {ev.bits_per_dim:.3f} bits/dim"
                ),
            )
            save_mse_per_timestep([ev], mse, f"{m.name} ({split})")
        dist.barrier(info)
        dist.cleanup(info)
        return EvalResult(ev, json_path, png, npy, info.is_main, mse, quality, m.weights)


def _scored_samples(run, n, seed, classifier_dir, device, progress):
    """Draw n samples of run (timed) and score them: a ddpm.quality.QualityReport."""
    from ddpm.quality.run import score_run_samples

    start = time.perf_counter()
    g = seeded_generator(seed, device)
    with progress_bar(run.diffusion.T, "sample", "t", enabled=progress) as bar:
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
    oracle_evaluations: list | None = None  # data of known density: the Bayes-optimal model
    oracle_path: Path | None = None  # PNG: -ELBO and KL_joint against K, trained and optimal
    quality: list | None = None  # ddpm.quality.steps.StepRow per (sampler, K) with samples=N
    quality_json_path: Path | None = None
    quality_png_path: Path | None = None


def evaluate_steps_run(
    run_dir: str | Path,
    steps: tuple[int | str, ...],
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
    data: str | None = None,
    samples: int | None = None,
    classifier_dir: str | Path | None = None,
    samplers: tuple[str, ...] = ("ancestral", "ddim"),
    eta: float = 0.0,
    spacing: str | None = None,
) -> StepsEvalResult:
    """The exact K-step -ELBO of a trained run for each spelling in ``steps`` (a count K,
    section counts "10,15,20" or "ddimK"; ``spacing`` for counts, ``ddpm.respace.respaced_steps``):
    the run's network in the K-step respaced process ([ND21] Sec. 4), each a bound on the
    log-likelihood of that K-step model, evaluated on the same examples with noise keyed by
    (seed, example, t). Two spellings of one K must keep the same steps (the report is indexed
    by K). Writes eval_<split>_steps.json (``steps``: one report per K with its spelling,
    spacing and steps tau) and eval_<split>_steps.png (bits/dim against K) into out_dir
    (default: run_dir). On data of known density the
    Bayes-optimal model of each K-step process is evaluated beside it (same examples and x_t
    draws; ``oracle_steps`` in the JSON) and eval_<split>_steps_vs_oracle.png shows both
    against K with the data entropy.
    samples: also draw this many samples with each of ``samplers`` and K, and write the
    quality-vs-K table quality_steps.json and figure quality_steps.png (``ddpm.quality``)."""
    from ddpm.data import load_dataset
    from ddpm.evaluate import evaluate
    from ddpm.report import save_steps_curve

    if not steps:
        raise ConfigError("--steps needs at least one K")
    for spelling in steps:
        parse_steps(spelling, spacing)  # a bad spelling is refused before any file is touched
    if samples is not None and samples < 2:
        raise ConfigError(f"--samples must be >= 2 (got {samples})")
    for name in samplers:
        require_choice("sampler", name, SAMPLERS)
    check_eta(eta)
    if split not in ("test", "train"):
        raise ConfigError(f"--split {split!r}: choose 'test' or 'train'")
    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1 (got {n})")
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    names = ["_steps.json", "_steps.png", "_steps_vs_oracle.png"]
    outputs = [out / f"eval_{split}{name}" for name in names]
    outputs += [out / "quality_steps.json", out / "quality_steps.png"] if samples else []
    with rundir.writing_outputs(run_dir, outputs, "evaluate"):
        dev = pick_device(device)
        m = load_model(run_dir, device=dev)
        x0_range = clip_range(m, clip)
        dataset = load_dataset(m.data_config(data))
        m.check_data(dataset.spec)
        x0 = getattr(dataset, f"{split}_examples")[:n].to(dev)
        density = dataset.density.to(dev) if dataset.density is not None else None
        chosen = steps_by_K(m.diffusion.T, steps, spacing)  # every K checked before evaluating
        ks = sorted(chosen)
        diffusions = [respace(m.diffusion, chosen[k][0], spacing) for k in ks]

        def respacing(K: int) -> dict:  # which K steps a report row's process keeps
            return {"K": K, "steps": chosen[K][0], "spacing": spacing, "tau": chosen[K][1]}

        # Every K (and the Bayes-optimal model) is scored on the same examples and x_t draws.
        score = partial(
            evaluate, x0=x0, spec=dataset.spec, iw=iw, mc_timesteps=mc_timesteps,
            density=density, generator=KeyedNoise(seed, torch.arange(x0.shape[0])),
            max_batch=max_batch, progress=progress,
        )  # fmt: skip
        evaluations = [
            score(d, m.model, name=f"{m.name} K={k}", clip=x0_range)
            for k, d in zip(ks, diffusions, strict=True)
        ]
        out = Path(out_dir) if out_dir is not None else m.path
        doc = {
            "run": str(m.path),
            "split": split,
            "T": m.diffusion.T,
            "clip": list(x0_range) if x0_range is not None else None,
            "steps": [{**respacing(ev.T), **ev.to_dict()} for ev in evaluations],
        }
        oracles, oracle_png = None, None
        if density is not None:  # known density: the Bayes-optimal model of each K-step process
            oracles = _oracle_steps(score, density, diffusions)
            doc["oracle_steps"] = [{**respacing(ev.T), **ev.to_dict()} for ev in oracles]
            oracle_png = _save_steps_vs_oracle(
                evaluations, oracles, out / f"eval_{split}_steps_vs_oracle.png", m.name
            )
        json_path = save_json(out / f"eval_{split}_steps.json", doc)
        png = save_steps_curve(
            [ev.T for ev in evaluations],
            [ev.bits_per_dim for ev in evaluations],
            [ev.bits_per_dim_se for ev in evaluations],
            out / f"eval_{split}_steps.png",
            title=f"{m.name} ({split}, n={x0.shape[0]}): -ELBO of the K-step model",
        )
        if samples is None:
            return StepsEvalResult(evaluations, json_path, png, oracles, oracle_png)
        from ddpm.quality.run import run_quality_vs_steps, write_quality_steps

        bpd = {ev.T: (ev.bits_per_dim, ev.bits_per_dim_se) for ev in evaluations}
        rows = run_quality_vs_steps(
            m, [chosen[k][0] for k in ks], samplers, samples, seed, eta, classifier_dir,
            x0.device, bits_per_dim=bpd, spacing=spacing,
        )  # fmt: skip
        q_json, q_png = write_quality_steps(rows, out, f"{m.name}: {samples} samples")
        return StepsEvalResult(
            evaluations, json_path, png, oracles, oracle_png, rows, q_json, q_png
        )


def _oracle_steps(score, density, diffusions) -> list:
    """``score`` (``evaluate`` bound to the run's examples and x_t draws) of the Bayes-optimal
    model (``theory.bayes_optimal``) of each process."""
    from ddpm.theory import bayes_optimal

    out = []
    for d in diffusions:
        od, oracle = bayes_optimal(d, density)
        out.append(score(od, oracle, name=f"bayes-optimal K={d.T}"))
    return out


def _save_steps_vs_oracle(trained: list, oracles: list, path: Path, name: str) -> Path:
    """-ELBO and KL_joint (= E[-ELBO] - H) against K for the run and the Bayes-optimal model."""
    import numpy as np

    from ddpm.report.plots import save_sweep

    def curve(evs: list) -> dict:
        return {
            "T": np.array([e.T for e in evs], dtype=float),
            "neg_elbo": np.array([e.neg_elbo for e in evs]),
            "neg_elbo_se": np.array([e.neg_elbo_se for e in evs]),
            "kl_joint": np.array([e.kl_joint for e in evs]),
            "kl_joint_se": np.array([e.kl_joint_se for e in evs]),
        }

    curves = {"trained": curve(trained), "bayes-optimal": curve(oracles)}
    title = f"{name}: the K-step processes (respaced), trained and Bayes-optimal"
    return save_sweep(curves, path, entropy=trained[0].entropy, title=title, xlabel="steps K")
