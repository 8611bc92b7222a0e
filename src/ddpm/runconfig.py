"""The checkpoint's own copy of the config is the truth about a run; config.json must agree.

A checkpoint stores the RunConfig it was trained with in its metadata. Every command that loads
a run (resume, sample, evaluate, theory) reads the config from there and checks config.json
against it key by key, so that a damaged or edited config.json is reported (which file, which
key) instead of filling in defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

from ddpm.checkpoint import load_checkpoint, load_json
from ddpm.errors import CheckpointError, ConfigError


def config_file_problem(file_cfg: object, ckpt_cfg: object, key: str = "config") -> str | None:
    """First key where config.json disagrees with the checkpoint's own copy of the config
    (fields a resume may change excepted): 'key K is missing', '... is X but ... has Y'."""
    from ddpm import runs

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
    if key in {f"train.{f}" for f in runs.RESUMABLE} | set(runs.RESUMABLE_TOP):
        return None
    if type(file_cfg) is not type(ckpt_cfg) or file_cfg != ckpt_cfg:
        theirs, ours = json.dumps(file_cfg), json.dumps(ckpt_cfg)
        return f"key {key} is {theirs} but {runs.CHECKPOINT} has {ours}"
    return None


def saved_config(run_dir: str | Path):
    """(RunConfig, DataSpec, step) of a run, the config read from its checkpoint; config.json
    must agree with it key by key (CheckpointError naming the file and the key otherwise).
    A run that a killed ``--overwrite`` left in its backup is restored first."""
    from ddpm import rundir, runs
    from ddpm.config import RunConfig
    from ddpm.data import DataSpec

    run_dir = Path(run_dir)
    rundir.recover_interrupted(run_dir)
    if not (run_dir / runs.CONFIG).is_file():
        runs.load_config(run_dir)  # says what is missing: the folder or its config.json
    cfg, step, doc = checkpoint_config(run_dir, RunConfig)
    if cfg is None:  # written before checkpoints held their config
        return (*runs.load_config(run_dir), step)
    if not isinstance(doc, dict) or "data_spec" not in doc:
        raise CheckpointError(f"{run_dir / runs.CONFIG}: key data_spec is missing; restore it")
    return cfg, DataSpec.from_dict(doc["data_spec"]), step


def checkpoint_config(run_dir: Path, config_type: type) -> tuple[object, int, object]:
    """(config, step, doc) of the run in run_dir: the config from its checkpoint, a
    ``config_type`` (RunConfig, or the VAE's), after checking that config.json (doc, as read)
    agrees with it key by key; config None for a checkpoint written before checkpoints held
    their config."""
    from ddpm import runs

    ckpt = run_dir / runs.CHECKPOINT
    if not ckpt.exists():
        raise CheckpointError(
            f"{run_dir}: no checkpoint, so no run here (it stopped before its first checkpoint);"
            " train it again without --resume"
        )
    meta = load_checkpoint(ckpt, metadata_only=True).meta
    doc = load_json(run_dir / runs.CONFIG)
    if "config" not in meta:
        return None, int(meta.get("step", 0)), doc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{run_dir / runs.CONFIG}: expected a JSON object; restore it")
    problem = config_file_problem(doc.get("config"), meta["config"])
    if problem is not None:
        raise CheckpointError(
            f"{run_dir / runs.CONFIG}: {problem}; restore the file (the checkpoint holds the "
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
