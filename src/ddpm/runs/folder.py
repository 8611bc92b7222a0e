"""Safety of a run folder: a manifest of what ddpm wrote, an exclusive lock, and a backup of the
old run while ``--overwrite`` starts a new one.

    manifest.json    the files (relative paths) that ddpm wrote into the folder, and which
                     command wrote each (``{"files": [...], "written_by": {path: command}}``;
                     older manifests list the files alone); ``--overwrite`` and a failed run
                     delete these and nothing else, and one command never replaces another's
    .ddpm.lock       locked (``fcntl.flock``) by the one process that writes into the folder;
                     holds its pid; the OS drops the lock when that process dies, even by kill -9
    .ddpm-backup/    the old run while a new one replaces it, until the new one's first checkpoint

A folder is a run when it holds a checkpoint (whose config is the truth: ``ddpm.runs.config``).
Everything here works on file names only: it never removes a folder tree that the user chose,
only files listed in the manifest, the folders those files emptied, and its own backup folder.
It never follows a link: a listed path that passes through a linked folder is not ddpm's (the
link leads out of the run folder, e.g. to where the user moved the files), a listed file that
is now a link is removed or moved as the link alone, and scans do not descend into linked
folders.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from ddpm.errors import CheckpointError, ConfigError
from ddpm.runs import checkpoint as runs
from ddpm.runs.checkpoint import load_json, save_json

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
    special = never_a_run_folder(run_dir)  # before anything scans it
    if special is not None:
        what = "choose another out" if create else "give a run folder (written by ddpm train)"
        raise ConfigError(f"{run_dir}: is {special}, never a run folder; {what}", params=("out",))
    if run_dir.exists() and not run_dir.is_dir():
        if create:
            raise ConfigError(
                f"{run_dir}: exists and is not a folder; choose another out", params=("out",)
            )
        raise CheckpointError(
            f"{run_dir}: a file, not a run folder; give a run folder (written by ddpm train)"
        )
    created = False
    if not run_dir.exists():
        if not create:
            raise CheckpointError(f"{run_dir}: no such run folder; train one first (ddpm train)")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)  # another writer may be creating it too
        except OSError as e:
            raise ConfigError(
                f"{run_dir}: cannot create the run folder ({e.strerror}); choose a writable out",
                params=("out",),
            ) from None
        created = True
    fd = _acquire(run_dir, command)
    try:
        recover(run_dir)
        remove_temp_files(run_dir)
        yield run_dir
    finally:
        # Outputs are listed before they are written; a command that failed first wrote fewer.
        with contextlib.suppress(CheckpointError, OSError):  # a damaged manifest stays as is
            forget_missing(run_dir)
        # A folder ddpm wrote nothing into keeps no lock file (and is removed if ddpm made it);
        # unlinking while locked is safe because _acquire checks it locked the current file.
        if not (run_dir / MANIFEST).exists():
            (run_dir / LOCK).unlink(missing_ok=True)
        os.close(fd)  # releases the lock
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty


def never_a_run_folder(run_dir: Path) -> str | None:
    """What run_dir is when it can never be a run folder: the filesystem root, the home
    folder or the top of a git repository (a scan for ddpm's files would crawl the user's)."""
    if not run_dir.is_dir():
        return None
    path = run_dir.resolve()
    if path == Path(path.anchor):
        return "the filesystem root"
    with contextlib.suppress(RuntimeError, KeyError):  # no home folder is known
        if path == Path.home().resolve():
            return "the home folder"
    if (path / ".git").exists():
        return "the top of a git repository"
    return None


def recover_interrupted(run_dir: str | Path) -> None:
    """Before reading run_dir: restore the run that a killed ``--overwrite`` left in its
    backup (``recover``), under the lock (RunLockedError while another process writes into the
    folder). A folder without a backup is only read: no lock, no write."""
    run_dir = Path(run_dir)
    if (run_dir / BACKUP).is_dir():
        with locked(run_dir, "recover"):
            pass  # locked() recovers on entry


def _acquire(run_dir: Path, command: str) -> int:
    path = run_dir / LOCK
    while True:
        try:
            # never through a link: truncating its target would destroy a file elsewhere
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
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
    return list(_read_entries(Path(run_dir)))


def written_by(run_dir: str | Path) -> dict[str, str | None]:
    """{relative path: the command that wrote it, e.g. 'sample'} for each file the manifest of
    run_dir lists; None where a manifest written before commands were recorded does not say,
    except for the fixed files of a training run, which are ``train``'s."""

    training = {runs.CONFIG, runs.CHECKPOINT, runs.LOG, runs.SAMPLES, "samples.npy"}
    entries = _read_entries(Path(run_dir))
    return {f: c if c is not None or f not in training else "train" for f, c in entries.items()}


