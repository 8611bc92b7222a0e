"""The files of a quality-versus-K table: quality_steps.json and quality_steps.png."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ddpm.quality.scores import FLOOR
from ddpm.quality.steps import StepRow
from ddpm.report.quality import save_quality_vs_steps
from ddpm.runs.checkpoint import save_json


def write_quality_steps(
    rows: Sequence[StepRow], out_dir: str | Path, title: str = ""
) -> tuple[Path, Path]:
    """quality_steps.json (one entry per row) and quality_steps.png into out_dir."""
    out_dir = Path(out_dir)
    json_path = save_json(out_dir / "quality_steps.json", {"rows": [r.to_dict() for r in rows]})
    floor = rows[0].report.row(FLOOR)
    key = {"density": "cross_entropy", "features": "fid", "neighbours": "median_distance"}
    level = getattr(floor, key[rows[0].report.kind])
    png = save_quality_vs_steps(rows, out_dir / "quality_steps.png", floor=level, title=title)
    return json_path, png
