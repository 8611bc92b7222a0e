"""``ddpm report RUN``: one self-contained HTML page about a trained run.

The page shows what a reader of [Ho20] wants to see of one model, in this order: a summary, the
configuration, the training loss, samples, the forward process q(x_t | x_0) on a test example,
the reverse chain (x_t and the predicted x_0 along Algorithm 2), the -ELBO per timestep, bits/dim
against the number of sampling steps, the four views of the objective and the evaluation table.

Nothing is fetched: every image is a PNG embedded as base64 and the page has no script. What the
run folder already holds is reused (``samples.png``, an ``eval_test.json`` newer than the
checkpoint); what is missing is computed on a cheap subset and the page says so.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

import html
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm.evaluate import Evaluation

REPORT = "report.html"


@dataclass(frozen=True)
class RunReport:
    path: Path  # the HTML page
    evaluation: Evaluation  # the evaluation shown on the page
    evaluation_reused: bool  # True when read from the run's eval_test.json
    seconds: float


def log_columns(path: Path, *keys: str) -> tuple[list, ...]:
    """One list per key of the log.jsonl records that have every key: the first key's values
    as int (the step), the others as float. Lines cut short by a crash are skipped."""
    columns: tuple[list, ...] = tuple([] for _ in keys)
    if not path.exists():
        return columns
    for line in path.read_text(errors="replace").splitlines():  # bad bytes: U+FFFD
        try:
            rec = json.loads(line)
            row = [int(rec[keys[0]]), *(float(rec[k]) for k in keys[1:])]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # also the records of the other kind (training vs validation lines)
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def read_loss_log(path: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of a run's log.jsonl."""
    return log_columns(path, "step", "loss")


def read_validation_log(path: Path) -> tuple[list[int], list[float], list[float]]:
    """(steps, bits/dim, SE) of the validation records of a run's log.jsonl (none: empty)."""
    return log_columns(path, "step", "val_bpd", "val_bpd_se")


def _fresh_evaluation(run_dir: Path, checkpoint: Path) -> Evaluation | None:
    """The run's eval_test.json, when it exists and is newer than the checkpoint."""
    path = run_dir / "eval_test.json"
    if not path.exists() or path.stat().st_mtime < checkpoint.stat().st_mtime:
        return None
    try:
        return Evaluation.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError, ValueError):
        return None  # an older or damaged file: evaluate again


def _flat_config(cfg: dict) -> list[dict]:
    return [
        {"setting": f"{section}.{key}", "value": json.dumps(value)}
        for section, fields in cfg.items()
        for key, value in fields.items()
    ]


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _evaluation_rows(ev: Evaluation) -> list[dict]:
    rows = [
        {"quantity": "-ELBO (nats per example)", "value": ev.neg_elbo, "SE": ev.neg_elbo_se},
        {"quantity": "  L_T prior", "value": ev.terms["prior"], "SE": ""},
        {"quantity": "  L_1..L_(T-1) diffusion KLs", "value": ev.terms["diffusion"], "SE": ""},
        {"quantity": "  L_0 decoder", "value": ev.terms["decoder"], "SE": ""},
        {"quantity": "nats/dim", "value": ev.nats_per_dim, "SE": ev.nats_per_dim_se},
        {"quantity": "bits/dim", "value": ev.bits_per_dim, "SE": ev.bits_per_dim_se},
    ]
    for b in ev.iw:
        rows.append(
            {"quantity": f"-log IW bound, K={b.K}", "value": b.neg_log_likelihood, "SE": b.se}
        )
    for key, label in (
        ("entropy", "H(q(x0)) data entropy"),
        ("kl_joint", "KL joint"),
        ("kl_marginal", "KL marginal"),
    ):
        if getattr(ev, key) is not None:
            value, se = getattr(ev, key), getattr(ev, f"{key}_se")
            rows.append({"quantity": label, "value": value, "SE": se})
    return rows


