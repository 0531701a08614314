"""Kernel benchmark (issue 3): symdl's kernels side by side with NumPy, Numba, JAX and PyTorch.

Workloads (float64; every implementation computes the same numbers: its first call's results
are checked against the NumPy ones with ``np.testing.assert_allclose``; definitions in
``peers.py``):

- W1  MSE value + gradient wrt the prediction, N = 10^7
- W2  logistic regression (BCE with logits) value + gradient wrt w, X 100,000 x 100
- W3  softmax cross-entropy value + gradient wrt the logits, 4096 x 1000, one-hot Y
- W4  2-layer net 784 -> 256 (tanh) -> 10, softmax CE, forward + backward, batch 256
- W5  logistic-regression Hessian wrt w, X 10,000 x d, d = 50, 200, 500 (W5-d50, ...)
- W6  one Adam update of 10^7 parameters, in place (step 10, with bias correction)
- machine limits: L-triad (STREAM triad, Numba, 5*10^7), L-stream7 (read 4 / write 3 arrays,
  Numba, 10^7: W6's traffic), L-dgemm (np.dot 2048 x 2048)

Implementations: numpy, numba (by hand), jax (``jax.jit``), torch (autograd), and symdl.

The symdl slot
--------------

If ``benchmarks/symdl_impls.py`` exists it is imported (in every measuring process) and must
define ``IMPLEMENTATIONS: dict[str, factory]``. Keys are workload names: ``"W1"``, ...,
``"W6"``; ``"W5"`` serves W5-d50/-d200/-d500 unless a key ``"W5-d200"`` etc. is more specific.
A factory has the signature of the Numba-by-hand ones in ``peers.py``::

    def factory(data: dict) -> Callable[[], tuple]

``data`` is the workload's dict of float64 C-contiguous NumPy arrays (see the table in
``peers.py``: W1 ``p, t``; W2/W5 ``X, w, y``; W3 ``Z, Y``; W4 ``X, Y, W1, b1, W2, b2``;
W6 ``param, grad, m, v, lr, beta1, beta2, eps, step``). The factory does the untimed setup
(compile or load the kernel, allocate ``out=`` buffers, reshape vectors to ``d x 1`` views);
the returned ``run()`` computes everything once and returns the results in the order of
that table (value first, then the gradients; W5: ``(H,)``; W6: ``(param, m, v)``), each
comparable after ``np.asarray(r).reshape(ref.shape)``. The first call's time minus the
median is reported as compile time, so a factory that compiles eagerly reports its compile
time as ``setup_s`` instead. Missing keys leave the symdl cell empty; an import error is
recorded, not fatal. ``--no-symdl`` ignores the file.

Ratios: for each workload and thread count, ``symdl / fastest of numpy, jax, torch``
(medians), and ``symdl / numba`` (the hand kernel) for reference.

Threads
-------

Each (workload, thread count, implementation) runs in its own fresh child process, so no
library's thread pool can disturb another's, and its environment is set before any library
starts its pool: ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``NUMBA_NUM_THREADS`` = k; for k = 1 ``XLA_FLAGS`` gets
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``; the child pins itself
to k CPUs (``os.sched_setaffinity``, the only thing that really bounds XLA's CPU thread
pool) and calls ``torch.set_num_threads(k)``. Numba-by-hand runs its serial kernels at
1 thread and its ``parallel=True``/prange kernels at more. Every timing records
``cpu_util`` = process CPU time / wall time over the timed repeats, which shows how many
cores an implementation really used.

Timing: the factory (``setup_s``), then a first call (``first_call_ms``; its results are
kept), one more warm-up call, then ``repeats`` timed calls with the garbage collector off
(5 to 15, as many as fit in about 1.5 s; 3 with ``--quick``): ``median_ms``, ``min_ms``;
``compile_s`` = first call - median. Only then is the NumPy reference computed (in the same
process) and the kept results checked (``check``: ok / FAIL: ...; a failed cell is marked
``!`` and left out of the ratios).

A quiet machine matters, above all at 2 threads (a descheduled worker stalls a parallel
loop). Before each child the runner waits (``--idle-wait``, default 300 s) until other
processes use < 0.25 cores, records the CPU other processes used while the child ran
(``foreign_cpu_cores``) and reruns a child that saw more than 0.15 cores
(``--busy-retries``, default 2), keeping the least disturbed run; rows still disturbed are
marked ``*``. Numba's threading layer is its default (``omp`` here) for the hand-written
Numba peer and symdl's choice (``workqueue``, picked when ``symdl`` is imported) for symdl,
unless ``--numba-threading-layer`` sets one for every child.

Usage::

    python benchmarks/kernels_bench.py                 # everything, 1 and 2 threads
    python benchmarks/kernels_bench.py --quick         # small sizes, 3 repeats (smoke test)
    python benchmarks/kernels_bench.py --only W1,W3    # some workloads ("W5": all three d,
                                                       #  "L": the machine limits)
Options: ``--threads 1,2``, ``--repeats N``, ``--out PATH``, ``--timeout S``, ``--no-symdl``,
``--cold-symdl-cache`` (an empty ``SYMDL_CACHE_DIR`` per child: cold compile times),
``--numba-threading-layer``, ``--idle-wait S``, ``--busy-retries N``.
Output: a plain-text table on stdout and JSON in ``benchmarks/results.json`` (``--quick``:
``benchmarks/results_quick.json``). A full run replaces the file; a run with ``--only``
merges its workloads into the existing file (each workload records its own date).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results.json"
QUICK_OUT = HERE / "results_quick.json"
IMPL_ORDER = ("numpy", "numba", "jax", "torch", "symdl")
RATIO_PEERS = ("numpy", "jax", "torch")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
MIN_REPEATS, MAX_REPEATS, BUDGET_S = 5, 15, 1.5
BUSY_CORES = 0.15  # flag a cell when other processes used more CPU than this

# =========================================================================== child process


def pin_cpus(k: int) -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))[:k]
    os.sched_setaffinity(0, cpus)
    return cpus


def to_numpy(x):
    import numpy as np

    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=np.float64, copy=True)


def _check(outs, ref, wl) -> str:
    import numpy as np

    if len(outs) != len(ref):
        return f"FAIL: {len(outs)} results, expected {len(ref)}"
    for i, (a, r) in enumerate(zip(outs, ref, strict=True)):
        if a.size != r.size:
            return f"FAIL: result {i} has shape {a.shape}, expected {r.shape}"
        rtol = wl.value_rtol if (i == 0 and r.ndim == 0) else wl.rtol
        atol = wl.atol_rel * float(np.max(np.abs(r))) if r.size else 0.0
        try:
            np.testing.assert_allclose(a.reshape(r.shape), r, rtol=rtol, atol=atol)
        except AssertionError as e:
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            return f"FAIL: result {i}: " + " | ".join(lines[1:5])[:400]
    return "ok"


def _measure(factory, data, repeats: int | None) -> tuple[dict, list]:
    """Build, first call, warm-up, timed repeats. Returns (record, first call's results)."""
    rec: dict = {}
    t0 = time.perf_counter()
    run = factory(data)
    rec["setup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    outs = [to_numpy(x) for x in out]  # copied now: run() may reuse or donate its buffers
    del out
    t0 = time.perf_counter()
    run()
    warm = time.perf_counter() - t0
    n = repeats or max(MIN_REPEATS, min(MAX_REPEATS, math.ceil(BUDGET_S / max(warm, 1e-9))))
    times = []
    gc.collect()
    gc.disable()
    try:
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    finally:
        gc.enable()
    med = statistics.median(times)
    rec.update(
        median_ms=med * 1e3,
        min_ms=min(times) * 1e3,
        first_call_ms=first * 1e3,
        compile_s=max(first - med, 0.0),
        repeats=n,
        cpu_util=cpu / wall if wall > 0 else None,
        # CPU time per call: at 1 thread, on a busy machine, closer to the quiet machine's
        # wall time than the wall time is (waiting for a core is not counted).
        cpu_ms=cpu / n * 1e3,
    )
    return rec, outs


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _symdl_table() -> tuple[dict, str | None]:
    if not (HERE / "symdl_impls.py").exists():
        return {}, None
    try:
        import symdl_impls

        return dict(symdl_impls.IMPLEMENTATIONS), None
    except Exception as e:  # recorded in the results, the peers still run
        return {}, f"{type(e).__name__}: {e}"[:500]


def _symdl_factory(table: dict, wl):
    return table.get(wl.name, table.get(wl.base))


def _child(args) -> dict:
    """One (workload, thread count, implementation) in this fresh process."""
    cpus = pin_cpus(args.threads)
    sys.path.insert(0, str(HERE))
    import numba
    import numpy as np
    import peers

    wl = peers.with_float32(peers.make_workloads(args.quick))[args.child]
    info: dict = {"cpus": cpus}
    if args.impl == "symdl":
        # Imported as a user would, before anything starts Numba's threads: at import symdl
        # picks the workqueue threading layer unless NUMBA_THREADING_LAYER says otherwise.
        table, err = _symdl_table()
        factory = _symdl_factory(table, wl)
        if factory is None:
            return {"info": info, "error": err or f"symdl_impls.py has no {wl.name}"}
    else:
        factory = peers.IMPLS[args.impl][wl.base]
    info["numba_threads"] = numba.get_num_threads()  # (this starts the threading layer)
    if args.impl == "torch":
        import torch

        torch.set_num_threads(args.threads)
        info["torch_threads"] = torch.get_num_threads()

    def fresh():  # the in-place workload (W6) gets its own copy of the state
        if not wl.inplace:
            return pristine
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in pristine.items()}

    pristine = wl.setup()
    # Peak memory per process (tracemalloc does not see Numba's, JAX's or torch's buffers):
    # the high-water mark after imports and data, then after the timed calls.
    info["rss_data_mb"] = _maxrss_mb()
    try:
        rec, outs = _measure(factory, fresh(), args.repeats)
    except Exception as e:
        return {"info": info, "error": f"{type(e).__name__}: {e}"[:500]}
    rec["peak_rss_mb"] = _maxrss_mb()
    rec["own_peak_mb"] = rec["peak_rss_mb"] - info["rss_data_mb"]
    # The check comes after the timing, so the NumPy reference's BLAS threads can not
    # disturb the measured library.
    if wl.kind == "limit":
        rec["check"] = "n/a"
    elif args.impl == "numpy":
        rec["check"] = "reference"
    else:
        try:
            data = fresh()
            if wl.dtype != "float64":  # the float64 result on the same (rounded) data
                data = {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v
                        for k, v in data.items()}
            ref = [to_numpy(x) for x in peers.IMPLS["numpy"][wl.base](data)()]
            rec["check"] = _check(outs, ref, wl)
        except Exception as e:
            rec["check"] = f"FAIL: {type(e).__name__}: {e}"[:500]
    if args.impl in ("numba", "symdl"):
        try:
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel region ran
            pass
    return {"info": info, "result": rec}


def _machine() -> dict:
    """Versions and CPU, from a child process (so the libraries are the measured ones)."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus_available": len(os.sched_getaffinity(0)),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
                               "Socket(s)", "L2 cache", "L3 cache", "Hypervisor vendor"):
                info["lscpu " + key.strip()] = val.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    import numba
    import numpy as np

    info["numpy"] = np.__version__
    info["numba"] = numba.__version__
    try:
        info["numpy_blas"] = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:
        pass
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE", "unset")
    try:  # the BLAS kernels the libraries loaded (threadpoolctl: a scikit-learn dependency)
        import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS, the one Numba calls)
        import threadpoolctl

        info["blas_libraries"] = [
            {k: lib.get(k) for k in ("internal_api", "architecture", "version", "filepath")}
            for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]
    except Exception:
        pass
    for mod in ("scipy", "jax", "jaxlib", "torch", "sympy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    try:
        import symdl

        info["symdl"] = getattr(symdl, "__version__", "present")
    except Exception:
        info["symdl"] = None
    sys.path.insert(0, str(HERE))
    table, err = _symdl_table()
    info["symdl_impls"] = sorted(table)
    if err:
        info["symdl_impls_error"] = err
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE,
                               capture_output=True, text=True).stdout.strip()
        info["git_dirty"] = bool(dirty)
    except OSError:
        pass
    return info


# =========================================================================== parent process


def set_openblas_coretype(value: str | None) -> None:
    """Sets (or with ``"auto"`` removes) ``OPENBLAS_CORETYPE`` for every child started after.
    A machine's environment may pin OpenBLAS to a kernel older than its CPU (this VM sets
    ``Haswell``, AVX2, on an AVX-512 CPU): NumPy, SciPy and Numba's ``np.dot`` then multiply
    matrices at that kernel's speed while JAX's XLA generates its own code."""
    if value == "auto":
        os.environ.pop("OPENBLAS_CORETYPE", None)
    elif value:
        os.environ["OPENBLAS_CORETYPE"] = value


def thread_env(k: int) -> dict:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(k)
    if k == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()
    return env


def cpu_busy_s() -> float:
    """CPU-seconds the whole machine has been busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_idle(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait s) until other processes use < threshold cores; returns that load."""
    t_end = time.perf_counter() + max_wait
    while True:
        b0, t0 = cpu_busy_s(), time.perf_counter()
        time.sleep(1.0)
        load = (cpu_busy_s() - b0) / (time.perf_counter() - t0)
        if not load >= threshold or time.perf_counter() >= t_end:
            return load
        print(f"    machine busy ({load:.2f} cores in use by other processes), waiting",
              file=sys.stderr, flush=True)
        time.sleep(4.0)


def spawn_child(extra: list[str], k: int, timeout: float, cold_cache: bool = False,
           numba_layer: str | None = None) -> dict:
    """Run one child; adds ``foreign_cpu_cores``: the CPU other processes used meanwhile."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-out", str(out), *extra]
        env = thread_env(k)
        if cold_cache:
            env["SYMDL_CACHE_DIR"] = str(Path(tmp) / "symdl_cache")
        if numba_layer:
            env["NUMBA_THREADING_LAYER"] = numba_layer
        b0, c0, w0 = cpu_busy_s(), children_cpu_s(), time.perf_counter()
        try:
            p = subprocess.run(cmd, env=env, timeout=timeout, stdout=subprocess.PIPE,
                               stderr=None, text=True)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        wall = time.perf_counter() - w0
        foreign = ((cpu_busy_s() - b0) - (children_cpu_s() - c0)) / wall
        if p.returncode != 0 or not out.exists():
            return {"error": f"child exited with {p.returncode}: {p.stdout[-500:]}"}
        res = json.loads(out.read_text())
        if "info" in res:
            res["info"]["foreign_cpu_cores"] = round(max(foreign, 0.0), 3)
            res["info"]["child_wall_s"] = round(wall, 2)
        return res


