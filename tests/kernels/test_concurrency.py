"""Kernels called from several Python threads at once, and from a process pool.

Numba's workqueue threading layer (symdl's choice, for the BLAS products between loops)
aborts the whole process when two threads enter parallel loops at once, so the threaded cases
run in a child process: an abort fails the test instead of killing pytest. Expected values come
from NumPy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

_DEFINITION = textwrap.dedent("""
    import numpy as np
    import sympy as sp
    import symdl

    def kernel_and_data(rows):
        n, d = sp.symbols("n d", integer=True, positive=True)
        X = sp.MatrixSymbol("X", n, d)
        w = sp.MatrixSymbol("w", d, 1)
        kernel = symdl.derive(symdl.mean(symdl.softplus(X * w)), wrt=[w]).compile()
        rng = np.random.default_rng(rows)
        return kernel, rng.standard_normal((rows, 4)), rng.standard_normal((4, 1))

    def numpy_oracle(x, w):
        z = x @ w
        return np.mean(np.logaddexp(0.0, z)), x.T @ (1.0 / (1.0 + np.exp(-z))) / len(x)
""")

_THREADS_CHILD = _DEFINITION + textwrap.dedent("""
    import json, sys, threading
    kernel, x, w = kernel_and_data(int(sys.argv[1]))
    value, grad = numpy_oracle(x, w)
    parallel_once = kernel(X=x, w=w, parallel=True).grad["w"].copy()
    inputs = [x, w]
    failures, calls = [], []

    def work(thread):
        for k in range(int(sys.argv[2])):
            parallel = thread % 4 != 3 or k % 2 == 0  # one thread mixes in serial calls
            if thread == 2:  # the unchecked path a training loop takes
                out = [np.empty(1), np.empty((4, 1))]
                kernel.run_unchecked(inputs, out, parallel=parallel)
                got_value, got = out[0][0], out[1]
            else:
                result = kernel(X=x, w=w, parallel=parallel)
                got_value, got = result.value, result.grad["w"]
            calls.append(parallel)
            if not (np.allclose(got, grad, rtol=1e-12, atol=0)
                    and np.isclose(got_value, value, rtol=1e-12, atol=0)):
                failures.append((thread, k, "differs from NumPy"))
            if parallel and not np.array_equal(got, parallel_once):
                failures.append((thread, k, "differs from the one-thread parallel result"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"failures": failures, "parallel_calls": sum(calls),
                      "calls": len(calls)}))
""")


def test_four_threads_call_one_kernel_in_parallel():
    # Four Numba threads even on a one-core machine: the abort needs no second core.
    env = dict(os.environ, NUMBA_NUM_THREADS="4")
    env.pop("NUMBA_THREADING_LAYER", None)
    proc = subprocess.run([sys.executable, "-c", _THREADS_CHILD, "40000", "25"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["failures"] == []
    assert report["calls"] == 100 and report["parallel_calls"] >= 80


_POOL_CHILD_SOURCE = _DEFINITION + textwrap.dedent("""
    def call(job):
        rows, parallel = job
        kernel, x, w = kernel_and_data(rows)
        result = kernel(X=x, w=w, parallel=parallel)
        value, grad = numpy_oracle(x, w)
        return (bool(np.isclose(result.value, value, rtol=1e-12, atol=0)),
                bool(np.allclose(result.grad["w"], grad, rtol=1e-12, atol=0)))
""")


def _pool_job(job: tuple[int, bool]) -> tuple[bool, bool]:
    namespace: dict = {}
    exec(_POOL_CHILD_SOURCE, namespace)  # noqa: S102 - the test's own source
    return namespace["call"](job)


def test_process_pool_calls_kernels():
    jobs = [(rows, parallel) for rows in (50, 40000) for parallel in (False, True)] * 2
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_pool_job, jobs))
    assert results == [(True, True)] * len(jobs)


def test_numpy_oracle_is_independent():
    # The oracle itself against a direct loop: the mean softplus and its gradient.
    namespace: dict = {}
    exec(_DEFINITION, namespace)  # noqa: S102
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((5, 4)), rng.standard_normal((4, 1))
    value, grad = namespace["numpy_oracle"](x, w)
    z = [float(row @ w[:, 0]) for row in x]
    assert np.isclose(value, sum(np.log1p(np.exp(t)) for t in z) / 5)
    step = 1e-6
    for j in range(4):
        shifted = w.copy()
        shifted[j] += step
        assert np.isclose(grad[j, 0], (namespace["numpy_oracle"](x, shifted)[0] - value) / step,
                          rtol=1e-4)
