"""Top Hessian eigenvalue of the demo network: one Lanczos over three HVP implementations.

The demo network (64-64-10, tanh, softmax cross-entropy + L2 weight decay 1e-4; 4,810
parameters) at its initialisation, on its real batch (the 1,437 training digits). The same
Lanczos (``symdl.verify.curvature.lanczos``, full reorthogonalisation, ``--steps`` steps from
one seeded start vector, no early stop) runs over Hessian-vector products from:

- symdl: the derivation's HVP kernel (``der.compile(hvp=True, outputs=[hvp:...])``) behind
  ``HessianOperator`` (every call checked, as a user calls it);
- torch: ``torch.func.jvp`` over ``torch.func.grad`` (forward over reverse), eager;
- jax: ``jax.jvp`` over ``jax.grad``, ``jax.jit``-compiled;
- symdl_serial (not in the default grid): symdl with ``parallel=False`` (serial loops; BLAS
  still uses the pinned threads), to separate the cost of the parallel loops.

Each cell (implementation x dtype x threads) runs in its own process with the thread count
pinned in the environment (OpenMP, MKL, OpenBLAS, Numba, XLA) before anything is imported.
In a cell: setup (derivation and code generation or tracing), the first HVP call (compile),
one untimed warm-up Lanczos, then ``--repeats`` timed Lanczos runs: the median is reported,
with the median time of one HVP and the top eigenvalue found (all implementations must agree).

Usage: python benchmarks/curvature_bench.py [--steps 50] [--repeats 5] [--out FILE.json]
       [--impls symdl,torch,jax] [--dtypes float64,float32] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
PARAMS = ("W1", "b1", "W2", "b2")
WEIGHT_DECAY = 1e-4


# ============================================================================ child process

def _problem():
    """The demo's data and initial parameters (as ``symdl demo`` starts)."""
    from symdl.report import demo

    split = demo.digits()
    return split.X_train, split.Y_train, demo.initial_parameters(split)


def _symdl_serial_hvp(X, Y, params, dtype):
    op = _symdl_hvp(X, Y, params, dtype)
    op.parallel = False
    return op


def _symdl_hvp(X, Y, params, dtype):
    from symdl.report import demo
    from symdl.verify.curvature import hessian_operator

    der = demo.network_derivation()
    kernel = der.compile(hvp=True, outputs=[f"hvp:{p}" for p in PARAMS])
    values = {k: v.astype(dtype) for k, v in {**params, "X": X, "Y": Y}.items()}
    return hessian_operator(kernel, {**values, "lambda": WEIGHT_DECAY})


def _flat_loss(xp, X, Y, shapes, split, reshape):
    sizes = [int(s[0] * s[1]) for s in shapes]

    def loss(flat):
        W1, b1, W2, b2 = (reshape(piece, shape) for piece, shape in
                          zip(split(flat, sizes), shapes, strict=True))
        Z2 = xp.tanh(X @ W1 + b1) @ W2 + b2
        top = Z2.max(1, keepdims=True) if xp.__name__ != "torch" else Z2.amax(1, keepdim=True)
        lse = xp.log(xp.exp(Z2 - top).sum(1)) + top[:, 0]
        data = (lse - (Y * Z2).sum(1)).mean()
        return data + WEIGHT_DECAY / 2 * ((W1 ** 2).sum() + (W2 ** 2).sum())

    return loss


def _torch_hvp(X, Y, params, dtype):
    import numpy as np
    import torch

    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    shapes = [params[p].shape for p in PARAMS]
    Xt, Yt = torch.tensor(X, dtype=tdtype), torch.tensor(Y, dtype=tdtype)
    loss = _flat_loss(torch, Xt, Yt, shapes, lambda f, s: torch.split(f, s),
                      lambda p, s: p.reshape(s))
    flat = torch.tensor(np.concatenate([params[p].ravel() for p in PARAMS]), dtype=tdtype)
    grad = torch.func.grad(loss)

    def hvp(v):
        with torch.no_grad():
            out = torch.func.jvp(grad, (flat,), (torch.from_numpy(np.asarray(v, dtype=dtype)),))
        return out[1].numpy()

    return hvp