def _fmt(rec: dict | None) -> str:
    if not rec:
        return "-"
    if "error" in rec:
        return "err"
    v = rec["median_ms"]
    s = f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if rec.get("check", "ok") not in ("ok", "reference", "n/a"):
        s += "!"
    return s


def _derive(doc: dict) -> None:
    """Fastest peer, symdl ratios, limits and floors, from the raw results (in place)."""
    W = doc["workloads"]
    threads = [str(k) for k in doc["threads"]]
    limits: dict = {"triad_GBps": {}, "stream7_GBps": {}, "dgemm_GFLOPs": {}}
    for key, name, amount, scale in (("triad_GBps", "L-triad", "bytes_moved", 1e9),
                                     ("stream7_GBps", "L-stream7", "bytes_moved", 1e9),
                                     ("dgemm_GFLOPs", "L-dgemm", "flops", 1e9)):
        wl = W.get(name)
        if not wl:
            continue
        for k in threads:
            rec = next(iter(wl["results"].values()), {}).get(k, {})
            if "median_ms" in rec:
                limits[key][k] = {"median": wl[amount] / (rec["median_ms"] * 1e-3) / scale,
                                  "best": wl[amount] / (rec["min_ms"] * 1e-3) / scale}
    doc["limits"] = limits
    for name, wl in W.items():
        if wl["kind"] != "workload":
            continue
        wl["fastest_peer"], wl["symdl_ratio"], wl["symdl_over_numba"], wl["floor_ms"] = (
            {}, {}, {}, {})
        for k in threads:
            ok = {i: r[k] for i, r in wl["results"].items()
                  if k in r and "median_ms" in r[k] and r[k].get("check") in ("ok", "reference")}
            peers_ok = {i: r for i, r in ok.items() if i in RATIO_PEERS}
            if peers_ok:
                best = min(peers_ok, key=lambda i: peers_ok[i]["median_ms"])
                wl["fastest_peer"][k] = {"impl": best, "median_ms": peers_ok[best]["median_ms"]}
                if "symdl" in ok:
                    wl["symdl_ratio"][k] = ok["symdl"]["median_ms"] / peers_ok[best]["median_ms"]
            if "symdl" in ok and "numba" in ok:
                wl["symdl_over_numba"][k] = ok["symdl"]["median_ms"] / ok["numba"]["median_ms"]
            bw = limits["stream7_GBps" if name == "W6" else "triad_GBps"].get(k)
            gf = limits["dgemm_GFLOPs"].get(k)
            floors = []
            if wl.get("bytes_moved") and bw:
                floors.append(wl["bytes_moved"] / (bw["median"] * 1e9) * 1e3)
            if wl.get("flops") and gf and name != "W2":
                floors.append(wl["flops"] / (gf["median"] * 1e9) * 1e3)
            if floors:
                wl["floor_ms"][k] = max(floors)
    doc["table"] = _table(doc).splitlines()


