"""Progress of Numba compiles: a kernel that takes more than a moment to compile says so.

Numba compiles a generated kernel on its first call with each kind of arguments (dtype,
serial or parallel loops): from a fraction of a second to minutes for a long definition.
When a first call runs longer than ``PROGRESS_AFTER_S``, symdl logs, on the logger
``"symdl"`` at level INFO::

    compiling kernel <title> (N loops)...
    compiled kernel <title> in X s

A call that finishes sooner (a warm Numba cache loads in milliseconds) is logged at level
DEBUG only (``kernel <title> (N loops) ready in X s``).
Python shows INFO records only where the application configured logging
(``logging.basicConfig(level=logging.INFO)``); when nothing is configured at all (no handler
on ``"symdl"`` or the root logger), the two lines go to stderr instead, so that a long wait
is never silent. To silence them, configure logging, or set the level of the ``"symdl"``
logger above INFO (``logging.getLogger("symdl").setLevel(logging.WARNING)``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator

logger = logging.getLogger("symdl")

PROGRESS_AFTER_S = 1.0
"""A first call that runs longer than this (seconds) is reported as compiling."""


def _emit(message: str) -> None:
    if logger.hasHandlers():
        logger.info(message)
    elif logger.level == logging.NOTSET or logger.level <= logging.INFO:
        # No logging configured anywhere: Python would drop an INFO record (its last-resort
        # handler shows warnings only), and a compile of minutes would look like a hang.
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def compile_progress(title: str, loops: int, after_s: float | None = None) -> Iterator[None]:
    """Reports the block as a kernel compile if it runs longer than ``after_s`` seconds.

    Args:
        title: what the kernel computes (shortened to 60 characters).
        loops: how many loop functions it has (Numba compiles each).
        after_s: the delay before the first line; ``PROGRESS_AFTER_S`` by default.
    """
    if len(title) > 60:
        title = title[:57] + "..."
    delay = PROGRESS_AFTER_S if after_s is None else after_s
    started = time.perf_counter()
    reported = threading.Event()

    def report() -> None:
        reported.set()
        _emit(f"compiling kernel {title} ({loops} loops)...")

    timer = threading.Timer(delay, report)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        elapsed = time.perf_counter() - started
        if reported.is_set():
            _emit(f"compiled kernel {title} in {elapsed:.1f} s")
        else:
            # Too quick to announce, still worth a record for whoever asks (``symdl -vv``,
            # the logger at DEBUG): which kernels were built, and what each cost.
            logger.debug(f"kernel {title} ({loops} loops) ready in {elapsed:.1f} s "
                         "(compiled, or loaded from the cache)")
