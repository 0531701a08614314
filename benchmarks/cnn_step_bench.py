"""The digits CNN training step (one Adam step): symdl against PyTorch eager and JAX ``jit``.

One step is the forward pass, backprop and the Adam update of every parameter (issue 13,
item 8). Two networks on 8 x 8 x 1 images (channels last), both conv 3 x 3 -> relu -> 2 x 2 max
pool -> dense -> softmax cross-entropy (the mean over the batch):

* ``model_cnn``: the shipped derivation ``derivations/model_cnn.py`` (4 kernels, valid
  convolution, 36 features);
* ``demo_cnn``: the network ``make demo`` trains (``symdl.report.demo.cnn_derivation``: 16
  kernels, padding 1, 256 features, weight decay ``lambda/2 Σ W2²`` with lambda = 1e-4).

Implementations:

* symdl: ``TrainingStep(der, Adam(...))``, one generated kernel for the whole step;
* PyTorch eager: ``torch.nn.functional`` (``conv2d`` with symdl's kernel permuted to OIHW,
  ``relu``, ``max_pool2d``, a matrix product, ``log_softmax`` against the one-hot labels),
  ``backward()`` and ``torch.optim.Adam``;
* JAX: ``lax.conv_general_dilated`` (NHWC / HWIO, symdl's layout as is), ``reduce_window``
  max pooling, ``jax.value_and_grad`` and a hand-written Adam under one ``jax.jit``.

Adam hyper-parameters as ``models.py`` (``ADAM``). Batches of 32 (the demo's) and 256.
Each (implementation, model, batch, dtype, thread count) runs in a fresh child process
pinned to that many CPUs, every library's thread pool set before import (environment variables
and ``torch.set_num_threads``; XLA's flags); symdl's children get an empty cache folder, so
their first call is a cold derivation + code generation + Numba compilation. Medians of
``--repeats`` timed steps after ``--warmup`` warm-up steps; the first call (derive + compile,
or import + trace + compile) is reported separately. The loss of the first step and the
parameters after it are compared between the frameworks, every one against PyTorch in
float64 (relative to the largest entry).

    python benchmarks/cnn_step_bench.py
    python benchmarks/cnn_step_bench.py --impls symdl,torch --dtypes float64 --threads 1 \\
        --models model_cnn --batches 8 --repeats 1
    python benchmarks/cnn_step_bench.py --profile --models demo_cnn --batches 256 \\
        --dtypes float32      # symdl's step by generated function (run with 1 thread)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from models import ADAM, jax_adam_step
from pinning import pinned_env

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("K1", "b1", "W2", "b2")
MODELS = {  # channels, padding, weight decay
    "model_cnn": (4, 0, 0.0),
    "demo_cnn": (16, 1, 1e-4),
}


def _geometry(model: str) -> tuple[int, int, float, int]:
    channels, pad, decay = MODELS[model]
    side = (8 + 2 * pad - 2) // 2  # after the 3 x 3 convolution and the 2 x 2 pooling
    return channels, pad, decay, side * side * channels


def _data(model: str, batch: int, dtype):
    """Pixels in [0, 1], one-hot labels, the initial parameters at the demo's scale."""
    import numpy as np

    channels, _, _, features = _geometry(model)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, 8, 8, 1))
    y = np.eye(10)[rng.integers(0, 10, batch)]
    params = {"K1": rng.normal(size=(3, 3, 1, channels)) / 3,
              "b1": rng.normal(size=(channels,)) / 10,
              "W2": rng.normal(size=(features, 10)) / np.sqrt(features),
              "b2": rng.normal(size=(1, 10)) / 10}
    cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    return cast(x), cast(y), {k: cast(v) for k, v in params.items()}


def _symdl_derivation(model: str):
    if model == "model_cnn":
        from symdl import catalog

        return catalog.load("model_cnn").derive()
    from symdl.report.demo import cnn_derivation

    return cnn_derivation()