def _table(doc: dict) -> str:
    W = doc["workloads"]
    lines = []
    L = doc.get("limits", {})
    for k in (str(t) for t in doc["threads"]):
        def lim(key, unit, k=k):
            v = L.get(key, {}).get(k)
            return f"{v['median']:.1f} {unit}" if v else "-"

        lines.append(f"threads = {k}   machine limits: triad {lim('triad_GBps', 'GB/s')}, "
                     f"read-4/write-3 {lim('stream7_GBps', 'GB/s')}, "
                     f"dgemm {lim('dgemm_GFLOPs', 'GFLOP/s')}")
        head = (f"{'median ms':10s}" + "".join(f"{i:>9s}" for i in IMPL_ORDER)
                + f"{'best peer':>14s}{'symdl/best':>12s}{'symdl/numba':>12s}{'floor':>10s}")
        lines += [head, "-" * len(head)]
        for name, wl in W.items():
            if wl["kind"] != "workload":
                continue
            cells = "".join(f"{_fmt(wl['results'].get(i, {}).get(k)):>9s}" for i in IMPL_ORDER)
            busy = max([(r.get(k) or {}).get("child", {}).get("foreign_cpu_cores") or 0.0
                        for r in wl["results"].values()] + [0.0])
            label = name + ("*" if busy > BUSY_CORES else "")
            fp = wl.get("fastest_peer", {}).get(k)
            r = wl.get("symdl_ratio", {}).get(k)
            rn = wl.get("symdl_over_numba", {}).get(k)
            fl = wl.get("floor_ms", {}).get(k)
            lines.append(f"{label:10s}{cells}{(fp['impl'] if fp else '-'):>14s}"
                         f"{(f'{r:.2f}' if r else '-'):>12s}{(f'{rn:.2f}' if rn else '-'):>12s}"
                         f"{(f'{fl:.3g}' if fl else '-'):>10s}")
        lines.append("")
    ks = [str(t) for t in doc["threads"]]
    for key, title in (("peak_rss_mb", "peak MB"), ("own_peak_mb", "+MB"),
                       ("compile_s", "compile s"), ("setup_s", "setup s")):
        head = f"{title:10s}" + "".join(f"{i + ' ' + '/'.join(ks) + 't':>16s}"
                                        for i in IMPL_ORDER)
        lines += [head, "-" * len(head)]
        for name, wl in W.items():
            if wl["kind"] != "workload":
                continue
            cells = ""
            for i in IMPL_ORDER:
                vals = [wl["results"].get(i, {}).get(k, {}).get(key) for k in ks]
                fmt = "{:.0f}" if key.endswith("_mb") else "{:.2f}"
                cells += f"{'/'.join('-' if v is None else fmt.format(v) for v in vals):>16s}"
            lines.append(f"{name:10s}{cells}")
        lines.append("")
    lines += [
        "compile s = first call - median (jit compilation, lazy Numba compilation, first-touch "
        "of buffers); setup s = the factory (JAX: host-to-device copies; symdl: derivation and "
        "code generation)",
        "'!' = result check failed (excluded from best and ratios); '*' = other processes used "
        f"> {BUSY_CORES} cores meanwhile",
        "peak MB = the process's maxrss after the timed calls (imports, data and the "
        "implementation's buffers); +MB = peak MB - maxrss once the data was set up",
        "floor = minimal bytes / triad bandwidth (W6: read-4/write-3 bandwidth), or BLAS flops "
        "/ dgemm rate, at that thread count",
    ]
    return "\n".join(lines)


