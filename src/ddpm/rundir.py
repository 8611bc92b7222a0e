"""Safety of a run folder: a manifest of what ddpm wrote, an exclusive lock, and a backup of the
old run while ``--overwrite`` starts a new one.

    manifest.json    the files (relative paths) that ddpm wrote into the folder; ``--overwrite``
                     and a failed run delete these and nothing else
    .ddpm.lock       locked (``fcntl.flock``) by the one process that writes into the folder;
                     holds its pid; the OS drops the lock when that process dies, even by kill -9
    .ddpm-backup/    the old run while a new one replaces it, until the new one's first checkpoint

A folder is a run when it holds a checkpoint (whose config is the truth: ``ddpm.runconfig``).
Everything here works on file names only: it never removes a folder tree that the user chose,
only files listed in the manifest, the folders those files emptied, and its own backup folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from ddpm.checkpoint import load_json, save_json
from ddpm.errors import CheckpointError, ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
LOCK = ".ddpm.lock"
BACKUP = ".ddpm-backup"
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")  # checkpoint.atomic_write_bytes


class RunLockedError(CheckpointError):
    """Another process is writing into the run folder."""


# --- the lock ---------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(run_dir: str | Path, command: str, create: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of run_dir while writing into it; a second writer gets
    RunLockedError naming the holder's pid. On entry, a run left half-replaced by a killed
    ``--overwrite`` is restored and torn temp files of killed writes are removed.

    create: make run_dir (and its parents) if missing; removed again on exit when nothing but
    the lock was written into it.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: exists and is not a folder; choose another --out")
    created = False
    if not run_dir.exists():
        if not create:
            raise CheckpointError(
                f"{run_dir}: no such run folder; train one with `ddpm train --out DIR`"
            )
        try:
            run_dir.mkdir(parents=True, exist_ok=True)  # another writer may be creating it too
        except OSError as e:
            raise ConfigError(
                f"{run_dir}: cannot create the run folder ({e.strerror}); choose a writable --out"
            ) from None
        created = True
    fd = _acquire(run_dir, command)
    try:
        recover(run_dir)
        remove_temp_files(run_dir)
        yield run_dir
    finally:
        # A folder ddpm wrote nothing into keeps no lock file (and is removed if ddpm made it);
        # unlinking while locked is safe because _acquire checks it locked the current file.
        if not (run_dir / MANIFEST).exists():
            (run_dir / LOCK).unlink(missing_ok=True)
        os.close(fd)  # releases the lock
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty


def _acquire(run_dir: Path, command: str) -> int:
    path = run_dir / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(
                f"{run_dir}: cannot write into the folder ({e.strerror}); choose a writable one"
            ) from None
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{run_dir}: in use by another ddpm process ({holder}); wait for it to finish "
                "or choose another folder"
            )
        # The lock file may have been removed (by a creator cleaning up) between open and lock.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"pid {os.getpid()}, ddpm {command}\n".encode())
            return fd
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode(errors="replace").strip() or "pid unknown"
    except OSError:  # Windows locks are mandatory: the holder's bytes cannot be read
        return "pid unknown"


def _try_lock(fd: int) -> bool:
    if fcntl is None:  # Windows: a byte-range lock on the first byte
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# --- the manifest -----------------------------------------------------------------------------


def read_manifest(run_dir: str | Path) -> list[str]:
    """Relative paths of the files ddpm wrote into run_dir ([] when there is no manifest)."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return []
    doc = load_json(path)
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise CheckpointError(
            f"{path}: expected {{'files': [relative paths]}}; the file is damaged"
        )
    return [f for f in files if _is_relative_inside(f)]


def record(run_dir: str | Path, paths: Iterable[str | Path]) -> None:
    """Add files (paths as the caller writes them, e.g. ``run_dir / "log.jsonl"``) to the
    manifest of run_dir, before writing them; paths outside run_dir are ignored."""
    run_dir = Path(run_dir)
    listed = read_manifest(run_dir)
    new = [r for r in (_relative(run_dir, p) for p in paths) if r is not None and r not in listed]
    if new:
        save_json(run_dir / MANIFEST, {"files": sorted(listed + new)})


def inside(run_dir: str | Path, path: str | Path) -> bool:
    return _relative(Path(run_dir), path) is not None


def _relative(run_dir: Path, path: str | Path) -> str | None:
    try:
        rel = Path(path).resolve().relative_to(run_dir.resolve())
    except ValueError:
        return None
    return rel.as_posix() if rel.parts else None


def _is_relative_inside(rel: str) -> bool:
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts


def owned_files(run_dir: Path) -> list[str]:
    """Files of run_dir that ddpm wrote: the manifest, or for a run written before manifests
    existed, the fixed names of a training run."""
    from ddpm import runs

    listed = read_manifest(run_dir)
    if not listed and (run_dir / runs.CHECKPOINT).exists():
        listed = [runs.CONFIG, runs.CHECKPOINT, runs.LOG, runs.SAMPLES, "samples.npy"]
    return [f for f in listed if (run_dir / f).is_file()]


