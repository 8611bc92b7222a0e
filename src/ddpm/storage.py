"""Files written atomically and read without unpickling: JSON, raw bytes and safetensors.

Every file is written to a temporary file in its destination folder, flushed to disk and moved
into place with ``os.replace``, so a crash leaves either the old file or the new one, never half
of one. Tensors are stored with safetensors, everything else as JSON; nothing here calls
``torch.load`` or ``pickle``, so loading a file cannot run code.

Every safetensors file written here carries a SHA-256 digest of each tensor's bytes and of its
other metadata (metadata key ``checksums``); loading verifies them, so flipped bytes anywhere in
the file are reported instead of read as weights. Files without the key (written before it
existed, or by other programs) load unchecked.

Any unreadable, truncated, damaged or mismatched file raises :class:`ddpm.errors.CheckpointError`
with a one-line message: which file, what is wrong, what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as _safetensors_save
from torch import Tensor, nn

from ddpm.errors import CheckpointError

__all__ = [
    "atomic_write_bytes",
    "check_finite",
    "load_json",
    "load_module_tensors",
    "load_tensors",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "save_json",
    "save_tensors",
]

_RESTORE_HINT = "re-run training or restore the file from a backup"


# ---------------------------------------------------------------------------------------------
# Atomic files and JSON
# ---------------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; create missing parent folders; return the path.

    The bytes go to a temporary file in the same folder (same file system, so the final
    ``os.replace`` is atomic), are flushed and fsynced, then moved over ``path``. On any failure
    the temporary file is removed and ``path`` keeps its previous content. A replaced file keeps
    its permissions; a new one gets 0o644 (the temporary file itself is created 0o600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    tmp = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, mode)
        os.replace(tmp.name, path)
    except BaseException as e:
        try:
            os.unlink(tmp.name)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            # a failed write or fsync (a full disk) names no file: name the one being written
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (indent=2, sorted keys, trailing newline) atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; CheckpointError if it is missing, unreadable or not valid JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: file not found; check the run folder path or re-run training"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the file ({e}); {_RESTORE_HINT}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
            f"the file is truncated or corrupted; {_RESTORE_HINT}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------


def _prepare_for_saving(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detach, move to CPU, make contiguous, and give each tensor its own storage.

    safetensors refuses tensors that share memory (tied weights, views of one buffer); a copy
    of every tensor whose storage was already seen stores each key independently.
    """
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, t in tensors.items():
        if not isinstance(key, str):
            raise CheckpointError(f"tensor names must be strings (got {key!r})")
        if not isinstance(t, Tensor):
            raise CheckpointError(f"entry {key!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.numel() != t.untyped_storage().nbytes() // max(t.element_size(), 1):
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if t.numel() > 0:
            seen.add(ptr)
        out[key] = t
    return out


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write named tensors (any shapes and dtypes) and string metadata to a safetensors file.

    Tensors are stored from CPU, contiguous, each with its own storage; the write is atomic.
    The metadata gains the key ``checksums``: SHA-256 digests of each tensor's bytes and of the
    other metadata, which ``load_tensors`` verifies.
    """
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise CheckpointError(
                f"{path}: safetensors metadata must map str to str (got {k!r}: "
                f"{type(v).__name__}); encode other values with json.dumps"
            )
    if _CHECKSUMS in meta:
        raise CheckpointError(
            f"{path}: metadata key {_CHECKSUMS!r} is reserved for the tensors' digests; "
            "rename that entry"
        )
    prepared = _prepare_for_saving(tensors)
    sums = {k: _tensor_digest(t) for k, t in prepared.items()}
    meta[_CHECKSUMS] = json.dumps(
        {"algorithm": "sha256", "metadata": _metadata_digest(meta), "tensors": sums},
        sort_keys=True,
    )
    return atomic_write_bytes(path, _safetensors_save(prepared, metadata=meta))


# The metadata key holding {"algorithm": "sha256", "metadata": hex, "tensors": {name: hex}}.
_CHECKSUMS = "checksums"


def _tensor_digest(t: Tensor) -> str:
    """SHA-256 of a CPU, contiguous tensor's bytes: the bytes safetensors stores for it (in the
    byte order of this machine, which safetensors' little-endian matches on every platform
    torch ships for)."""
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).hexdigest()


def _metadata_digest(meta: Mapping[str, str]) -> str:
    """SHA-256 of the metadata (without the checksums entry) as sorted, compact JSON."""
    rest = {k: v for k, v in meta.items() if k != _CHECKSUMS}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}: the file is damaged; {_RESTORE_HINT}")


def _verify_checksums(path: Path, meta: Mapping[str, str], stored: str, tensors: bool) -> None:
    """Check the metadata and (with ``tensors``) every tensor's bytes, read straight from the
    file, against the digests stored at save time; CheckpointError naming the first tensor
    (in file order) that differs."""
    try:
        doc = json.loads(stored)
        sums, meta_sum = doc["tensors"], doc["metadata"]
        readable = doc["algorithm"] == "sha256" and isinstance(sums, dict)
    except (json.JSONDecodeError, TypeError, KeyError):
        readable = False
    if not readable:
        raise _damaged(path, f"the {_CHECKSUMS!r} metadata entry is unreadable")
    if _metadata_digest(meta) != meta_sum:
        raise _damaged(path, "the metadata does not match its stored checksum")
    if not tensors:
        return
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        with memoryview(mm) as body:
            start = 8 + int.from_bytes(body[:8], "little")  # u64 header size, JSON header, data
            header = json.loads(body[8:start].tobytes())
            header.pop("__metadata__", None)
            for (begin, end), key in sorted((v["data_offsets"], k) for k, v in header.items()):
                if key not in sums:
                    raise _damaged(path, f"tensor {key!r} has no stored checksum")
                if hashlib.sha256(body[start + begin : start + end]).hexdigest() != sums[key]:
                    raise _damaged(path, f"tensor {key!r} does not match its stored checksum")
    absent = sorted(set(sums) - set(header))
    if absent:
        raise _damaged(path, f"tensor {absent[0]!r} has a stored checksum but is not in the file")


@contextlib.contextmanager
def _utf8_name(path: Path) -> Iterator[str]:
    """A name of path that safetensors can open. It takes UTF-8 names only, so a path holding
    bytes that are not UTF-8 (names are bytes on POSIX; Python keeps such bytes as lone
    surrogates) is opened here and named /proc/self/fd/N (Linux), the same file."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield name
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        alias = f"/proc/self/fd/{fd}"
        if not os.path.exists(alias):
            raise CheckpointError(
                f"{path}: the name is not valid UTF-8, which safetensors cannot open here; "
                "rename the folder or file"
            )
        yield alias
    finally:
        os.close(fd)