def _factory(impl: str, model: str, batch: int, dtype: str, threads: int):
    """A function running one training step, returning (loss, parameters after the step);
    and a dict of first-call parts (derivation time) where the implementation has them."""
    import numpy as np

    x, y, init = _data(model, batch, np.dtype(dtype))
    _, pad, decay, _ = _geometry(model)
    parts = {}
    if impl == "symdl":
        from symdl.define.optimizers import Adam
        from symdl.training import TrainingStep

        start = time.perf_counter()
        der = _symdl_derivation(model)
        parts["derive_s"] = time.perf_counter() - start
        hyper = {"lambda": decay} if model == "demo_cnn" else None
        step = TrainingStep(der, Adam(**ADAM), init, dtype=np.dtype(dtype),
                            hyperparameters=hyper)

        def run():
            loss = step(X=x, Y=y)
            return loss, step.params
        run.step = step  # for profile_symdl
        return run, parts
    if impl == "torch":
        import torch

        torch.set_num_threads(threads)
        F = torch.nn.functional
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # NCHW view of the channels-last batch
        yt = torch.from_numpy(y)
        P = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in init.items()}
        optimizer = torch.optim.Adam(list(P.values()), lr=ADAM["lr"],
                                     betas=(ADAM["beta1"], ADAM["beta2"]), eps=ADAM["eps"])

        def loss_of():
            z1 = F.conv2d(xt, P["K1"].permute(3, 2, 0, 1), P["b1"], padding=pad)
            p1 = F.max_pool2d(F.relu(z1), 2).permute(0, 2, 3, 1).reshape(batch, -1)
            z2 = p1 @ P["W2"] + P["b2"]
            loss = -(F.log_softmax(z2, dim=1) * yt).sum() / batch
            if decay:
                loss = loss + decay / 2 * (P["W2"] * P["W2"]).sum()
            return loss

        def run():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of()
            loss.backward()
            optimizer.step()
            return loss.item(), {k: p.detach().numpy() for k, p in P.items()}
        return run, parts
    if impl == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax

        def loss_of(params, xv, yv):
            k1, c1, w2, c2 = params
            z1 = lax.conv_general_dilated(xv, k1, (1, 1), [(pad, pad), (pad, pad)],
                                          dimension_numbers=("NHWC", "HWIO", "NHWC")) + c1
            a1 = jnp.maximum(z1, 0)
            p1 = lax.reduce_window(a1, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            z2 = p1.reshape(xv.shape[0], -1) @ w2 + c2
            loss = -(jax.nn.log_softmax(z2, axis=1) * yv).sum() / xv.shape[0]
            if decay:
                loss = loss + decay / 2 * (w2 * w2).sum()
            return loss

        f = jax_adam_step(loss_of)
        state = {"p": tuple(jnp.asarray(init[k]) for k in NAMES),
                 "m": tuple(jnp.zeros_like(jnp.asarray(init[k])) for k in NAMES),
                 "v": tuple(jnp.zeros_like(jnp.asarray(init[k])) for k in NAMES), "t": 0}
        xj, yj = jnp.asarray(x), jnp.asarray(y)

        def run():
            state["t"] += 1
            value, state["p"], state["m"], state["v"] = jax.block_until_ready(
                f(state["p"], state["m"], state["v"], float(state["t"]), xj, yj))
            return float(value), dict(zip(NAMES, (np.asarray(p) for p in state["p"]),
                                          strict=True))
        return run, parts
    raise ValueError(impl)


def profile_symdl(model: str, batch: int, dtype: str, calls: int = 50) -> dict:
    """Where symdl's step spends its time: the generated module's step-by-step driver
    (``_steps``: the same jitted loops and BLAS products the compiled step runs, called from
    Python) with every loop function and ``np.dot`` timed; seconds per step by function, plus
    the compiled step's own time. The step sequence is the one ``_steps_compiled`` runs."""
    import numpy as np

    run, _ = _factory("symdl", model, batch, dtype, 1)
    run()
    step = run.step
    x, y, _ = _data(model, batch, np.dtype(dtype))
    module = step.kernel.module
    listed, buffers = step.kernel_arguments(X=x, Y=y)
    n0 = x.shape[0]
    # The temporaries the driver takes (symdl.kernels.scratch), made once as a kernel does.
    scratch = module._scratch(n0, np.dtype(dtype)) if hasattr(module, "_scratch") else ()
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            result = fn(*a, **k)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
            return result
        return wrapper

    class _Numpy:  # numpy with a timed dot
        dot = staticmethod(timed("np.dot (BLAS)", np.dot))

        def __getattr__(self, name):
            return getattr(np, name)

    originals = {k: v for k, v in vars(module).items()
                 if k.startswith(("_pack", "_loop", "_rowmax", "_stats", "_scatter"))
                 and not k.endswith("_parallel")}
    try:
        for k, v in originals.items():
            setattr(module, k, timed(k, v))
        module.np = _Numpy()
        module._steps(*listed, *buffers, *scratch, n0, False, False)
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(calls):
            module._steps(*listed, *buffers, *scratch, n0, False, False)
        driver = (time.perf_counter() - t0) / calls
    finally:
        for k, v in originals.items():
            setattr(module, k, v)
        module.np = np
    t0 = time.perf_counter()
    for _ in range(calls):
        step.kernel.run_unchecked(listed, buffers)
    compiled = (time.perf_counter() - t0) / calls
    parts = dict(sorted(((k, v / calls) for k, v in spent.items()), key=lambda kv: -kv[1]))
    return {"model": model, "batch": batch, "dtype": dtype, "compiled_step_s": compiled,
            "python_driver_step_s": driver, "by_function_s": parts}


def _child(args) -> dict:
    import numpy as np

    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
    import symdl  # noqa: F401 - first, as a user's program: symdl picks Numba's layer

    start = time.perf_counter()
    run, parts = _factory(args.impl, args.model, args.batch, args.dtype, args.threads)
    loss, params = run()
    first = time.perf_counter() - start
    # The loss of the first step and the parameters after it, for the agreement check.
    np.savez(args.check, loss=np.float64(loss),
             **{k: np.array(params[k], dtype=np.float64).reshape(-1) for k in NAMES})
    for _ in range(args.warmup):
        run()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"impl": args.impl, "model": args.model, "batch": args.batch, "dtype": args.dtype,
            "threads": args.threads, "median_ms": 1e3 * statistics.median(times),
            "min_ms": 1e3 * min(times), "first_call_s": first, **parts,
            "repeats": args.repeats, "warmup": args.warmup,
            "load_average": os.getloadavg()[0]}  # 1 minute; others share the machine


