"""Warm start (issue 3): a new Python process, kernels already in the disk cache, time from
after ``import symdl`` to the first result of the 2-layer network's kernels.

One cold process fills a fresh cache, then ``--repeats`` warm processes each report their
time; the median is printed and written to ``warm_start.json``. Target: under 1 s.

    python benchmarks/warm_start.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent("""
    import json, time
    t0 = time.perf_counter()
    import numpy as np
    import symdl
    start = time.perf_counter()
    from symdl import catalog as registry
    kernel = registry.load("two_layer_mlp").derive().compile()
    rng = np.random.default_rng(0)
    n, d, h, k = 64, 5, 8, 3
    result = kernel(X=rng.normal(size=(n, d)), Y=np.eye(k)[rng.integers(0, k, n)],
                    W1=rng.normal(size=(d, h)), b1=rng.normal(size=(1, h)),
                    W2=rng.normal(size=(h, k)), b2=rng.normal(size=(1, k)))
    print(json.dumps({"import_s": start - t0, "first_result_s": time.perf_counter() - start}))
""")


def _run(cache: str) -> dict:
    env = dict(os.environ, SYMDL_CACHE_DIR=cache)
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          env=env, check=True, timeout=600)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).with_name("warm_start.json")))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        cold = _run(cache)
        warm = [_run(cache) for _ in range(args.repeats)]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cold_first_result_s": cold["first_result_s"],
        "warm_first_result_s_median": statistics.median(w["first_result_s"] for w in warm),
        "warm_first_result_s_all": [w["first_result_s"] for w in warm],
        "import_symdl_s_median": statistics.median(w["import_s"] for w in warm),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"cold process: {cold['first_result_s']:.2f} s to the first result (compiles)")
    print(f"warm process: {result['warm_first_result_s_median']:.3f} s median of "
          f"{args.repeats} (after `import symdl`, which itself takes "
          f"{result['import_symdl_s_median']:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
