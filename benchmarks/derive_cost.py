"""Derivation cost of an L-layer tanh MLP with a softmax cross-entropy loss (issue 2).

Requirement: deriving the 2-layer network takes under 2 s, an 8-layer network under
10 s, and the cost grows about linearly with depth.

symdl interns IR nodes in a process-global table, so every (depth, repeat) runs in a
fresh child process and only that process's first derivation is timed; caching can not
flatter later runs. Inside the child we time:

* ``import sympy`` and then ``import symdl`` (reported separately, not in the totals);
* ``equations``: from just before building the SymPy definition to after
  ``der.equations()`` (definition + ``symdl.derive`` + reverse mode + printing);
* ``gradients``: the same clock continued to after ``[der.gradient(p) for p in params]``.

The parent also records the wall time of the whole child process (interpreter start,
imports, derivation, exit), i.e. what a one-shot script or CLI call costs.

Usage: python benchmarks/derive_cost.py [--repeats N] [--out PATH] [--depths 1,2,4] [--timeout S]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DEPTHS = (1, 2, 3, 4, 6, 8)
DEFAULT_OUT = Path(__file__).resolve().with_name("derive_cost.json")
LIMITS = {2: 2.0, 8: 10.0}  # seconds, from the requirement


# --------------------------------------------------------------------------- child


def _child(depth: int) -> dict:
    """Run in a fresh interpreter: build, derive and print one depth-``depth`` MLP."""
    t0 = time.perf_counter()
    import sympy as sp

    t1 = time.perf_counter()
    import symdl

    t2 = time.perf_counter()

    # ---- clock starts: build the SymPy definition
    start = time.perf_counter()
    pos = dict(integer=True, positive=True)
    n = sp.Symbol("n", **pos)
    widths = ([sp.Symbol("d", **pos)]
              + [sp.Symbol(f"h{i}", **pos) for i in range(1, depth)]
              + [sp.Symbol("k", **pos)])
    X = sp.MatrixSymbol("X", n, widths[0])
    Y = sp.MatrixSymbol("Y", n, widths[-1])
    steps, params = [], []
    A = X
    for layer in range(1, depth + 1):
        W = sp.MatrixSymbol(f"W{layer}", widths[layer - 1], widths[layer])
        b = sp.MatrixSymbol(f"b{layer}", 1, widths[layer])
        params += [W, b]
        Z = sp.MatrixSymbol(f"Z{layer}", n, widths[layer])
        steps.append((Z, A * W + symdl.bias(b, n)))
        if layer < depth:
            A = sp.MatrixSymbol(f"A{layer}", n, widths[layer])
            steps.append((A, symdl.tanh(Z)))
    steps.append((sp.Symbol("L"), symdl.softmax_cross_entropy(Z, Y)))
    built = time.perf_counter()

    der = symdl.derive(steps, wrt=params)
    derived = time.perf_counter()
    eqs = der.equations()
    equations = time.perf_counter()
    grads = [der.gradient(p) for p in params]
    gradients = time.perf_counter()

    return {
        "depth": depth,
        "import_sympy_s": t1 - t0,
        "import_symdl_s": t2 - t1,  # symdl on top of an already imported sympy
        "import_total_s": t2 - t0,
        "build_s": built - start,
        "derive_s": derived - built,
        "equations_call_s": equations - derived,
        "equations_s": equations - start,  # headline: definition -> printed equations
        "gradients_s": gradients - start,  # ... and then every gradient as well
        "n_equations": len(eqs),
        "n_gradients": len(grads),
    }


# -------------------------------------------------------------------------- parent


def _run_child(depth: int, timeout: float | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(depth)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"depth {depth}: child ran past --timeout {timeout} s") from None
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"depth {depth} child failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "symdl"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _machine() -> dict:
    import sympy

    try:
        from importlib.metadata import version

        symdl_version = version("symdl")
    except Exception:  # noqa: BLE001 - informative only
        symdl_version = "unknown"
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sympy": sympy.__version__,
        "symdl": symdl_version,
        "symdl_commit": _git_commit(),
        "date": _dt.date.today().isoformat(),
    }


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _fit(xs: list[float], ys: list[float]) -> dict:
    """Least-squares line y = a + b x and its R²."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    r2 = 1 - ss_res / ss_tot if ss_tot else 1.0
    return {"intercept_s": intercept, "slope_s_per_layer": slope, "r2": r2}


def _exponent(xs: list[float], ys: list[float]) -> float:
    """p in t ∝ depth**p, least squares on log-log (1 = linear, 2 = quadratic)."""
    import math

    fit = _fit([math.log(x) for x in xs], [math.log(y) for y in ys])
    return fit["slope_s_per_layer"]


METRICS = ("equations_s", "gradients_s", "process_wall_s", "import_total_s")


