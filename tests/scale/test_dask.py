"""Chunked evaluation and training on a real Dask cluster (two worker processes).

The oracle is the single-process kernel on the concatenated data (and, for the optimizers,
Newton's method on that kernel's exact Hessian solved with NumPy). One kernel is compiled, on
the driver; the workers load it from the shared kernel cache. Rows come in uneven chunks
(50, 50, 50, 50, 3) so that a mean's weights differ between chunks.
"""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import sympy as sp
from distributed import Client, LocalCluster, get_worker

import symdl
from symdl import catalog
from symdl.errors import KernelArgumentError, SymdlError
from symdl.scale import NotRowSeparableError, gradient_descent, lbfgs, newton_cg
from symdl.scale.dask import DaskLoss

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
y = sp.MatrixSymbol("y", n, 1)
w = sp.MatrixSymbol("w", d, 1)
b = sp.Symbol("b", real=True)
# A mean over the rows with a data-free regulariser beside it, and a scalar parameter.
LOSS = (symdl.binary_cross_entropy_with_logits(X * w + b * sp.OneMatrix(n, 1), y)
        + sp.Rational(1, 20) * symdl.total(sp.hadamard_product(w, w)))
ROWS, CHUNK = 203, 50


@pytest.fixture(scope="module")
def client():
    # Worker processes read kernels from the test session's cache (conftest sets the folder).
    env = {"SYMDL_CACHE_DIR": os.environ["SYMDL_CACHE_DIR"], "NUMBA_NUM_THREADS": "1"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, env=env,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    data = {"X": rng.standard_normal((ROWS, 3)),
            "y": (rng.random((ROWS, 1)) < 0.5).astype(np.float64)}
    params = {"w": rng.standard_normal((3, 1)), "b": 0.3}
    der = symdl.derive(LOSS, wrt=[w, b])  # Hessian blocks: see the plain-sum test
    return der, der.compile(hvp=True), data, params


@pytest.fixture(scope="module")
def loss(client, problem):
    der, _, data, _ = problem
    return DaskLoss(der, {"X": da.from_array(data["X"], chunks=(CHUNK, 3)),
                          "y": da.from_array(data["y"], chunks=(CHUNK, 1))}, hvp=True)


def _close(a, b, rtol=1e-12):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= rtol * max(np.max(np.abs(b)), 1e-300), (a, b)


def test_value_gradients_and_hvps_equal_the_in_memory_kernel(loss, problem):
    _, kernel, data, params = problem
    v = {"w": np.array([[0.5], [-1.0], [2.0]]), "b": -0.7}
    ref = kernel(**data, **params, v_w=v["w"], v_b=v["b"])
    r = loss.evaluate(params, v)
    assert loss.chunks == (50, 50, 50, 50, 3)
    _close(r.value, ref.value)
    assert set(r.grad) == set(ref.grad) == {"w", "b"}
    for k in ref.grad:
        _close(r.grad[k], ref.grad[k])
    assert r.hessian == {}
    for k in ref.hvp:
        _close(r.hvp[k], ref.hvp[k])
    by_input = loss(**params, v_w=v["w"], v_b=v["b"])  # directions by their input names
    _close(by_input.hvp["w"], ref.hvp["w"])


def test_a_plain_sum_over_rows_adds_chunks_unweighted(client):
    der = catalog.load("linear_regression").derive()
    rng = np.random.default_rng(1)
    Xn, yn, wn = rng.standard_normal((37, 4)), rng.standard_normal((37, 1)), rng.standard_normal(
        (4, 1))
    lossd = DaskLoss(der, {"X": Xn, "y": yn}, chunk_rows=10, jit=False)
    r = lossd(w=wn)
    residual = Xn @ wn - yn  # hand math: sum of squares, gradient 2 X^T r, Hessian 2 X^T X
    _close(r.value, float(np.sum(residual**2)))
    _close(r.grad["w"], 2 * Xn.T @ residual)
    _close(r.hessian[("w", "w")], 2 * Xn.T @ Xn)


LR = sp.Symbol("lr", positive=True)


@pytest.mark.parametrize("optimizer, hyper", [
    (symdl.optimizers.Adam(lr=0.05), None),
    (symdl.optimizers.Nesterov(lr=0.1), None),
    (symdl.optimizers.SGD(lr=LR), {"lr": 0.2}),  # a symbolic hyperparameter given per run
])
def test_gradient_descent_equals_the_in_memory_training_step(loss, problem, optimizer, hyper):
    der, _, data, params = problem
    steps = 4
    step = symdl.TrainingStep(der, optimizer, params, hyperparameters=hyper, jit=False)
    losses = [step(**data) for _ in range(steps)]
    result = gradient_descent(loss, params, optimizer, steps, hyperparameters=hyper)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-12)
    _close(result.params["w"], step.params["w"])
    _close(result.params["b"], step.params["b"])


