"""Batch-size curves (issue 16, item 4): value + gradient and the Adam training step of a
ReLU MLP from batch 1 to 4096, symdl against JAX (``jit``) and PyTorch (autograd), float64
and float32, 1 and 2 threads.

Two MLPs (4 dense layers, softmax cross-entropy, the definitions of ``models.py``, written
before any tuning): ``small`` 32-32-32-32-10 (the driver's per-call cost dominates) and
``M1`` 256-512-512-512-10 (BLAS dominates from batch ~64). Kinds: ``grad`` (value and the 8
gradients) and ``train`` (one Adam step, in place).

Each (implementation, precision, thread count) runs in one fresh child process pinned to
its threads (the protocol of ``kernels_bench.py``: thread variables set before any library
starts, ``os.sched_setaffinity``, medians of 5-15 timed calls after two untimed ones, the
garbage collector off). The child measures every (model, kind, batch) point, and checks each
point's first results against the NumPy implementation on float64 data (float32: rtol 1e-3
of the largest entry; the training step 1e-2, as ``kernels_bench.py``). Before each child
the runner waits for a quiet machine and records the CPU other processes used.

Usage::

    python benchmarks/batch_curve.py                       # everything (~15 min)
    python benchmarks/batch_curve.py --threads 1 --dtypes float32 --batches 1,32,1024
    python benchmarks/batch_curve.py --plot-only           # redraw the figure from the JSON

Output: ``batch_curve.json`` and the figure ``batch_curve.png`` (matplotlib, the ``demo``
extra): top row symdl / fastest of JAX and PyTorch per batch size, one line per precision
and thread count; bottom row the per-call times at 1 thread in float32.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's symdl, not an installed one
sys.path.insert(0, str(HERE))

import kernels_bench as kb  # noqa: E402  (after the path: the benchmark helpers)

DEFAULT_OUT = HERE / "batch_curve.json"
DEFAULT_PLOT = HERE / "batch_curve.png"
BATCHES = (1, 4, 16, 64, 256, 1024, 4096)
MODELS = {"small": (32, 32, 32, 32, 10), "M1": (256, 512, 512, 512, 10)}
KINDS = ("grad", "train")
PEERS = ("jax", "torch")
MIN_REPEATS, MAX_REPEATS, BUDGET_S = 5, 15, 1.0


def _factory(impl: str, kind: str):
    import models

    key = {"grad": "M1", "train": "TM1"}[kind]
    if impl == "symdl":
        return models.SYMDL[key]
    return models.IMPLS[impl][key]


def _time(run) -> dict:
    run()
    t0 = time.perf_counter()
    run()
    warm = time.perf_counter() - t0
    n = max(MIN_REPEATS, min(MAX_REPEATS, int(BUDGET_S / max(warm, 1e-9)) + 1))
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
            "repeats": n}


def _check(outs, ref, dtype: str, kind: str) -> str:
    import numpy as np

    tol = 1e-9 if dtype == "float64" else (1e-2 if kind == "train" else 1e-3)
    for i, (a, r) in enumerate(zip(outs, ref, strict=True)):
        scale = max(float(np.max(np.abs(r))), 1e-300)
        err = float(np.max(np.abs(a.reshape(r.shape) - r))) / scale
        if not err <= tol:
            return f"FAIL: result {i} off by {err:.2e} of its largest entry (tol {tol})"
    return "ok"


def _child(args) -> dict:
    """Every (model, kind, batch) point of one implementation, precision and thread count."""
    kb.pin_cpus(args.threads)
    import models
    import numpy as np

    if args.impl == "torch":
        import torch

        torch.set_num_threads(args.threads)
    points = []
    for model, widths in MODELS.items():
        for kind in KINDS:
            for n in args.batch_list:
                data = {k: v.astype(args.dtype) for k, v in
                        models.setup_mlp(n, widths)().items()}
                point = {"model": model, "kind": kind, "batch": n}
                try:
                    t0 = time.perf_counter()
                    run = _factory(args.impl, kind)(
                        {k: v.copy() for k, v in data.items()})
                    first = [kb.to_numpy(x) for x in run()]
                    point["setup_and_first_s"] = time.perf_counter() - t0
                    point.update(_time(run))
                    ref_data = {k: v.astype(np.float64) for k, v in data.items()}
                    ref = [kb.to_numpy(x)
                           for x in _factory("numpy", kind)(ref_data)()]
                    point["check"] = _check(first, ref, args.dtype, kind)
                except Exception as e:  # recorded; the other points still run
                    point["error"] = f"{type(e).__name__}: {e}"[:300]
                points.append(point)
                print(f"    {args.impl:5s} {args.dtype} {args.threads}t {model:5s} "
                      f"{kind:5s} n={n:5d} "
                      + (f"{point['median_ms']:9.3f} ms {point['check']}"
                         if "median_ms" in point else point["error"]),
                      file=sys.stderr, flush=True)
    return {"points": points}


def _spawn(args, impl: str, dtype: str, k: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-out", str(out),
               "--impl", impl, "--dtype", dtype, "--threads", str(k),
               "--batches", ",".join(map(str, args.batch_list))]
        b0, c0, w0 = kb.cpu_busy_s(), kb.children_cpu_s(), time.perf_counter()
        try:
            p = subprocess.run(cmd, env=kb.thread_env(k), timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {args.timeout} s"}
        wall = time.perf_counter() - w0
        foreign = ((kb.cpu_busy_s() - b0) - (kb.children_cpu_s() - c0)) / wall
        if p.returncode != 0 or not out.exists():
            return {"error": f"child exited with {p.returncode}"}
        res = json.loads(out.read_text())
        res["foreign_cpu_cores"] = round(max(foreign, 0.0), 3)
        res["wall_s"] = round(wall, 1)
        return res


def ratios(doc: dict) -> list[dict]:
    """symdl / fastest of JAX and PyTorch for every point measured by all three."""
    table: dict = {}
    for cell in doc["cells"]:
        for p in cell.get("points", []):
            if "median_ms" in p and p.get("check") == "ok":
                key = (p["model"], p["kind"], cell["dtype"], cell["threads"], p["batch"])
                table.setdefault(key, {})[cell["impl"]] = p["median_ms"]
    rows = []
    for (model, kind, dtype, k, n), t in sorted(table.items()):
        peers = {i: t[i] for i in PEERS if i in t}
        if "symdl" not in t or not peers:
            continue
        best = min(peers, key=peers.get)
        rows.append({"model": model, "kind": kind, "dtype": dtype, "threads": k, "batch": n,
                     "symdl_ms": t["symdl"], "fastest": best, "fastest_ms": peers[best],
                     "ratio": t["symdl"] / peers[best]})
    return rows


def table(doc: dict) -> str:
    """A Markdown table: one row per (model, kind, batch), one column per precision and
    thread count, each cell the ratio (symdl ms / fastest peer ms)."""
    rows = ratios(doc)
    cols = sorted({(r["dtype"], r["threads"]) for r in rows}, key=lambda c: (-len(c[0]), c))
    cols = sorted(cols, key=lambda c: (c[1], c[0] != "float64"))
    by = {(r["model"], r["kind"], r["batch"], r["dtype"], r["threads"]): r for r in rows}
    head = "| model | kind | batch | " + " | ".join(
        f"{'f64' if d == 'float64' else 'f32'}, {k}t" for d, k in cols) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * len(cols)]
    for model in MODELS:
        for kind in KINDS:
            for n in sorted({r["batch"] for r in rows}):
                cells = []
                for d, k in cols:
                    r = by.get((model, kind, n, d, k))
                    cells.append("-" if r is None else
                                 f"**{r['ratio']:.2f}** {r['symdl_ms']:.3g} / "
                                 f"{r['fastest']} {r['fastest_ms']:.3g}")
                if any(c != "-" for c in cells):
                    lines.append(f"| {model} | {kind} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ratios(doc)
    panels = [(m, k) for m in MODELS for k in KINDS]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.5),
                             sharex=True, squeeze=False)
    titles = {"grad": "value + gradient", "train": "Adam training step"}
    for j, (model, kind) in enumerate(panels):
        ax = axes[0][j]
        for (dtype, k), style in {("float64", 1): "C0-o", ("float32", 1): "C1-s",
                                  ("float64", 2): "C0--o", ("float32", 2): "C1--s"}.items():
            pts = sorted((r["batch"], r["ratio"]) for r in rows if r["model"] == model
                         and r["kind"] == kind and r["dtype"] == dtype and r["threads"] == k)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, ms=4,
                        label=f"{'f64' if dtype == 'float64' else 'f32'}, {k} thread(s)")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(f"{model} {'-'.join(map(str, MODELS[model]))}\n{titles[kind]}",
                     fontsize=9)
        if j == 0:
            ax.set_ylabel("symdl / fastest of JAX, PyTorch\n(below 1: symdl faster)")
        ax.legend(fontsize=7)
        ax = axes[1][j]
        for impl, color in (("symdl", "C3"), ("jax", "C2"), ("torch", "C4")):
            pts = sorted((p["batch"], p["median_ms"]) for c in doc["cells"]
                         if c["impl"] == impl and c["dtype"] == "float32" and c["threads"] == 1
                         for p in c.get("points", []) if p["model"] == model
                         and p["kind"] == kind and "median_ms" in p)
            if pts:
                ax.plot(*zip(*pts, strict=True), "-o", color=color, ms=4, label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        if j == 0:
            ax.set_ylabel("ms per call (float32, 1 thread)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Batch-size curves, {doc.get('date', '')[:10]}, "
                 f"{doc.get('machine', {}).get('lscpu Model name', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--impls", default="symdl,jax,torch")
    ap.add_argument("--timeout", type=float, default=900, help="per child process, s")
    ap.add_argument("--idle-wait", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--openblas-coretype", help="as kernels_bench.py's option")
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.batch_list = [int(b) for b in args.batches.split(",")]
    if args.child_out:
        args.threads = int(args.threads)
        args.child_out.write_text(json.dumps(_child(args)))
        return 0
    if args.plot_only:
        doc = json.loads(args.out.read_text())
        plot(doc, args.plot)
        print(table(doc))
        return 0
    kb.set_openblas_coretype(args.openblas_coretype)
    doc = {"benchmark": "batch-size curves (issue 16, item 4)",
           "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "unset"),
           "date": _dt.datetime.now().isoformat(timespec="seconds"),
           "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
           "models": {m: list(w) for m, w in MODELS.items()},
           "machine": kb.spawn_child(["--child-info"], 2, 120), "cells": []}
    for k in (int(t) for t in args.threads.split(",")):
        for dtype in args.dtypes.split(","):
            for impl in args.impls.split(","):
                load = kb.wait_idle(args.idle_wait)
                print(f"{impl} {dtype} {k} thread(s), other processes {load:.2f} cores",
                      file=sys.stderr, flush=True)
                cell = _spawn(args, impl, dtype, k)
                cell.update(impl=impl, dtype=dtype, threads=k, idle_load=round(load, 3))
                doc["cells"].append(cell)
                args.out.write_text(json.dumps(doc, indent=1))
    doc["ratios"] = ratios(doc)
    args.out.write_text(json.dumps(doc, indent=1))
    plot(doc, args.plot)
    print(table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
