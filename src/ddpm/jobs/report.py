"""``ddpm report MODEL``: compute what the page needs and write MODEL/report.html.

What the folder already holds is reused (``samples.png``, an ``eval_test.json`` of the same data
newer than the weights); what is missing is computed on a cheap subset and the page says so. A
diffusers folder gets the same page without the training sections it has no record of.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from ddpm.data import load_dataset
from ddpm.errors import ConfigError
from ddpm.foreign.diffusers import UNET_WEIGHTS
from ddpm.jobs.common import ModelLike, made_home
from ddpm.jobs.evaluate import evaluate_run
from ddpm.jobs.sample import sample_run
from ddpm.likelihood.evaluate import Evaluation
from ddpm.likelihood.theory import four_views
from ddpm.loader import load
from ddpm.model import Model
from ddpm.process.forward import q_sample
from ddpm.process.rng import seeded_generator
from ddpm.report.chains import save_forward_strip, save_trajectory_2d
from ddpm.report.html import html_table, write_html
from ddpm.report.plots import (
    save_figure,
    save_loss_curve,
    save_per_timestep,
    save_steps_curve,
    validation_figure,
)
from ddpm.report.run_report import (
    REPORT,
    RunReport,
    evaluation_rows,
    flat_config,
    paragraph,
    views_rows,
)
from ddpm.report.samples import as_plane
from ddpm.requests import EvaluationRequest, SamplingRequest
from ddpm.runs import folder as rundir
from ddpm.runs import run as runs
from ddpm.runs.logs import read_loss_log, read_validation_log, run_best_step
from ddpm.training.dist import pick_device

REPORT_EXAMPLES = 100  # test examples evaluated when the folder holds no fresh evaluation


def write_run_report(
    path: ModelLike,
    request: EvaluationRequest | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> RunReport:
    """Write FOLDER/report.html for the model in ``path`` (a run or diffusers folder, or a model
    loaded from another library's checkpoint file, whose folder is ``CKPT_ddpm/`` beside it) and
    return where it is. request: the evaluation to show when the folder holds no fresh
    eval_test.json (default: n = 100 test examples of the model's own data; the exact T-step
    -ELBO costs n * T network calls; a foreign model needs ``data``). The folder's lock is held
    from the start, so a folder in use is reported before anything is computed.
    """
    request = request or EvaluationRequest(n=REPORT_EXAMPLES)
    if request.estimator != "exact" or request.steps:
        raise ConfigError(
            "the report shows the exact T-step -ELBO: give estimator 'exact', no steps"
        )
    start = time.perf_counter()
    folder = made_home(path)
    if folder is None:
        raise ConfigError("the model was built in Python and has no folder to hold its report")
    with rundir.locked(folder, "report"):
        # a folder is loaded under its lock: one clear line when no model is here
        model = path if isinstance(path, Model) else load(folder, device=pick_device(device))
        rundir.record(folder, [folder / REPORT], "report")
        page, ev, reused = _write_page(model, folder, request, progress)
    return RunReport(page, ev, reused, time.perf_counter() - start)


def _fresh_evaluation(model: Model, folder: Path, request: EvaluationRequest) -> Evaluation | None:
    """The folder's eval_test.json, when it scored the same data with the exact loop and is
    newer than the weights."""
    source = model.source.path
    weights = {"ddpm": folder / runs.CHECKPOINT, "diffusers": folder / UNET_WEIGHTS}.get(
        model.source.kind, source
    )  # another library's checkpoint file is its own weights
    path = folder / "eval_test.json"
    if weights is None or not weights.is_file():
        return None
    if not path.exists() or path.stat().st_mtime < weights.stat().st_mtime:
        return None
    try:
        doc = json.loads(path.read_text())
        ev = Evaluation.from_dict(doc)
    except (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError):
        return None  # an older or damaged file: evaluate again
    asked = (doc.get("request") or {}).get("data")
    return ev if ev.per_timestep and asked == request.data else None


def _write_page(model: Model, folder: Path, request: EvaluationRequest, progress: bool):
    """Compute what the folder lacks and write FOLDER/report.html -> (path, evaluation,
    whether the evaluation was reused)."""
    spec, seed = model.spec, request.seed
    trained = model.source.kind == "ddpm"
    with tempfile.TemporaryDirectory(prefix="ddpm-report-") as tmp:
        figures = Path(tmp)
        ev = _fresh_evaluation(model, folder, request)
        reused = ev is not None
        if ev is None:
            ev = evaluate_run(model, request, out_dir=figures, progress=progress).evaluation
        draw = SamplingRequest(
            n=16 if spec.is_image else 500,  # a 2-D chain needs a cloud of points to show
            seed=seed,
            trajectory=True,
            clip=request.clip,
        )
        drawn = sample_run(model, draw, out=figures / "samples.png", progress=progress)
        samples = folder / runs.SAMPLES
        samples = samples if samples.exists() else drawn.samples_path
        steps, losses = read_loss_log(folder / runs.LOG)
        loss = (
            save_loss_curve(steps, losses, figures / "loss.png")
            if steps
            else paragraph("The log holds no loss yet." if trained else "No training log here.")
        )
        val_steps, val_bpd, val_se = read_validation_log(folder / runs.LOG)
        validation = paragraph("The run did not validate (ddpm train --val-every N).")
        if val_steps:
            fig = validation_figure(val_steps, val_bpd, val_se, run_best_step(folder))
            validation = save_figure(fig, figures / "validation.png")
        per_t = save_per_timestep(
            {f"test split, n = {ev.n}": torch.tensor(ev.per_timestep)},
            figures / "per_timestep.png",
            title=f"-ELBO per timestep: {ev.neg_elbo:.2f} nats = {ev.bits_per_dim:.3f} bits/dim",
        )
        d = model.describe()
        summary = {
            "model": f"{model.source.kind}: {model.source.weights}",
            "data": load_dataset(model.data_config(request.data)).spec.name,
            "shape": "x".join(map(str, spec.shape)),
            "T": model.T,
            "p_theta": f"{d['prediction']} prediction, {d['variance']} variance",
            "steps trained": steps[-1] if steps else (model.source.step or "not recorded"),
            "bits/dim": f"{ev.bits_per_dim:.4f} ± {ev.bits_per_dim_se:.4f}",
        }
        config = (
            html_table(flat_config(runs.load_config(folder)[0].to_dict()))
            if trained
            else html_table([{"setting": k, "value": json.dumps(v)} for k, v in d.items()])
        )
        where = "the folder's eval_test.json" if reused else f"{ev.n} test examples, computed now"
        sections = [
            ("Summary", html_table([{"": k, "value": v} for k, v in summary.items()])),
            ("Training loss", loss),
            ("Held-out validation -ELBO (the kept weights marked)", validation),
            ("Samples (ancestral sampling)", samples),
            ("Forward process q(x_t | x_0)", _forward_figure(model, request, figures)),
            ("Reverse process: x_t and the predicted x_0 along the chain", drawn.trajectory_path),
            ("-ELBO per timestep", per_t),
            ("bits/dim against the number of steps", _steps_section(folder, figures)),
            ("The four views (nats per example)", html_table(views_rows(four_views(ev)))),
            (f"Evaluation ({where})", html_table(evaluation_rows(ev))),
            ("Configuration", config),
        ]
        page = write_html(folder / REPORT, f"ddpm report: {folder.name}", sections)
    return page, ev, reused


def _steps_section(folder: Path, figures: Path) -> str | Path:
    """bits/dim against the number of sampling steps K, from an eval JSON with a 'steps' list."""
    for path in sorted(folder.glob("eval_*.json")):
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        points = doc.get("steps") if isinstance(doc, dict) else None
        if points:
            ks = [int(p["K"]) for p in points]
            bpd = [float(p["bits_per_dim"]) for p in points]
            se = [float(p.get("bits_per_dim_se") or 0.0) for p in points]
            return save_steps_curve(ks, bpd, se, figures / "bits_vs_steps.png")
    return paragraph(
        f"Not computed yet: run `ddpm evaluate {folder} --respacing 10 100 1000` and make the "
        "report again."
    )


def _forward_figure(model: Model, request: EvaluationRequest, figures: Path) -> Path:
    """x_t ~ q(x_t | x_0) at 8 values of t: one test image, or the 2-D test set as a cloud."""
    s = model.diffusion.schedule
    data = load_dataset(model.data_config(request.data))
    ts = sorted({round(k * s.T / 7) for k in range(8)})  # t = 0 (the data) .. T
    x0 = data.test_examples[: 1 if data.spec.is_image else 500].double()
    g = seeded_generator(request.seed)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    frames = torch.stack([q_sample(s, x0, torch.full((len(x0),), t), noise=noise) for t in ts])
    if data.spec.is_image:
        alpha_bars = [float(s.alpha_bar[t]) for t in ts]
        path = figures / "forward.png"
        return save_forward_strip(frames[:, 0].clamp(-1, 1).float(), ts, path, alpha_bars)
    return save_trajectory_2d(as_plane(frames), ts, figures / "forward.png")


__all__ = ["REPORT_EXAMPLES", "write_run_report"]