def _newton_optimum(kernel, data, params):
    """The minimiser by Newton's method on the in-memory kernel's Hessian, built column by
    column from its HVPs with unit directions, solved with NumPy."""
    wk, bk = params["w"].copy(), float(params["b"])
    units = np.eye(4)
    for _ in range(30):
        columns = []
        for e in units:
            r = kernel(**data, w=wk, b=bk, v_w=e[:3].reshape(3, 1), v_b=float(e[3]))
            columns.append(np.concatenate([r.hvp["w"].ravel(), [r.hvp["b"]]]))
        g = np.concatenate([r.grad["w"].ravel(), [r.grad["b"]]])
        step = np.linalg.solve(np.column_stack(columns), g)
        wk, bk = wk - step[:-1].reshape(wk.shape), bk - step[-1]
    return wk, bk


def test_lbfgs_and_newton_cg_reach_the_in_memory_newton_optimum(loss, problem):
    _, kernel, data, params = problem
    w_star, b_star = _newton_optimum(kernel, data, params)
    for result in (lbfgs(loss, params, steps=60, tol=1e-10),
                   newton_cg(loss, params, steps=15, tol=1e-10)):
        assert result.grad_norm <= 1e-10
        np.testing.assert_allclose(result.params["w"], w_star, rtol=0, atol=1e-9)
        assert abs(result.params["b"] - b_star) <= 1e-9
        assert result.losses == sorted(result.losses, reverse=True)


def test_a_loss_with_batch_statistics_is_refused_with_a_typed_error(client):
    der = catalog.load("layer_batchnorm").derive()
    G = np.ones((8, 2))
    with pytest.raises(NotRowSeparableError, match="not row-separable") as info:
        DaskLoss(der, {"G": G, "X": G})
    assert isinstance(info.value, SymdlError)


def test_data_errors_are_typed(problem):
    der, _, data, params = problem
    with pytest.raises(KernelArgumentError, match=r"data misses \['y'\]"):
        DaskLoss(der, {"X": data["X"]}, jit=False)
    with pytest.raises(KernelArgumentError, match="same rows"):
        DaskLoss(der, {"X": data["X"], "y": data["y"][:-1]}, jit=False)


def _kill_worker_once(block: np.ndarray, marker: str) -> np.ndarray:
    """Kills the worker process that reads the first block, once (the marker records it);
    never the test process (Dask may call the function there to learn its output's type)."""
    try:
        get_worker()
    except ValueError:
        return block
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)
    return block


def test_a_worker_killed_mid_computation_is_recovered_with_the_same_result(
        client, problem, tmp_path):
    der, kernel, data, params = problem
    marker = str(tmp_path / "killed")
    before = set(client.run(os.getpid).values())
    X_dying = da.from_array(data["X"], chunks=(CHUNK, 3)).map_blocks(
        _kill_worker_once, marker, dtype=np.float64, meta=np.empty((0, 0)))
    lossk = DaskLoss(der, {"X": X_dying, "y": data["y"]}, chunk_rows=CHUNK, hvp=True)
    r = lossk(**params)
    killed = int(open(marker).read())
    assert killed in before
    ref = kernel(**data, **params, v_w=np.zeros((3, 1)), v_b=0.0)
    _close(r.value, ref.value)
    _close(r.grad["w"], ref.grad["w"])
    _close(r.grad["b"], ref.grad["b"])


def test_a_cancelled_result_is_computed_again(problem, monkeypatch) -> None:
    # distributed cancels a result when a worker dies while the scheduler releases its key
    # ("already forgotten"): the sum over the chunks is computed again (pure tasks, same
    # numbers); other errors are raised at once.
    import symdl.scale.dask as scale_dask

    class FutureCancelledError(Exception):
        pass

    der, kernel, data, params = problem
    lossk = DaskLoss(der, {"X": da.from_array(data["X"], chunks=(CHUNK, 3)),
                           "y": data["y"]}, chunk_rows=CHUNK)
    compute, calls = scale_dask.dask.compute, []

    def flaky(*graphs):
        calls.append(1)
        if len(calls) == 1:
            raise FutureCancelledError("already forgotten")
        return compute(*graphs)

    monkeypatch.setattr(scale_dask.dask, "compute", flaky)
    r = lossk(**params)
    assert len(calls) == 2
    ref = kernel(**data, **params, v_w=np.zeros((3, 1)), v_b=0.0)
    _close(r.value, ref.value)

    def broken(*graphs):
        raise ValueError("not a cancellation")

    monkeypatch.setattr(scale_dask.dask, "compute", broken)
    with pytest.raises(ValueError, match="not a cancellation"):
        lossk(**params)
