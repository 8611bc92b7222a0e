"""Progress output that suits where it goes: a live bar on a terminal, plain lines in a log.

A tqdm bar redraws itself with carriage returns, which a terminal turns into one moving line but
a log file (``ddpm report RUN 2>log``, a CI job) keeps as one enormous line per bar. So
``progress_bar`` returns a tqdm bar only when the stream is a terminal (or, for the default
stream, when tqdm shows its notebook widget); otherwise a ``LineProgress`` that writes a line at
the start, one each time another tenth of the total is done, and one at the end, each with the
count, the percentage, the rate and the time left (tqdm's own formatting), and the latest postfix.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from numbers import Number
from types import TracebackType
from typing import Any, TextIO

from tqdm.auto import tqdm
from tqdm.std import tqdm as std_tqdm

# tqdm.format_meter with this layout gives e.g. "train: 120/1000 step (12%), 35.29step/s, ETA
# 00:24, loss=0.1234"; its rates are padded to a width of 5, hence the whitespace squeeze.
_COUNT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%)"
_LINE = _COUNT + ", {rate_fmt}, ETA {remaining}{postfix}"
_END = _COUNT + " in {elapsed}, {rate_fmt}{postfix}"


def progress_bar(
    total: int,
    desc: str,
    unit: str = "it",
    *,
    enabled: bool = True,
    initial: int = 0,
    stream: TextIO | None = None,
) -> tqdm | LineProgress:
    """A progress display of ``total`` units (starting at ``initial``), written to ``stream``.

    ``stream`` defaults to ``sys.stderr``. A terminal (``stream.isatty()``) gets a tqdm bar; any
    other stream gets a ``LineProgress`` of a few plain lines. Both offer ``update(n)``, ``n``,
    ``total``, ``set_postfix(**values)``, ``set_postfix_str(s)``, ``close()`` and ``with``. With
    ``enabled=False`` nothing is written (the count is still kept).
    """
    if enabled and (_is_terminal(sys.stderr if stream is None else stream) or (
        stream is None and _notebook_widget()
    )):  # fmt: skip
        return tqdm(
            total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True
        )
    return LineProgress(total, desc, unit, initial=initial, stream=stream, enabled=enabled)


class LineProgress:
    """Progress as whole lines (no carriage returns): start, every tenth of ``total``, end.

    Mirrors the part of tqdm's interface that ddpm uses: ``update``, ``n``, ``total``,
    ``set_postfix``, ``set_postfix_str``, ``close`` and the context manager. The rate is the mean
    over the elapsed time, (n - initial) / seconds, and the time left is (total - n) / rate.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.total, self.desc, self.unit, self.initial, self.n = total, desc, unit, initial, initial
        self.postfix = ""
        self._stream = sys.stderr if stream is None else stream
        self._enabled = enabled
        self._start = time.perf_counter()
        self._tenth = self._tenths_done()  # the last tenth of total reported
        self._closed = False
        at = f" at {initial}/{total}" if initial else ""
        self._write(f"{desc}: start{at}, {total} {unit}")

    def update(self, n: int = 1) -> None:
        """Count n more units; write a line if another tenth of the total is done."""
        self.n += n
        tenth = self._tenths_done()
        if tenth > self._tenth and self.n < self.total:  # the end line reports 100%
            self._tenth = tenth
            self._write(self._format(_LINE))

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, **values: Any) -> None:
        """Show ``key=value`` pairs (numbers as tqdm formats them) after the next lines."""
        items = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(
            f"{k}={std_tqdm.format_num(v) if isinstance(v, Number) else str(v).strip()}"
            for k, v in items.items()
        )

    def set_postfix_str(self, s: str = "") -> None:
        """Show the string s after the next lines."""
        self.postfix = str(s)

    def close(self) -> None:
        """Write the end line: the count reached, the time taken and the mean rate (once)."""
        if not self._closed:
            self._closed = True
            self._write(self._format(_END))

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _tenths_done(self) -> int:
        return 10 * self.n // self.total if self.total else 0

    def _format(self, layout: str) -> str:
        line = std_tqdm.format_meter(
            self.n, self.total, time.perf_counter() - self._start, prefix=self.desc,
            unit=self.unit, bar_format=layout, postfix=self.postfix, initial=self.initial,
        )  # fmt: skip
        return " ".join(line.split())

    def _write(self, line: str) -> None:
        if self._enabled:
            self._stream.write(line + "\n")
            self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def _notebook_widget() -> bool:
    """Whether tqdm.auto chose its Jupyter widget (it imports tqdm.notebook only then)."""
    notebook = sys.modules.get("tqdm.notebook")
    return notebook is not None and issubclass(tqdm, notebook.tqdm_notebook)