def _read_entries(run_dir: Path) -> dict[str, str | None]:
    path = run_dir / MANIFEST
    if not path.exists():
        return {}
    doc = load_json(path)
    files = doc.get("files") if isinstance(doc, dict) else None
    writers = doc.get("written_by", {}) if isinstance(doc, dict) else None
    if (
        not isinstance(files, list)
        or not all(isinstance(f, str) for f in files)
        or not isinstance(writers, dict)
        or not all(isinstance(c, str) for c in writers.values())
    ):
        raise CheckpointError(
            f"{path}: expected {{'files': [relative paths], 'written_by': {{path: command}}}}; "
            "the file is damaged"
        )
    return {f: writers.get(f) for f in files if _is_relative_inside(f)}


def _save_entries(run_dir: Path, entries: dict[str, str | None]) -> None:
    """Write the manifest (removed when it would list nothing)."""
    if not entries:
        (run_dir / MANIFEST).unlink(missing_ok=True)
        return
    writers = {f: c for f, c in entries.items() if c is not None}
    save_json(run_dir / MANIFEST, {"files": sorted(entries), "written_by": writers})


def record(run_dir: str | Path, paths: Iterable[str | Path], command: str | None = None) -> None:
    """Add files (paths as the caller writes them, e.g. ``run_dir / "log.jsonl"``) to the
    manifest of run_dir, before writing them, as written by command (e.g. 'train'); paths
    outside run_dir are ignored."""
    run_dir = Path(run_dir)
    entries = _read_entries(run_dir)
    changed = False
    for rel in (_relative(run_dir, p) for p in paths):
        if rel is not None and (rel not in entries or command not in (None, entries[rel])):
            entries[rel] = command  # a listed file keeps its writer unless one is named
            changed = True
    if changed:
        _save_entries(run_dir, entries)


def forget_missing(run_dir: str | Path) -> None:
    """Drop from the manifest of run_dir the files that are not there (listed before a write
    that never came); a manifest left listing nothing is removed."""
    run_dir = Path(run_dir)
    entries = _read_entries(run_dir)
    kept = {f: c for f, c in entries.items() if os.path.lexists(run_dir / f)}
    if len(kept) != len(entries):
        _save_entries(run_dir, kept)


def check_replaceable(
    run_dir: str | Path,
    paths: Iterable[str | Path],
    command: str,
    beside: Iterable[str | Path] = (),
) -> None:
    """Refuse (CheckpointError naming the file) before command writes paths and beside:
    a file the manifest of run_dir lists as written by another command is never replaced
    (``ddpm evaluate --per-example RUN/samples.npy`` would destroy the run's samples), and
    neither is an existing file in beside, the outputs that command writes next to the one the
    user named (the .npy beside ``ddpm sample --out X.png``), unless ddpm wrote it."""
    run_dir, beside = Path(run_dir), [Path(p) for p in beside]
    rels = {path: _relative(run_dir, path) for path in [Path(p) for p in paths] + beside}
    writers = written_by(run_dir) if any(r is not None for r in rels.values()) else {}
    for path, rel in rels.items():
        writer = writers.get(rel) if rel is not None else None
        if writer is not None and writer != command:
            raise CheckpointError(
                f"{path}: written by `ddpm {writer}` into the run folder; `ddpm {command}` "
                "never replaces another command's file: choose another path"
            )
        if path in beside and os.path.lexists(path) and (rel is None or rel not in writers):
            raise CheckpointError(
                f"{path}: already exists and is not a file ddpm wrote; `ddpm {command}` writes "
                "it beside the out you named: move it away or choose another out",
                params=("out",),
            )


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

    listed = read_manifest(run_dir)
    if not listed and (run_dir / runs.CHECKPOINT).exists():
        listed = [runs.CONFIG, runs.CHECKPOINT, runs.LOG, runs.SAMPLES, "samples.npy"]
    return [f for f in listed if _entry(run_dir, f) is not None]


def _entry(run_dir: Path, rel: str) -> Path | None:
    """run_dir / rel when ddpm may remove or move it, else None: every folder on the way is a
    real folder inside run_dir, never a link (a linked folder leads out of the run folder, to
    files that are not ddpm's), and the entry is a regular file, or a link, which is then
    removed or moved alone, never its target."""
    path = run_dir
    *folders, name = Path(rel).parts
    for part in folders:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    if not path.resolve().is_relative_to(run_dir.resolve()):
        return None
    path = path / name
    try:
        mode = path.lstat().st_mode
    except OSError:
        return None
    return path if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else None


