"""Overhead of the PyTorch and JAX bridges (issue 17, item 1): one training step's loss and
gradients of the demo's two-layer network (tanh, softmax cross-entropy), through symdl's
kernel inside the framework against the same model written in the framework.

Per configuration, the median over ``--repeats`` timed calls (after warm-up) of:

* ``kernel``: the symdl kernel called directly (``k.run``), NumPy arrays in;
* ``torch bridge`` / ``torch``: ``loss_fn(...)`` then ``loss.backward()``, and the same
  model in torch operations with autograd;
* ``jax bridge`` / ``jax``: ``jax.jit(jax.value_and_grad(...))`` of each.

Results go to stdout and ``bridges_overhead.json``. On one thread, under a minute:

    python benchmarks/bridges_overhead.py [--repeats 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def _median_ms(function, repeats: int) -> float:
    for _ in range(5):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _configuration(n: int, d: int, h: int, k: int, dtype: str, losses, repeats: int) -> dict:
    """The five medians for one size and dtype (``losses``: the torch and jax bridges)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    torch_loss, jax_loss = losses
    names = ["W1", "b1", "W2", "b2"]
    rng = np.random.default_rng(0)
    arrays = {"X": rng.normal(size=(n, d)), "Y": np.eye(k)[rng.integers(0, k, n)],
              "W1": rng.normal(size=(d, h)) / d ** 0.5, "b1": np.zeros((1, h)),
              "W2": rng.normal(size=(h, k)) / h ** 0.5, "b2": np.zeros((1, k))}
    arrays = {a: v.astype(dtype) for a, v in arrays.items()}
    t = {a: torch.from_numpy(v.copy()) for a, v in arrays.items()}
    params = {p: t[p].requires_grad_() for p in names}

    def symdl_torch():
        for p in params.values():
            p.grad = None
        torch_loss(X=t["X"], Y=t["Y"], **params).backward()

    def plain_torch():
        for p in params.values():
            p.grad = None
        Z2 = torch.tanh(t["X"] @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]
        (-(t["Y"] * torch.log_softmax(Z2, dim=1)).sum() / n).backward()

    j = {a: jnp.asarray(v) for a, v in arrays.items()}
    jparams = {p: j[p] for p in names}

    def jax_model(p, X, Y):
        Z2 = jnp.tanh(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
        return -jnp.sum(Y * jax.nn.log_softmax(Z2, axis=1)) / X.shape[0]

    bridge_step = jax.jit(jax.value_and_grad(lambda p, X, Y: jax_loss(X=X, Y=Y, **p)))
    plain_step = jax.jit(jax.value_and_grad(jax_model))
    return {
        "kernel_ms": _median_ms(lambda: torch_loss.kernel.run(arrays), repeats),
        "torch_bridge_ms": _median_ms(symdl_torch, repeats),
        "torch_ms": _median_ms(plain_torch, repeats),
        "jax_bridge_ms": _median_ms(
            lambda: jax.block_until_ready(bridge_step(jparams, j["X"], j["Y"])), repeats),
        "jax_ms": _median_ms(
            lambda: jax.block_until_ready(plain_step(jparams, j["X"], j["Y"])), repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).with_name("bridges_overhead.json")))
    args = parser.parse_args(argv)
    # Before numba, torch and jax start their thread pools.
    for variable in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                     "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(args.threads))
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                          f"intra_op_parallelism_threads={args.threads}")
    import jax
    import numba
    import torch

    import symdl
    import symdl.bridges.jax
    import symdl.bridges.torch
    from symdl import catalog

    jax.config.update("jax_enable_x64", True)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    der = catalog.load("two_layer_mlp").derive()
    losses = (symdl.bridges.torch.function(der), symdl.bridges.jax.function(der))
    rows = []
    for n, d, h, k in [(32, 64, 64, 10), (512, 64, 64, 10)]:
        for dtype in ("float64", "float32"):
            row = {"n": n, "d": d, "h": h, "k": k, "dtype": dtype, "threads": args.threads}
            row.update(_configuration(n, d, h, k, dtype, losses, args.repeats))
            rows.append(row)
            print(" ".join(f"{key}={value:.3f}" if isinstance(value, float) else
                           f"{key}={value}" for key, value in row.items()), flush=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"),
                                          "symdl": symdl.__version__, "rows": rows}, indent=1)
                              + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
