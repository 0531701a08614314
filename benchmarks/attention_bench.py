"""Forward + backward of causal multi-head attention (issue 14, item 4): symdl's kernel of
``layer_attention_multihead`` against PyTorch eager (its fused
``F.scaled_dot_product_attention``) and JAX ``jit``, same math: projections by rank-3 weights,
scaled scores, causal softmax over the keys, output merge; the objective is Σ G ⊙ Y and its
gradients with respect to X, Wq, Wk, Wv, Wo.

Per configuration, the median over ``--repeats`` timed calls (after warm-up). The thread count
is set before the frameworks load, so run once per count:

    python benchmarks/attention_bench.py --threads 1 [--batch 32 --heads 8 --seq 128 --dim 64]
    python benchmarks/attention_bench.py --threads 2

Results go to stdout and are appended to ``attention_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path


def _median_ms(function, repeats: int) -> float:
    for _ in range(2):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _arrays(batch: int, heads: int, seq: int, dim: int, dtype: str) -> dict:
    import numpy as np

    width = heads * dim
    rng = np.random.default_rng(0)
    arrays = {"X": rng.normal(size=(batch, seq, width)),
              "G": rng.normal(size=(batch, seq, width)),
              "M": np.triu(np.full((seq, seq), -np.inf), k=1)}
    for name in ("Wq", "Wk", "Wv"):
        arrays[name] = rng.normal(size=(width, heads, dim)) / math.sqrt(width)
    arrays["Wo"] = rng.normal(size=(heads, dim, width)) / math.sqrt(width)
    return {k: v.astype(dtype) for k, v in arrays.items()}


def _torch_step(arrays: dict):
    import torch
    import torch.nn.functional as F  # noqa: N812

    t = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    params = [t[n].requires_grad_() for n in ("X", "Wq", "Wk", "Wv", "Wo")]

    def step():
        for p in params:
            p.grad = None
        q, k, v = (torch.einsum("bsc,che->bhse", t["X"], t[w]) for w in ("Wq", "Wk", "Wv"))
        heads = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = torch.einsum("bhse,heo->bso", heads, t["Wo"])
        (t["G"] * y).sum().backward()

    return step


def _jax_step(arrays: dict):
    import jax
    import jax.numpy as jnp

    j = {k: jnp.asarray(v) for k, v in arrays.items()}

    def objective(x, wq, wk, wv, wo, g, m):
        q, k, v = (jnp.einsum("bsc,che->bhse", x, w) for w in (wq, wk, wv))
        scores = jnp.einsum("bhse,bhte->bhst", q, k) / math.sqrt(q.shape[-1]) + m
        heads = jnp.einsum("bhst,bhte->bhse", jax.nn.softmax(scores, axis=-1), v)
        return jnp.sum(g * jnp.einsum("bhse,heo->bso", heads, wo))

    grad = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2, 3, 4)))
    args = [j[n] for n in ("X", "Wq", "Wk", "Wv", "Wo", "G", "M")]

    def step():
        value, grads = grad(*args)
        jax.block_until_ready(grads)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    for variable in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                     "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(args.threads))
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                          f"intra_op_parallelism_threads={args.threads}")
    import jax
    import numba
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's symdl,
    import symdl  # not an installed one (the script's folder is benchmarks/)
    from symdl import catalog

    jax.config.update("jax_enable_x64", True)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    start = time.perf_counter()
    kernel = catalog.load("layer_attention_multihead").derive().compile()
    compile_s = time.perf_counter() - start
    rows = []
    for dtype in args.dtypes:
        arrays = _arrays(args.batch, args.heads, args.seq, args.dim, dtype)
        start = time.perf_counter()
        kernel(**arrays)  # the first call compiles (per dtype; cached on disk afterwards)
        first_call_s = time.perf_counter() - start
        row = {"batch": args.batch, "heads": args.heads, "seq": args.seq, "dim": args.dim,
               "dtype": dtype, "threads": args.threads,
               "symdl_ms": _median_ms(lambda a=arrays: kernel(**a), args.repeats),
               "torch_ms": _median_ms(_torch_step(arrays), args.repeats),
               "jax_ms": _median_ms(_jax_step(arrays), args.repeats),
               "symdl_derive_s": round(compile_s, 2),
               "symdl_first_call_s": round(first_call_s, 1),
               "load_average": os.getloadavg()[0],
               "symdl_from": str(Path(symdl.__file__).parent.parent)}
        row["ratio_vs_fastest"] = row["symdl_ms"] / min(row["torch_ms"], row["jax_ms"])
        print(json.dumps(row))
        rows.append(row)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(previous + rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
