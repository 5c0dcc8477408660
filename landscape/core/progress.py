"""Progress bars: tqdm on stderr, out of the way of results on stdout."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str = "",
    total: int | None = None,
    enable: bool = True,
    **kwargs: Any,
) -> Iterator | tqdm:
    """A tqdm bar on stderr that hides itself when disabled, in CI (TQDM_DISABLE) or off a TTY."""
    disable = (not enable) or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
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
