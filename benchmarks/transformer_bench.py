"""Forward + backward of a pre-norm transformer block (issue 14, item 4): symdl's kernel of
``model_transformer_block`` against PyTorch eager (``F.layer_norm``, its fused
``F.scaled_dot_product_attention``, ``F.gelu``) and JAX ``jit``, same math: LayerNorm, causal
multi-head attention with rank-3 projection weights, residual, LayerNorm, an MLP of width
``4 d`` with the exact GELU, residual; the objective is Σ G ⊙ Y and its gradients with
respect to X and all 12 parameters.

As ``attention_bench.py`` (the median over ``--repeats`` timed calls after warm-up; the thread
count set before the frameworks load, so run once per count):

    python benchmarks/transformer_bench.py --threads 1 [--batch 32 --heads 8 --seq 128 --dim 64]

Results go to stdout and are appended to ``transformer_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from attention_bench import _median_ms

PARAMETERS = ("X", "g1", "beta1", "Wq", "Wk", "Wv", "Wo", "g2", "beta2", "W1", "b1", "W2", "b2")
EPS = 1e-5


def _arrays(batch: int, heads: int, seq: int, dim: int, dtype: str) -> dict:
    import numpy as np

    width = heads * dim
    hidden = 4 * width
    rng = np.random.default_rng(0)
    arrays = {"X": rng.normal(size=(batch, seq, width)),
              "G": rng.normal(size=(batch, seq, width)),
              "M": np.triu(np.full((seq, seq), -np.inf), k=1),
              "eps": np.asarray(EPS)}
    for name in ("g1", "g2"):
        arrays[name] = 1 + 0.1 * rng.normal(size=width)
    for name in ("beta1", "beta2"):
        arrays[name] = 0.1 * rng.normal(size=width)
    for name in ("Wq", "Wk", "Wv"):
        arrays[name] = rng.normal(size=(width, heads, dim)) / math.sqrt(width)
    arrays["Wo"] = rng.normal(size=(heads, dim, width)) / math.sqrt(width)
    arrays["W1"] = rng.normal(size=(width, hidden)) / math.sqrt(width)
    arrays["b1"] = 0.1 * rng.normal(size=hidden)
    arrays["W2"] = rng.normal(size=(hidden, width)) / math.sqrt(hidden)
    arrays["b2"] = 0.1 * rng.normal(size=width)
    return {k: v.astype(dtype) for k, v in arrays.items()}


def _torch_step(arrays: dict):
    import torch
    import torch.nn.functional as F  # noqa: N812

    t = {k: torch.from_numpy(v.copy()) for k, v in arrays.items() if k != "eps"}
    params = [t[n].requires_grad_() for n in PARAMETERS]
    width = t["X"].shape[-1]

    def step():
        for p in params:
            p.grad = None
        n1 = F.layer_norm(t["X"], (width,), t["g1"], t["beta1"], EPS)
        q, k, v = (torch.einsum("bsc,che->bhse", n1, t[w]) for w in ("Wq", "Wk", "Wv"))
        heads = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        r = t["X"] + torch.einsum("bhse,heo->bso", heads, t["Wo"])
        n2 = F.layer_norm(r, (width,), t["g2"], t["beta2"], EPS)
        y = r + F.gelu(n2 @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"]
        (t["G"] * y).sum().backward()

    return step


def _jax_step(arrays: dict):
    import jax
    import jax.numpy as jnp

    j = {k: jnp.asarray(v) for k, v in arrays.items() if k != "eps"}

    def layer_norm(x, g, beta):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + EPS) * g + beta

    def objective(x, g1, beta1, wq, wk, wv, wo, g2, beta2, w1, b1, w2, b2, g, m):
        n1 = layer_norm(x, g1, beta1)
        q, k, v = (jnp.einsum("bsc,che->bhse", n1, w) for w in (wq, wk, wv))
        scores = jnp.einsum("bhse,bhte->bhst", q, k) / math.sqrt(q.shape[-1]) + m
        heads = jnp.einsum("bhst,bhte->bhse", jax.nn.softmax(scores, axis=-1), v)
        r = x + jnp.einsum("bhse,heo->bso", heads, wo)
        n2 = layer_norm(r, g2, beta2)
        y = r + jax.nn.gelu(n2 @ w1 + b1, approximate=False) @ w2 + b2
        return jnp.sum(g * y)

    grad = jax.jit(jax.value_and_grad(objective, argnums=tuple(range(len(PARAMETERS)))))
    args = [j[n] for n in (*PARAMETERS, "G", "M")]

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
    kernel = catalog.load("model_transformer_block").derive().compile()
    derive_s = time.perf_counter() - start
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
               "symdl_derive_s": round(derive_s, 2),
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