def _jax_hvp(X, Y, params, dtype):
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    shapes = [params[p].shape for p in PARAMS]
    offsets = np.cumsum([0] + [int(s[0] * s[1]) for s in shapes])

    def split(flat, sizes):
        return [flat[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]

    Xj, Yj = jnp.asarray(X, dtype=dtype), jnp.asarray(Y, dtype=dtype)
    loss = _flat_loss(jnp, Xj, Yj, shapes, split, lambda p, s: p.reshape(s))
    flat = jnp.asarray(np.concatenate([params[p].ravel() for p in PARAMS]), dtype=dtype)
    compiled = jax.jit(lambda x, v: jax.jvp(jax.grad(loss), (x,), (v,))[1])

    def hvp(v):
        return np.asarray(compiled(flat, jnp.asarray(v, dtype=dtype)))

    return hvp


def child(impl: str, dtype: str, steps: int, repeats: int) -> dict:
    import numpy as np

    start = time.perf_counter()
    if impl.startswith("symdl"):
        import symdl  # first: symdl chooses Numba's threading layer before any thread starts
    from symdl.verify.curvature import lanczos

    X, Y, params = _problem()
    build = {"symdl": _symdl_hvp, "symdl_serial": _symdl_serial_hvp, "torch": _torch_hvp,
             "jax": _jax_hvp}[impl]
    hvp = build(X, Y, params, dtype)
    setup_s = time.perf_counter() - start
    dim = sum(v.size for v in params.values())
    v0 = np.random.default_rng(0).standard_normal(dim)
    start = time.perf_counter()
    hvp(v0.astype(dtype))
    first_call_s = time.perf_counter() - start

    def top() -> tuple[float, float]:
        t0 = time.perf_counter()
        run = lanczos(hvp, v0, steps)
        elapsed = time.perf_counter() - t0
        return elapsed, float(run.ritz()[0][-1])

    top()  # warm-up
    times, value = [], None
    for _ in range(repeats):
        elapsed, value = top()
        times.append(elapsed)
    v = v0.astype(dtype)
    hvp_times = []
    for _ in range(20):
        t0 = time.perf_counter()
        hvp(v)
        hvp_times.append(time.perf_counter() - t0)
    info = {"impl": impl, "dtype": dtype, "dim": int(dim), "steps": steps,
            "setup_s": setup_s, "first_call_s": first_call_s,
            "lanczos_median_s": statistics.median(times), "lanczos_min_s": min(times),
            "hvp_median_ms": 1e3 * statistics.median(hvp_times), "top": value}
    if impl.startswith("symdl"):
        info["symdl_version"] = symdl.__version__
    return info


# ============================================================================ parent process

def _env(threads: int) -> dict:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    if threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()
    else:
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "")
    env.setdefault("PYTHONPATH", str(HERE.parent))
    return env


def _machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                            if line.startswith("Model name")), "")
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                            capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="Lanczos steps (default 50)")
    ap.add_argument("--repeats", type=int, default=5, help="timed Lanczos runs (default 5)")
    ap.add_argument("--impls", default="symdl,torch,jax")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, default=HERE / "curvature_bench.json")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps, args.repeats)))
        return 0
    # Cells already in --out are kept unless measured again (the grid can be run in parts).
    cells = json.loads(args.out.read_text())["cells"] if args.out.exists() else []

    def record(cell: dict) -> None:
        key = (cell["impl"], cell["dtype"], cell["threads"])
        cells[:] = [c for c in cells if (c["impl"], c["dtype"], c["threads"]) != key] + [cell]
        args.out.write_text(json.dumps({"machine": _machine(), "cells": cells}, indent=1)
                            + "\n")

    for threads in (int(t) for t in args.threads.split(",")):
        for dtype in args.dtypes.split(","):
            row = {}
            for impl in args.impls.split(","):
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", impl, dtype,
                       "--steps", str(args.steps), "--repeats", str(args.repeats)]
                proc = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True,
                                      timeout=args.timeout)
                if proc.returncode != 0:
                    print(f"{impl} {dtype} {threads}: failed\n{proc.stderr[-2000:]}",
                          file=sys.stderr)
                    continue
                cell = json.loads(proc.stdout.strip().splitlines()[-1])
                cell["threads"] = threads
                cell["load_average"] = os.getloadavg()[0]
                row[impl] = cell
                print(f"threads {threads} {dtype:7s} {impl:5s}: Lanczos "
                      f"{cell['lanczos_median_s'] * 1e3:8.1f} ms (HVP "
                      f"{cell['hvp_median_ms']:.3f} ms), first call "
                      f"{cell['first_call_s']:.2f} s, setup {cell['setup_s']:.2f} s, top "
                      f"{cell['top']:.10g}", flush=True)
            # Against the peers measured in this run, or recorded earlier for this cell.
            peers = [c["lanczos_median_s"] for c in list(row.values()) + [
                c for c in cells if c["dtype"] == dtype and c["threads"] == threads
                and c["impl"] not in row] if not c["impl"].startswith("symdl")]
            for name in ("symdl", "symdl_serial"):
                if name in row and peers:
                    ratio = row[name]["lanczos_median_s"] / min(peers)
                    row[name]["ratio_to_fastest"] = ratio
                    print(f"threads {threads} {dtype:7s} {name} / fastest = {ratio:.2f}",
                          flush=True)
            for cell in row.values():
                record(cell)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
