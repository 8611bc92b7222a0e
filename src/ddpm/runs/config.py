"""The checkpoint's own copy of the config is the truth about a run; config.json must agree.

A checkpoint stores the RunConfig it was trained with in its metadata. Every command that loads
a run (resume, sample, evaluate, theory) reads the config from there and checks config.json
against it key by key, so that a damaged or edited config.json is reported (which file, which
key) instead of filling in defaults.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ddpm import __version__
from ddpm.config import RunConfig
from ddpm.data import DataSpec
from ddpm.errors import CheckpointError, ConfigError
from ddpm.runs import folder as rundir
from ddpm.runs.checkpoint import CHECKPOINT, CONFIG, load_checkpoint, load_json, save_json

# train.* fields a resume may change; everything else must match the saved run
RESUMABLE = ("steps", "log_every", "sample_every", "checkpoint_every", "num_samples", "patience")
# top-level fields a resume may change: the CPU budget of a VAE run (VaeRunConfig)
RESUMABLE_TOP = ("cpu_minutes",)


def config_file_problem(file_cfg: object, ckpt_cfg: object, key: str = "config") -> str | None:
    """First key where config.json disagrees with the checkpoint's own copy of the config
    (fields a resume may change excepted): 'key K is missing', '... is X but ... has Y'."""

    if isinstance(ckpt_cfg, dict):
        if not isinstance(file_cfg, dict):
            return f"key {key} is {json.dumps(file_cfg)}, not an object"
        name = {k: k if key == "config" else f"{key}.{k}" for k in {*ckpt_cfg, *file_cfg}}
        missing = [k for k in ckpt_cfg if k not in file_cfg]
        unknown = [k for k in file_cfg if k not in ckpt_cfg]
        if missing or unknown:
            return (
                f"key {name[missing[0]]} is missing"
                if missing
                else f"key {name[unknown[0]]} is unknown"
            )
        for k in ckpt_cfg:
            problem = config_file_problem(file_cfg[k], ckpt_cfg[k], name[k])
            if problem is not None:
                return problem
        return None
    if key in {f"train.{f}" for f in RESUMABLE} | set(RESUMABLE_TOP):
        return None
    if type(file_cfg) is not type(ckpt_cfg) or file_cfg != ckpt_cfg:
        theirs, ours = json.dumps(file_cfg), json.dumps(ckpt_cfg)
        return f"key {key} is {theirs} but {CHECKPOINT} has {ours}"
    return None


def saved_config(run_dir: str | Path) -> tuple[RunConfig, DataSpec, int]:
    """(RunConfig, DataSpec, step) of a run, the config read from its checkpoint; config.json
    must agree with it key by key (CheckpointError naming the file and the key otherwise).
    A run that a killed ``--overwrite`` left in its backup is restored first."""

    run_dir = Path(run_dir)
    rundir.recover_interrupted(run_dir)
    if not (run_dir / CONFIG).is_file():
        load_config(run_dir)  # says what is missing: the folder or its config.json
    cfg, step, doc = checkpoint_config(run_dir, RunConfig)
    if cfg is None:  # written before checkpoints held their config
        return (*load_config(run_dir), step)
    if not isinstance(doc, dict) or "data_spec" not in doc:
        raise CheckpointError(f"{run_dir / CONFIG}: key data_spec is missing; restore it")
    return cfg, DataSpec.from_dict(doc["data_spec"]), step


def checkpoint_config(run_dir: Path, config_type: type) -> tuple[object, int, object]:
    """(config, step, doc) of the run in run_dir: the config from its checkpoint, a
    ``config_type`` (RunConfig, or the VAE's), after checking that config.json (doc, as read)
    agrees with it key by key; config None for a checkpoint written before checkpoints held
    their config."""

    ckpt = run_dir / CHECKPOINT
    if not ckpt.exists():
        raise CheckpointError(
            f"{run_dir}: no checkpoint, so no run here (it stopped before its first checkpoint);"
            " train it again without resume",
            params=("resume",),
        )
    meta = load_checkpoint(ckpt, metadata_only=True).meta
    doc = load_json(run_dir / CONFIG)
    if "config" not in meta:
        return None, int(meta.get("step", 0)), doc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{run_dir / CONFIG}: expected a JSON object; restore it")
    problem = config_file_problem(doc.get("config"), meta["config"])
    if problem is not None:
        raise CheckpointError(
            f"{run_dir / CONFIG}: {problem}; restore the file (the checkpoint holds the "
            "run's settings) or train again"
        )
    try:
        cfg = config_type.from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt}: its config is invalid ({e}); train again") from None
    step = meta.get("step", 0)
    if not isinstance(step, int):
        raise CheckpointError(f"{ckpt}: step {step!r} is not an integer; train again")
    return cfg, step, doc


def holds_run(run_dir: Path) -> bool:
    """A folder holds a run once the run has written its first checkpoint."""
    return (run_dir / CHECKPOINT).exists()


def save_config(run_dir: Path, cfg: RunConfig, spec: DataSpec) -> None:
    doc = {"ddpm_version": __version__, "config": cfg.to_dict(), "data_spec": spec.to_dict()}
    save_json(run_dir / CONFIG, doc)


def load_config(run_dir: Path) -> tuple[RunConfig, DataSpec]:
    """Read config.json of a run folder (CheckpointError when missing or invalid), after
    restoring a run that a killed ``--overwrite`` left in its backup."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(
            f"{run_dir}: a file, not a run folder; give a run folder (written by ddpm train)"
        )
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder; train one first (ddpm train)")
    rundir.recover_interrupted(run_dir)
    if not (run_dir / CONFIG).exists():
        raise CheckpointError(f"{run_dir}: no {CONFIG} here, so this is not a ddpm run folder")
    doc = load_json(run_dir / CONFIG)
    try:
        return RunConfig.from_dict(doc["config"]), DataSpec.from_dict(doc["data_spec"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{run_dir / CONFIG}: missing entry {e}; the file is damaged") from e


def _first_difference(a, b) -> str:
    for part in dataclasses.fields(a):
        x, y = getattr(a, part.name), getattr(b, part.name)
        if not dataclasses.is_dataclass(x):  # a top-level value (a VAE's cpu_minutes)
            if x != y:
                return f"{part.name}: {x!r} vs {y!r}"
            continue
        for f in dataclasses.fields(x):
            if getattr(x, f.name) != getattr(y, f.name):
                return f"{part.name}.{f.name}: {getattr(x, f.name)!r} vs {getattr(y, f.name)!r}"
    return "no difference"


def config_difference(saved, requested) -> str | None:
    """First difference that makes requested incompatible with a saved run, else None.

    saved, requested: RunConfig, or VaeRunConfig (``ddpm vae train``: the same rules). Only the
    length of training (RESUMABLE_TOP too) and how often it logs, samples and saves may change
    on resume; the horizon of a cosine learning-rate schedule is --max-steps, so it stays.
    """
    if type(saved) is not type(requested):
        return f"kind of run: {type(saved).__name__} vs {type(requested).__name__}"
    resumable = RESUMABLE
    if saved.train.lr_schedule != "constant":  # the schedule's horizon is --max-steps
        resumable = tuple(f for f in RESUMABLE if f != "steps")
    keep = {f: getattr(saved.train, f) for f in resumable}
    top = {f: getattr(saved, f) for f in RESUMABLE_TOP if hasattr(saved, f)}
    train = dataclasses.replace(requested.train, **keep)
    aligned = dataclasses.replace(requested, train=train, **top)
    if aligned == saved:
        return None
    return _first_difference(saved, aligned)
