"""What every job shares: a model given as a value or as a folder to load, under the lock of
the folder it writes into."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ddpm.data import Dataset, load_dataset
from ddpm.errors import ConfigError
from ddpm.loader import load
from ddpm.model import Model
from ddpm.requests import EvaluationRequest
from ddpm.runs import folder as rundir

ModelLike = Model | str | Path  # a model, or the folder ``ddpm.load`` reads it from


def home(model: ModelLike) -> Path | None:
    """The folder a model came from: where its results go unless told otherwise. A model read
    from a checkpoint file (another library's ``CKPT.pt``) writes into ``CKPT_ddpm/`` beside it."""
    if not isinstance(model, Model):
        return Path(model)  # a folder to load (a file there is reported by the loader)
    path = model.source.path
    if path is not None and path.is_file():
        return path.with_name(path.stem + "_ddpm")
    return path


def made_home(model: ModelLike) -> Path | None:
    """``home(model)``, created when it is the folder beside a checkpoint file (a run folder
    must exist already: a missing one is reported by whoever reads it)."""
    folder = home(model)
    if isinstance(model, Model) and folder != model.source.path:  # CKPT_ddpm/, not the file
        folder.mkdir(exist_ok=True)
    return folder


def out_folder(model: ModelLike, out_dir: str | Path | None) -> Path:
    """Where a job writes: out_dir, else the model's own folder."""
    if out_dir is not None:
        return Path(out_dir)
    folder = home(model)
    if folder is None:
        raise ConfigError("the model was built in Python and has no folder: give where to write")
    return folder


def loaded(model: ModelLike, device: torch.device | str) -> Model:
    """The model itself, or the one loaded from its folder onto device."""
    return model if isinstance(model, Model) else load(model, device=device)


def scored_on_data(
    model: ModelLike, request: EvaluationRequest, device: torch.device | str
) -> tuple[Model, Dataset]:
    """The model as the request scores it (its clipping) and the data it is scored on (the
    request's, else its own), the decoder on that data's grid."""
    m = loaded(model, device).clipped(request.clip)
    dataset = load_dataset(m.data_config(request.data))
    return m.on(dataset.spec), dataset


@contextlib.contextmanager
def writing(
    model: ModelLike, paths: Iterable[Path], command: str, beside: Iterable[Path] = ()
) -> Iterator[None]:
    """Hold the lock of the model's folder while paths are written into it and record them in
    its manifest (``ddpm.runs.folder.writing_outputs``); a model without a folder takes none."""
    folder = made_home(model)
    if folder is None:
        yield
        return
    with rundir.writing_outputs(folder, paths, command, beside=beside):
        yield