def _views_rows(views: dict) -> list[dict]:
    ml, chain = views["maximum_likelihood"], views["kl_chain"]
    vae, easy = views["hierarchical_vae"], views["many_easy_problems"]
    iw = ", ".join(f"K={b['K']}: {b['neg_log_likelihood']:.4f}" for b in ml["iw"]) or "not run"
    holds = {None: "density unknown", True: "holds", False: "violated"}[chain["holds"]]
    return [
        {
            "view": "1. maximum likelihood",
            "numbers": f"-ELBO {ml['neg_elbo']:.4f} nats; -log IW bounds {iw}",
        },
        {"view": "2. KL chain", "numbers": f"KL_joint >= KL_marginal >= 0: {holds}"},
        {
            "view": "3. hierarchical VAE",
            "numbers": f"rate L_T {vae['rate_prior']:.4f} + diffusion KLs "
            f"{vae['diffusion_kls']:.4f} + distortion L_0 {vae['distortion_decoder']:.4f}",
        },
        {
            "view": "4. many easy problems",
            "numbers": f"T = {easy['T']}; largest term at t = {easy['largest_term_t']}; "
            f"first 10% of steps hold {100 * easy['share_in_first_tenth_of_steps']:.0f}% "
            f"of the diffusion KLs; {easy['steps_holding_90_percent']} steps hold 90%",
        },
    ]


def _steps_section(run_dir: Path, figures: Path) -> str | Path:
    """bits/dim against the number of sampling steps K, from an eval JSON with a 'steps' list."""
    from ddpm.report.plots import save_steps_curve

    for path in sorted(run_dir.glob("eval_*.json")):
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
    return _p(
        "Not computed yet: run `ddpm evaluate "
        f"{run_dir} --steps 10 100 1000` and make the report again."
    )