def load_tensors(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    metadata_only: bool = False,
    verify: bool = True,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file: (tensors by name, on ``device``; string metadata, without the
    ``checksums`` entry). With metadata_only, no tensor is read (the header alone) and the
    tensors dict is empty. With verify, the digests ``save_tensors`` stored are checked (the
    metadata's always, the tensors' unless metadata_only); files without them load unchecked.

    A missing, truncated, corrupted or damaged file raises CheckpointError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: file not found; check the run folder path or re-run training"
        )
    try:
        with _utf8_name(path) as name, safe_open(name, framework="pt", device=str(device)) as f:
            metadata = dict(f.metadata() or {})
            stored = metadata.pop(_CHECKSUMS, None)
            if verify and stored is not None:
                _verify_checksums(path, metadata, stored, tensors=not metadata_only)
            tensors = {} if metadata_only else {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error type, OSError, ValueError, ...
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({detail}): the file is truncated or "
            f"corrupted; {_RESTORE_HINT}"
        ) from None
    return tensors, metadata


# ---------------------------------------------------------------------------------------------
# Optimizer state: tensors to safetensors, everything else to JSON
# ---------------------------------------------------------------------------------------------
#
# A torch.optim state_dict is {"state": {param_id: {name: value}}, "param_groups": [...]}.
# Tensors anywhere in it (AdamW's exp_avg, exp_avg_sq and its 0-dim 'step') are stored under
# their dotted path, e.g. "state.3.exp_avg", and replaced in the JSON by {"__tensor__": key}.
# Tuples (betas) and dicts with non-string keys (param ids) are tagged so they come back with
# their exact types, which keeps a resumed optimizer bit-identical.

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def _encode(value: Any, key: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, Tensor):
        tensors[key] = value
        return {_TENSOR: key}
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and not {_TENSOR, _TUPLE, _ITEMS} & set(value):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}
        if all(isinstance(k, bool | int | float | str) for k in value):
            return {_ITEMS: [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    raise CheckpointError(
        f"optimizer state entry {key!r} is a {type(value).__name__}, which cannot be stored "
        "without pickle; use an optimizer whose state holds only tensors and plain numbers"
    )


def _decode(value: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {_TENSOR}:
        key = value[_TENSOR]
        if key not in tensors:
            raise CheckpointError(
                f"optimizer state: tensor {key!r} is missing from the file; {_RESTORE_HINT}"
            )
        return tensors[key]
    if set(value) == {_TUPLE}:
        return tuple(_decode(v, tensors) for v in value[_TUPLE])
    if set(value) == {_ITEMS}:
        return {k: _decode(v, tensors) for k, v in value[_ITEMS]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def optimizer_to_tensors(state_dict: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """Split ``optimizer.state_dict()`` into (tensors by dotted path, JSON of everything else).

    Keys look like ``"state.{param_id}.{name}"`` (e.g. ``"state.0.exp_avg"``, ``"state.0.step"``).
    The tensors are the optimizer's own (not copies); ``save_tensors`` copies them to CPU.
    """
    tensors: dict[str, Tensor] = {}
    encoded = {k: _encode(v, k, tensors) for k, v in state_dict.items()}
    return tensors, json.dumps(encoded, sort_keys=True)


def optimizer_from_tensors(tensors: Mapping[str, Tensor], meta_json: str) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_tensors`: a dict for ``optimizer.load_state_dict``.

    The tensors may live on any device. Per-parameter ``step`` counters come back on the CPU,
    where torch keeps them for non-capturable optimizers; ``load_state_dict`` moves them to
    the parameters' device itself where the optimizer needs that (capturable or fused).
    """
    try:
        encoded = json.loads(meta_json)
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(
            f"optimizer state: metadata is not valid JSON ({e}); {_RESTORE_HINT}"
        ) from None
    if not isinstance(encoded, dict):
        raise CheckpointError(f"optimizer state: metadata is not a JSON object; {_RESTORE_HINT}")
    state_dict = _decode(encoded, tensors)
    for param_state in (state_dict.get("state") or {}).values():
        if isinstance(param_state, dict) and isinstance(param_state.get("step"), Tensor):
            param_state["step"] = param_state["step"].to("cpu")
    return state_dict


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


def _first_mismatch(
    loaded: Mapping[str, Tensor], expected: Mapping[str, Tensor], strict: bool
) -> str | None:
    """Describe the first key or shape that differs between a file and a model, or None."""
    if strict:
        missing = [k for k in expected if k not in loaded]
        unexpected = sorted(k for k in loaded if k not in expected)
        for what, keys in (("missing key", missing), ("unexpected key", unexpected)):
            if keys:
                more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
                return f"{what} {keys[0]!r}{more}"
    for k, t in expected.items():  # in the model's order, so the first layer is named first
        if k in loaded and tuple(loaded[k].shape) != tuple(t.shape):
            return (
                f"{k!r} has shape {list(loaded[k].shape)} in the file but "
                f"{list(t.shape)} in the model"
            )
    return None


def check_finite(tensors: Mapping[str, Tensor], where: str) -> None:
    """CheckpointError naming the first floating tensor (in ``tensors``' order) that holds NaN
    or inf. The tensors share one device; one flag per tensor comes back from it.

    NaN and inf survive a sum (inf + -inf is NaN), so a finite sum proves a finite tensor in
    one vectorised pass; only a tensor whose sum is not finite (bad, or a sum that overflowed)
    is checked entry by entry.
    """
    floats = [(k, t) for k, t in tensors.items() if t.is_floating_point() or t.is_complex()]
    if not floats:
        return
    suspect = ~torch.isfinite(torch.stack([t.sum() for _, t in floats]))  # dtypes promoted
    for i in torch.nonzero(suspect).flatten().tolist():
        name, t = floats[i]
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise CheckpointError(
                f"{where}: tensor {name!r} holds NaN or infinite values ({bad} of {t.numel()} "
                "entries), so these weights cannot be used: retrain (a lower learning rate may "
                "keep the loss finite) or restore the file from a backup"
            )


def load_module_tensors(
    module: nn.Module, tensors: Mapping[str, Tensor], where: str, strict: bool = True
) -> None:
    """Load a state dict into ``module``; missing or unexpected keys (when ``strict``) and shape
    mismatches raise CheckpointError naming ``where`` and the first difference."""
    detail = _first_mismatch(tensors, module.state_dict(), strict)
    if detail is None:
        try:
            module.load_state_dict(tensors, strict=strict)
        except RuntimeError as e:
            lines = [s.strip() for s in str(e).splitlines() if s.strip()]
            detail = lines[-1] if lines else type(e).__name__
    if detail is not None:
        raise CheckpointError(
            f"{where}: weights do not match the model built from config.json ({detail}); "
            "the checkpoint was written by a different model configuration"
        )