def foreign_files(run_dir: Path) -> list[str]:
    """Files of run_dir that ddpm did not write (sorted relative paths)."""
    owned = set(owned_files(run_dir)) | {MANIFEST, LOCK}
    found = []
    for p in run_dir.rglob("*"):
        rel = p.relative_to(run_dir).as_posix()
        if rel == BACKUP or rel.startswith(BACKUP + "/") or p.is_dir():
            continue
        if rel not in owned and not _is_temp_of(p, owned):
            found.append(rel)
    return sorted(found)


def remove_owned(run_dir: Path) -> None:
    """Delete the files ddpm wrote into run_dir, the folders they leave empty, and the manifest."""
    for rel in owned_files(run_dir):
        (run_dir / rel).unlink(missing_ok=True)
        _remove_empty_parents(run_dir, run_dir / rel)
    (run_dir / MANIFEST).unlink(missing_ok=True)


def _remove_empty_parents(run_dir: Path, path: Path) -> None:
    for folder in path.parents:
        if folder == run_dir or run_dir not in folder.parents:
            return
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return


# --- temp files of killed writes --------------------------------------------------------------


def _is_temp_of(path: Path, owned: set[str]) -> bool:
    m = _TEMP.match(path.name)
    return m is not None and m["name"] in {Path(f).name for f in owned}


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Remove ``.NAME.XXXX.tmp`` files left by writes killed half-way, for names ddpm writes."""
    from ddpm import runs

    names = set(owned_files(run_dir)) | set(read_manifest(run_dir))
    names |= {runs.CONFIG, runs.CHECKPOINT, runs.LOG, MANIFEST, "samples.npy"}
    removed = []
    for p in run_dir.rglob(".*.tmp"):
        if BACKUP not in p.relative_to(run_dir).parts and p.is_file() and _is_temp_of(p, names):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# --- replacing a run: backup, commit, abandon, recover --------------------------------------


def back_up_run(run_dir: Path) -> None:
    """Move the old run's files into BACKUP (the checkpoint last, so that a backup holding a
    checkpoint is complete), to be dropped at the new run's first checkpoint."""
    from ddpm import runs

    files = [f for f in owned_files(run_dir) if f != runs.CHECKPOINT]
    order = files + [MANIFEST] * (run_dir / MANIFEST).exists() + [runs.CHECKPOINT]
    for rel in order:
        if (run_dir / rel).exists():
            target = run_dir / BACKUP / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(run_dir / rel, target)
            _remove_empty_parents(run_dir, run_dir / rel)


def commit(run_dir: Path) -> None:
    """The new run has its checkpoint: the old run is no longer needed."""
    if (run_dir / BACKUP).is_dir():
        shutil.rmtree(run_dir / BACKUP)


def abandon(run_dir: Path) -> None:
    """A new run failed before its first checkpoint: remove what it wrote, bring back the old."""
    from ddpm import runs

    if not (run_dir / runs.CHECKPOINT).exists():
        remove_owned(run_dir)
        _restore(run_dir)


@contextlib.contextmanager
def undo_on_failure(run_dir: Path) -> Iterator[None]:
    """A new run that fails or is interrupted before its first checkpoint leaves no trace:
    its files are removed and the run it was replacing comes back (``abandon``)."""
    try:
        yield
    except BaseException:
        abandon(run_dir)
        raise


def recover(run_dir: Path) -> None:
    """Finish a replacement that a kill interrupted: keep the new run if it reached its
    checkpoint, else remove it and restore the old one."""
    from ddpm import runs

    backup = run_dir / BACKUP
    if not backup.is_dir():
        return
    if not (backup / runs.CHECKPOINT).exists():  # killed while backing up: nothing new yet
        _restore(run_dir)
    elif (run_dir / runs.CHECKPOINT).exists():  # killed between the new checkpoint and commit
        commit(run_dir)
    else:
        abandon(run_dir)


def _restore(run_dir: Path) -> None:
    backup = run_dir / BACKUP
    if not backup.is_dir():
        return
    for p in sorted(backup.rglob("*")):
        if p.is_file():
            target = run_dir / p.relative_to(backup)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, target)
    shutil.rmtree(backup)


def prepare_new_run(run_dir: Path) -> None:
    """Make room for a fresh run in run_dir: back up an old run (it holds a checkpoint), or
    remove what a run that never reached its checkpoint left."""
    from ddpm import runs

    if (run_dir / runs.CHECKPOINT).exists():
        back_up_run(run_dir)
    else:
        remove_owned(run_dir)


def check_fresh_folder(run_dir: Path, overwrite: bool) -> None:
    """Refuse to start a run in a folder that holds files ddpm did not write, unless it is a
    run (then --overwrite replaces only ddpm's files)."""
    from ddpm import runs

    if not run_dir.is_dir() or (run_dir / runs.CHECKPOINT).exists():
        return
    foreign = foreign_files(run_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        what = "--overwrite only replaces a ddpm run" if overwrite else "nothing is written there"
        raise CheckpointError(
            f"{run_dir}: not empty and not a ddpm run (holds {shown}); {what}: "
            "choose a new or empty --out"
        )


@contextlib.contextmanager
def writing_outputs(run_dir: str | Path, paths: Iterable[str | Path], command: str):
    """Hold the lock of run_dir and record paths in its manifest when any of them goes into it;
    outputs written elsewhere take no lock."""
    paths = [Path(p) for p in paths]
    mine = [p for p in paths if inside(run_dir, p)]
    if not mine:
        yield
        return
    with locked(run_dir, command):
        record(run_dir, mine)
        yield
