"""Recurrences over a symbolic length (issue 14, item 1): derive + first result at T = 10,
100, 1000 for the RNN, GRU and LSTM layer derivations, and whether compile time depends on T.

Each (layer, T, cache) runs in a fresh child process, timed in parts:

* ``derive_s``: ``derive()`` of the catalog entry and its reverse-mode gradients (IR only);
* ``codegen_s``: ``der.compile()``: planning, generating and importing the kernel module;
* ``first_call_s``: the first kernel call (batch 8, input 16, hidden 32): with a ``cold``
  cache Numba compiles every loop function here; ``warm`` runs again on the cache the cold
  run wrote (the issue's "cold cache excluded");
* ``second_call_s``: a second call, the steady cost of forward + backward through time;
* ``parallel``: whether the call ran the parallel variant of the loops (arrays of at least
  ``PARALLEL_MIN_ENTRIES`` entries and more than one thread), ``load`` the 1-minute load
  average when the child finished.

The generated code is the same text for every T (T is an argument), but the variant is not:
from T = 1000 on (at these sizes) the upstream gradient has enough entries for the parallel
loops, a second Numba compile. A warm run at T = 1000 on a cache that only T = 10 had filled
compiled that variant inside its "first call" (17.8 s where T = 10 took 2.8 s, in the first
version of this file): each T therefore gets a cold run (compiling what its variant lacks,
on the layer's one cache) before its warm run. Not part of the test suite.

Usage: python benchmarks/scan_timings.py [--layers rnn,gru,lstm] [--lengths 10,100,1000]
       [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().with_name("scan_timings.json")

CHILD = r"""
import json, os, sys, time
import numpy as np
import numba
t0 = time.perf_counter()
import importlib
import symdl
import_s = time.perf_counter() - t0
name, steps = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
der = importlib.import_module(f"symdl.derivations.{name}").derivation()
for p in der.wrt:
    der.gradient_node(p)
derive_s = time.perf_counter() - t0
t0 = time.perf_counter()
kernel = der.compile()
codegen_s = time.perf_counter() - t0
sizes = {"T": steps, "n": 8, "d": 16, "k": 32}
rng = np.random.default_rng(0)
values = {}
for leaf_name, leaf in der.leaves.items():
    shape = tuple(int(s.subs({sym: sizes[str(sym)] for sym in s.free_symbols})) for s in leaf.shape)
    values[leaf_name] = rng.normal(size=shape) * 0.3
t0 = time.perf_counter()
kernel(**values)
first_call_s = time.perf_counter() - t0
t0 = time.perf_counter()
kernel(**values)
second_call_s = time.perf_counter() - t0
from symdl.kernels.kernel import PARALLEL_MIN_ENTRIES
parallel = (max(a.size for a in values.values()) >= PARALLEL_MIN_ENTRIES
            and numba.get_num_threads() > 1)
print(json.dumps(dict(import_s=import_s, derive_s=derive_s, codegen_s=codegen_s,
                      first_call_s=first_call_s, second_call_s=second_call_s,
                      parallel=bool(parallel), load=os.getloadavg()[0])))
"""


def run(name: str, steps: int, cache: str) -> dict:
    env = dict(os.environ, SYMDL_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(steps)], env=env,
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="rnn,gru,lstm")
    parser.add_argument("--lengths", default="10,100,1000")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    results = []
    for layer in args.layers.split(","):
        name = f"layer_{layer}"
        with tempfile.TemporaryDirectory() as cache:
            for steps in (int(s) for s in args.lengths.split(",")):
                for kind in ("cold", "warm"):
                    row = {"layer": name, "T": steps, "cache": kind, **run(name, steps, cache)}
                    print(json.dumps(row), flush=True)
                    results.append(row)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