def write_run_report(
    run_dir: str | Path,
    n: int = 100,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> RunReport:
    """Write RUN/report.html (see module docstring) and return where it is.

    n: test examples evaluated when the run holds no fresh eval_test.json (the exact T-step
    -ELBO costs n * T network calls). The run folder's lock is held from the start, so a run
    in use is reported before anything is computed.
    """
    from ddpm import rundir, runs
    from ddpm.errors import ConfigError

    if n < 2:
        raise ConfigError(f"--n must be >= 2 examples (got {n})")
    start = time.perf_counter()
    run_dir = Path(run_dir)
    with rundir.locked(run_dir, "report"):
        cfg, spec = runs.load_config(run_dir)  # one clear line when this is no run folder
        rundir.record(run_dir, [run_dir / REPORT], "report")
        path, ev, reused = _write_page(run_dir, cfg, spec, n, seed, device, progress)
    return RunReport(path, ev, reused, time.perf_counter() - start)


def _write_page(run_dir: Path, cfg, spec, n: int, seed: int, device, progress: bool):
    """Compute what the run folder lacks and write RUN/report.html -> (path, evaluation,
    whether the evaluation was reused)."""
    from ddpm import runs
    from ddpm.api import evaluate_run, sample_run
    from ddpm.report.html import html_table, write_html
    from ddpm.report.plots import save_loss_curve, save_per_timestep
    from ddpm.theory import four_views

    checkpoint = run_dir / runs.CHECKPOINT
    with tempfile.TemporaryDirectory(prefix="ddpm-report-") as tmp:
        figures = Path(tmp)
        ev = _fresh_evaluation(run_dir, checkpoint) if checkpoint.exists() else None
        reused = ev is not None
        if ev is None:
            ev = evaluate_run(
                run_dir, n=n, seed=seed, device=device, out_dir=figures, progress=progress
            ).evaluation
        drawn = sample_run(
            run_dir,
            n=16 if spec.is_image else 500,  # a 2-D chain needs a cloud of points to show
            out=figures / "samples.png",
            seed=seed,
            trajectory=True,
            device=device,
            progress=progress,
        )
        samples = run_dir / runs.SAMPLES
        samples = samples if samples.exists() else drawn.samples_path
        steps, losses = read_loss_log(run_dir / runs.LOG)
        loss = (
            save_loss_curve(steps, losses, figures / "loss.png")
            if steps
            else _p("The log holds no loss yet.")
        )
        val_steps, val_bpd, val_se = read_validation_log(run_dir / runs.LOG)
        validation = _p("The run did not validate (ddpm train --val-every N).")
        if val_steps:
            from ddpm.report.plots import save_figure, validation_figure

            kept = run_best_step(run_dir)
            fig = validation_figure(val_steps, val_bpd, val_se, kept)
            validation = save_figure(fig, figures / "validation.png")
        per_t = save_per_timestep(
            {f"test split, n = {ev.n}": torch.tensor(ev.per_timestep)},
            figures / "per_timestep.png",
            title=f"-ELBO per timestep: {ev.neg_elbo:.2f} nats = {ev.bits_per_dim:.3f} bits/dim",
        )
        summary = {
            "data": spec.name,
            "shape": "x".join(map(str, spec.shape)),
            "T": cfg.diffusion.T,
            "schedule": cfg.diffusion.schedule,
            "p_theta": f"{cfg.diffusion.prediction} prediction, {cfg.diffusion.variance} variance",
            "loss": cfg.diffusion.loss,
            "steps trained": steps[-1] if steps else 0,
            "bits/dim": f"{ev.bits_per_dim:.4f} ± {ev.bits_per_dim_se:.4f}",
        }
        where = "the run's eval_test.json" if reused else f"{ev.n} test examples, computed now"
        sections = [
            ("Summary", html_table([{"": k, "value": v} for k, v in summary.items()])),
            ("Training loss", loss),
            ("Held-out validation -ELBO (the kept weights marked)", validation),
            ("Samples (ancestral sampling, EMA weights)", samples),
            ("Forward process q(x_t | x_0)", _forward_figure(cfg, run_dir, figures, seed)),
            ("Reverse process: x_t and the predicted x_0 along the chain", drawn.trajectory_path),
            ("-ELBO per timestep", per_t),
            ("bits/dim against the number of steps", _steps_section(run_dir, figures)),
            ("The four views (nats per example)", html_table(_views_rows(four_views(ev)))),
            (f"Evaluation ({where})", html_table(_evaluation_rows(ev))),
            ("Configuration", html_table(_flat_config(cfg.to_dict()))),
        ]
        path = write_html(run_dir / REPORT, f"ddpm run report: {run_dir.name}", sections)
    return path, ev, reused


def run_best_step(run_dir: Path) -> int:
    """The step whose weights a validating run kept (-1 when there are none)."""
    from ddpm.checkpoint import CHECKPOINT, load_checkpoint

    meta = load_checkpoint(run_dir / CHECKPOINT, metadata_only=True).meta
    return int(meta.get("validation", {}).get("best_step", -1))


def _forward_figure(cfg, run_dir: Path, figures: Path, seed: int) -> Path:
    """x_t ~ q(x_t | x_0) at 8 values of t: one test image, or the 2-D test set as a cloud."""
    from ddpm.data import load_dataset
    from ddpm.forward import q_sample
    from ddpm.report.chains import save_forward_strip, save_trajectory_2d
    from ddpm.report.samples import as_plane
    from ddpm.rng import seeded_generator
    from ddpm.schedule import NoiseSchedule

    s = NoiseSchedule.from_name(cfg.diffusion.schedule, cfg.diffusion.T)
    data = load_dataset(cfg.data)
    ts = sorted({round(k * s.T / 7) for k in range(8)})  # t = 0 (the data) .. T
    x0 = data.test_examples[: 1 if data.spec.is_image else 500]
    x0 = x0.double()
    g = seeded_generator(seed)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    frames = torch.stack([q_sample(s, x0, torch.full((len(x0),), t), noise=noise) for t in ts])
    if data.spec.is_image:
        alpha_bars = [float(s.alpha_bar[t]) for t in ts]
        path = figures / "forward.png"
        return save_forward_strip(frames[:, 0].clamp(-1, 1).float(), ts, path, alpha_bars)
    return save_trajectory_2d(as_plane(frames), ts, figures / "forward.png")
