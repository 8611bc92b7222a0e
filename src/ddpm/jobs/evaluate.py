"""``ddpm evaluate`` as one call: score a model on data and write the report files.

One ``EvaluationRequest`` says what to compute: the exact T-step -ELBO, the stratified Monte
Carlo estimate, or both; IW bounds; the probability-flow ODE; sample quality; and, with
``steps``, the K-step respaced models instead of the T-step one. The request is recorded in
the JSON it produced.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.jobs.common import ModelLike, out_folder, scored_on_data, writing
from ddpm.jobs.quality import write_quality_steps
from ddpm.likelihood.evaluate import Evaluation, check_examples, evaluate, example_terms, summarise
from ddpm.likelihood.ode import ProbabilityFlow, ode_likelihood
from ddpm.likelihood.theory import bayes_optimal
from ddpm.model import Model
from ddpm.process.respace import steps_by_K
from ddpm.process.rng import KeyedNoise, seeded_generator
from ddpm.progress import progress_bar
from ddpm.quality.run import run_quality_vs_steps, score_run_samples
from ddpm.report import save_array, save_per_timestep, save_steps_curve
from ddpm.report.plots import save_sweep
from ddpm.report.theory import save_mse_per_timestep
from ddpm.requests import EvaluationRequest
from ddpm.runs.checkpoint import save_json
from ddpm.sampling.ancestral import sample
from ddpm.training import dist


@dataclass(frozen=True)
class EvalResult:
    evaluation: Evaluation
    json_path: Path
    per_timestep_path: Path | None  # None for the Monte Carlo estimate alone
    per_example_path: Path | None = None
    is_main: bool = True  # False on the other processes under torchrun (they write nothing)
    mse_path: Path | None = None  # eps-MSE and x0-MSE per timestep
    quality: object | None = None  # ddpm.quality.QualityReport when samples were scored
    weights: str = ""  # which weights were scored, in words


@dataclass(frozen=True)
class StepsEvalResult:
    evaluations: list  # Evaluation, one per K (its T is K)
    json_path: Path
    steps_path: Path  # PNG: bits/dim against K
    oracle_evaluations: list | None = None  # data of known density: the Bayes-optimal model
    oracle_path: Path | None = None  # PNG: -ELBO and KL_joint against K, trained and optimal
    quality: list | None = None  # ddpm.quality.steps.StepRow per (sampler, K) with quality
    quality_json_path: Path | None = None
    quality_png_path: Path | None = None


def evaluate_run(
    model: ModelLike,
    request: EvaluationRequest | None = None,
    out_dir: str | Path | None = None,
    per_example: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> EvalResult | StepsEvalResult:
    """Score a model (a ``Model``, or a run or diffusers folder ``ddpm.load`` reads) on data as
    ``request`` says (``EvaluationRequest``; with ``steps``: ``evaluate_steps_run``).

    Writes eval_<split>.json (with the request and the model), eval_<split>_per_timestep.png
    and eval_<split>_mse.png (eps- and x0-prediction errors per timestep; both only with the
    exact loop) into out_dir (default: the model's folder), and each example's -ELBO (nats,
    float64 [n]) to the .npy file ``per_example`` if given. Writing into the model's folder
    holds its lock and records the files.

    Noise is keyed by (seed, example index, t, chain) (``ddpm.process.rng.KeyedNoise``): an
    example's numbers are the same for any n, max_batch and number of processes. Under torchrun
    each process evaluates a contiguous shard of the examples, the per-example terms are
    gathered and rank 0 writes the files; the ODE likelihood is computed by rank 0 alone.
    """
    request = request or EvaluationRequest()
    if request.steps:
        if per_example is not None:
            raise ConfigError("per_example applies to one model; drop it with steps")
        return evaluate_steps_run(model, request, out_dir, device, progress)
    if per_example is not None and Path(per_example).suffix != ".npy":
        raise ConfigError(f"per_example {per_example}: give a path ending in .npy")
    out = out_folder(model, out_dir)
    split = request.split
    outputs = [out / f"eval_{split}.json"]
    if request.exact:
        outputs += [out / f"eval_{split}_per_timestep.png", out / f"eval_{split}_mse.png"]
    outputs += [Path(per_example)] if per_example is not None else []
    # Under torchrun rank 0 alone writes, so it alone holds the folder's lock.
    with writing(model, outputs if dist.launched_as_main() else [], "evaluate"):
        info, dev = dist.init_distributed(dist.pick_device(device))
        m, dataset = scored_on_data(model, request, dev)
        x0 = getattr(dataset, f"{split}_examples")[: request.n]
        check_examples(x0.shape[0])
        if request.ode is not None:
            ProbabilityFlow.of(m)  # refused before the long work when it has no continuous form
        density = dataset.density.to(dev) if dataset.density is not None else None
        start, stop = dist.shard(x0.shape[0], info)
        t0 = time.perf_counter()
        noise = KeyedNoise(request.seed, torch.arange(start, stop))
        terms = example_terms(
            m, x0[start:stop].to(dev), request, density, noise, progress and info.is_main
        )
        terms = terms.map(lambda v: dist.gather_rows(v, info))
        ev = summarise(m, terms, request, time.perf_counter() - t0)
        if request.ode is not None and info.is_main:
            res = ode_likelihood(
                m, x0.to(dev), request.ode, KeyedNoise(request.seed), request.max_batch, progress
            )
            ev = dataclasses.replace(ev, ode=res)
        result = EvalResult(ev, outputs[0], None, None, info.is_main, weights=m.source.weights)
        if info.is_main:
            result = _write_evaluation(m, ev, request, out, per_example, info.world_size, progress)
        dist.barrier(info)
        dist.cleanup(info)
        return result


def _write_evaluation(
    m: Model, ev: Evaluation, request, out: Path, per_example, processes, progress
):
    split = request.split
    doc = ev.to_dict()
    quality = None
    if request.quality is not None:
        quality = _scored_samples(m, request, progress)
        doc["sample_quality"] = quality.to_dict()
    npy = Path(per_example) if per_example is not None else None
    if npy is not None:
        save_array(ev.per_example, npy)
        doc["per_example_file"] = str(npy)
    doc["processes"] = processes
    doc["weights"] = m.source.weights
    doc["model"] = m.describe()
    doc["request"] = request.to_dict()
    json_path = save_json(out / f"eval_{split}.json", doc)
    png = mse = None
    if ev.per_timestep:
        png, mse = out / f"eval_{split}_per_timestep.png", out / f"eval_{split}_mse.png"
        save_per_timestep(
            {f"{m.name} ({split}, n={ev.n})": torch.tensor(ev.per_timestep)},
            png,
            title=f"-ELBO per timestep: {ev.neg_elbo:.2f} nats = {ev.bits_per_dim:.3f} bits/dim",
        )
        save_mse_per_timestep([ev], mse, f"{m.name} ({split})")
    return EvalResult(ev, json_path, png, npy, True, mse, quality, m.source.weights)


def _scored_samples(m: Model, request: EvaluationRequest, progress: bool):
    """Draw request.quality.samples samples of the model (timed) and score them."""
    q = request.quality
    if q.data is None:  # the samples are compared with the data the model is scored on
        q = dataclasses.replace(q, data=request.data)
    start = time.perf_counter()
    g = seeded_generator(q.seed, m.device)
    with progress_bar(m.T, "sample", "t", enabled=progress) as bar:
        x = sample(m, q.samples, g, on_step=lambda _: bar.update(1)).x0
    seconds = time.perf_counter() - start
    report = score_run_samples(m, x, q)
    report.seconds["draw"] = seconds
    return report


def evaluate_steps_run(
    model: ModelLike,
    request: EvaluationRequest,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> StepsEvalResult:
    """The K-step -ELBO of a model for each spelling in ``request.steps`` (a count K, section
    counts "10,15,20" or "ddimK"; ``request.spacing`` for counts): the model's network in the
    K-step respaced process ([ND21] Sec. 4), each a bound on the log-likelihood of that K-step
    model, evaluated on the same examples with noise keyed by (seed, example, t). Two spellings
    of one K must keep the same steps (the report is indexed by K). Writes
    eval_<split>_steps.json (``steps``: one report per K with its spelling, spacing and steps
    tau) and eval_<split>_steps.png (bits/dim against K) into out_dir (default: the model's
    folder). On data of known density the Bayes-optimal model of each K-step process is
    evaluated beside it (same examples and x_t draws; ``oracle_steps`` in the JSON) and
    eval_<split>_steps_vs_oracle.png shows both against K with the data entropy.
    request.quality: also draw samples with each of ``request.samplers`` and K, and write the
    quality-vs-K table quality_steps.json and figure quality_steps.png (``ddpm.quality``)."""
    out, split = out_folder(model, out_dir), request.split
    names = ["_steps.json", "_steps.png", "_steps_vs_oracle.png"]
    outputs = [out / f"eval_{split}{name}" for name in names]
    outputs += [out / "quality_steps.json", out / "quality_steps.png"] if request.quality else []
    with writing(model, outputs, "evaluate"):
        dev = dist.pick_device(device)
        m, dataset = scored_on_data(model, request, dev)
        x0 = getattr(dataset, f"{split}_examples")[: request.n].to(dev)
        density = dataset.density.to(dev) if dataset.density is not None else None
        chosen = steps_by_K(m.T, request.steps, request.spacing)  # every K checked first
        ks = sorted(chosen)
        models = [m.respaced(chosen[k][0], request.spacing).named(f"{m.name} K={k}") for k in ks]

        def respacing(K: int) -> dict:  # which K steps a report row's process keeps
            return {"K": K, "steps": chosen[K][0], "spacing": request.spacing, "tau": chosen[K][1]}

        # Every K (and the Bayes-optimal model) is scored on the same examples and x_t draws.
        def score(km: Model) -> Evaluation:
            noise = KeyedNoise(request.seed, torch.arange(x0.shape[0]))
            return evaluate(km, x0, request, density, generator=noise, progress=progress)

        evaluations = [score(km) for km in models]
        doc = {
            "run": str(m.source.path),
            "split": split,
            "T": m.T,
            "clip": list(m.clip) if m.clip is not None else None,
            "model": m.describe(),
            "request": request.to_dict(),
            "steps": [{**respacing(ev.T), **ev.to_dict()} for ev in evaluations],
        }
        oracles, oracle_png = None, None
        if density is not None:  # known density: the Bayes-optimal model of each K-step process
            oracles = [score(bayes_optimal(km, density)) for km in models]
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
        if request.quality is None:
            return StepsEvalResult(evaluations, json_path, png, oracles, oracle_png)
        bpd = {ev.T: (ev.bits_per_dim, ev.bits_per_dim_se) for ev in evaluations}
        rows = run_quality_vs_steps(m, request, bits_per_dim=bpd)
        title = f"{m.name}: {request.quality.samples} samples"
        q_json, q_png = write_quality_steps(rows, out, title)
        return StepsEvalResult(
            evaluations, json_path, png, oracles, oracle_png, rows, q_json, q_png
        )


def _save_steps_vs_oracle(trained: list, oracles: list, path: Path, name: str) -> Path:
    """-ELBO and KL_joint (= E[-ELBO] - H) against K for the model and the Bayes-optimal one."""

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


__all__ = ["EvalResult", "StepsEvalResult", "evaluate_run", "evaluate_steps_run"]
