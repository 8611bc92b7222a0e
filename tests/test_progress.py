"""Progress output: a tqdm bar on a terminal, a few plain lines (no carriage returns) elsewhere."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import forked

from ddpm.progress import LineProgress, progress_bar

# "desc: n/total unit (p%), rate, ETA mm:ss[, postfix]", tqdm's rate being "x unit/s" or "x s/unit"
MIDDLE = re.compile(r"^(.+): (\d+)/(\d+) (\S+) \((\d+)%\), \d+\.\d+\S+/\S+, ETA \d\d:\d\d")
END = re.compile(r"^(.+): (\d+)/(\d+) (\S+) \((\d+)%\) in \d\d:\d\d, \d+\.\d+\S+/\S+")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(total: int, **kwargs) -> list[str]:
    stream = io.StringIO()
    with progress_bar(total, "train", "step", stream=stream, **kwargs) as bar:
        for k in range(1, total + 1):
            bar.update(1)
            if k == total // 4:
                bar.set_postfix(loss=0.123456)
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    return text.splitlines()


def test_a_log_gets_a_start_line_one_line_per_tenth_and_an_end_line():
    lines = _run(1000)
    assert 3 <= len(lines) <= 13
    assert lines[0] == "train: start, 1000 step"
    middle = [MIDDLE.match(line) for line in lines[1:-1]]
    assert all(middle), lines
    assert [int(m[2]) for m in middle] == list(range(100, 1000, 100))  # each tenth, once
    assert all(int(m[5]) == int(m[2]) // 10 for m in middle)  # the percentage
    end = END.match(lines[-1])
    assert end and (end[2], end[3], end[5]) == ("1000", "1000", "100"), lines[-1]


def test_the_latest_postfix_follows_once_it_is_set():
    lines = _run(1000)
    assert "loss" not in lines[1] and "loss" not in lines[2]  # set at step 250
    assert all(line.endswith(", loss=0.123") for line in lines[3:]), lines


def test_a_bar_updated_in_big_steps_writes_one_line_per_update_at_most():
    stream = io.StringIO()
    with progress_bar(100, "T-sweep", "t", stream=stream) as bar:
        for T in (5, 45, 50):  # crosses several tenths at once
            bar.set_postfix_str(f"small, T = {T}")
            bar.update(T)
    lines = stream.getvalue().splitlines()
    counts = [line.split(" (")[0] for line in lines[1:]]
    assert counts == ["T-sweep: 50/100 t", "T-sweep: 100/100 t"]
    assert lines[-1].endswith("small, T = 50")


def test_a_resumed_or_stopped_bar_says_where_it_started_and_ended():
    stream = io.StringIO()
    with progress_bar(100, "train", "step", initial=40, stream=stream) as bar:
        bar.update(20)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "train: start at 40/100, 100 step"
    assert MIDDLE.match(lines[1])[2] == "60" and END.match(lines[2])[2] == "60"
    assert len(lines) == 3


def test_disabled_writes_nothing_and_still_counts():
    stream = io.StringIO()
    with progress_bar(10, "sample", "t", enabled=False, stream=stream) as bar:
        bar.update(3)
        assert bar.n == 3
    assert stream.getvalue() == ""
    stream = FakeTerminal()
    with progress_bar(10, "sample", "t", enabled=False, stream=stream) as bar:
        bar.update(3)
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    stream = FakeTerminal()
    with progress_bar(10, "sample", "t", stream=stream) as bar:
        assert not isinstance(bar, LineProgress)
        for _ in range(10):
            bar.update(1)
    assert "\r" in stream.getvalue() and "10/10" in stream.getvalue()


def _ddpm(*args: str | Path) -> str:
    """Run ``ddpm ARGS`` as a process of its own, stderr to a file (not a terminal); its stderr.
    The process is forked ready to run (tests/forked.py)."""
    proc = forked.ddpm(*args, "--threads", "1", env={"OMP_NUM_THREADS": "1"})
    assert proc.wait() == 0, proc.stderr()[-2000:]
    return proc.stderr()


def _bars(stderr: str) -> Counter:
    """Lines per bar of a log, checking that every line is a progress line without '\\r'."""
    assert "\r" not in stderr
    bars: Counter = Counter()
    for line in stderr.splitlines():
        m = re.match(r"^(.+): start", line) or MIDDLE.match(line) or END.match(line)
        assert m, line
        bars[m[1]] += 1
    return bars


def test_train_and_evaluate_write_plain_lines_to_a_log(tmp_path):
    run = tmp_path / "run"
    stderr = _ddpm(
        "train", "--out", run, "--data", "gmm8", "--n-train", "256", "--n-test", "16",
        "--diffusion-steps", "10", "--max-steps", "60", "--batch-size", "16", "--hidden", "16",
        "--depth", "1", "--log-every", "10", "--num-samples", "16", "--warmup", "5",
    )  # fmt: skip
    assert re.search(r"^train: 60/60 step \(100%\) in .*, loss=", stderr, re.M), stderr
    bars = _bars(stderr)
    assert set(bars) == {"train", "sample"} and max(bars.values()) <= 12, bars
    stderr = _ddpm("evaluate", run, "-n", "16", "--iw", "1", "2", "--out", tmp_path / "eval")
    bars = _bars(stderr)
    assert set(bars) == {"run: ELBO", "run: IW K<=2"} and max(bars.values()) <= 12, bars
