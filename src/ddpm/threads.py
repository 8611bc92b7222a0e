"""CPU threads: how many torch uses while a command runs.

torch's default, one thread per core, is fastest on an idle machine. Beside other busy
processes it collapses: every operation ends in a barrier where torch's threads wait for each
other, and a thread that shares its core with another process is often not running, so all of
them wait (a 300-step digits run took 2.8x as long beside one busy process and 7.5x beside two,
where the fair share of two cores is 2x). One thread has no such barrier.

So unless the user chose a count (``--threads``, or OMP_NUM_THREADS for torch's default), a
command adapts: every ``ADAPT_EVERY_S`` seconds it measures the cores that other processes kept
busy (Linux's /proc/stat, less this process's own CPU time) and uses the cores left over,
``threads_for(cores, others)``. Alone it keeps torch's default; beside one busy process on two
cores it drops to one thread, and back when the other process ends. The change is applied in the
main thread (torch's thread count is a per-thread OpenMP setting) by a SIGALRM handler, which
Python runs between two bytecodes, so no loop of the library needs to know about it.
``benchmarks/contention.py`` measures the result.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ddpm.errors import ConfigError

ADAPT_EVERY_S = 1.0  # seconds between two measurements of the other processes' load
PROC_STAT = "/proc/stat"
# Fields of the "cpu" line of /proc/stat that count as busy (user, nice, system, irq, softirq,
# steal; guest time is already inside user): all but idle and iowait.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def threads_for(cores: int, others: float) -> int:
    """The threads to use when other processes keep ``others`` of ``cores`` cores busy: the
    cores left over, rounded to the nearest whole core, and at least one."""
    return max(1, min(cores, cores - round(others)))


def busy_seconds(stat_text: str) -> float | None:
    """CPU seconds all cores have spent busy since boot, from the text of /proc/stat (None
    when it has no aggregate "cpu" line)."""
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(v) for v in fields[1:]]
            hz = os.sysconf("SC_CLK_TCK")
            return sum(ticks[i] for i in _BUSY_FIELDS if i < len(ticks)) / hz
    return None


@dataclass
class LoadReading:
    """One reading of the machine's busy time, this process's CPU time and the clock."""

    busy: float
    own: float
    wall: float

    @classmethod
    def now(cls) -> LoadReading | None:
        try:
            with open(PROC_STAT, encoding="ascii") as f:
                busy = busy_seconds(f.read())
        except (OSError, ValueError):
            return None
        if busy is None:
            return None
        return cls(busy=busy, own=time.process_time(), wall=time.monotonic())

    def others_since(self, earlier: LoadReading) -> float:
        """Cores that other processes kept busy between earlier and this reading."""
        wall = self.wall - earlier.wall
        if wall <= 0:
            return 0.0
        return max(0.0, ((self.busy - earlier.busy) - (self.own - earlier.own)) / wall)


class AdaptiveThreads:
    """Sets torch's thread count from the measured load every ``every`` seconds, up to
    ``cores`` (torch's default); see the module docstring."""

    def __init__(
        self,
        cores: int,
        every: float = ADAPT_EVERY_S,
        read: Callable[[], LoadReading | None] = LoadReading.now,
    ) -> None:
        self.cores = cores
        self.every = every
        self.read = read  # the load reading: /proc/stat, or a stand-in in tests
        self.last = read()
        self.changes: list[tuple[float, int]] = []  # (others, threads) at each change

    def adjust(self) -> None:
        reading = self.read()
        if reading is None or self.last is None:
            return
        others = reading.others_since(self.last)
        self.last = reading
        n = threads_for(self.cores, others)
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
            self.changes.append((others, n))


def can_adapt() -> bool:
    """Adapting needs /proc/stat (Linux), SIGALRM timers, and the main thread (where Python
    runs signal handlers and where torch's thread count applies)."""
    return (
        hasattr(signal, "setitimer")
        and os.path.exists(PROC_STAT)
        and threading.current_thread() is threading.main_thread()
    )


@contextlib.contextmanager
def adapting(cores: int, every: float = ADAPT_EVERY_S) -> Iterator[AdaptiveThreads | None]:
    """Adapt torch's thread count to the load inside the block (None where that cannot be
    done, ``can_adapt``); the thread count and any SIGALRM handler and timer are restored."""
    if not can_adapt() or cores < 2:
        yield None
        return
    adaptive = AdaptiveThreads(cores, every)
    before_threads = torch.get_num_threads()
    before_handler = signal.getsignal(signal.SIGALRM)
    before_timer = signal.getitimer(signal.ITIMER_REAL)
    if before_handler not in (signal.SIG_DFL, None) or before_timer != (0.0, 0.0):
        yield None  # someone else uses SIGALRM: leave it to them
        return
    signal.signal(signal.SIGALRM, lambda *_: adaptive.adjust())
    signal.setitimer(signal.ITIMER_REAL, every, every)
    try:
        yield adaptive
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, before_handler)
        torch.set_num_threads(before_threads)


@dataclass(frozen=True)
class ThreadChoice:
    """The threads a command starts with, and whether it adapts them to the load."""

    count: int
    adaptive: bool = False

    def describe(self) -> str:
        """e.g. '2 threads', '1 thread', '2 threads, fewer while other processes are busy'."""
        text = f"{self.count} thread{'s' * (self.count != 1)}"
        return text + (", fewer while other processes are busy" if self.adaptive else "")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[ThreadChoice]:
    """Use n intra-op threads inside the block; None: torch's default, adapted to the load
    (``adapting``) unless OMP_NUM_THREADS chooses the count."""
    before = torch.get_num_threads()
    if n is None:
        if "OMP_NUM_THREADS" in os.environ:
            yield ThreadChoice(before)
            return
        with adapting(before) as adaptive:
            yield ThreadChoice(before, adaptive is not None)
        return
    if n < 1:
        raise ConfigError(f"threads must be >= 1 (got {n})", params=("threads",))
    torch.set_num_threads(n)
    try:
        yield ThreadChoice(n)
    finally:
        torch.set_num_threads(before)
