"""Compile cost of long definitions (issue 15, item 5): derive, codegen and cold Numba
compile time of a chain of N named steps and of a sum of N terms.

* ``chain``: ``Z0 = X w``, ``Z_k = tanh(Z_{k-1}) + Z_{k-1}/2`` for k < N,
  ``L = sum(Z_{N-1} ⊙ Z_{N-1})``, gradient with respect to ``w``;
* ``sum``: ``L = Σ_k a_k x^(k mod 3 + 1)`` over N scalar inputs ``a_k``, gradient with
  respect to ``x``.

Each (kind, N) runs in a fresh child process with an empty symdl cache folder (so Numba
compiles from scratch: "cold") and is timed in three parts:

* ``derive_s``: ``symdl.derive`` and the reverse-mode gradient (IR only, no printing);
* ``codegen_s``: ``der.compile()``: planning, generating and importing the module (Numba
  compiles nothing yet);
* ``compile_s``: the first kernel call, where Numba compiles every loop function it runs.

Also recorded: the generated module's size and its longest function (statements), the
number of loop functions. A case that runs past ``--timeout`` seconds is recorded as such.
This script is not part of the test suite.

Usage: python benchmarks/compile_cost.py [--sizes 10,100,1000] [--kinds chain,sum]
       [--timeout S] [--out PATH] [--no-compile] [--compile-max N]
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().with_name("compile_cost.json")
ROOT = Path(__file__).resolve().parent.parent


def _definition(kind: str, size: int):
    import sympy as sp

    import symdl

    if kind == "chain":
        n, d = sp.symbols("n d", integer=True, positive=True)
        X, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1)
        steps, previous = [], X * w
        for k in range(size):
            z = sp.MatrixSymbol(f"Z{k}", n, 1)
            body = previous if k == 0 else symdl.tanh(previous) + sp.Rational(1, 2) * previous
            steps.append((z, body))
            previous = z
        steps.append((sp.Symbol("L"), symdl.sum(sp.hadamard_product(previous, previous))))
        return steps, [w]
    x = sp.Symbol("x")
    a = sp.symbols(f"a0:{size}")
    return sp.Add(*[a[k] * x ** (k % 3 + 1) for k in range(size)]), [x]


def _values(kind: str, size: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    if kind == "chain":
        return {"X": rng.normal(size=(64, 8)) * 0.3, "w": rng.normal(size=(8, 1)) * 0.3}
    return {f"a{k}": float(v) for k, v in enumerate(rng.normal(size=size))} | {"x": 0.7}


def _child(kind: str, size: int, compile_: bool) -> dict:
    import symdl

    definition, wrt = _definition(kind, size)
    start = time.perf_counter()
    der = symdl.derive(definition, wrt=wrt)
    der.gradient_node(wrt[0])
    derived = time.perf_counter()
    kernel = der.compile()
    generated = time.perf_counter()
    row = {"derive_s": derived - start, "codegen_s": generated - derived}
    tree = ast.parse(kernel.source)
    functions = [f for f in tree.body if isinstance(f, ast.FunctionDef)]
    row["source_lines"] = kernel.source.count("\n")
    row["loop_functions"] = sum(f.name.startswith(("_loop", "_stream", "_stats"))
                                and not f.name.endswith("parallel") for f in functions)
    row["longest_function_statements"] = max(
        sum(isinstance(s, ast.stmt) for s in ast.walk(f)) for f in functions)
    if compile_:
        values = _values(kind, size)
        begin = time.perf_counter()
        kernel(**values)
        row["compile_s"] = time.perf_counter() - begin
    return row


def _run(kind: str, size: int, timeout: float, compile_: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="symdl-compile-cost-") as cache:
        env = dict(os.environ, SYMDL_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        command = [sys.executable, __file__, "--child", kind, str(size)]
        if not compile_:
            command.append("--no-compile")
        started = time.perf_counter()
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"kind": kind, "size": size, "timed_out_after_s": timeout}
        wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"kind": kind, "size": size, "error": done.stderr.strip().splitlines()[-1:]}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"kind": kind, "size": size, **row, "process_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--kinds", default="chain,sum")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the first call (the cold Numba compile)")
    parser.add_argument("--compile-max", type=int, default=None,
                        help="time the cold compile only up to this size")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, size = args.child
        print(json.dumps(_child(kind, int(size), not args.no_compile)))
        return
    rows = []
    for kind in args.kinds.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            compile_ = not args.no_compile and (args.compile_max is None
                                                or size <= args.compile_max)
            row = _run(kind, size, args.timeout, compile_)
            print(json.dumps(row), flush=True)
            rows.append(row)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    report = {
        "benchmark": "compile_cost",
        "description": __doc__.split("\n\n")[0],
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "symdl_commit": commit,
                    "date": _dt.date.today().isoformat()},
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
