"""Temporaries kept between kernel calls (``symdl.kernels.scratch``): allocated once per
argument layout, the same results call after call, after a change of batch size, with the kept
arrays overwritten between calls, and from several threads at once.

Oracles: PyTorch autograd (the shipped CNN's value and gradients) and NumPy (logistic
regression). The kernels run interpreted (``jit=False``): the same generated module and pool
as a compiled kernel, without a Numba compile.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import catalog
from symdl.kernels.scratch import ScratchPool, hoist_scratch

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _cnn_oracle(v: dict) -> tuple[float, dict]:
    t = {k: torch.tensor(a, requires_grad=True) for k, a in v.items()}
    z1 = F.conv2d(t["X"].permute(0, 3, 1, 2), t["K1"].permute(3, 2, 0, 1), t["b1"])
    p1 = F.max_pool2d(F.relu(z1), 2).permute(0, 2, 3, 1).reshape(len(v["X"]), -1)
    loss = -(F.log_softmax(p1 @ t["W2"] + t["b2"], dim=1) * t["Y"]).sum() / len(v["X"])
    names = ["K1", "b1", "W2", "b2"]
    grads = torch.autograd.grad(loss, [t[k] for k in names])
    return loss.item(), {k: g.numpy() for k, g in zip(names, grads, strict=True)}


def test_temporaries_are_made_once_per_layout_and_reused(monkeypatch):
    kernel = catalog.load("model_cnn").derive().compile(jit=False)
    made = []
    original = kernel.module._scratch

    def counted(*args):
        made.append(args[:-1])
        return original(*args)

    monkeypatch.setattr(kernel.module, "_scratch", counted)
    rng = np.random.default_rng(3)
    params = {"K1": rng.normal(size=(3, 3, 1, 4)), "b1": rng.normal(size=(4,)),
              "W2": rng.normal(size=(36, 10)) / 6, "b2": rng.normal(size=(1, 10))}
    for n in (3, 3, 2, 3, 2):
        data = {"X": rng.uniform(size=(n, 8, 8, 1)), "Y": np.eye(10)[rng.integers(0, 10, n)]}
        for kept in kernel.scratch_pool.kept_sets():  # a temporary read before it is written
            for array in kept:                         # would now read garbage
                array.fill(np.nan if array.dtype.kind == "f" else 10**9)
        result = kernel(**data, **params)
        value, grads = _cnn_oracle({**data, **params})
        assert result.value == pytest.approx(value, rel=1e-12)
        for k, g in grads.items():
            np.testing.assert_allclose(result.grad[k], g.reshape(result.grad[k].shape),
                                       rtol=1e-10, atol=1e-13, err_msg=f"n={n}: {k}")
    assert made == [(3,), (2,)]  # one set per batch size, reused after
    assert sorted(kernel.scratch_pool.layouts()) == [(2, np.dtype(np.float64)),
                                                     (3, np.dtype(np.float64))]
    kernel.release_scratch()
    assert kernel.scratch_pool.nbytes == 0


def test_threads_with_different_batch_sizes_get_their_own_temporaries():
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1)
    kernel = symdl.derive(symdl.mean(symdl.softplus(X * w)), wrt=[w]).compile(jit=False)
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((rows, 3)) for rows in (300, 200)]
    w0 = rng.standard_normal((3, 1))
    oracle = [(np.mean(np.logaddexp(0.0, x @ w0)), x.T @ (1 / (1 + np.exp(-x @ w0))) / len(x))
              for x in data]
    failures = []

    def work(thread: int) -> None:
        for k in range(8):
            which = (thread + k) % 2
            result = kernel(X=data[which], w=w0, parallel=False)
            value, grad = oracle[which]
            if not (np.isclose(result.value, value, rtol=1e-12, atol=0)
                    and np.allclose(result.grad["w"], grad, rtol=1e-12, atol=0)):
                failures.append((thread, k))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(kernel.scratch_pool.layouts()) == 2


def test_hoisting_keeps_what_it_cannot_move_and_the_pool_stays_bounded():
    statements = ["m0 = np.empty((int(n0), int(4),), dtype=dtype)",
                  "m1 = np.empty((int(4),), dtype=dtype)",        # fixed size: stays
                  "m2 = np.empty(m0.shape[0], dtype=dtype)",       # not from dims: stays
                  "m3 = np.empty((int(n0),), dtype=np.int64)",
                  "m4 = np.empty((int(n0),), dtype=dtype)",
                  "m4, m0 = m0, m4",                                # m4 rebound: stays
                  "for b in range(int(n0)):",
                  "    m5 = np.empty((int(n0),), dtype=dtype)"]    # inside a loop: stays
    kept, hoisted = hoist_scratch(statements, ["n0"])
    assert [name for name, _ in hoisted] == ["m3"]
    assert kept == [s for s in statements if not s.startswith("m3 ")]
    pool = ScratchPool(keep_bytes=1000, layouts=2, per_layout=1)
    made = []

    def make(size):
        made.append(size)
        return (np.empty(size),)
    for size in (10, 10, 20, 30, 10, 200):  # 200 floats: over the byte bound, never kept
        pool.give((size,), pool.take((size,), make, size))
    assert made == [10, 20, 30, 10, 200]  # 10 was dropped when 30 came (two layouts kept)
    assert pool.layouts() == [(30,), (10,)] and pool.nbytes == 320
