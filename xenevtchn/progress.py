"""The progress bar of ``simulate`` and ``sweep``: one line on stderr, drawn by tqdm.

``ProgressBar(out, "events")`` is called as ``bar(done, total)`` as often as the caller
likes (the C engine calls it between slices, the Python engine every 1,024 actions, a
sweep as runs finish); tqdm redraws at most ``REDRAWS_PER_S`` times a second, within the
terminal's width, with the rate and an ETA. ``close()`` erases the line. Whether to show
one at all (only on a terminal unless asked) is the command line's choice: ``wanted()``.
"""

from __future__ import annotations

import os
from typing import IO, Any

REDRAWS_PER_S = 4
DEFAULT_COLUMNS = 80


def wanted(out: IO[str], asked: bool | None, quiet: bool) -> bool:
    """``--progress``/``--no-progress`` if given, else only when ``out`` is a terminal;
    never with ``-q``."""
    if quiet:
        return False
    if asked is not None:
        return asked
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def columns(out: IO[str]) -> int:
    """The terminal's width: ``COLUMNS`` if set (as ``shutil.get_terminal_size`` honours it),
    else the terminal behind ``out``, else 80."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cols = os.get_terminal_size(out.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return DEFAULT_COLUMNS
    return cols if cols > 0 else DEFAULT_COLUMNS


class ProgressBar:
    """``label:  42%|#####     | 4,200,000/10,000,000 events, ETA 00:02 (3.1M events/s)``."""

    def __init__(self, out: IO[str], unit: str, label: str = "") -> None:
        self.out = out
        self.unit = unit
        self.label = label
        self._bar: Any = None  # made at the first call, once the total is known

    def _make(self, total: int) -> Any:
        from tqdm import tqdm

        # One column short of the width: a line that fills the last column wraps on some
        # terminals, and the next redraw would then start on a fresh line.
        # nrows given: tqdm reads it from the terminal otherwise, and hides its bar on one
        # that reports no size (a fresh pty, some CI runners' terminals).
        return tqdm(
            total=total, file=self.out, ncols=max(columns(self.out) - 1, 10), nrows=24,
            mininterval=1 / REDRAWS_PER_S, miniters=1, desc=self.label or None, unit=f" {self.unit}",
            unit_scale=True, leave=False, ascii=" #", dynamic_ncols=False,
            # the ETA before the rate: on a narrow terminal the end of the line goes first
            bar_format="{l_bar}{bar}| {n:,}/{total:,} " + self.unit + ", ETA {remaining} ({rate_fmt})",
        )

    def __call__(self, done: int, total: int) -> None:
        bar = self._bar
        if bar is None:
            bar = self._bar = self._make(total)
        elif bar.total != total:
            bar.total = total
        if done != bar.n:
            bar.update(done - bar.n)  # tqdm redraws only once its interval has passed
        if done >= total:
            bar.refresh()

    def close(self) -> None:
        """Erase the line (the summary that follows starts on a clean one)."""
        if self._bar is not None:
            self._bar.close()