def _env(threads: int, cache: str) -> dict:
    env = pinned_env(threads)
    env["SYMDL_CACHE_DIR"] = cache  # empty: symdl's first call compiles cold
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


def _errors(check: dict, reference: dict, model: str, batch: int, dtype: str) -> dict:
    """Relative errors of the loss, of each updated parameter (to its largest entry) and of
    each parameter's update (the step taken, to the largest step: Adam's first step is about
    lr = 1e-3 per entry, so this is the stricter check; in float32 it is limited by the
    resolution of the parameters, about 1e-7 of 1e-3)."""
    import numpy as np

    init = {k: v.astype(np.float64).reshape(-1)
            for k, v in _data(model, batch, np.dtype(dtype))[2].items()}
    init64 = {k: v.reshape(-1) for k, v in _data(model, batch, np.float64)[2].items()}
    out = {"loss": abs(float(check["loss"]) - float(reference["loss"]))
           / abs(float(reference["loss"]))}
    for k in NAMES:
        ref = reference[k]
        out[k] = float(np.abs(check[k] - ref).max() / np.abs(ref).max())
        step, ref_step = check[k] - init[k], ref - init64[k]
        out[f"update {k}"] = float(np.abs(step - ref_step).max() / np.abs(ref_step).max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default="symdl,torch,jax")
    parser.add_argument("--models", default="model_cnn,demo_cnn")
    parser.add_argument("--batches", default="32,256")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).with_name("cnn_step_bench.json")))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--check", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true",
                        help="profile symdl's step (first model, batch, dtype) and exit")
    args = parser.parse_args()
    if args.profile:
        model, batch = args.models.split(",")[0], int(args.batches.split(",")[0])
        profile = profile_symdl(model, batch, args.dtypes.split(",")[0])
        print(json.dumps(profile, indent=1))
        out = Path(args.out)  # kept next to the timings, one profile per cell
        saved = json.loads(out.read_text()) if out.exists() else {}
        saved["profiles"] = [p for p in saved.get("profiles", []) if (p["model"], p["batch"],
                             p["dtype"]) != (model, batch, profile["dtype"])] + [profile]
        out.write_text(json.dumps(saved, indent=1))
        return
    if args.child:
        args.threads = int(args.threads)
        print(json.dumps(_child(args)))
        return
    import numpy as np

    results, checks = [], {}
    with tempfile.TemporaryDirectory(prefix="cnn-step-bench-") as scratch:
        for model in args.models.split(","):
            for batch in map(int, args.batches.split(",")):
                for threads in map(int, args.threads.split(",")):
                    for dtype in args.dtypes.split(","):
                        for impl in args.impls.split(","):
                            key = (impl, model, batch, dtype, threads)
                            check = str(Path(scratch) / ("-".join(map(str, key)) + ".npz"))
                            cache = tempfile.mkdtemp(prefix="cache-", dir=scratch)
                            cmd = [sys.executable, __file__, "--child", "--impl", impl,
                                   "--model", model, "--batch", str(batch), "--dtype", dtype,
                                   "--threads", str(threads), "--repeats", str(args.repeats),
                                   "--warmup", str(args.warmup), "--check", check]
                            done = subprocess.run(cmd, env=_env(threads, cache),
                                                  capture_output=True, text=True, timeout=900)
                            if done.returncode:
                                print(" ".join(map(str, key)), "failed:", file=sys.stderr)
                                print(done.stderr[-3000:], file=sys.stderr)
                                continue
                            rec = json.loads(done.stdout.strip().splitlines()[-1])
                            results.append(rec)
                            with np.load(check) as saved:
                                checks[key] = dict(saved)
                            print(f"{model} n={batch} {impl:6s} {dtype} {threads} thread(s): "
                                  f"{rec['median_ms']:9.3f} ms (min {rec['min_ms']:.3f}, "
                                  f"first call {rec['first_call_s']:.2f} s)", flush=True)
    # Agreement: every implementation against PyTorch in float64 (same model, batch).
    for rec in results:
        key = (rec["impl"], rec["model"], rec["batch"], rec["dtype"], rec["threads"])
        ref = next((checks[k] for k in checks if k[0] == "torch" and k[1:3] == key[1:3]
                    and k[3] == "float64"), None)
        if ref is not None:
            errors = _errors(checks[key], ref, rec["model"], rec["batch"], rec["dtype"])
            rec["error_vs_torch_float64"] = errors
            rec["max_error"] = max(v for k, v in errors.items() if not k.startswith("update"))
            rec["max_update_error"] = max(v for k, v in errors.items()
                                          if k.startswith("update"))
    print("\nmodel, batch, dtype, threads: symdl / torch / jax (ms), symdl / fastest peer, "
          "max error vs torch float64 (symdl, torch, jax; loss and parameters / updates)")
    for model in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            for dtype in args.dtypes.split(","):
                for threads in map(int, args.threads.split(",")):
                    cell = {r["impl"]: r for r in results if (r["model"], r["batch"],
                            r["dtype"], r["threads"]) == (model, batch, dtype, threads)}
                    times = " / ".join(f"{cell[i]['median_ms']:.3f}" if i in cell else "-"
                                       for i in ("symdl", "torch", "jax"))
                    peers = [cell[p]["median_ms"] for p in ("torch", "jax") if p in cell]
                    ratio = (f"{cell['symdl']['median_ms'] / min(peers):.2f}"
                             if "symdl" in cell and peers else "-")
                    errs = " ".join(f"{cell[i].get('max_error', float('nan')):.1e}"
                                    f"/{cell[i].get('max_update_error', float('nan')):.1e}"
                                    if i in cell else "-" for i in ("symdl", "torch", "jax"))
                    print(f"{model} {batch} {dtype} {threads}: {times}; {ratio}; {errs}")
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.exists() else {}
    saved.update({"adam": ADAM, "models": MODELS, "results": results})
    out.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
