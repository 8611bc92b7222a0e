"""The VAE's jobs: ``ddpm vae evaluate`` and view 3 (``ddpm vae compare``), a DDPM of any
source beside a trained VAE on the same data (``ddpm.vae.evaluate`` computes the numbers)."""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm.data import load_dataset
from ddpm.errors import ConfigError
from ddpm.likelihood.evaluate import Evaluation, evaluate
from ddpm.model import Model
from ddpm.process.rng import KeyedNoise, seeded_generator
from ddpm.requests import EvaluationRequest, VaeEvaluationRequest
from ddpm.runs import folder as rundir
from ddpm.runs.logs import logged_cpu_seconds
from ddpm.storage import save_json
from ddpm.vae.evaluate import View3, evaluate_vae, view3_row
from ddpm.vae.model import num_parameters
from ddpm.vae.train import load_config, load_vae_run


def compare_runs(
    ddpm: Model,
    vae_dir: str | Path,
    request: VaeEvaluationRequest | None = None,
    progress: bool = False,
) -> View3:
    """View 3: a DDPM (any ``Model``: a run, a diffusers folder) and a trained VAE on the first
    n test examples of the same data: parameters, training CPU time, rate, distortion, -ELBO,
    bits/dim, IW bounds (``request.iw`` for the VAE, ``request.ddpm_iw`` for the DDPM, whose
    chains cost T network calls each) and the data entropy when the density is known. The data
    is the VAE's; a DDPM that names its own data must name the same. request.ddpm_cpu_seconds:
    the DDPM's training CPU time (default: what a run folder's log holds)."""
    request = request or VaeEvaluationRequest()
    device = ddpm.device
    vrun = load_vae_run(vae_dir, device=device)
    if ddpm.source.data is not None and ddpm.source.data != vrun.config.data:
        raise ConfigError(
            f"{ddpm.name} was trained on {ddpm.source.data.name!r} but {vae_dir} on "
            f"{vrun.config.data.name!r} (or other data settings); compare models of the same data"
        )
    data = load_dataset(vrun.config.data)
    ddpm = ddpm.on(data.spec)
    x0 = data.test_examples[: request.n].to(device)
    density = data.density.to(device) if data.density is not None else None
    ddpm_ev = evaluate(
        ddpm.named(f"DDPM ({ddpm.name})"), x0,
        EvaluationRequest(iw=request.ddpm_iw, seed=request.seed, max_batch=request.max_batch),
        density=density, generator=KeyedNoise(request.seed, torch.arange(x0.shape[0])),
        progress=progress,
    )  # fmt: skip  # keyed as `ddpm evaluate` keys it: the same -ELBO for the same seed
    vae_ev = evaluate_vae(
        vrun.model, x0, data.spec, request, density, seeded_generator(request.seed, device),
        name=f"VAE ({vrun.run_dir.name})",
    )  # fmt: skip
    cpu = request.ddpm_cpu_seconds
    if cpu is None and ddpm.source.kind == "ddpm":
        cpu = logged_cpu_seconds(ddpm.source.path)
    rows = [
        view3_row(ddpm_ev, "ddpm", num_parameters(ddpm.net), cpu),
        view3_row(vae_ev, "vae", num_parameters(vrun.model), vrun.cpu_seconds),
    ]
    return View3(
        data.spec.name, x0.shape[0], rows, [ddpm_ev, vae_ev], vae_ev.entropy, vae_ev.entropy_se
    )


def evaluate_vae_run(
    run_dir: str | Path,
    request: VaeEvaluationRequest | None = None,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
) -> tuple[Evaluation, Path]:
    """Evaluate a VAE run (the weights ``load_vae_run`` picks: the best by validation when the
    run validated) on its data split (first n examples); write eval_<split>.json, which names
    the weights scored and holds the request, into out_dir (default: the run folder). Returns
    the evaluation and the JSON path."""
    request = request or VaeEvaluationRequest()
    load_config(run_dir)  # a folder that holds no VAE run is named so before it is locked
    path = Path(out_dir if out_dir is not None else run_dir) / f"eval_{request.split}.json"
    with rundir.writing_outputs(run_dir, [path], "vae evaluate"):  # as `ddpm evaluate` writes
        run = load_vae_run(run_dir, device=device)
        data = load_dataset(run.config.data)
        x0 = getattr(data, f"{request.split}_examples")[: request.n].to(device)
        density = data.density.to(device) if data.density is not None else None
        g = seeded_generator(request.seed, device)
        ev = evaluate_vae(run.model, x0, data.spec, request, density, g, run.run_dir.name)
        doc = {**ev.to_dict(), "weights": run.weights, "request": request.to_dict()}
        return ev, save_json(path, doc)


__all__ = ["compare_runs", "evaluate_vae_run"]
