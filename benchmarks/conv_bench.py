"""conv2d layer, forward + backward: symdl against PyTorch (oneDNN) and JAX (XLA).

The layer of issue 13: batch 64, 28 x 28 images, 16 -> 32 channels, 3 x 3 kernel, padding 1
(NCHW). Each implementation computes ``Y = conv2d(X, W)`` and, for an upstream gradient ``G``,
``∂L/∂X`` and ``∂L/∂W`` of ``L = Σ Y ⊙ G``:

* symdl: the IR built by hand (a window read of X, one einsum with W; reverse mode gives the
  gradients), one generated kernel (``symdl.kernels.kernel.Kernel``);
* PyTorch: ``F.conv2d`` and ``torch.autograd.grad`` (oneDNN convolutions);
* JAX: ``lax.conv_general_dilated`` under ``jax.jit(jax.value_and_grad)``-style ``vjp``.

Each (implementation, dtype, thread count) runs in a fresh child process pinned to that many
CPUs, with every library's thread pool set before import (as ``kernels_bench.py`` does).
Medians of ``--repeats`` timed calls after two warm-up calls; the first call (compilation) is
reported separately. Every result is checked against PyTorch in float64.

    python benchmarks/conv_bench.py                  # everything, 1 and 2 threads
    python benchmarks/conv_bench.py --repeats 5 --threads 1 --dtypes float32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pinning import pinned_env

BATCH, SIZE, C_IN, C_OUT, K, PAD = 64, 28, 16, 32, 3, 1


def _data(dtype):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, C_IN, SIZE, SIZE)).astype(dtype)
    w = (rng.normal(size=(C_OUT, C_IN, K, K)) / 12).astype(dtype)
    g = rng.normal(size=(BATCH, C_OUT, SIZE, SIZE)).astype(dtype)
    return x, w, g


def symdl_kernel(plan_im2col: bool | None = None):
    """The conv2d layer's kernel, built from the IR by hand: ``Y``, ``∂L/∂X``, ``∂L/∂W``."""
    import sympy as sp

    from symdl import ir
    from symdl.derive import autodiff
    from symdl.ir import AffineMap
    from symdl.kernels.kernel import Kernel

    n, c, o, h, w_ = sp.symbols("n c o h w", integer=True, positive=True)
    x = ir.leaf("X", (n, c, h, w_), sp.Symbol("X"))
    w = ir.leaf("W", (o, c, K, K), sp.Symbol("W"))
    g = ir.leaf("G", (n, o, h, w_), sp.Symbol("G"))
    # X[b, c, i + a - p, j + e - p] over (b, c, i, j, a, e): "same" padding.
    read = ir.affine_read(x, (n, c, h, w_, K, K), (
        AffineMap.axis(0, 6), AffineMap.axis(1, 6), AffineMap.of([0, 0, 1, 0, 1, 0], -PAD),
        AffineMap.of([0, 0, 0, 1, 0, 1], -PAD)))
    y = ir.einsum([w, read], [(6, 1, 4, 5), (0, 1, 2, 3, 4, 5)], (0, 6, 2, 3))
    loss = ir.einsum([y, g], [(0, 1, 2, 3)] * 2, ())
    grads, _ = autodiff.reverse(loss, [x, w])
    return Kernel({"Y": y, "grad:X": grads[id(x)], "grad:W": grads[id(w)]}, [x, w, g],
                  "conv2d layer")