def run(depths: list[int], repeats: int, timeout: float | None = None) -> dict:
    runs: dict[int, list[dict]] = {d: [] for d in depths}
    # interleave depths so slow drift of the machine hits every depth alike
    for r in range(repeats):
        for d in depths:
            runs[d].append(_run_child(d, timeout))
            print(f"  repeat {r + 1}/{repeats} depth {d}: "
                  f"{runs[d][-1]['gradients_s']:.3f} s", file=sys.stderr)

    summary = {}
    for d in depths:
        summary[d] = {m: _stats([x[m] for x in runs[d]]) for m in METRICS}
        summary[d]["import_sympy_s"] = _stats([x["import_sympy_s"] for x in runs[d]])
        summary[d]["import_symdl_s"] = _stats([x["import_symdl_s"] for x in runs[d]])
        summary[d]["n_equations"] = runs[d][0]["n_equations"]

    linearity = {}
    for m in ("equations_s", "gradients_s"):
        med = {d: summary[d][m]["median"] for d in depths}
        entry = {"per_layer_s": {str(d): med[d] / d for d in depths}}
        if 2 in med and 8 in med:
            entry["ratio_t8_t2"] = med[8] / med[2]
            entry["ratio_expected_linear"] = 4.0
        if len(depths) >= 2:
            entry["fit"] = _fit([float(d) for d in depths], [med[d] for d in depths])
            entry["loglog_exponent"] = _exponent([float(d) for d in depths],
                                                 [med[d] for d in depths])
        linearity[m] = entry

    imports = [x["import_total_s"] for d in depths for x in runs[d]]
    verdict = {}
    for d, limit in LIMITS.items():
        if d not in summary:
            continue
        verdict[str(d)] = {"limit_s": limit}
        for m in ("equations_s", "gradients_s"):
            worst = summary[d][m]["max"]
            verdict[str(d)][m] = {"median_s": summary[d][m]["median"], "worst_s": worst,
                                  "worst_plus_import_s": worst + max(imports),
                                  "passes": worst + max(imports) < limit}

    return {
        "benchmark": "derive_cost",
        "description": "tanh MLP + softmax cross-entropy; depth = number of weight layers; "
                       "each (depth, repeat) in a fresh process",
        "machine": _machine(),
        "repeats": repeats,
        "depths": depths,
        "import": _stats(imports),
        "summary": {str(d): s for d, s in summary.items()},
        "linearity": linearity,
        "requirement": verdict,
        "runs": {str(d): r for d, r in runs.items()},
    }


def _table(result: dict) -> str:
    head = ("depth", "eqs", "equations med", "equations min", "per layer",
            "+gradients med", "+gradients min", "per layer", "process wall med")
    rows = []
    for d in result["depths"]:
        s = result["summary"][str(d)]
        rows.append((
            str(d), str(s["n_equations"]),
            f"{s['equations_s']['median']:.3f} s", f"{s['equations_s']['min']:.3f} s",
            f"{s['equations_s']['median'] / d * 1000:.1f} ms",
            f"{s['gradients_s']['median']:.3f} s", f"{s['gradients_s']['min']:.3f} s",
            f"{s['gradients_s']['median'] / d * 1000:.1f} ms",
            f"{s['process_wall_s']['median']:.3f} s",
        ))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: tuple) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(head), sep, *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="fresh processes per depth (default 5)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="JSON output (default benchmarks/derive_cost.json)")
    p.add_argument("--depths", default=",".join(map(str, DEFAULT_DEPTHS)),
                   help="comma-separated numbers of weight layers (default 1,2,3,4,6,8)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds allowed per child process (default 600)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child is not None:
        print(json.dumps(_child(args.child)))
        return 0

    depths = sorted({int(x) for x in args.depths.split(",") if x.strip()})
    if args.repeats < 1 or not depths or min(depths) < 1:
        p.error("need --repeats >= 1 and depths >= 1")

    result = run(depths, args.repeats, args.timeout)
    m = result["machine"]
    print(f"symdl derivation cost: {m['cpu_model']} ({m['cpu_count']} CPUs), "
          f"Python {m['python']}, SymPy {m['sympy']}, symdl {m['symdl_commit']}, {m['date']}; "
          f"{args.repeats} fresh processes per depth\n")
    print(_table(result))
    imp = result["import"]
    print(f"\nimport sympy + symdl: median {imp['median']:.3f} s, min {imp['min']:.3f} s "
          "(not included above, included in process wall)")
    for metric, lin in result["linearity"].items():
        fit = lin.get("fit", {})
        ratio = (f"t(8)/t(2) = {lin['ratio_t8_t2']:.2f} (linear: 4); "
                 if "ratio_t8_t2" in lin else "")
        if fit:
            print(f"{metric}: {ratio}fit t = {fit['intercept_s'] * 1000:.1f} ms + "
                  f"{fit['slope_s_per_layer'] * 1000:.1f} ms/layer, R² = {fit['r2']:.3f}; "
                  f"t ∝ depth^{lin['loglog_exponent']:.2f}")
    for d, v in result["requirement"].items():
        for m in ("equations_s", "gradients_s"):
            r = v[m]
            print(f"depth {d} {m[:-2]}: median {r['median_s']:.3f} s, worst {r['worst_s']:.3f} s, "
                  f"worst + import {r['worst_plus_import_s']:.3f} s, limit {v['limit_s']:.0f} s: "
                  f"{'PASS' if r['passes'] else 'FAIL'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
