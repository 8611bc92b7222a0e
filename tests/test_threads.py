"""Threads adapt to the load: torch's default alone, the cores left over beside busy processes.

The timings that motivate it are in benchmarks/contention.py; here the rule, the measurement and
the switch are checked on a real busy process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddpm.threads import (
    AdaptiveThreads,
    LoadReading,
    ThreadChoice,
    adapting,
    busy_seconds,
    can_adapt,
    threads_for,
    torch_threads,
)


@pytest.mark.parametrize(
    ("cores", "others", "threads"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 3.0, 1), (16, 3.2, 13), (1, 0, 1)],
)
def test_threads_are_the_cores_left_over(cores, others, threads):
    assert threads_for(cores, others) == threads


def test_busy_seconds_reads_the_aggregate_cpu_line():
    hz = os.sysconf("SC_CLK_TCK")
    text = "cpu  100 20 30 4000 50 6 7 8 9 10\ncpu0 50 10 15 2000 25 3 3 4 0 0\nintr 1 2\n"
    # user + nice + system + irq + softirq + steal; idle and iowait are not busy
    assert busy_seconds(text) == pytest.approx((100 + 20 + 30 + 6 + 7 + 8) / hz)
    assert busy_seconds("intr 1 2\n") is None


def test_others_exclude_this_process_own_cpu_time():
    a = LoadReading(busy=10.0, own=1.0, wall=100.0)
    b = LoadReading(busy=13.0, own=2.5, wall=102.0)  # 3 busy core-seconds, 1.5 of them ours
    assert b.others_since(a) == pytest.approx(0.75)
    assert LoadReading(busy=10.0, own=3.0, wall=101.0).others_since(a) == 0.0  # never negative


def test_thread_choice_says_what_it_does():
    assert ThreadChoice(1).describe() == "1 thread"
    assert ThreadChoice(2, adaptive=True).describe() == (
        "2 threads, fewer while other processes are busy"
    )


def _work_until(done, timeout: float) -> bool:
    """Keep torch busy in the main thread (where the SIGALRM handler runs) until done()."""
    end = time.monotonic() + timeout
    a = torch.randn(128, 128)
    while time.monotonic() < end:
        for _ in range(20):
            a = torch.tanh(a @ a.T / 128)
        if done():
            return True
    return False


def test_the_count_follows_the_readings_down_and_back_up():
    """Others at 1.0 of 2 cores -> 1 thread; at 0.1 -> 2 threads again."""
    before = torch.get_num_threads()
    readings = iter(
        [
            LoadReading(busy=0.0, own=0.0, wall=0.0),
            LoadReading(busy=3.0, own=1.0, wall=2.0),  # 2 busy core-seconds of others in 2 s
            LoadReading(busy=4.2, own=2.0, wall=4.0),  # 0.2 in 2 s
        ]
    )
    adaptive = AdaptiveThreads(2, read=lambda: next(readings))
    try:
        torch.set_num_threads(2)
        adaptive.adjust()
        assert torch.get_num_threads() == 1
        adaptive.adjust()
        assert torch.get_num_threads() == 2
        assert [(round(o, 6), n) for o, n in adaptive.changes] == [(1.0, 1), (0.1, 2)]
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not can_adapt(), reason="adapting needs Linux's /proc/stat and SIGALRM")
def test_a_busy_process_takes_a_core():
    """A real busy process, measured through /proc/stat, takes the count to one thread; the
    handler, the timer and the count are restored afterwards."""
    before = torch.get_num_threads()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with adapting(2, every=0.25) as adaptive:
            assert adaptive is not None
            assert signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, None)
            assert _work_until(lambda: torch.get_num_threads() == 1, 30), adaptive.changes
    finally:
        busy.kill()
        busy.wait()
    assert torch.get_num_threads() == before
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_chosen_count_is_kept(monkeypatch):
    before = torch.get_num_threads()
    with torch_threads(1) as choice:
        assert choice == ThreadChoice(1) and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))  # the user chose torch's count
    with torch_threads(None) as choice:
        assert choice == ThreadChoice(before)
        assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL  # nothing adapts


def test_someone_elses_alarm_is_left_alone():
    handler = signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        with adapting(2) as adaptive:
            assert adaptive is None
    finally:
        signal.signal(signal.SIGALRM, handler)
