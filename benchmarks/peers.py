"""Peer implementations for the kernel benchmark (issue 3): NumPy, Numba, JAX and PyTorch.

Used by ``kernels_bench.py``; this module only defines the workloads and the implementations.

Interface (the same for every implementation, including the optional ``symdl_impls.py``)
-------------------------------------------------------------------------------------

``factory(data: dict) -> run``, where ``run()`` takes no arguments, computes the whole
workload once and returns a tuple of results (NumPy arrays, JAX arrays, torch tensors or
Python floats). The factory may allocate output buffers, convert inputs (``jnp.asarray``,
``torch.from_numpy``) and choose a serial or a parallel kernel (``numba.get_num_threads()``);
that setup is not timed. ``run()`` must be finished when it returns (JAX results are
``block_until_ready``-ed inside). It may return its preallocated buffers: each call's
results are read before the next call. Results are compared with the NumPy one after
``np.asarray(r).reshape(ref.shape)``, so a ``d x 1`` column may stand for a ``(d,)`` vector.

``data`` holds C-contiguous float64 NumPy arrays (and a few Python scalars) and must not be
modified, except in W6 whose update is in place on the factory's own copy.

==========  ==========================================  ====================================
workload    ``data`` keys (shapes)                      ``run()`` returns
==========  ==========================================  ====================================
W1          p (N,), t (N,)                              value, dL/dp (N,)
W2          X (n, d), w (d,), y (n,) in {0, 1}          value, dL/dw (d,)
W3          Z (n, k), Y (n, k) one-hot                  value, dL/dZ (n, k)
W4          X (n, 784), Y (n, 10) one-hot, W1 (784,     value, dW1, db1, dW2, db2 (shapes of
            256), b1 (256,), W2 (256, 10), b2 (10,)     the parameters)
W5-d*       X (n, d), w (d,), y (n,) in {0, 1}          H (d, d)
W6          param, grad, m, v (N,); lr, beta1, beta2,   param, m, v after one update, in
            eps (floats), step (int, = 10)              place (the same arrays for NumPy,
                                                        Numba and torch; new ones for JAX)
==========  ==========================================  ====================================

Losses (L is the value; every mean is over the n rows, or the N entries for W1):

- W1  L = mean((p - t)^2),                         dL/dp = 2 (p - t) / N
- W2  z = X w,  L = mean(softplus(z) - y z),       dL/dw = X^T (sigmoid(z) - y) / n
- W3  L = mean(logsumexp(Z, 1) - sum(Y Z, 1)),     dL/dZ = (softmax(Z) - Y) / n
- W4  Z1 = X W1 + b1, A1 = tanh(Z1), Z2 = A1 W2 + b2, L = W3's loss of (Z2, Y); dL/dparams
- W5  the Hessian of W2's loss wrt w:              H = X^T diag(s (1 - s)) X / n, s = sigmoid(X w)
- W6  Adam at step t: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
      param -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

Numba kernels: ``fastmath=False``, ``error_model="numpy"``; each is compiled serial and with
``parallel=True``/``prange`` and the factory takes the parallel one when Numba has more than
one thread (that is the same implementation, "numba", at 2 threads). Matrix products inside
Numba kernels call BLAS through ``np.dot`` (SciPy's OpenBLAS).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import models
import numba
import numpy as np
from numba import prange

Factory = Callable[[dict], Callable[[], tuple]]

PEERS = ("numpy", "numba", "jax", "torch")  # "symdl" comes from symdl_impls.py

# --------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    name: str  # "W5-d200"
    base: str  # "W5": the key of the implementation tables
    title: str
    sizes: dict
    setup: Callable[[], dict]
    rtol: float = 1e-9  # per output: |a - r| <= rtol |r| + atol_rel * max|r|
    atol_rel: float = 1e-12
    value_rtol: float = 1e-9  # the scalar value (first output) of a loss
    inplace: bool = False  # run() updates data in place: each impl gets its own copy
    bytes_moved: float = 0.0  # minimal memory traffic, for a bandwidth floor
    flops: float = 0.0  # matrix-product flops, for a compute floor
    kind: str = "workload"  # or "limit"
    notes: dict = field(default_factory=dict)
    dtype: str = "float64"  # "float32": the data is rounded to float32 (see with_float32)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _onehot(rng, n: int, k: int) -> np.ndarray:
    Y = np.zeros((n, k))
    Y[np.arange(n), rng.integers(0, k, n)] = 1.0
    return Y


def _setup_w1(N):
    def setup():
        r = _rng(1)
        return {"p": r.standard_normal(N), "t": r.standard_normal(N)}

    return setup


def _setup_logreg(n, d, seed):
    def setup():
        r = _rng(seed)
        X = r.standard_normal((n, d))
        w = r.standard_normal(d) / math.sqrt(d)
        y = (r.random(n) < 0.5).astype(np.float64)
        return {"X": X, "w": w, "y": y}

    return setup


def _setup_w3(n, k):
    def setup():
        r = _rng(3)
        return {"Z": 2.0 * r.standard_normal((n, k)), "Y": _onehot(r, n, k)}

    return setup


def _setup_w4(n, d, h, k):
    def setup():
        r = _rng(4)
        return {
            "X": r.standard_normal((n, d)),
            "Y": _onehot(r, n, k),
            "W1": r.standard_normal((d, h)) / math.sqrt(d),
            "b1": 0.1 * r.standard_normal(h),
            "W2": r.standard_normal((h, k)) / math.sqrt(h),
            "b2": 0.1 * r.standard_normal(k),
        }

    return setup


def _setup_w6(N):
    def setup():
        r = _rng(6)
        return {
            "param": r.standard_normal(N),
            "grad": r.standard_normal(N),
            "m": 0.1 * r.standard_normal(N),
            "v": 0.01 * r.random(N),
            "lr": 1e-3,
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": 1e-8,
            "step": 10,
        }

    return setup


def _setup_vectors(N, count):
    def setup():
        r = _rng(7)
        return {f"a{i}": r.random(N) for i in range(count)}

    return setup


def _setup_gemm(n):
    def setup():
        r = _rng(8)
        return {"A": r.standard_normal((n, n)), "B": r.standard_normal((n, n))}

    return setup


def make_workloads(quick: bool = False) -> dict[str, Workload]:
    """All workloads and machine limits, in run order; ``quick``: small sizes."""
    N1 = 10**5 if quick else 10**7
    n2, d2 = (2000, 20) if quick else (100_000, 100)
    n3, k3 = (256, 50) if quick else (4096, 1000)
    n4, d4, h4, k4 = (32, 784, 256, 10) if quick else (256, 784, 256, 10)
    n5, ds5 = (500, (5, 20, 50)) if quick else (10_000, (50, 200, 500))
    N6 = 10**5 if quick else 10**7
    Nt = 10**5 if quick else 5 * 10**7
    ng = 256 if quick else 2048

    W: list[Workload] = [
        Workload("L-triad", "L-triad", "STREAM triad a = b + s*c (Numba)", {"N": Nt},
                 _setup_vectors(Nt, 3), bytes_moved=3 * 8 * Nt, kind="limit"),
        Workload("L-stream7", "L-stream7", "read 4 / write 3 stream (Numba), W6's traffic",
                 {"N": N6}, _setup_vectors(N6, 4), bytes_moved=7 * 8 * N6, kind="limit"),
        Workload("L-dgemm", "L-dgemm", f"np.dot {ng}x{ng} float64", {"n": ng},
                 _setup_gemm(ng), flops=2.0 * ng**3, kind="limit"),
        Workload("W1", "W1", "MSE value + grad wrt p", {"N": N1}, _setup_w1(N1),
                 value_rtol=1e-6, bytes_moved=3 * 8 * N1),
        Workload("W2", "W2", "logistic regression (BCE with logits) value + grad wrt w",
                 {"n": n2, "d": d2}, _setup_logreg(n2, d2, 2), value_rtol=1e-9,
                 atol_rel=1e-10, bytes_moved=8 * (n2 * d2 + n2), flops=4.0 * n2 * d2),
        Workload("W3", "W3", "softmax cross-entropy value + grad wrt logits",
                 {"n": n3, "k": k3}, _setup_w3(n3, k3), bytes_moved=3 * 8 * n3 * k3),
        Workload("W4", "W4", "2-layer MLP 784-256(tanh)-10 softmax CE, fwd + bwd",
                 {"n": n4, "d": d4, "h": h4, "k": k4}, _setup_w4(n4, d4, h4, k4),
                 atol_rel=1e-10, flops=2.0 * n4 * (2 * d4 * h4 + 3 * h4 * k4)),
    ]
    for d in ds5:
        W.append(Workload(f"W5-d{d}", "W5", f"logistic regression Hessian, d = {d}",
                          {"n": n5, "d": d}, _setup_logreg(n5, d, 5), atol_rel=1e-10,
                          flops=2.0 * n5 * d * d + 2.0 * n5 * d))
    W.append(Workload("W6", "W6", "Adam update, in place", {"N": N6}, _setup_w6(N6),
                      atol_rel=1e-12, inplace=True, bytes_moved=7 * 8 * N6))
    for n in (32, 128, 1024):  # issue 6: the demo network's whole training step
        d, h, k = TRAIN_SHAPE
        W.append(Workload(f"T-b{n}", "T", f"training step 64-64(tanh)-10 + L2, Adam, batch {n}",
                          {"n": n, "d": d, "h": h, "k": k}, _setup_train(n), rtol=1e-8,
                          atol_rel=1e-10, inplace=True,
                          flops=2.0 * n * (2 * d * h + 3 * h * k)))
    W += models.workloads(Workload, quick)  # issue 16: models the plan was not tuned on
    return {w.name: w for w in W}


F32_SUFFIX = "-f32"


def _float32_setup(setup):
    def setup32():
        return {k: v.astype(np.float32) if isinstance(v, np.ndarray) else v
                for k, v in setup().items()}

    return setup32


def with_float32(workloads: dict[str, Workload]) -> dict[str, Workload]:
    """Every workload, then its float32 copy (``W1-f32``): the same data rounded to float32,
    bytes moved halved, checked against the float64 NumPy result on the rounded data with
    float32 tolerances. An Adam step's first update is lr * g / (|g| + eps): where a gradient
    entry is at float32 noise level (~1e-8) its sign, and so a +-lr step, is noise, hence the
    wider absolute tolerance of the in-place (optimizer) workloads."""
    out = {}
    for name, wl in workloads.items():
        out[name] = wl
        if wl.kind != "workload":
            continue
        out[name + F32_SUFFIX] = replace(  # right after its float64 original: run in pairs
            wl, name=name + F32_SUFFIX, setup=_float32_setup(wl.setup), dtype="float32",
            rtol=max(wl.rtol, 1e-3), value_rtol=max(wl.value_rtol, 1e-4),
            atol_rel=max(wl.atol_rel, 1e-2 if wl.inplace else 1e-4),
            bytes_moved=wl.bytes_moved / 2)
    return out


TRAIN_SHAPE = (64, 64, 10)  # the demo's network: 8x8 digits, 64 tanh units, 10 classes
TRAIN_HYPER = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "lambda": 1e-4}


def _setup_train(n):
    d, h, k = TRAIN_SHAPE

    def setup():
        r = _rng(7)
        data = {
            "X": r.random((n, d)),
            "Y": _onehot(r, n, k),
            "W1": r.standard_normal((d, h)) / math.sqrt(d),
            "b1": np.zeros(h),
            "W2": r.standard_normal((h, k)) / math.sqrt(h),
            "b2": np.zeros(k),
        }
        for name in ("W1", "b1", "W2", "b2"):  # Adam's state, at the first step
            data["m_" + name] = np.zeros_like(data[name])
            data["v_" + name] = np.zeros_like(data[name])
        return data

    return setup


# --------------------------------------------------------------------------- helpers

_JIT = dict(fastmath=False, error_model="numpy", nogil=True, cache=False)


class _Pair:
    """One kernel source compiled twice: serial and ``parallel=True`` (prange)."""

    def __init__(self, fn):
        self.serial = numba.njit(parallel=False, **_JIT)(fn)
        self.parallel = numba.njit(parallel=True, **_JIT)(fn)

    def pick(self):
        return self.parallel if numba.get_num_threads() > 1 else self.serial


def _chunks() -> int:
    return max(1, numba.get_num_threads())


@numba.njit(inline="always", **_JIT)
def _rowdot(X, i, w):
    """X[i, :] . w with four accumulators (no fastmath, so LLVM keeps the order we write)."""
    d = X.shape[1]
    d4 = d - d % 4
    z0 = 0.0
    z1 = 0.0
    z2 = 0.0
    z3 = 0.0
    for j in range(0, d4, 4):
        z0 += X[i, j] * w[j]
        z1 += X[i, j + 1] * w[j + 1]
        z2 += X[i, j + 2] * w[j + 2]
        z3 += X[i, j + 3] * w[j + 3]
    for j in range(d4, d):
        z0 += X[i, j] * w[j]
    return (z0 + z1) + (z2 + z3)


def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _torch():
    import torch

    return torch


def _t(torch, a, grad=False):
    x = torch.from_numpy(a)
    return x.requires_grad_(True) if grad else x


def _np_softplus(z):
    return np.logaddexp(0.0, z)


# --------------------------------------------------------------------------- W1 MSE


def numpy_w1(data):
    p, t = data["p"], data["t"]
    N = p.size

    def run():
        d = p - t
        value = float(d @ d) / N
        np.multiply(d, 2.0 / N, out=d)
        return value, d

    return run


def _w1_kernel(p, t, g, scale):
    n = p.shape[0]
    s = 0.0
    for i in prange(n):
        d = p[i] - t[i]
        s += d * d
        g[i] = scale * d
    return s / n


_W1 = _Pair(_w1_kernel)


def numba_w1(data):
    p, t = data["p"], data["t"]
    g = np.empty_like(p)
    k = _W1.pick()
    scale = 2.0 / p.size
    return lambda: (k(p, t, g, scale), g)


def jax_w1(data):
    jax = _jax()
    jnp = jax.numpy

    def loss(p, t):
        d = p - t
        return jnp.mean(d * d)

    f = jax.jit(jax.value_and_grad(loss))
    p, t = jnp.asarray(data["p"]), jnp.asarray(data["t"])
    return lambda: jax.block_until_ready(f(p, t))


def torch_w1(data):
    torch = _torch()
    F = torch.nn.functional
    p, t = _t(torch, data["p"], True), _t(torch, data["t"])

    def run():
        loss = F.mse_loss(p, t)
        (g,) = torch.autograd.grad(loss, p)
        return loss.detach(), g

    return run


# --------------------------------------------------------------------------- W2 logistic regression


def numpy_w2(data):
    X, w, y = data["X"], data["w"], data["y"]
    n = X.shape[0]

    def run():
        z = X @ w
        sp = _np_softplus(z)
        value = float(np.mean(sp - y * z))
        r = np.exp(z - sp)  # sigmoid(z) = exp(z - softplus(z))
        r -= y
        r /= n
        return value, X.T @ r

    return run


def _w2_kernel(X, w, y, partial, vals):
    # One pass over X: z_i = X_i . w, the loss term, r_i = sigmoid(z_i) - y_i and
    # grad += r_i X_i, with one partial gradient per chunk of rows (= per thread).
    n, d = X.shape
    nch = partial.shape[0]
    size = (n + nch - 1) // nch
    for c in prange(nch):
        lo = c * size
        hi = min(n, lo + size)
        g = partial[c]
        g[:] = 0.0
        acc = 0.0
        for i in range(lo, hi):
            z = _rowdot(X, i, w)
            e = math.exp(-abs(z))
            sp = max(z, 0.0) + math.log1p(e)
            acc += sp - y[i] * z
            s = 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
            r = s - y[i]
            for j in range(d):
                g[j] += r * X[i, j]
        vals[c] = acc


_W2 = _Pair(_w2_kernel)


def numba_w2(data):
    X, w, y = data["X"], data["w"], data["y"]
    n, d = X.shape
    nch = _chunks()
    partial = np.empty((nch, d))
    vals = np.empty(nch)
    grad = np.empty(d)
    k = _W2.pick()

    def run():
        k(X, w, y, partial, vals)
        np.sum(partial, axis=0, out=grad)
        np.divide(grad, n, out=grad)
        return vals.sum() / n, grad

    return run


def jax_w2(data):
    jax = _jax()
    jnp = jax.numpy

    def loss(w, X, y):
        z = X @ w
        return jnp.mean(jax.nn.softplus(z) - y * z)

    f = jax.jit(jax.value_and_grad(loss))
    X, w, y = (jnp.asarray(data[k]) for k in ("X", "w", "y"))
    return lambda: jax.block_until_ready(f(w, X, y))


def torch_w2(data):
    torch = _torch()
    F = torch.nn.functional
    X, w, y = _t(torch, data["X"]), _t(torch, data["w"], True), _t(torch, data["y"])

    def run():
        loss = F.binary_cross_entropy_with_logits(X @ w, y)
        (g,) = torch.autograd.grad(loss, w)
        return loss.detach(), g

    return run


# --------------------------------------------------------------------------- W3 softmax CE


def _np_softmax_ce(Z, Y):
    """Value and (softmax(Z) - Y) / n, the max-shifted way."""
    n = Z.shape[0]
    m = Z.max(axis=1, keepdims=True)
    E = np.exp(Z - m)
    s = E.sum(axis=1, keepdims=True)
    value = float(np.mean(m[:, 0] + np.log(s[:, 0]) - np.einsum("ij,ij->i", Y, Z)))
    E /= s
    E -= Y
    E /= n
    return value, E


def numpy_w3(data):
    Z, Y = data["Z"], data["Y"]
    return lambda: _np_softmax_ce(Z, Y)


def _w3_kernel(Z, Y, G):
    # Per row: max, exp (stored in G) with their sum and sum(Y*Z), then G = (G/s - Y)/n.
    n, k = Z.shape
    inv_n = 1.0 / n
    total = 0.0
    for i in prange(n):
        m = Z[i, 0]
        for j in range(1, k):
            m = max(m, Z[i, j])
        s = 0.0
        yz = 0.0
        for j in range(k):
            e = math.exp(Z[i, j] - m)
            G[i, j] = e
            s += e
            yz += Y[i, j] * Z[i, j]
        total += m + math.log(s) - yz
        inv_s = 1.0 / s
        for j in range(k):
            G[i, j] = (G[i, j] * inv_s - Y[i, j]) * inv_n
    return total * inv_n


_W3 = _Pair(_w3_kernel)


def numba_w3(data):
    Z, Y = data["Z"], data["Y"]
    G = np.empty_like(Z)
    k = _W3.pick()
    return lambda: (k(Z, Y, G), G)


def _jax_softmax_ce(jax, Z, Y):
    jnp = jax.numpy
    return jnp.mean(jax.nn.logsumexp(Z, axis=1) - jnp.sum(Y * Z, axis=1))


def jax_w3(data):
    jax = _jax()
    f = jax.jit(jax.value_and_grad(lambda Z, Y: _jax_softmax_ce(jax, Z, Y)))
    Z, Y = jax.numpy.asarray(data["Z"]), jax.numpy.asarray(data["Y"])
    return lambda: jax.block_until_ready(f(Z, Y))


def torch_w3(data):
    torch = _torch()
    F = torch.nn.functional
    Z, Y = _t(torch, data["Z"], True), _t(torch, data["Y"])

    def run():
        loss = F.cross_entropy(Z, Y)  # class-probability targets, mean over the n rows
        (g,) = torch.autograd.grad(loss, Z)
        return loss.detach(), g

    return run


# --------------------------------------------------------------------------- W4 2-layer MLP


def numpy_w4(data):
    X, Y, W1, b1, W2, b2 = (data[k] for k in ("X", "Y", "W1", "b1", "W2", "b2"))

    def run():
        A1 = X @ W1
        A1 += b1
        np.tanh(A1, out=A1)
        Z2 = A1 @ W2
        Z2 += b2
        value, dZ2 = _np_softmax_ce(Z2, Y)
        dW2 = A1.T @ dZ2
        db2 = dZ2.sum(axis=0)
        dZ1 = dZ2 @ W2.T
        dZ1 *= 1.0 - A1 * A1
        dW1 = X.T @ dZ1
        db1 = dZ1.sum(axis=0)
        return value, dW1, db1, dW2, db2

    return run


def _w4_kernel(X, Y, W1, b1, W2, b2, A1, Z2, dZ2, dZ1, dW1, db1, dW2, db2):
    n = X.shape[0]
    h = W1.shape[1]
    k = W2.shape[1]
    inv_n = 1.0 / n
    np.dot(X, W1, A1)
    for i in prange(n):
        for j in range(h):
            A1[i, j] = math.tanh(A1[i, j] + b1[j])
    np.dot(A1, W2, Z2)
    total = 0.0
    for i in prange(n):
        m = Z2[i, 0] + b2[0]
        for j in range(k):
            Z2[i, j] += b2[j]
            m = max(m, Z2[i, j])
        s = 0.0
        yz = 0.0
        for j in range(k):
            e = math.exp(Z2[i, j] - m)
            dZ2[i, j] = e
            s += e
            yz += Y[i, j] * Z2[i, j]
        total += m + math.log(s) - yz
        inv_s = 1.0 / s
        for j in range(k):
            dZ2[i, j] = (dZ2[i, j] * inv_s - Y[i, j]) * inv_n
    np.dot(A1.T, dZ2, dW2)
    for j in range(k):
        acc = 0.0
        for i in range(n):
            acc += dZ2[i, j]
        db2[j] = acc
    np.dot(dZ2, W2.T, dZ1)
    for i in prange(n):
        for j in range(h):
            a = A1[i, j]
            dZ1[i, j] *= 1.0 - a * a
    np.dot(X.T, dZ1, dW1)
    for j in prange(h):
        acc = 0.0
        for i in range(n):
            acc += dZ1[i, j]
        db1[j] = acc
    return total * inv_n


_W4 = _Pair(_w4_kernel)


def numba_w4(data):
    X, Y, W1, b1, W2, b2 = (data[k] for k in ("X", "Y", "W1", "b1", "W2", "b2"))
    n, h, k = X.shape[0], W1.shape[1], W2.shape[1]
    A1, Z2, dZ2, dZ1 = np.empty((n, h)), np.empty((n, k)), np.empty((n, k)), np.empty((n, h))
    dW1, db1, dW2, db2 = (np.empty_like(a) for a in (W1, b1, W2, b2))
    kern = _W4.pick()

    def run():
        value = kern(X, Y, W1, b1, W2, b2, A1, Z2, dZ2, dZ1, dW1, db1, dW2, db2)
        return value, dW1, db1, dW2, db2

    return run


def jax_w4(data):
    jax = _jax()
    jnp = jax.numpy

    def loss(W1, b1, W2, b2, X, Y):
        A1 = jnp.tanh(X @ W1 + b1)
        return _jax_softmax_ce(jax, A1 @ W2 + b2, Y)

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    args = [jnp.asarray(data[k]) for k in ("W1", "b1", "W2", "b2", "X", "Y")]

    def run():
        value, grads = jax.block_until_ready(f(*args))
        return (value, *grads)

    return run


def torch_w4(data):
    torch = _torch()
    F = torch.nn.functional
    params = [_t(torch, data[k], True) for k in ("W1", "b1", "W2", "b2")]
    W1, b1, W2, b2 = params
    X, Y = _t(torch, data["X"]), _t(torch, data["Y"])

    def run():
        A1 = torch.tanh(torch.addmm(b1, X, W1))
        loss = F.cross_entropy(torch.addmm(b2, A1, W2), Y)
        grads = torch.autograd.grad(loss, params)
        return (loss.detach(), *grads)

    return run


# --------------------------------------------------------------------------- W5 Hessian


def numpy_w5(data):
    X, w = data["X"], data["w"]
    n = X.shape[0]

    def run():
        z = X @ w
        s = np.exp(z - _np_softplus(z))
        c = s * (1.0 - s) / n
        return (X.T @ (X * c[:, None]),)

    return run


def _w5_kernel(X, w, XC, H):
    # XC[i, :] = X[i, :] * s_i (1 - s_i) / n with s = sigmoid(X w) (one pass over X),
    # then H = X^T XC by BLAS.
    n, d = X.shape
    inv_n = 1.0 / n
    for i in prange(n):
        z = _rowdot(X, i, w)
        e = math.exp(-abs(z))
        s = 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
        c = s * (1.0 - s) * inv_n
        for j in range(d):
            XC[i, j] = X[i, j] * c
    np.dot(X.T, XC, H)


_W5 = _Pair(_w5_kernel)


def numba_w5(data):
    X, w = data["X"], data["w"]
    XC = np.empty_like(X)
    H = np.empty((X.shape[1], X.shape[1]))
    k = _W5.pick()

    def run():
        k(X, w, XC, H)
        return (H,)

    return run


def jax_w5(data):
    jax = _jax()
    jnp = jax.numpy

    def loss(w, X, y):
        z = X @ w
        return jnp.mean(jax.nn.softplus(z) - y * z)

    f = jax.jit(jax.hessian(loss))
    X, w, y = (jnp.asarray(data[k]) for k in ("X", "w", "y"))
    return lambda: (jax.block_until_ready(f(w, X, y)),)


def torch_w5(data):
    torch = _torch()
    F = torch.nn.functional
    X, w, y = _t(torch, data["X"]), _t(torch, data["w"]), _t(torch, data["y"])

    def loss(w):
        return F.binary_cross_entropy_with_logits(X @ w, y)

    hess = torch.autograd.functional.hessian
    return lambda: (hess(loss, w),)  # vectorize=True (vmap) was 3x slower here


# --------------------------------------------------------------------------- W6 Adam


def _adam_consts(data):
    b1, b2, t = data["beta1"], data["beta2"], data["step"]
    return data["lr"], b1, b2, data["eps"], 1.0 - b1**t, 1.0 - b2**t


def numpy_w6(data):
    p, g, m, v = (data[k] for k in ("param", "grad", "m", "v"))
    lr, b1, b2, eps, bc1, bc2 = _adam_consts(data)
    tmp = np.empty_like(p)

    def run():  # ufuncs with out=: every update in place, one scratch array
        np.multiply(m, b1, out=m)
        np.multiply(g, 1.0 - b1, out=tmp)
        np.add(m, tmp, out=m)
        np.multiply(v, b2, out=v)
        np.multiply(g, g, out=tmp)
        np.multiply(tmp, 1.0 - b2, out=tmp)
        np.add(v, tmp, out=v)
        np.divide(v, bc2, out=tmp)
        np.sqrt(tmp, out=tmp)
        np.add(tmp, eps, out=tmp)
        np.divide(m, tmp, out=tmp)
        np.multiply(tmp, lr / bc1, out=tmp)
        np.subtract(p, tmp, out=p)
        return p, m, v

    return run


def _w6_kernel(p, g, m, v, lr, b1, b2, eps, bc1, bc2):
    step = lr / bc1
    for i in prange(p.shape[0]):
        gi = g[i]
        mi = b1 * m[i] + (1.0 - b1) * gi
        vi = b2 * v[i] + (1.0 - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (math.sqrt(vi / bc2) + eps)


_W6 = _Pair(_w6_kernel)


def numba_w6(data):
    p, g, m, v = (data[k] for k in ("param", "grad", "m", "v"))
    consts = _adam_consts(data)
    k = _W6.pick()

    def run():
        k(p, g, m, v, *consts)
        return p, m, v

    return run


def jax_w6(data):
    jax = _jax()
    jnp = jax.numpy
    lr, b1, b2, eps, bc1, bc2 = _adam_consts(data)

    def adam(p, g, m, v):
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * g * g
        return p - lr * (m / bc1) / (jnp.sqrt(v / bc2) + eps), m, v

    f = jax.jit(adam, donate_argnums=(0, 2, 3))  # donated buffers: updated in place
    g = jnp.asarray(data["grad"])
    state = [jnp.array(data[k]) for k in ("param", "m", "v")]

    def run():
        p, m, v = jax.block_until_ready(f(state[0], g, state[1], state[2]))
        state[:] = [p, m, v]
        return p, m, v

    return run


def torch_w6(data):
    torch = _torch()
    lr, b1, b2, eps, _, _ = _adam_consts(data)
    p = torch.nn.Parameter(torch.from_numpy(data["param"]))  # shares the array
    p.grad = torch.from_numpy(data["grad"])
    m, v = torch.from_numpy(data["m"]), torch.from_numpy(data["v"])
    try:
        opt = torch.optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel: the multi-tensor one
        opt = torch.optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps, foreach=True)
    # Resume at step t - 1 so the next step() is step t (bias correction of step 10).
    opt.state[p] = {"step": torch.tensor(float(data["step"] - 1)), "exp_avg": m,
                    "exp_avg_sq": v}

    def run():
        opt.step()
        return p.detach(), m, v

    return run


# --------------------------------------------------------------------------- machine limits


def _triad_kernel(a, b, c, s):
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


def _stream7_kernel(p, g, m, v, s):
    # reads p, g, m, v; writes p, m, v (W6's traffic, a few flops)
    for i in prange(p.shape[0]):
        gi = g[i]
        mi = m[i] + s * gi
        vi = v[i] + s * gi
        m[i] = mi
        v[i] = vi
        p[i] += s * (mi + vi)


_TRIAD = _Pair(_triad_kernel)
_STREAM7 = _Pair(_stream7_kernel)


def numba_triad(data):
    a, b, c = data["a0"], data["a1"], data["a2"]
    k = _TRIAD.pick()

    def run():
        k(a, b, c, 3.0)
        return (a,)

    return run


def numba_stream7(data):
    p, g, m, v = (data[f"a{i}"] for i in range(4))
    k = _STREAM7.pick()

    def run():
        k(p, g, m, v, 1e-12)
        return (p, m, v)

    return run


def numpy_dgemm(data):
    A, B = data["A"], data["B"]
    C = np.empty_like(A)

    def run():
        np.dot(A, B, out=C)
        return (C,)

    return run


# --------------------------------------------------------------------------- T training step
#
# L = softmax CE(A1 W2 + b2, Y) + lambda/2 (|W1|^2 + |W2|^2), A1 = tanh(X W1 + b1); then Adam
# (bias-corrected, step t counted from 1) on W1, b1, W2, b2. run() does one whole step in
# place and returns (loss before the update, W1, b1, W2, b2 after it).

_TRAIN_PARAMS = ("W1", "b1", "W2", "b2")


def numpy_train(data):
    hp = TRAIN_HYPER
    X, Y = data["X"], data["Y"]
    P = {k: data[k] for k in _TRAIN_PARAMS}
    M = {k: data["m_" + k] for k in _TRAIN_PARAMS}
    V = {k: data["v_" + k] for k in _TRAIN_PARAMS}
    step = [0]

    def run():
        step[0] += 1
        t = step[0]
        A1 = np.tanh(X @ P["W1"] + P["b1"])
        Z2 = A1 @ P["W2"] + P["b2"]
        loss, dZ2 = _np_softmax_ce(Z2, Y)
        loss += 0.5 * hp["lambda"] * (np.sum(P["W1"] ** 2) + np.sum(P["W2"] ** 2))
        dZ1 = (dZ2 @ P["W2"].T) * (1.0 - A1 * A1)
        grads = {"W1": X.T @ dZ1 + hp["lambda"] * P["W1"], "b1": dZ1.sum(axis=0),
                 "W2": A1.T @ dZ2 + hp["lambda"] * P["W2"], "b2": dZ2.sum(axis=0)}
        for k in _TRAIN_PARAMS:
            g = grads[k]
            M[k] *= hp["beta1"]
            M[k] += (1.0 - hp["beta1"]) * g
            V[k] *= hp["beta2"]
            V[k] += (1.0 - hp["beta2"]) * g * g
            P[k] -= (hp["lr"] / (1.0 - hp["beta1"] ** t)) * M[k] / (
                np.sqrt(V[k] / (1.0 - hp["beta2"] ** t)) + hp["eps"])
        return (loss, *(P[k] for k in _TRAIN_PARAMS))

    return run


def jax_train(data):
    jax = _jax()
    jnp = jax.numpy
    hp = TRAIN_HYPER

    def loss_fn(params, X, Y):
        W1, b1, W2, b2 = params
        A1 = jnp.tanh(X @ W1 + b1)
        return _jax_softmax_ce(jax, A1 @ W2 + b2, Y) + 0.5 * hp["lambda"] * (
            jnp.sum(W1 * W1) + jnp.sum(W2 * W2))

    def train_step(params, m, v, t, X, Y):
        loss, grads = jax.value_and_grad(loss_fn)(params, X, Y)
        m = tuple(hp["beta1"] * a + (1.0 - hp["beta1"]) * g
                  for a, g in zip(m, grads, strict=True))
        v = tuple(hp["beta2"] * a + (1.0 - hp["beta2"]) * g * g
                  for a, g in zip(v, grads, strict=True))
        scale = hp["lr"] / (1.0 - hp["beta1"] ** t)
        bc2 = 1.0 - hp["beta2"] ** t
        params = tuple(p - scale * a / (jnp.sqrt(b / bc2) + hp["eps"])
                       for p, a, b in zip(params, m, v, strict=True))
        return loss, params, m, v

    step_fn = jax.jit(train_step, donate_argnums=(0, 1, 2))
    state = {"params": tuple(jnp.asarray(data[k]) for k in _TRAIN_PARAMS),
             "m": tuple(jnp.asarray(data["m_" + k]) for k in _TRAIN_PARAMS),
             "v": tuple(jnp.asarray(data["v_" + k]) for k in _TRAIN_PARAMS), "t": 0}
    X, Y = jnp.asarray(data["X"]), jnp.asarray(data["Y"])

    def run():
        state["t"] += 1
        loss, state["params"], state["m"], state["v"] = jax.block_until_ready(
            step_fn(state["params"], state["m"], state["v"], float(state["t"]), X, Y))
        return (loss, *state["params"])

    return run


def torch_train(data):
    torch = _torch()
    F = torch.nn.functional
    hp = TRAIN_HYPER
    params = [_t(torch, data[k], True) for k in _TRAIN_PARAMS]
    W1, b1, W2, b2 = params
    X, Y = _t(torch, data["X"]), _t(torch, data["Y"])
    optimizer = torch.optim.Adam(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                 eps=hp["eps"])

    def run():
        optimizer.zero_grad(set_to_none=True)
        A1 = torch.tanh(torch.addmm(b1, X, W1))
        loss = F.cross_entropy(torch.addmm(b2, A1, W2), Y) + 0.5 * hp["lambda"] * (
            W1.pow(2).sum() + W2.pow(2).sum())
        loss.backward()
        optimizer.step()
        return (loss.detach(), *(p.detach() for p in params))

    return run


# --------------------------------------------------------------------------- tables

IMPLS: dict[str, dict[str, Factory]] = {
    "numpy": {"W1": numpy_w1, "W2": numpy_w2, "W3": numpy_w3, "W4": numpy_w4, "W5": numpy_w5,
              "W6": numpy_w6, "L-dgemm": numpy_dgemm, "T": numpy_train},
    "numba": {"W1": numba_w1, "W2": numba_w2, "W3": numba_w3, "W4": numba_w4, "W5": numba_w5,
              "W6": numba_w6, "L-triad": numba_triad, "L-stream7": numba_stream7},
    "jax": {"W1": jax_w1, "W2": jax_w2, "W3": jax_w3, "W4": jax_w4, "W5": jax_w5,
            "W6": jax_w6, "T": jax_train},
    "torch": {"W1": torch_w1, "W2": torch_w2, "W3": torch_w3, "W4": torch_w4,
              "W5": torch_w5, "W6": torch_w6, "T": torch_train},
}

for _impl, _table in models.IMPLS.items():
    IMPLS[_impl].update(_table)

VARIANTS = {  # how each implementation is built, for the report
    "numpy": "vectorised NumPy, BLAS via @; W6 in place with out= and one scratch array",
    "numba": "njit (fastmath off, error_model='numpy'); serial at 1 thread, parallel=True + "
             "prange at >1 thread; BLAS via np.dot; W2 fused into one pass over X",
    "jax": "jax.jit(jax.value_and_grad) / jax.jit(jax.hessian), x64; W6 jit with donated "
           "buffers",
    "torch": "torch.autograd.grad on torch.from_numpy tensors; W5 "
             "torch.autograd.functional.hessian (default: one backward per row); W6 "
             "torch.optim.Adam(fused=True)",
}