def _factory(impl: str, dtype: str, threads: int):
    import numpy as np

    x, w, g = _data(np.dtype(dtype))
    if impl == "symdl":
        kern = symdl_kernel()
        out = {"Y": np.empty(g.shape, x.dtype), "grad:X": np.empty_like(x),
               "grad:W": np.empty_like(w)}

        def run():
            r = kern(X=x, W=w, G=g, out=out, parallel=threads > 1)
            return r.outputs["Y"], r.grad["X"], r.grad["W"]
        return run
    if impl == "torch":
        import torch

        torch.set_num_threads(threads)
        xt, wt, gt = (torch.from_numpy(a) for a in (x, w, g))
        xt.requires_grad_(True)
        wt.requires_grad_(True)

        def run():
            y = torch.nn.functional.conv2d(xt, wt, padding=PAD)
            gx, gw = torch.autograd.grad(y, (xt, wt), gt)
            return y.detach().numpy(), gx.numpy(), gw.numpy()
        return run
    if impl == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        from jax import lax

        def layer(xv, wv, gv):
            def conv(xv, wv):
                return lax.conv_general_dilated(xv, wv, (1, 1), [(PAD, PAD), (PAD, PAD)],
                                                dimension_numbers=("NCHW", "OIHW", "NCHW"))
            y, back = jax.vjp(conv, xv, wv)
            gx, gw = back(gv)
            return y, gx, gw
        step = jax.jit(layer)
        xj, wj, gj = (jax.device_put(a) for a in (x, w, g))

        def run():
            return tuple(np.asarray(a) for a in jax.block_until_ready(step(xj, wj, gj)))
        return run
    raise ValueError(impl)


def _check(outs, dtype: str) -> float:
    """The largest error relative to the largest entry, against PyTorch in float64."""
    import numpy as np
    import torch

    x, w, g = (torch.from_numpy(a.astype(np.float64)) for a in _data(np.dtype(dtype)))
    x.requires_grad_(True)
    w.requires_grad_(True)
    y = torch.nn.functional.conv2d(x, w, padding=PAD)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    ref = (y.detach().numpy(), gx.numpy(), gw.numpy())
    return max(float(np.abs(o - r).max() / np.abs(r).max()) for o, r in zip(outs, ref, strict=True))


def _child(args) -> dict:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
    import symdl  # noqa: F401 - first, as a user's program: symdl picks Numba's layer

    start = time.perf_counter()
    run = _factory(args.impl, args.dtype, args.threads)
    outs = run()
    first = time.perf_counter() - start
    run()
    run()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"impl": args.impl, "dtype": args.dtype, "threads": args.threads,
            "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "first_call_s": first, "repeats": args.repeats, "error": _check(outs, args.dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default="symdl,torch,jax")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).with_name("conv_bench.json")))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.threads = int(args.threads)
        print(json.dumps(_child(args)))
        return
    results = []
    for threads in map(int, args.threads.split(",")):
        for dtype in args.dtypes.split(","):
            for impl in args.impls.split(","):
                cmd = [sys.executable, __file__, "--child", "--impl", impl, "--dtype", dtype,
                       "--threads", str(threads), "--repeats", str(args.repeats)]
                done = subprocess.run(cmd, env=pinned_env(threads), capture_output=True, text=True,
                                      timeout=900)
                if done.returncode:
                    print(done.stderr[-2000:], file=sys.stderr)
                    continue
                rec = json.loads(done.stdout.strip().splitlines()[-1])
                results.append(rec)
                print(f"{impl:6s} {dtype} {threads} thread(s): {rec['median_ms']:9.2f} ms "
                      f"(min {rec['min_ms']:.2f}, first call {rec['first_call_s']:.2f} s, "
                      f"error {rec['error']:.1e})", flush=True)
    for threads in map(int, args.threads.split(",")):
        for dtype in args.dtypes.split(","):
            cell = {r["impl"]: r["median_ms"] for r in results
                    if r["threads"] == threads and r["dtype"] == dtype}
            peers = [cell[p] for p in ("torch", "jax") if p in cell]
            if "symdl" in cell and peers:
                print(f"symdl / fastest peer, {dtype}, {threads} thread(s): "
                      f"{cell['symdl'] / min(peers):.2f}")
    Path(args.out).write_text(json.dumps({"shape": [BATCH, C_IN, SIZE, SIZE, C_OUT, K, PAD],
                                          "results": results}, indent=1))


if __name__ == "__main__":
    main()
