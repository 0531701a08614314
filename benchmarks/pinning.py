"""The environment of a benchmark cell's process, pinned to a thread count before any library
starts its thread pools (BLAS, OpenMP, Numba, XLA)."""

from __future__ import annotations

import os

XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def pinned_env(threads: int) -> dict:
    """A copy of ``os.environ`` with every thread pool limited to ``threads``, JAX on the CPU."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        env[key] = str(threads)
    env["XLA_FLAGS"] = XLA_ONE_THREAD if threads == 1 else ""
    env["JAX_PLATFORMS"] = "cpu"
    return env
