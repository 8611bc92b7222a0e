"""``ddpm sample`` as one call: draw from a model and write the PNG, the .npy and the request.

Samples beyond one chunk are drawn chunk by chunk into a memory-mapped .npy, so memory holds
one chunk at a time. The files written beside a named PNG never replace a file that ddpm did
not write (``ddpm.report.samples.written_beside``).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from ddpm.data import DataSpec
from ddpm.errors import ConfigError, NonFiniteError
from ddpm.jobs.common import ModelLike, home, loaded, out_folder, writing
from ddpm.memory import FLOAT64, check_disk
from ddpm.process.respace import steps_label
from ddpm.process.rng import seeded_generator
from ddpm.progress import progress_bar
from ddpm.quality.run import score_run_samples
from ddpm.report.chains import save_trajectory, save_trajectory_2d
from ddpm.report.samples import as_plane, record_written_beside, save_samples, written_beside
from ddpm.requests import SamplingRequest
from ddpm.runs.checkpoint import save_json
from ddpm.sampling.ancestral import sample
from ddpm.sampling.ddim import ddim_sample
from ddpm.training.dist import pick_device


@dataclass(frozen=True)
class SampleResult:
    samples_path: Path
    array_path: Path
    trajectory_path: Path | None
    x0: torch.Tensor  # [N, *shape] in model space; beyond sample_chunk, the first chunk only
    clip: tuple[float, float] | None = None  # range x0_hat was clipped to in every step
    quality: object | None = None  # ddpm.quality.QualityReport with request.quality
    quality_path: Path | None = None
    request_path: Path | None = None  # the request and the model, as JSON


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
            "are not finite; check its weights, or retrain it (e.g. with a lower learning rate)"
        )


def write_npy_in_chunks(
    first: torch.Tensor,
    draw_more: Callable[[int], torch.Tensor],
    n: int,
    spec: DataSpec,
    path: Path,
) -> Path:
    """All n samples, in raw units, to the .npy file at path: ``first`` (model space, the first
    chunk), then ``draw_more(k)`` of at most one chunk until there are n. They go through a
    memory map into a temporary file beside path that is moved into place at the end, so memory
    holds one chunk at a time and path is whole or untouched."""
    chunk = sample_chunk(tuple(spec.shape))
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
        raise ConfigError(f"frames must be >= 2 (got {frames})")
    return sorted({round(T - k * (T - 1) / (frames - 1)) for k in range(frames)}, reverse=True)


def default_out(model: ModelLike, request: SamplingRequest) -> Path:
    """samples_seed<seed>[_K<steps>][_ddim_eta<eta>].png in the model's folder."""
    folder = out_folder(model, None)
    how = "" if request.steps is None else f"_K{steps_label(request.steps, request.spacing)}"
    how += f"_ddim_eta{request.eta or 0:g}" if request.sampler == "ddim" else ""
    return folder / f"samples_seed{request.seed}{how}.png"


def sample_run(
    model: ModelLike,
    request: SamplingRequest | None = None,
    out: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> SampleResult:
    """Samples of a model (a ``Model``, or a folder ``ddpm.load`` reads: a run folder's EMA
    weights, a diffusers folder) as a PNG grid/scatter, the .npy of all of them and
    <out stem>_request.json (the request and the model). ``request``: ``SamplingRequest``.

    Writing into the model's folder (the default) holds its lock and records the files. The
    files written beside ``out`` (and ``out`` itself when not given) never replace a file that
    ddpm did not write, and no file the run folder lists as another command's is replaced
    (CheckpointError naming it).
    """
    request = request or SamplingRequest()
    named = out is not None
    out = Path(out) if named else default_out(model, request)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"out {out}: samples are written as PNG; give a path ending in .png")
    # The files beside the PNG (and the PNG when ddpm chose its name) were named by no one:
    # they never replace a file that ddpm did not write.
    beside = [out.with_suffix(".npy"), out.with_name(out.stem + "_request.json")]
    beside += [out.with_name(out.stem + "_trajectory.png")] if request.trajectory else []
    beside += [out.with_name(out.stem + "_quality.json")] if request.quality else []
    folder = home(model)
    if folder is None or folder.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)  # an unwritable out fails before sampling
    if named:  # files that an earlier `ddpm sample --out` of this name wrote may be replaced
        ours = set(written_beside(out))
        paths, beside = (
            [out, *(p for p in beside if p in ours)],
            [p for p in beside if p not in ours],
        )
    else:
        paths, beside = [], [out, *beside]
    with writing(model, paths, "sample", beside=beside):
        return _draw_and_write(model, request, out, device, progress)


def _draw_and_write(model, request, out, device, progress) -> SampleResult:
    dev = pick_device(device)
    m = loaded(model, dev).clipped(request.clip)
    if request.quality is not None:  # the data the samples are scored against, before drawing
        m.data_config(request.quality.data)
    if request.steps is not None:
        m = m.respaced(request.steps, request.spacing)
    capture = evenly_spaced_steps(m.T, request.frames) if request.trajectory else ()
    g = seeded_generator(request.seed, m.device)
    draw = (
        sample if request.sampler == "ancestral" else partial(ddim_sample, eta=request.eta or 0.0)
    )
    n, chunk = request.n, sample_chunk(m.shape)
    npy = out.with_suffix(".npy")
    if n > chunk:  # drawn chunk by chunk into a memory-mapped .npy
        if request.quality is not None:
            raise ConfigError(
                f"quality scores samples held in memory, at most {chunk} of this model (got "
                f"n {n}); drop quality or draw n {chunk}",
                params=("quality", "n"),
            )
        check_disk(
            FLOAT64 * n * math.prod(m.shape), npy, f"n {n}: the samples' {npy.name}",
            "draw fewer samples", params=("n",),
        )  # fmt: skip
    with progress_bar(
        m.T * -(-n // chunk), f"sample ({request.sampler})", "t", enabled=progress
    ) as bar:

        def draw_some(k: int, capture: tuple[int, ...] = ()):
            res = draw(m, k, g, capture, on_step=lambda _: bar.update(1))
            check_finite_samples(res.x0, m.source.path or m.name)
            return res

        res = draw_some(min(n, chunk), capture)
        if n > chunk:
            write_npy_in_chunks(res.x0, lambda k: draw_some(k).x0, n, m.spec, npy)
    path = save_samples(res.x0, out, m.spec, total=n if n > chunk else None)
    traj_path = None
    if request.trajectory:
        traj_path = out.with_name(out.stem + "_trajectory.png")
        k = min(n, 8)
        if m.spec.is_image:
            save_trajectory(res.xt[:, :k].cpu(), res.x0_hat[:, :k].cpu(), res.steps, traj_path)
        else:
            save_trajectory_2d(as_plane(res.xt), res.steps, traj_path)
    quality, quality_path = None, None
    if request.quality is not None:
        quality = score_run_samples(m, res.x0, request.quality)
        quality_path = save_json(out.with_name(out.stem + "_quality.json"), quality.to_dict())
    request_path = save_json(
        out.with_name(out.stem + "_request.json"),
        {"request": request.to_dict(), "model": m.describe()},
    )
    written = [p for p in (npy, traj_path, quality_path, request_path) if p is not None]
    record_written_beside(path, written)
    return SampleResult(path, npy, traj_path, res.x0, m.clip, quality, quality_path, request_path)


__all__ = ["SampleResult", "sample_run"]
