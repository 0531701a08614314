"""The first call (issue 16, item 5): time from ``der.compile()`` to the first result, cold
cache, for every shipped derivation (``symdl.catalog``), and the demo's training step.

Each case runs in a fresh child process with an empty symdl cache folder (so Numba compiles
from scratch: "cold"). In the child, the derivation is derived first (not timed: the symbolic
work is ``benchmarks/derive_cost.py``'s subject), inputs are drawn (``symdl.verify``'s test
points), then timed:

* ``first_s``: ``der.compile()`` and the first ``kernel(**inputs)`` until it returns;
* ``second_s``: the second call (for ``--mode background``: until the jitted kernel has
  replaced the NumPy evaluator, i.e. the first call that runs compiled code).

Modes (``--mode``, several separated by commas):

* ``plain``: the first call runs the generated driver as Python with jitted loops (what
  ``Kernel.run`` does for a large call);
* ``compiled``: the first call runs the steps as one compiled function (``run_unchecked``);
* ``background``: ``der.compile(background=True)`` (the default): the first calls are
  answered by the NumPy evaluator while Numba compiles in a thread.

The demo's training step (``demo``) is timed the same way: ``TrainingStep(...)`` and the first
step. This script is not part of the test suite.

Usage: python benchmarks/first_call.py [--names a,b] [--mode plain,background]
       [--timeout S] [--out PATH]
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
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().with_name("first_call.json")
ROOT = Path(__file__).resolve().parent.parent


def _inputs(name: str, der, kernel) -> dict:
    from symdl import catalog
    from symdl.verify.sampling import draw_inputs

    module = catalog.load(name).module
    values, _ = draw_inputs(der, kernel, 0, getattr(module, "sample_inputs", None))
    return values


def _child_demo(mode: str) -> dict:
    import numpy as np

    from symdl.define.optimizers import Adam
    from symdl.report.demo import _draw_initial, digits, network_derivation
    from symdl.training import TrainingStep

    der = network_derivation()
    split = digits()
    init = _draw_initial(np.random.default_rng(0), split, 64)
    X, Y = split.X_train[:64], split.Y_train[:64]  # noqa: N806 - math names
    start = time.perf_counter()
    options = {"background": True} if mode == "background" else {}
    step = TrainingStep(der, Adam(lr=0.01), init, hyperparameters={"lambda": 1e-4},
                        **options)
    step(X=X, Y=Y)
    first = time.perf_counter() - start
    start = time.perf_counter()
    step(X=X, Y=Y)
    if mode == "background":
        step.kernel.wait_compiled()
    second = time.perf_counter() - start
    return {"first_s": first, "second_s": second}


def _child(name: str, mode: str) -> dict:
    if name == "demo":
        return _child_demo(mode)
    import numpy as np

    from symdl import catalog

    der = catalog.load(name).derive()
    probe = der.compile(jit=False)  # for the input shapes only (nothing compiled)
    values = _inputs(name, der, probe)
    start = time.perf_counter()
    options = {"background": True} if mode == "background" else {}
    kernel = der.compile(**options)
    if mode == "compiled":
        # Result buffers shaped by the interpreted probe (nothing compiled there).
        shapes = probe.run(values).outputs
        buffers = [np.empty(shapes[k].shape or (1,)) for k in kernel.output_keys]
        kernel.run_unchecked([values[n] for n in kernel.input_names], buffers)
    else:
        answer = kernel(**values)
    first = time.perf_counter() - start
    start = time.perf_counter()
    kernel(**values)
    row = {}
    if mode == "background":
        kernel.wait_compiled()
        jitted = kernel(**values)
        # The evaluator's first answer against the jitted kernel's: relative to the largest
        # entry of each output.
        row["max_rel_diff"] = max(
            float(np.max(np.abs(np.asarray(answer.outputs[k]) - np.asarray(jitted.outputs[k])))
                  / max(float(np.max(np.abs(jitted.outputs[k]))), 1e-300))
            for k in kernel.output_keys)
    second = time.perf_counter() - start
    return {"first_s": first, "second_s": second, "loops": kernel.source.count("def _loop"),
            **row}


def _run_case(name: str, mode: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="symdl-first-call-") as cache:
        env = dict(os.environ, SYMDL_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        command = [sys.executable, __file__, "--child", name, "--mode", mode]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env=env, cwd=ROOT, check=False)
        except subprocess.TimeoutExpired:
            return {"name": name, "mode": mode, "error": f"timeout after {timeout} s"}
    if done.returncode != 0:
        return {"name": name, "mode": mode, "error": done.stderr.strip()[-400:]}
    return {"name": name, "mode": mode, **json.loads(done.stdout.strip().splitlines()[-1])}


def _table(rows: list[dict], modes: list[str]) -> str:
    lines = ["| derivation | " + " | ".join(f"{m}: first call (s)" for m in modes) + " |",
             "|---|" + "---:|" * len(modes)]
    by_name: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], {})[row["mode"]] = row
    for name, cells in by_name.items():
        shown = [f"{cells[m]['first_s']:.2f}" if "first_s" in cells.get(m, {}) else "error"
                 for m in modes]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    for label, pick in (("median", statistics.median), ("worst", max)):
        cells = []
        for m in modes:
            times = [r["first_s"] for r in rows if r["mode"] == m and "first_s" in r
                     and r["name"] != "demo"]
            cells.append(f"{pick(times):.2f}" if times else "-")
        lines.append(f"| **{label}** (shipped derivations) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="plain,background")
    parser.add_argument("--names", default="", help="derivations (default: all, and demo)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.mode)))
        return
    sys.path.insert(0, str(ROOT))
    from symdl import catalog

    names = [n for n in args.names.split(",") if n] or ["demo", *catalog.names()]
    modes = [m for m in args.mode.split(",") if m]
    rows = []
    for name in names:
        for mode in modes:
            row = _run_case(name, mode, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps({
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}, indent=1))
    print(_table(rows, modes))


if __name__ == "__main__":
    main()