def _select(workloads: dict, only: str | None) -> list[str]:
    if not only:
        return list(workloads)
    tokens = [t.strip() for t in only.split(",") if t.strip()]
    picked = []
    for t in tokens:
        hits = [n for n, w in workloads.items()  # W5-d50 names its float32 copy too
                if t in (n, w.base, n.removesuffix("-f32")) or (t == "L" and w.kind == "limit")]
        if not hits:
            raise SystemExit(f"unknown workload {t!r}; known: {', '.join(workloads)}, L")
        picked += [h for h in hits if h not in picked]
    return [n for n in workloads if n in picked]


def _run_cell(args, name: str, k: int, impl: str) -> dict:
    """One child for (workload, threads, impl); again when other processes were busy."""
    extra = ["--child", name, "--threads", str(k), "--impl", impl]
    extra += ["--quick"] if args.quick else []
    extra += ["--repeats", str(args.repeats)] if args.repeats else []
    best: dict | None = None
    for attempt in range(1 + args.busy_retries):
        load = wait_idle(args.idle_wait) if args.idle_wait > 0 else None
        res = spawn_child(extra, k, args.timeout, args.cold_symdl_cache, args.numba_threading_layer)
        if "result" not in res:  # an error: no point in repeating it
            return {"error": res.get("error", "no result"), "child": res.get("info", {})}
        rec = res["result"] | {"child": res["info"] | {"load_before": load,
                                                      "attempt": attempt + 1}}
        busy = res["info"]["foreign_cpu_cores"]
        if best is None or busy < best["child"]["foreign_cpu_cores"]:
            best = rec
        if busy <= BUSY_CORES:
            break
        print(f"    other processes used {busy:.2f} cores during {name} {k}t {impl}; again",
              file=sys.stderr, flush=True)
    return best


