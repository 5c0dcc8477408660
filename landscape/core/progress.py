"""Progress on stderr, out of the way of results on stdout: tqdm bars on a terminal, plain lines
off one (logs, CI, notebooks), where a bar would print nothing."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str = "",
    total: int | None = None,
    enable: bool = True,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar on stderr that hides itself when disabled, in CI (TQDM_DISABLE) or off a TTY."""
    disable = (not enable) or progress_disabled()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        disable=disable or None,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        **kwargs,
    )


def progress_disabled() -> bool:
    """True when the user turned progress off (``TQDM_DISABLE`` set)."""
    return os.environ.get("TQDM_DISABLE", "") not in ("", "0")


class ProgressLines:
    """One plain line per finished unit of work (``i of n``, elapsed, ETA) when stderr is not a
    terminal; nothing on a terminal, where tqdm shows a bar instead."""

    def __init__(self, total: int, what: str, enable: bool = True) -> None:
        self.total, self.what, self.done = total, what, 0
        self.enable = enable and not progress_disabled() and not sys.stderr.isatty()
        self.started = time.perf_counter()

    def say(self, message: str) -> None:
        if self.enable:
            print(f"landscape: {message}", file=sys.stderr, flush=True)

    def step(self, label: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        self.say(
            f"{self.what} {self.done}/{self.total} done ({label}); "
            f"elapsed {_clock(elapsed)}, about {_clock(eta)} left"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
