"""Separate Python processes that start in a fraction of a second.

A test that must kill a ``ddpm`` process, race two of them or run a documentation page as a
program of its own needs real processes. Started as ``python -m ddpm`` each one pays about 2.5 s
of CPU before its first line (importing torch, the compiler stack its optimisers pull in,
matplotlib), more than the tiny runs themselves. Here a process is forked from a server that has
imported all of that once (multiprocessing's "forkserver": a single-threaded process that has
run no torch operation, so forking it is safe). The child then does what the interpreter does
for ``python -m ddpm ARGS`` or ``python SCRIPT ARGS`` (``runpy``, with ``sys.argv`` set): it is
a process of its own, with its own pid, working folder, environment, files, locks and exit
status, and ``os.kill(pid, SIGKILL)`` kills it as it kills any process. Its stdout and stderr
go to files, so it writes to no terminal, as with a pipe.

The entry points themselves (``python -m ddpm``, the ``ddpm`` script) are started the usual way
by tests/test_cli.py and tests/test_packaging.py.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# what a child imports before its first line of work
PRELOAD = ["torch", "torch._dynamo", "ddpm.cli.main", "ddpm.training.loop", "matplotlib.figure"]
_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([*PRELOAD, __name__])
    return _context


def _child(run: tuple[str, str], argv: list[str], files: tuple[str, str], cwd, env) -> None:
    os.environ.update(env)
    if "OMP_NUM_THREADS" in env:  # torch read the variable when the server imported it
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    if "MPLBACKEND" in env:  # read when matplotlib was imported, in the server
        import matplotlib

        matplotlib.use(env["MPLBACKEND"])
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in zip((1, 2), files, strict=True):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    kind, name = run
    sys.argv = [name, *argv]
    try:
        if kind == "module":
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(name, run_name="__main__")
        code = 0
    except SystemExit as e:  # as the interpreter reports it: None is 0, a message is 1
        code = e.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:  # an uncaught exception: its traceback and status 1
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


class Child:
    """A forked Python process, with the parts of subprocess.Popen that tests use. Where the
    platform has no fork server (Windows) it is an ordinary subprocess."""

    def __init__(self, run, args, cwd=None, env=None):
        self._files = tempfile.TemporaryDirectory(prefix="forked-")
        self._paths = tuple(os.path.join(self._files.name, n) for n in ("stdout", "stderr"))
        for path in self._paths:
            Path(path).touch()  # empty if the child dies before it opens them
        argv = [str(a) for a in args]
        self.returncode: int | None = None
        if "forkserver" not in multiprocessing.get_all_start_methods():
            kind, name = run
            cmd = [sys.executable, *(["-m", name] if kind == "module" else [name]), *argv]
            with open(self._paths[0], "wb") as out, open(self._paths[1], "wb") as err:
                self._popen = subprocess.Popen(
                    cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=err
                )
            self.pid = self._popen.pid
            return
        self._popen = None
        spec = (run, argv, self._paths, None if cwd is None else str(cwd), env or {})
        self._process = _server().Process(target=_child, args=spec)
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        if self._popen is not None:
            self.returncode = self._popen.poll()
        elif self.returncode is None and not self._process.is_alive():
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self._popen is not None:
            self.returncode = self._popen.wait(timeout)
            return self.returncode
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(["forked"], timeout or 0)
        return self.returncode

    def communicate(self) -> tuple[bytes, bytes]:
        """(stdout, stderr) once the process has ended."""
        self.wait()
        return tuple(Path(p).read_bytes() for p in self._paths)

    def stderr(self) -> str:
        return self.communicate()[1].decode()


def ddpm(*args: str | Path, env: dict[str, str] | None = None) -> Child:
    """``python -m ddpm ARGS``, forked."""
    return Child(("module", "ddpm"), args, env=env)


def script(path: str | Path, *args: str | Path, cwd=None, env=None) -> Child:
    """``python PATH ARGS`` in the folder cwd, forked."""
    return Child(("path", str(path)), args, cwd=cwd, env=env)
