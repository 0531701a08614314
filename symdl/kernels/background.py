"""Compiling a kernel in a thread while NumPy answers its first calls (``background=True``).

Numba compiles a generated kernel on its first call with each kind of arguments: seconds of
waiting before the first number. A kernel made with ``background=True`` instead starts that
compile in a thread (on private copies of the call's arrays, so nothing the caller owns is
touched) and answers the call at once with the NumPy evaluator of the same outputs
(``symdl.ir.evaluate``, the oracle the kernels are tested against); every call of that kind
until the compile has finished is answered the same way, every later one by the jitted code.

What that means for results: the evaluator computes the same formulas in float64 (a float32
call gets its float64 results rounded to float32), in another order of summation, so its
numbers agree with the jitted kernel's to rounding (1e-12 relative in float64 for the shipped
derivations, tested), but not bit for bit: a result then depends on whether the compile had
finished, which is why this is an option and not the default. ``Kernel.wait_compiled()``
blocks until every started compile has finished (a benchmark, a reproducible run after a
quick first look). The evaluator forms every intermediate as a whole array; it is meant for
the first calls, not for arrays that only fit in memory streamed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from symdl.kernels.progress import compile_progress


class BackgroundCompiles:
    """The compiles a kernel started in threads, by variant (dtype, parallel, driver)."""

    def __init__(self, title: str, loops: int):
        self._title = title
        self._loops = loops
        self._threads: dict[tuple, threading.Thread] = {}
        self._lock = threading.Lock()

    def ready(self, variant: tuple, compile_call: Callable[[], None]) -> bool:
        """Whether the jitted code of ``variant`` may run now: True once its compile has
        finished (or failed: the caller then runs it and sees the error); on the first call
        of a variant, starts ``compile_call`` in a thread and returns False."""
        with self._lock:
            thread = self._threads.get(variant)
            if thread is None:
                thread = threading.Thread(target=self._compile, args=(compile_call,),
                                          name=f"symdl-compile-{len(self._threads)}",
                                          daemon=True)
                self._threads[variant] = thread
                thread.start()
                return False
        return not thread.is_alive()

    def _compile(self, compile_call: Callable[[], None]) -> None:
        # Short enough that the note survives compile_progress's 60 characters.
        title = self._title if len(self._title) <= 40 else self._title[:37] + "..."
        with compile_progress(f"{title} (in the background)", self._loops):
            try:
                compile_call()
            except Exception:  # noqa: BLE001 - the call that runs it next raises it
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until every compile started so far has finished; False on a timeout."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in threads)


def private_copies(args: list, buffers: list[np.ndarray]) -> tuple[list, list[np.ndarray]]:
    """Copies of a call's arguments and result buffers for a compile in a thread: a buffer that
    is one of the arguments (an in-place update) stays that argument's copy, so the compile
    sees the same aliasing (and so the same variant) as the call."""
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    by_id = {id(a): c for a, c in zip(args, copies, strict=True) if isinstance(a, np.ndarray)}
    return copies, [by_id[id(b)] if id(b) in by_id else np.empty_like(b) for b in buffers]