def _scan(run_dir: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of each entry of run_dir that is not a folder (files and links,
    links to folders too), outside ddpm's backup; a linked folder is never entered."""
    for top, folders, files in os.walk(run_dir):  # followlinks=False
        top = Path(top)
        links = [d for d in folders if (top / d).is_symlink()]
        folders[:] = sorted(d for d in folders if d not in links and (top, d) != (run_dir, BACKUP))
        for name in sorted(files + links):
            yield (top / name).relative_to(run_dir).as_posix(), top / name


def foreign_files(run_dir: Path) -> list[str]:
    """Files of run_dir that ddpm did not write (sorted relative paths); a link counts as a
    file, a linked folder included."""
    owned = set(owned_files(run_dir)) | {MANIFEST, LOCK}
    found = [rel for rel, p in _scan(run_dir) if rel not in owned and not _is_temp_of(p, owned)]
    return sorted(found)


def remove_owned(run_dir: Path) -> None:
    """Delete the files ddpm wrote into run_dir, the folders they leave empty, and the manifest."""
    for rel in owned_files(run_dir):
        (run_dir / rel).unlink(missing_ok=True)  # a link goes, never its target
        _remove_empty_parents(run_dir, run_dir / rel)
    (run_dir / MANIFEST).unlink(missing_ok=True)


def _remove_empty_parents(run_dir: Path, path: Path) -> None:
    for folder in path.parents:
        if folder == run_dir or run_dir not in folder.parents or folder.is_symlink():
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

    names = set(owned_files(run_dir)) | set(read_manifest(run_dir))
    names |= {runs.CONFIG, runs.CHECKPOINT, runs.LOG, MANIFEST, "samples.npy"}
    removed = []
    for _, p in _scan(run_dir):
        if not p.is_symlink() and p.is_file() and _is_temp_of(p, names):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# --- replacing a run: backup, commit, abandon, recover --------------------------------------


def back_up_run(run_dir: Path) -> None:
    """Move the old run's files into BACKUP (the checkpoint last, so that a backup holding a
    checkpoint is complete), to be dropped at the new run's first checkpoint."""

    backup = run_dir / BACKUP
    if os.path.lexists(backup) and not _real_folder(backup):
        raise CheckpointError(
            f"{backup}: a link or a file where ddpm keeps the old run while replacing it; "
            "remove it and run again"
        )
    files = [f for f in owned_files(run_dir) if f != runs.CHECKPOINT]
    for rel in files + [MANIFEST, runs.CHECKPOINT]:
        path = _entry(run_dir, rel)  # a link is moved alone, never what it points to
        if path is not None:
            target = backup / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            _remove_empty_parents(run_dir, path)


def _real_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def commit(run_dir: Path) -> None:
    """The new run has its checkpoint: the old run is no longer needed."""
    if _real_folder(run_dir / BACKUP):
        shutil.rmtree(run_dir / BACKUP)


def abandon(run_dir: Path) -> None:
    """A new run failed before its first checkpoint: remove what it wrote, bring back the old."""

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

    backup = run_dir / BACKUP
    if not _real_folder(backup):
        return
    if not (backup / runs.CHECKPOINT).exists():  # killed while backing up: nothing new yet
        _restore(run_dir)
    elif (run_dir / runs.CHECKPOINT).exists():  # killed between the new checkpoint and commit
        commit(run_dir)
    else:
        abandon(run_dir)


def _restore(run_dir: Path) -> None:
    backup = run_dir / BACKUP
    if not _real_folder(backup):
        return
    for rel, p in _scan(backup):
        target = _make_parents(run_dir, rel)
        if target is not None:  # never back through a link that now leads elsewhere
            os.replace(p, target)
    shutil.rmtree(backup)


def _make_parents(run_dir: Path, rel: str) -> Path | None:
    """run_dir / rel with its missing folders made; None when a folder on the way is a link
    or a file."""
    path = run_dir
    *folders, name = Path(rel).parts
    for part in folders:
        path = path / part
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            return None
        path.mkdir(exist_ok=True)
    return path / name


def prepare_new_run(run_dir: Path) -> None:
    """Make room for a fresh run in run_dir: back up an old run (it holds a checkpoint), or
    remove what a run that never reached its checkpoint left."""

    if (run_dir / runs.CHECKPOINT).exists():
        back_up_run(run_dir)
    else:
        remove_owned(run_dir)


def check_fresh_folder(run_dir: Path, overwrite: bool) -> None:
    """Refuse to start a run in a folder that holds files ddpm did not write, unless it is a
    run (then --overwrite replaces only ddpm's files)."""

    if not run_dir.is_dir() or (run_dir / runs.CHECKPOINT).exists():
        return
    foreign = foreign_files(run_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        what = "overwrite only replaces a ddpm run" if overwrite else "nothing is written there"
        raise CheckpointError(
            f"{run_dir}: not empty and not a ddpm run (holds {shown}); {what}: "
            "choose a new or empty out",
            params=("overwrite", "out"),
        )


@contextlib.contextmanager
def writing_outputs(
    run_dir: str | Path,
    paths: Iterable[str | Path],
    command: str,
    beside: Iterable[str | Path] = (),
) -> Iterator[None]:
    """Hold the lock of run_dir and record paths and beside (the outputs command writes next to
    one the user named) in its manifest when any of them goes into it; outputs written
    elsewhere take no lock. Refuses first what would replace a file that is not command's
    (``check_replaceable``)."""
    paths, beside = [Path(p) for p in paths], [Path(p) for p in beside]
    mine = [p for p in paths + beside if inside(run_dir, p)]
    if not mine:
        check_replaceable(run_dir, paths, command, beside)
        yield
        return
    with locked(run_dir, command):
        check_replaceable(run_dir, paths, command, beside)
        record(run_dir, mine, command)
        yield
