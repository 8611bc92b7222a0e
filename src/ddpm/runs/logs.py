"""Reading a run's log.jsonl (training and validation records) and its kept step."""

from __future__ import annotations

import json
from pathlib import Path

from ddpm.runs.checkpoint import CHECKPOINT, load_checkpoint


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


def run_best_step(run_dir: Path) -> int:
    """The step whose weights a validating run kept (-1 when there are none)."""
    meta = load_checkpoint(run_dir / CHECKPOINT, metadata_only=True).meta
    return int(meta.get("validation", {}).get("best_step", -1))


def logged_cpu_seconds(run_dir: Path) -> float | None:
    """The last ``cpu_seconds`` in a run's log.jsonl (training CPU time), None if not logged."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return None
    value = None
    for line in path.read_text(errors="replace").splitlines():
        try:
            value = json.loads(line).get("cpu_seconds", value)
        except (json.JSONDecodeError, AttributeError):
            continue
    return value