def _save(doc: dict, order: list[str], t_start: float, out_path: Path) -> None:
    doc["workloads"] = {n: doc["workloads"][n] for n in order if n in doc["workloads"]}
    doc["elapsed_s"] = time.perf_counter() - t_start
    _derive(doc)
    out_path.write_text(json.dumps(doc, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    ap.add_argument("--only", help="comma-separated workloads: W1,W3,W5-d200,W5 (all d),L")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--impls", default=",".join(IMPL_ORDER),
                    help="implementations to run (default: all; the ratios need numpy, jax, "
                         "torch and symdl)")
    ap.add_argument("--dtypes", default="float64,float32",
                    help="precisions (default float64,float32: every workload twice, the "
                         "float32 copy named W1-f32, ...)")
    ap.add_argument("--repeats", type=int, help="timed repeats (default: 5-15 in ~1.5 s)")
    ap.add_argument("--out", type=Path, help="JSON output path")
    ap.add_argument("--timeout", type=float, default=600, help="per child process, s")
    ap.add_argument("--no-symdl", action="store_true", help="leave out symdl_impls.py")
    ap.add_argument("--cold-symdl-cache", action="store_true",
                    help="give each child an empty SYMDL_CACHE_DIR (cold compile times)")
    ap.add_argument("--busy-retries", type=int, default=None,
                    help="rerun a child up to N times when other processes used > "
                         f"{BUSY_CORES} cores during it (default 2, 0 with --quick)")
    ap.add_argument("--idle-wait", type=float,
                    help="before each child, wait up to S s for other processes to go quiet "
                         "(default 300, 0 with --quick)")
    ap.add_argument("--numba-threading-layer", choices=("workqueue", "omp", "tbb"),
                    help="NUMBA_THREADING_LAYER for the children (default: Numba's choice)")
    ap.add_argument("--openblas-coretype",
                    help="OPENBLAS_CORETYPE for the children (NumPy's, SciPy's and so Numba's "
                         "BLAS): a kernel name such as Haswell or SkylakeX, or 'auto' to unset "
                         "it (OpenBLAS detects the CPU); default: this environment's")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--child-info", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick and not args.repeats:
        args.repeats = 3
    if args.idle_wait is None:
        args.idle_wait = 0.0 if args.quick else 300.0
    if args.busy_retries is None:
        args.busy_retries = 0 if args.quick else 2

    if args.child_info or args.child:
        args.threads = int(args.threads.split(",")[-1])
        res = _machine() if args.child_info else _child(args)
        args.child_out.write_text(json.dumps(res))
        return 0

    sys.path.insert(0, str(HERE))
    import peers

    workloads = peers.with_float32(peers.make_workloads(args.quick))
    dtypes = [t.strip() for t in args.dtypes.split(",")]
    workloads = {n: w for n, w in workloads.items() if w.kind == "limit" or w.dtype in dtypes}
    names = _select(workloads, args.only)
    threads = [int(t) for t in args.threads.split(",")]
    out_path = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    now = _dt.datetime.now().isoformat(timespec="seconds")
    t_start = time.perf_counter()

    doc = None
    if args.only and out_path.exists():
        try:
            doc = json.loads(out_path.read_text())
            if doc.get("quick") != args.quick or doc.get("threads") != threads:
                doc = None
        except (OSError, ValueError):
            doc = None
    set_openblas_coretype(args.openblas_coretype)
    machine = spawn_child(["--child-info"], max(threads), 120)
    if doc is None:
        doc = {"workloads": {}}
    doc.update(
        benchmark="symdl kernels vs NumPy / Numba / JAX / PyTorch (issue 3)",
        date=now,
        command=" ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        quick=args.quick,
        threads=threads,
        machine=machine,
        thread_control={
            "env": {v: "k" for v in THREAD_VARS} | {"XLA_FLAGS (k = 1)": XLA_ONE_THREAD},
            "affinity": "child pinned to the first k CPUs (os.sched_setaffinity)",
            "torch": "torch.set_num_threads(k)",
            "numba": "serial kernels at k = 1, parallel=True/prange at k > 1",
            "numba_threading_layer": args.numba_threading_layer or "Numba's default",
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "unset"),
            "isolation": "one fresh process per (workload, threads, implementation)",
        },
        timing={
            "repeats": args.repeats or f"{MIN_REPEATS}-{MAX_REPEATS}, ~{BUDGET_S} s per cell",
            "statistic": "median and min of the timed calls; warm-up excluded",
            "compile_s": "first call - median",
            "gc": "disabled during the timed calls",
            "symdl_cache": "empty per child (cold)" if args.cold_symdl_cache
            else "the user's SYMDL_CACHE_DIR (warm if it ran before)",
            "idle_wait_s": args.idle_wait,
            "busy_retries": args.busy_retries,
        },
        implementations=dict(peers.VARIANTS, symdl="benchmarks/symdl_impls.py, if present"),
    )
    order = list(workloads)
    symdl_keys = [] if args.no_symdl else machine.get("symdl_impls", [])
    for name in names:
        wl = workloads[name]
        impls = [i for i in IMPL_ORDER if wl.base in peers.IMPLS.get(i, {})]
        if wl.kind == "workload" and (name in symdl_keys or wl.base in symdl_keys):
            impls.append("symdl")
        impls = [i for i in impls if i in args.impls.split(",")]
        entry = {
            "title": wl.title, "kind": wl.kind, "sizes": wl.sizes, "date": now,
            "dtype": wl.dtype,
            "bytes_moved": wl.bytes_moved, "flops": wl.flops, "results": {},
        }
        for k in threads:
            print(f"[{time.perf_counter() - t_start:6.0f} s] {name} at {k} thread(s)",
                  file=sys.stderr, flush=True)
            for impl in impls:
                rec = _run_cell(args, name, k, impl)
                entry["results"].setdefault(impl, {})[str(k)] = rec
                print(f"    {name:8s} {k}t {impl:6s} "
                      + (f"{rec['median_ms']:10.3f} ms  {rec['check']}" if "median_ms" in rec
                         else rec.get("error", "?")), file=sys.stderr, flush=True)
        doc["workloads"][name] = entry
        _save(doc, order, t_start, out_path)  # after each workload: a stopped run keeps it
    _save(doc, order, t_start, out_path)
    print("\n".join(doc["table"]))
    print(f"\n{len(names)} workload(s) in {doc['elapsed_s']:.0f} s; results in {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
