"""Logistic regression over Dask: throughput, scaling, out-of-core memory, bytes per step.

Four measurements of one pass of value + gradient of the mean logistic loss (d = 100 float32
features; symdl's generated kernel, no Hessian):

1. in memory (``--rows`` rows): the single-process kernel (serial and with its parallel
   loops), ``DaskLoss`` on a ``LocalCluster`` of 1 and 2 worker processes (one thread each,
   data persisted on the workers), and the same computation written by hand with
   ``dask.array`` on the same clusters; and one L-BFGS iteration of ``symdl.scale.lbfgs`` on
   ``DaskLoss`` against dask-ml's ``LogisticRegression(solver="lbfgs")`` (dask-glm);
2. out of core (``--ooc-rows`` rows, larger than the workers' total memory limit): the rows are
   generated chunk by chunk on the workers at every pass and never held whole; a value +
   gradient pass and ``--ooc-steps`` Adam steps, with each worker's peak resident memory;
3. bytes per step: what the driver scatters (the parameters, once per worker) and what the
   workers send each other (partial results of the reduction tree), measured by Dask's
   transfer counters.

Run: ``python benchmarks/dask_scaling.py`` (about two minutes on 2 cores); ``--json PATH``
writes the numbers. Times are medians of ``--repeats`` passes after one warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time

import dask
import dask.array as da
import numpy as np
import psutil
import sympy as sp
from distributed import Client, LocalCluster

import symdl
from symdl.scale import gradient_descent, lbfgs
from symdl.scale.dask import DaskLoss

D = 100


def derivation() -> symdl.Derivation:
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, y, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("y", n, 1), sp.MatrixSymbol("w", d, 1)
    return symdl.derive(symdl.binary_cross_entropy_with_logits(X * w, y), wrt=[w])


def _block(block_id: tuple, rows: int, seed: int) -> np.ndarray:
    """Rows of one chunk, made where the chunk is evaluated (a seed per chunk)."""
    rng = np.random.default_rng([seed, block_id[0]])
    return rng.random((rows, D), dtype=np.float32) * np.float32(2) - np.float32(1)


def _labels(x: np.ndarray) -> np.ndarray:
    truth = np.linspace(-1, 1, D, dtype=np.float32).reshape(D, 1)
    return (x @ truth > 0).astype(np.float32)


def synthetic(rows: int, chunk: int, seed: int = 0) -> tuple[da.Array, da.Array]:
    """X (rows x 100 float32) and labels y, generated chunk by chunk (lazily)."""
    chunks = (tuple([chunk] * (rows // chunk) + ([rows % chunk] if rows % chunk else [])),
              (D,))
    X = da.map_blocks(lambda block_id=None: _block(block_id, chunks[0][block_id[0]], seed),
                      chunks=chunks, dtype=np.float32, meta=np.empty((0, 0), np.float32))
    y = X.map_blocks(_labels, chunks=(chunks[0], (1,)), dtype=np.float32)
    return X, y


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: compiles or loads the kernel, imports on the workers
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def by_hand(X: da.Array, y: da.Array, w: np.ndarray) -> tuple:
    """The same value and gradient written with dask.array (NumPy on each chunk)."""
    z = X @ w
    value = da.mean(da.logaddexp(np.float32(0), z) - y * z)
    grad = X.T @ (1 / (1 + da.exp(-z)) - y) / X.shape[0]
    return dask.compute(value, grad)


def per_iteration(fit, rows: int, few: int = 2, more: int = 6) -> float:
    """Rows per second of one optimizer iteration: the time of ``more - few`` extra
    iterations (the fixed costs of a fit cancel), after a warm-up fit."""
    fit(few)
    start = time.perf_counter()
    fit(few)
    middle = time.perf_counter()
    fit(more)
    return rows * (more - few) / ((time.perf_counter() - middle) - (middle - start))


def dask_ml_fit(X: da.Array, y: da.Array, iterations: int) -> None:
    """dask-ml's logistic regression (dask-glm's L-BFGS, unregularised, no intercept)."""
    from dask_ml.linear_model import LogisticRegression

    LogisticRegression(solver="lbfgs", max_iter=iterations, fit_intercept=False, C=1e12,
                       tol=0.0).fit(X, y[:, 0])


def _sample_rss(peak: dict, stop: threading.Event) -> None:
    process = psutil.Process()
    while not stop.wait(0.02):
        peak["rss"] = max(peak["rss"], process.memory_info().rss)


def start_rss_sampler(dask_worker) -> None:
    """On each worker: records its resident memory every 20 ms (``ru_maxrss`` would count
    the pages of the process it was forked from). The state lives on the worker object:
    functions defined here travel by value, their globals with them."""
    peak = {"rss": psutil.Process().memory_info().rss}
    stop = threading.Event()
    threading.Thread(target=_sample_rss, args=(peak, stop), daemon=True).start()
    dask_worker.symdl_rss_sampler = (peak, stop)


def peak_rss(dask_worker) -> int:
    peak, stop = dask_worker.symdl_rss_sampler
    stop.set()
    return int(peak["rss"])


def transfer_bytes(client: Client) -> int:
    def sent(dask_worker) -> int:
        return int(getattr(dask_worker, "transfer_outgoing_bytes_total", 0))

    return sum(client.run(sent).values())


def cluster(workers: int, memory_limit: str | int = 0) -> tuple[LocalCluster, Client]:
    env = {"SYMDL_CACHE_DIR": os.environ.get("SYMDL_CACHE_DIR", ""), "NUMBA_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    c = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, env=env,
                     memory_limit=memory_limit, dashboard_address=":0")
    return c, Client(c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=125_000)
    parser.add_argument("--ooc-rows", type=int, default=4_000_000)
    parser.add_argument("--memory-limit", default="600MiB")
    parser.add_argument("--ooc-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    der = derivation()
    kernel = der.compile()
    w = np.zeros((D, 1), np.float32)
    w[:10] = 0.1
    report: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                               f"{os.cpu_count()} cores, Python {platform.python_version()}",
                    "date": time.strftime("%Y-%m-%d"), "rows": args.rows, "d": D,
                    "chunk": args.chunk, "dtype": "float32", "throughput_rows_per_s": {}}
    rates = report["throughput_rows_per_s"]

    X, y = synthetic(args.rows, args.chunk)
    Xn, yn = dask.compute(X, y, scheduler="threads")
    for parallel in (False, True):
        t = timed(lambda p=parallel, Xn=Xn, yn=yn: kernel(X=Xn, y=yn, w=w, parallel=p),
                  args.repeats)
        rates[f"single-process kernel ({'parallel' if parallel else 'serial'})"] = args.rows / t
    ref = kernel(X=Xn, y=yn, w=w)
    del Xn, yn

    for workers in (1, 2):
        c, client = cluster(workers)
        with c, client:
            Xp, yp = client.persist([X, y])
            loss = DaskLoss(der, {"X": Xp, "y": yp})
            t = timed(lambda loss=loss: loss.value_and_grad({"w": w}), args.repeats)
            rates[f"DaskLoss, {workers} worker(s)"] = args.rows / t
            r = loss.value_and_grad({"w": w})
            report.setdefault("relative_difference_vs_single_process", {})[workers] = float(
                abs(r[0] - ref.value) / abs(ref.value))
            before = transfer_bytes(client)
            loss.value_and_grad({"w": w})
            report.setdefault("worker_to_worker_bytes_per_pass", {})[workers] = (
                transfer_bytes(client) - before)
            t = timed(lambda Xp=Xp, yp=yp: by_hand(Xp, yp, w), args.repeats)
            rates[f"dask.array by hand, {workers} worker(s)"] = args.rows / t
            iterations = report.setdefault("lbfgs_iterations_rows_per_s", {})
            iterations[f"symdl.scale.lbfgs on DaskLoss, {workers} worker(s)"] = per_iteration(
                lambda k, loss=loss: lbfgs(loss, {"w": w.astype(np.float64)}, steps=k,
                                           tol=0.0), args.rows)
            iterations[f"dask-ml LogisticRegression(solver='lbfgs'), {workers} worker(s)"] = (
                per_iteration(lambda k, Xp=Xp, yp=yp: dask_ml_fit(Xp, yp, k), args.rows))
    chunks = -(-args.rows // args.chunk)
    tree = sum(-(-chunks // 8 ** k) for k in range(1, 8) if chunks > 8 ** (k - 1))
    report["bytes_per_step"] = {
        "parameters_scattered_per_worker": int(w.nbytes if w.dtype == np.float64 else D * 4),
        "partial_result_bytes": 8 + D * 8,  # the value and the gradient, float64
        "partial_results_per_pass": chunks + tree,
    }

    # Out of core: more rows than the workers may hold, generated chunk by chunk.
    c, client = cluster(2, memory_limit=args.memory_limit)
    with c, client:
        Xo, yo = synthetic(args.ooc_rows, args.chunk, seed=1)
        loss = DaskLoss(der, {"X": Xo, "y": yo})
        loss.value_and_grad({"w": w})  # warm-up: the workers load the kernel
        client.run(start_rss_sampler)
        start = time.perf_counter()
        value, _ = loss.value_and_grad({"w": w})
        one_pass = time.perf_counter() - start
        start = time.perf_counter()
        trained = gradient_descent(loss, {"w": w.astype(np.float64)},
                                   symdl.optimizers.Adam(lr=0.05), args.ooc_steps)
        steps = time.perf_counter() - start
        peaks = client.run(peak_rss)
        report["out_of_core"] = {
            "rows": args.ooc_rows, "data_bytes": args.ooc_rows * (D + 1) * 4,
            "memory_limit_per_worker": args.memory_limit, "workers": 2,
            "pass_seconds": one_pass, "rows_per_s": args.ooc_rows / one_pass,
            "adam_steps": args.ooc_steps, "adam_seconds": steps,
            "losses": trained.losses + [float(loss.value_and_grad(trained.params)[0])],
            "peak_worker_rss_bytes": sorted(peaks.values()),
        }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
