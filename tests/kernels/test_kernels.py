"""Compiled kernels (``Derivation.compile``): every output against the NumPy reference
evaluator, finite differences, serial against parallel loops, ``out=`` buffers, standalone
export, the warm disk cache in a new process, and argument validation.

Each kernel is compiled once per session (``_compiled``) and reused by every test that needs
it; Numba compiles a loop function once per dtype and per serial/parallel variant.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import catalog as registry
from symdl.errors import KernelArgumentError

# --------------------------------------------------------------------------------------------
# Definitions

n, d, k, h = sp.symbols("n d k h", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
y = sp.MatrixSymbol("y", n, 1)
Y = sp.MatrixSymbol("Y", n, k)
w = sp.MatrixSymbol("w", d, 1)
W = sp.MatrixSymbol("W", d, k)
b = sp.MatrixSymbol("b", 1, k)
c = sp.MatrixSymbol("c", k, 1)
Z = sp.MatrixSymbol("Z", n, k)
b0 = sp.MatrixSymbol("b0", 1, 1)
s = sp.Symbol("s", real=True)


def _layer(act: Callable) -> symdl.Derivation:
    """A dense layer with a bias row and an activation, weighted by Y and averaged."""
    out = act(X * W + symdl.bias(b, n))
    return symdl.derive(symdl.total(sp.hadamard_product(out, Y)) / n, wrt=[W, b], hessian=True)


def _softmax_lse(axis: int, hessian: bool = True) -> symdl.Derivation:
    u = sp.MatrixSymbol("u", n, 1) if axis == 1 else sp.MatrixSymbol("u", 1, k)
    loss = (symdl.total(sp.hadamard_product(symdl.softmax(X * W, axis=axis), Y))
            + symdl.total(sp.hadamard_product(symdl.logsumexp(X * W, axis=axis), u)))
    return symdl.derive(loss, wrt=[W], hessian=hessian)


@dataclass(frozen=True)
class Case:
    """A definition to compile, and how to draw valid inputs for it."""

    make: Callable[[], symdl.Derivation]
    onehot: tuple[str, ...] = ()  # rows are one-hot labels
    binary: tuple[str, ...] = ()  # entries are 0 or 1
    positive: bool = False  # every input (not the directions) in [0.5, 2]
    hvp: bool = True


def _registry(name: str) -> Callable[[], symdl.Derivation]:
    return lambda: registry.load(name).derive()


CASES: dict[str, Case] = {
    # The shipped derivations.
    "linear_regression": Case(_registry("linear_regression")),
    "logistic_regression": Case(_registry("logistic_regression"), binary=("y",)),
    "softmax_regression": Case(_registry("softmax_regression"), onehot=("Y",)),
    "two_layer_mlp": Case(_registry("two_layer_mlp"), onehot=("Y",)),
    # MSE with a matrix parameter: the Hessian block is rank 4, (d, k, d, k).
    "mse_matrix": Case(lambda: symdl.derive(symdl.mse(X * W, Y), wrt=[W], hessian=True)),
    # Logistic regression as the issue writes it, with its Hessian and HVP.
    "logistic_hvp": Case(lambda: symdl.derive(
        symdl.mean(symdl.softplus(X * w) - sp.hadamard_product(y, X * w)), wrt=[w],
        hessian=True), binary=("y",)),
    # Softmax cross-entropy with respect to the logits: a rank-4 Hessian through softmax.
    "softmax_ce_logits": Case(lambda: symdl.derive(
        symdl.softmax_cross_entropy(Z, Y), wrt=[Z], hessian=True), onehot=("Y",)),
    # Elementwise layers (relu has no second derivative in symdl yet: see
    # test_relu_second_derivatives_compile; its gradient kernel is checked here).
    "layer_relu": Case(lambda: symdl.derive(
        symdl.total(sp.hadamard_product(symdl.relu(X * W + symdl.bias(b, n)), Y)) / n,
        wrt=[W, b]), hvp=False),
    "layer_sigmoid": Case(lambda: _layer(symdl.sigmoid)),
    "layer_tanh": Case(lambda: _layer(symdl.tanh)),
    "layer_exp": Case(lambda: _layer(symdl.exp)),
    "layer_log": Case(lambda: _layer(symdl.log), positive=True),
    # Softmax and log-sum-exp along columns (axis 0) and rows (axis 1).
    "softmax_lse_axis0": Case(lambda: _softmax_lse(0)),
    "softmax_lse_axis1": Case(lambda: _softmax_lse(1)),
    # A bias given as a k x 1 column, broadcast over the rows; Hessian blocks (W, c) mix two
    # parameters of different shapes.
    "bias_column": Case(lambda: symdl.derive(
        symdl.mse(X * W + symdl.bias(c, n), Y), wrt=[W, c], hessian=True)),
    # A scalar parameter: blocks (w, s) are d-vectors, (s, s) a scalar.
    "scalar_param": Case(lambda: symdl.derive(
        symdl.mse(s * (X * w), y) + s * s / 2, wrt=[w, s], hessian=True)),
    # A 1 x 1 intercept next to a vector: Hessian blocks mixing the two parameters.
    "logistic_intercept": Case(lambda: symdl.derive(
        symdl.binary_cross_entropy_with_logits(X * w + symdl.bias(b0, n), y), wrt=[w, b0],
        hessian=True), binary=("y",)),
}

# Gradient-only kernels for the parallel test (compiling parallel Hessian loops is slow).
PARALLEL_ONLY: dict[str, Case] = {
    "softmax_lse_axis0_grad": Case(lambda: _softmax_lse(0, hessian=False), hvp=False),
    "softmax_lse_axis1_grad": Case(lambda: _softmax_lse(1, hessian=False), hvp=False),
}

SIZES = (1, 3, 7, 33)


def _bindings(der: symdl.Derivation) -> list[dict[sp.Symbol, int]]:
    """All dimensions 1, then four rotations of SIZES: every dimension takes every size once,
    and within a binding the sizes differ (a transposed axis cannot go unnoticed)."""
    dims = sorted(der.dims, key=str)
    table = [{dim: 1 for dim in dims}]
    for shift in range(len(SIZES)):
        table.append({dim: SIZES[(i + shift) % len(SIZES)] for i, dim in enumerate(dims)})
    return table


BINDING_IDS = ["all1", "rot0", "rot1", "rot2", "rot3"]


# --------------------------------------------------------------------------------------------
# Compiled kernels, inputs and references


_COMPILED: dict[str, tuple[symdl.Derivation, object]] = {}


def _compiled(name: str):
    """``(derivation, kernel)`` for a case, compiled once per session."""
    if name not in _COMPILED:
        case = _case(name)
        der = case.make()
        _COMPILED[name] = (der, der.compile(hvp=case.hvp))
    return _COMPILED[name]


def _case(name: str) -> Case:
    return CASES[name] if name in CASES else PARALLEL_ONLY[name]


def _shape(shape: tuple, dims: dict) -> tuple[int, ...]:
    return tuple(int(sp.sympify(x).subs(dims)) for x in shape)


def _pname(p: sp.Basic) -> str:
    return str(p.name) if isinstance(p, sp.MatrixSymbol) else str(p)


def _inputs(name: str, dims: dict, seed: int = 0) -> dict[str, np.ndarray | float]:
    """Valid float64 inputs for every kernel argument (directions ``v_*`` included)."""
    case = _case(name)
    _, kernel = _compiled(name)
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray | float] = {}
    for arg, shape in kernel.inputs.items():
        size = _shape(shape, dims)
        if arg in case.onehot:
            values[arg] = np.eye(size[1])[rng.integers(0, size[1], size[0])]
        elif arg in case.binary:
            values[arg] = rng.integers(0, 2, size).astype(np.float64)
        elif case.positive and not arg.startswith("v_"):
            values[arg] = rng.uniform(0.5, 2.0, size)
        elif arg == "lambda":
            values[arg] = float(rng.uniform(0.1, 1.0))
        else:
            values[arg] = 0.5 * rng.standard_normal(size)
        if size == ():
            values[arg] = float(values[arg])
    return values


def _as32(values: dict) -> dict:
    return {key: v.astype(np.float32) if isinstance(v, np.ndarray) else v
            for key, v in values.items()}


def _as64(values: dict) -> dict:
    return {key: v.astype(np.float64) if isinstance(v, np.ndarray) else v
            for key, v in values.items()}


_FULL_HESSIAN: dict[str, symdl.Derivation] = {}


def _with_all_hessians(name: str) -> symdl.Derivation:
    """A separate instance of the case's derivation with every Hessian block, for the HVP
    reference (the compiled instance keeps the outputs it was compiled with)."""
    if name not in _FULL_HESSIAN:
        der = _case(name).make()
        for p in der.wrt:
            for q in der.wrt:
                der.hessian_node(p, q)
        _FULL_HESSIAN[name] = der
    return _FULL_HESSIAN[name]


def _reference_hvp(name: str, values: dict, dims: dict) -> dict[str, np.ndarray]:
    """``Σ_q H[p, q] v_q`` for each parameter, from the Hessian blocks of the reference
    evaluator (blocks drop size-1 axes, so they are reshaped to size(p) x size(q)).

    Not from the printed ``der.hvp``: see test_printed_hvp_is_the_same_on_every_call."""
    der = _with_all_hessians(name)
    blocks = der.evaluate(values, dims)
    result = {}
    for p in _params(der):
        grad = np.asarray(blocks[f"grad:{p}"])
        total = np.zeros(grad.size)
        for q in _params(der):
            v = np.asarray(values[f"v_{q}"], dtype=np.float64).reshape(-1)
            total += np.asarray(blocks[f"hessian:{p},{q}"]).reshape(grad.size, v.size) @ v
        result[f"hvp:{p}"] = total.reshape(grad.shape)
    return result


def _reference(name: str, values: dict, dims: dict) -> dict[str, np.ndarray]:
    """Every kernel output computed by the NumPy reference evaluator, in float64."""
    der, kernel = _compiled(name)
    values = _as64(values)
    ref = {key: np.asarray(v) for key, v in der.evaluate(values, dims).items()}
    if _case(name).hvp:
        ref.update(_reference_hvp(name, values, dims))
    assert set(ref) == set(kernel.output_names)
    return ref


def _scale(expected: np.ndarray) -> float:
    return max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0


def _assert_close(actual, expected, rtol: float, atol: float, what: str) -> None:
    """``assert_allclose`` with an absolute tolerance relative to the largest entry: an
    entry that cancels to about zero keeps the rounding error of its largest terms."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * _scale(expected),
                               err_msg=what)


def _output(result, name: str) -> np.ndarray:
    return np.asarray(result.outputs[name])


def _params(der: symdl.Derivation) -> list[str]:
    return [_pname(p) for p in der.wrt]


# --------------------------------------------------------------------------------------------
# 1. Every output against the reference, float64 and float32


def test_the_core_derivations_are_covered() -> None:
    """The four models every other feature builds on are checked here at every size; the
    rest of derivations/ is compiled and checked by its own tests and by `symdl check`."""
    core = {"linear_regression", "logistic_regression", "softmax_regression", "two_layer_mlp"}
    assert core <= set(registry.names()) and core <= set(CASES)


@pytest.mark.parametrize("binding", range(5), ids=BINDING_IDS)
@pytest.mark.parametrize("name", list(CASES))
def test_float64_outputs_match_reference(name: str, binding: int) -> None:
    der, kernel = _compiled(name)
    dims = _bindings(der)[binding]
    values = _inputs(name, dims, seed=binding)
    result = kernel(**values)
    ref = _reference(name, values, dims)
    for out in kernel.output_names:
        assert _output(result, out).dtype == np.float64
        # Sums here have at most 33**2 terms: float64 rounding stays far below 1e-10.
        _assert_close(_output(result, out), ref[out], 1e-10, 1e-12, f"{name} {out} {dims}")
    # The convenience views agree with the raw outputs.
    assert result.value == pytest.approx(float(ref["value"]), rel=1e-10, abs=1e-12)
    for p in _params(der):
        np.testing.assert_array_equal(np.asarray(result.grad[p]), _output(result, f"grad:{p}"))
    for (p, q), block in result.hessian.items():
        np.testing.assert_array_equal(np.asarray(block), _output(result, f"hessian:{p},{q}"))
    for p, vector in result.hvp.items():
        np.testing.assert_array_equal(np.asarray(vector), _output(result, f"hvp:{p}"))


@pytest.mark.parametrize("binding", range(5), ids=BINDING_IDS)
@pytest.mark.parametrize("name", list(CASES))
def test_float32_outputs_match_float64_reference(name: str, binding: int) -> None:
    der, kernel = _compiled(name)
    dims = _bindings(der)[binding]
    values32 = _as32(_inputs(name, dims, seed=binding))
    result = kernel(**values32)
    # The reference sees the same (float32-rounded) inputs, in float64 arithmetic.
    ref = _reference(name, values32, dims)
    for out in kernel.output_names:
        assert _output(result, out).dtype == np.float32, f"{out} is not float32"
        _assert_close(_output(result, out), ref[out], 1e-4, 1e-5, f"{name} {out} {dims}")


# --------------------------------------------------------------------------------------------
# 2. Finite differences of the kernel itself


def _fd_dims(der: symdl.Derivation) -> list[dict]:
    dims = sorted(der.dims, key=str)
    mixed = (3, 7, 1, 3)
    return [{dim: 3 for dim in dims}, {dim: mixed[i % 4] for i, dim in enumerate(dims)}]


def _perturbed(values: dict, pname: str, idx: tuple, step: float) -> dict:
    new = dict(values)
    if isinstance(values[pname], float):
        new[pname] = values[pname] + step
    else:
        array = values[pname].copy()
        array[idx] += step
        new[pname] = array
    return new


@pytest.mark.parametrize("binding", [0, 1], ids=["all3", "mixed"])
@pytest.mark.parametrize("name", list(CASES))
def test_finite_differences(name: str, binding: int) -> None:
    """Central differences of the kernel's value give its gradient; of its gradient, its
    Hessian blocks (column by column) and, along v, its HVP."""
    der, kernel = _compiled(name)
    dims = _fd_dims(der)[binding]
    values = _inputs(name, dims, seed=10 + binding)
    base = kernel(**values)
    params = _params(der)
    grads = {p: np.asarray(base.grad[p], dtype=float) for p in params}
    for q in params:
        x = np.asarray(values[q], dtype=float)
        fd_grad = np.zeros(x.shape)
        fd_hess = {p: np.zeros((grads[p].size, x.size)) for p in params}
        for j, idx in enumerate(np.ndindex(x.shape)):
            step = 1e-6 * max(1.0, abs(float(x[idx])))
            up = kernel(**_perturbed(values, q, idx, step))
            down = kernel(**_perturbed(values, q, idx, -step))
            fd_grad[idx] = (up.value - down.value) / (2 * step)
            for p in params:
                diff = np.asarray(up.grad[p], dtype=float) - np.asarray(down.grad[p], dtype=float)
                fd_hess[p][:, j] = diff.reshape(-1) / (2 * step)
        _assert_close(grads[q], fd_grad, 1e-5, 1e-6, f"{name}: grad {q} vs FD of value")
        for p in params:
            if (p, q) in base.hessian:
                block = np.asarray(base.hessian[(p, q)], dtype=float)
                assert block.size == grads[p].size * x.size
                _assert_close(block.reshape(grads[p].size, x.size), fd_hess[p], 1e-5, 1e-6,
                              f"{name}: hessian {p},{q} vs FD of grad {p}")
    if not CASES[name].hvp:
        return
    # HVP against FD of the gradient along v, and against the Hessian blocks times v.
    t = 1e-6
    up, down = dict(values), dict(values)
    for q in params:
        up[q] = values[q] + t * values[f"v_{q}"]
        down[q] = values[q] - t * values[f"v_{q}"]
    up, down = kernel(**up), kernel(**down)
    for p in params:
        fd = (np.asarray(up.grad[p], dtype=float) - np.asarray(down.grad[p], dtype=float)) / (2 * t)
        _assert_close(base.hvp[p], fd, 1e-5, 1e-6, f"{name}: hvp {p} vs FD of grad along v")
        if all((p, q) in base.hessian for q in params):
            hv = sum(np.asarray(base.hessian[(p, q)], dtype=float).reshape(grads[p].size, -1)
                     @ np.asarray(values[f"v_{q}"], dtype=float).reshape(-1) for q in params)
            _assert_close(np.asarray(base.hvp[p], dtype=float).reshape(-1), hv, 1e-10, 1e-12,
                          f"{name}: hvp {p} vs sum_q H[{p},q] v_q")


# --------------------------------------------------------------------------------------------
# 3. Parallel and serial loops agree

PARALLEL_SIZES = {
    "logistic_regression": {"n": 40000, "d": 7},
    "two_layer_mlp": {"n": 4001, "d": 7, "h": 33, "k": 3},
    "softmax_lse_axis0_grad": {"n": 4001, "d": 7, "k": 3},  # prange over columns
    "softmax_lse_axis1_grad": {"n": 4001, "d": 7, "k": 3},
    "mse_matrix": {"n": 4001, "d": 7, "k": 3},
}


@pytest.mark.parametrize("name", list(PARALLEL_SIZES))
def test_parallel_and_serial_loops_agree(name: str) -> None:
    der, kernel = _compiled(name)
    dims = {dim: PARALLEL_SIZES[name][str(dim)] for dim in der.dims}
    values = _inputs(name, dims, seed=3)
    serial = kernel(parallel=False, **values)
    parallel = kernel(parallel=True, **values)
    default = kernel(**values)
    ref = _reference(name, values, dims)
    for out in kernel.output_names:
        # Sums over up to 40000 rows, in another order: 1e-9 relative, not 1e-10.
        _assert_close(_output(parallel, out), _output(serial, out), 1e-9, 1e-12,
                      f"{name} {out}: parallel vs serial")
        _assert_close(_output(default, out), _output(serial, out), 1e-9, 1e-12,
                      f"{name} {out}: default vs serial")
        _assert_close(_output(serial, out), ref[out], 1e-9, 1e-12, f"{name} {out} vs reference")


def test_parallel_loops_only_when_a_loop_is_large(monkeypatch) -> None:
    # A dense layer with 512 x 512 weights at batch 2: its loops (bias, ReLU, the loss and
    # their gradients) run over 2 x 512 entries; the weights reach only the BLAS products.
    # The call chose parallel loops when its largest array passed the threshold, so every
    # batch-sized loop started a parallel region (at batch 1, 2 threads took 4x the time of
    # 1). The choice now goes by the loops' own sizes (the threshold lowered here so that the
    # arrays stay small).
    import symdl.kernels.kernel as kernel_module

    X, W = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("W", d, h)
    b, Y = sp.MatrixSymbol("b", 1, h), sp.MatrixSymbol("Y", n, h)
    der = symdl.derive(symdl.mse(symdl.relu(X * W + symdl.bias(b, n)), Y), wrt=[W, b])
    kernel = der.compile(jit=False)
    chosen = []
    run = kernel_module._run

    def recording(function, *args, parallel, **options):
        chosen.append(parallel)
        return run(function, *args, parallel=parallel, **options)

    monkeypatch.setattr(kernel_module, "_run", recording)
    monkeypatch.setattr(kernel_module.numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(kernel_module, "PARALLEL_MIN_ENTRIES", 1 << 15)  # small arrays
    rng = np.random.default_rng(0)
    for rows in (2, 128):  # loops of 1,024 and of 65,536 entries
        kernel(X=rng.normal(size=(rows, 512)), W=rng.normal(size=(512, 512)),
               b=rng.normal(size=(1, 512)), Y=rng.normal(size=(rows, 512)))
    assert chosen == [False, True]


# --------------------------------------------------------------------------------------------
# 4. Preallocated out= buffers


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_out_buffers_are_filled_and_reused(name: str, dtype) -> None:
    der, kernel = _compiled(name)
    dims = _bindings(der)[2]
    values = _inputs(name, dims, seed=5)
    if dtype == np.float32:
        values = _as32(values)
    first = kernel(**values)
    buffers = {out: np.full(_output(first, out).shape or (1,), np.nan, dtype=dtype)
               for out in kernel.output_names}
    for attempt in range(2):
        result = kernel(out=buffers, **values)
        for out, buf in buffers.items():
            assert np.shares_memory(result.outputs[out], buf), f"{out} is not the out buffer"
            np.testing.assert_array_equal(np.asarray(result.outputs[out]).reshape(buf.shape),
                                          buf)
            # Same inputs, same buffers: the same values (nothing accumulates into them).
            np.testing.assert_array_equal(buf.reshape(_output(first, out).shape),
                                          _output(first, out), err_msg=f"call {attempt}: {out}")
        for buf in buffers.values():
            buf.fill(1e30)  # garbage from a previous step must not leak into the next


def test_out_buffers_for_some_outputs_only() -> None:
    der, kernel = _compiled("logistic_regression")
    values = _inputs("logistic_regression", {n: 7, d: 3})
    grad = np.empty((3, 1))
    result = kernel(out={"grad:w": grad}, **values)
    assert np.shares_memory(result.grad["w"], grad)
    ref = der.evaluate(values)
    _assert_close(grad, ref["grad:w"], 1e-10, 1e-12, "grad:w")
    _assert_close(result.hessian[("w", "w")], ref["hessian:w,w"], 1e-10, 1e-12, "hessian")


# --------------------------------------------------------------------------------------------
# 5. Standalone export

EXPORTED = ["logistic_regression", "softmax_regression", "two_layer_mlp", "mse_matrix"]

_EXPORT_CHILD = textwrap.dedent("""
    import importlib.util, pickle, sys
    import numpy as np
    jobs = pickle.load(open(sys.argv[1], "rb"))
    results = []
    for job in jobs:
        spec = importlib.util.spec_from_file_location(job["module"], job["path"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        outs = [np.empty(shape, dtype=job["dtype"]) for shape in job["out_shapes"]]
        module.kernel(*job["args"], *outs, parallel=job["parallel"])
        results.append(outs)
    assert "symdl" not in sys.modules, "the exported module imported symdl"
    assert not any(m.startswith("symdl") for m in sys.modules), sorted(sys.modules)
    pickle.dump(results, open(sys.argv[2], "wb"))
    print("OK")
""")


def test_exported_modules_run_without_symdl(tmp_path: Path) -> None:
    jobs, expected = [], []
    for number, name in enumerate(EXPORTED):
        der, kernel = _compiled(name)
        dims = _bindings(der)[2]
        values = _inputs(name, dims, seed=7)
        assert list(kernel.inputs) == sorted(kernel.inputs)
        result = kernel(**values)
        path = kernel.export(tmp_path / f"exported_{name}.py")
        assert path == tmp_path / f"exported_{name}.py" and path.is_file()
        assert "import symdl" not in path.read_text()
        jobs.append({
            "module": f"exported_{number}", "path": str(path),
            "args": [values[a] for a in kernel.inputs],  # k.inputs order: sorted names
            "out_shapes": [_output(result, o).shape or (1,) for o in kernel.output_names],
            "dtype": "float64", "parallel": False,
        })
        expected.append((name, [_output(result, o) for o in kernel.output_names],
                         kernel.output_names))
    (tmp_path / "jobs.pkl").write_bytes(pickle.dumps(jobs))
    env = {key: v for key, v in os.environ.items() if key != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_CHILD, str(tmp_path / "jobs.pkl"),
         str(tmp_path / "results.pkl")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = pickle.loads((tmp_path / "results.pkl").read_bytes())
    for (name, outputs, names), got in zip(expected, results, strict=True):
        for out, want, array in zip(names, outputs, got, strict=True):
            _assert_close(array.reshape(want.shape), want, 1e-12, 1e-14, f"exported {name} {out}")


# --------------------------------------------------------------------------------------------
# 6. A new process with a warm cache

_WARM_CHILD = textwrap.dedent("""
    import json, time
    import numpy as np
    import symdl
    start = time.perf_counter()
    from symdl import catalog as registry
    der = registry.load("two_layer_mlp").derive()
    kernel = der.compile()
    rng = np.random.default_rng(0)
    n, d, h, k = 64, 5, 8, 3
    result = kernel(X=rng.normal(size=(n, d)), Y=np.eye(k)[rng.integers(0, k, n)],
                    W1=rng.normal(size=(d, h)), b1=rng.normal(size=(1, h)),
                    W2=rng.normal(size=(h, k)), b2=rng.normal(size=(1, k)))
    elapsed = time.perf_counter() - start
    module = kernel._module
    jitted = [f for f in vars(module).values() if hasattr(f, "stats")]
    misses = sum(sum(f.stats.cache_misses.values()) for f in jitted)
    hits = sum(sum(f.stats.cache_hits.values()) for f in jitted)
    print(json.dumps({"elapsed": elapsed, "value": result.value, "misses": misses,
                      "hits": hits}))
""")


def test_warm_cache_new_process_compiles_nothing(tmp_path: Path) -> None:
    """A second process finds every jitted function of the 2-layer network's kernels in the
    disk cache: nothing is compiled again. (How long that takes, under 1 s on the reference
    machine, is measured by benchmarks/warm_start.py, not asserted here.)"""
    env = dict(os.environ, SYMDL_CACHE_DIR=str(tmp_path / "cache"))
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _WARM_CHILD], capture_output=True,
                              text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"cold {runs[0]['elapsed']:.3f} s, warm {runs[1]['elapsed']:.3f} s")
    assert runs[0]["value"] == runs[1]["value"]
    assert np.isfinite(runs[1]["value"])
    assert runs[0]["misses"] > 0  # the first process compiled (and wrote the cache) ...
    assert runs[1]["misses"] == 0 and runs[1]["hits"] > 0  # ... the second only loaded it


_LAYER_CHILD = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    import numba
    if sys.argv[1] == "numba-first":
        numba.get_num_threads()  # starts Numba's threads on its default layer
    import sympy as sp
    import symdl
    from symdl.errors import PerformanceWarning
    n = sp.Symbol("n", integer=True, positive=True)
    w, y = sp.MatrixSymbol("w", n, 1), sp.MatrixSymbol("y", n, 1)
    kernel = symdl.derive(symdl.mse(w, y), wrt=[w]).compile()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel(w=np.ones((50000, 1)), y=np.zeros((50000, 1)), parallel=True)
    print(json.dumps({"layer": numba.threading_layer(),
                      "warned": [str(c.message) for c in caught
                                 if issubclass(c.category, PerformanceWarning)]}))
""")


@pytest.mark.parametrize("order", ["symdl-first", "numba-first"])
def test_parallel_loops_avoid_or_report_a_spinning_threading_layer(order: str) -> None:
    """Imported first, symdl picks Numba's workqueue layer; when Numba's threads already
    run on OpenMP (whose idle workers spin), the first parallel call says so and how to fix
    it, once."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    env["NUMBA_NUM_THREADS"] = "2"
    proc = subprocess.run([sys.executable, "-c", _LAYER_CHILD, order], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    if order == "symdl-first":
        assert run["layer"] == "workqueue" and run["warned"] == []
    elif run["layer"] == "omp":
        assert len(run["warned"]) == 1
        assert "NUMBA_THREADING_LAYER=workqueue" in run["warned"][0]
    else:  # Numba's default is not OpenMP here (no libgomp): nothing spins, nothing to say
        assert run["warned"] == []


# --------------------------------------------------------------------------------------------
# 7. Argument validation

N, D = 7, 3


def _good() -> dict:
    return _inputs("logistic_regression", {n: N, d: D}, seed=1)


def _with(**changes):
    def build() -> dict:
        values = _good()
        for key, value in changes.items():
            if value is None:
                del values[key]
            else:
                values[key] = value(values) if callable(value) else value
        return values
    return build


BAD_INPUTS = {
    "missing": (_with(y=None), {}, "y"),
    "unexpected": (_with(z=np.ones((N, 1))), {}, "z"),
    "int64": (_with(X=lambda v: v["X"].astype(np.int64)), {}, "X"),
    "bool": (_with(y=lambda v: v["y"].astype(bool)), {}, "y"),
    "complex": (_with(w=lambda v: v["w"].astype(np.complex128)), {}, "w"),
    "object": (_with(X=lambda v: v["X"].astype(object)), {}, "X"),
    "mixed_precision": (_with(y=lambda v: v["y"].astype(np.float32)), {}, "y"),
    "vector_for_column": (_with(w=lambda v: v["w"].reshape(-1)), {}, "w"),
    "wrong_inner_dim": (_with(w=np.ones((D + 1, 1))), {}, "w"),
    "inconsistent_n": (_with(y=np.ones((N + 1, 1))), {}, "y"),
    "zero_rows": (_with(X=np.ones((0, D)), y=np.ones((0, 1))), {}, "X"),
    "out_shape": (_good, {"grad:w": np.empty((D,))}, "grad:w"),
    "out_dtype": (_good, {"grad:w": np.empty((D, 1), dtype=np.float32)}, "grad:w"),
    "out_fortran": (_good, {"hessian:w,w": np.empty((D, D), order="F")}, "hessian:w,w"),
    "out_unknown": (_good, {"grad:v": np.empty((D, 1))}, "grad:v"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_arguments_raise_kernel_argument_error(case: str) -> None:
    _, kernel = _compiled("logistic_regression")
    build, out, argument = BAD_INPUTS[case]
    with pytest.raises(KernelArgumentError) as info:
        kernel(out=out or None, **build())
    assert info.value.argument == argument
    assert argument in str(info.value)


def test_bad_scalar_parameter_is_named() -> None:
    der, kernel = _compiled("softmax_regression")
    values = _inputs("softmax_regression", {n: 5, d: 3, k: 2})
    values["lambda"] = np.ones((2,))
    with pytest.raises(KernelArgumentError) as info:
        kernel(**values)
    assert info.value.argument == "lambda" and "lambda" in str(info.value)


def _strided(v: dict) -> dict:
    wide = np.repeat(v["X"], 2, axis=1)  # X[:, ::2] of a wider array
    wide[:, 1::2] = 99.0
    return {"X": wide[:, ::2]}


NONCONTIGUOUS = {
    "column_stride": _strided,
    "fortran_order": lambda v: {"X": np.asfortranarray(v["X"])},
    "transpose_of_c": lambda v: {"X": np.ascontiguousarray(v["X"].T).T},
    "transpose_of_fortran": lambda v: {"X": np.asfortranarray(v["X"].T).T},
    "row_stride": lambda v: {"y": np.repeat(v["y"], 2, axis=0)[::2]},
    "reversed_rows": lambda v: {"X": v["X"][::-1].copy()[::-1], "y": v["y"][::-1].copy()[::-1]},
    "column_of_matrix": lambda v: {"w": np.hstack([v["w"], v["w"] + 1])[:, :1]},
}


@pytest.mark.parametrize("case", list(NONCONTIGUOUS))
def test_noncontiguous_inputs_give_correct_results(case: str) -> None:
    der, kernel = _compiled("logistic_regression")
    values = _good()
    changes = NONCONTIGUOUS[case](values)
    for key, array in changes.items():
        np.testing.assert_array_equal(array, values[key])
    if case != "transpose_of_fortran":  # that one is C-contiguous already
        assert any(not a.flags.c_contiguous for a in changes.values())
    before = {key: a.copy() for key, a in changes.items()}
    result = kernel(**{**values, **changes})
    expected = kernel(**values)
    ref = _reference("logistic_regression", values, {n: N, d: D})
    for out in kernel.output_names:
        _assert_close(_output(result, out), _output(expected, out), 1e-13, 1e-15, out)
        _assert_close(_output(result, out), ref[out], 1e-10, 1e-12, out)
    for key, a in changes.items():
        np.testing.assert_array_equal(a, before[key])  # inputs are not written to


# --------------------------------------------------------------------------------------------
# The printed HVP (a reference a user would reach for)


def test_printed_hvp_is_the_same_on_every_call() -> None:
    """``der.hvp`` printed twice for the same derivation gives the same, correct expression
    (it checks the kernel's HVP the way a user would: ``symdl.evaluate(der.hvp(...))``)."""
    der = _softmax_lse(0, hessian=False)
    V = sp.MatrixSymbol("V", d, k)
    dims = {n: 7, d: 3, k: 2}
    rng = np.random.default_rng(0)
    values = {"X": rng.normal(size=(7, 3)), "W": rng.normal(size=(3, 2)),
              "Y": rng.normal(size=(7, 2)), "u": rng.normal(size=(1, 2)),
              "V": rng.normal(size=(3, 2))}
    def grad(at: np.ndarray) -> np.ndarray:
        return der.evaluate({**values, "W": at}, dims)["grad:W"]

    step = 1e-6
    fd = (grad(values["W"] + step * values["V"]) - grad(values["W"] - step * values["V"])) / (
        2 * step)
    for call in range(30):
        printed = symdl.evaluate(der.hvp(W, V), values, dims)
        _assert_close(printed, fd, 1e-6, 1e-8, f"der.hvp, call {call + 1}, vs FD of the gradient")


# --------------------------------------------------------------------------------------------
# relu's second derivative


def _relu_layer() -> symdl.Derivation:
    return symdl.derive(
        symdl.total(sp.hadamard_product(symdl.relu(X * W + symdl.bias(b, n)), Y)) / n,
        wrt=[W, b], hessian=True)


def test_relu_second_derivatives_compile() -> None:
    """relu'' is 0 wherever it exists (relu' = Heaviside(x, 0)): a relu layer weighted by
    constants has a piecewise-constant gradient, so its Hessian and HVP are zero."""
    der = _relu_layer()
    kernel = der.compile(hvp=True)
    rng = np.random.default_rng(0)
    values = {"X": rng.normal(size=(5, 3)), "W": rng.normal(size=(3, 2)),
              "b": rng.normal(size=(1, 2)), "Y": rng.normal(size=(5, 2)),
              "v_W": rng.normal(size=(3, 2)), "v_b": rng.normal(size=(1, 2))}
    result = kernel(**values)
    for block in result.hessian.values():
        np.testing.assert_array_equal(block, 0.0)
    for vector in result.hvp.values():
        np.testing.assert_array_equal(vector, 0.0)


def test_relu_second_derivatives_evaluate() -> None:
    der = _relu_layer()
    rng = np.random.default_rng(0)
    values = {"X": rng.normal(size=(5, 3)), "W": rng.normal(size=(3, 2)),
              "b": rng.normal(size=(1, 2)), "Y": rng.normal(size=(5, 2))}
    ref = der.evaluate(values)
    for key, block in ref.items():
        if key.startswith("hessian:"):
            np.testing.assert_array_equal(block, 0.0)


def test_symmetric_hessian_both_branches() -> None:
    """X^T diag(c) X is computed as one triangle (syrk of sqrt(c) ⊙ X) when every c >= 0,
    and as a general product otherwise; both against NumPy's closed form."""
    der = symdl.derive(-symdl.total((X * w).applyfunc(sp.sin)) / n, wrt=[w], hessian=True)
    kernel = der.compile(outputs=["hessian:w,w"])
    assert "np.all(w >= 0)" in kernel.source
    rng = np.random.default_rng(3)
    X_ = np.abs(rng.normal(size=(9, 4)))
    for w_ in (np.abs(rng.normal(size=(4, 1))) * 0.05,  # 0 < Xw < pi: every c > 0
               rng.normal(size=(4, 1)) * 3.0):  # c of both signs
        c = np.sin(X_ @ w_).ravel() / 9
        assert (c > 0).all() if w_.min() >= 0 else (c < 0).any() and (c > 0).any()
        expected = X_.T @ (c[:, None] * X_)
        got = kernel(X=X_, w=w_).hessian["w", "w"]
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_singular_solve_raises_a_typed_error() -> None:
    A, b_ = sp.MatrixSymbol("A", 3, 3), sp.MatrixSymbol("b", 3, 1)
    kernel = symdl.compile_expressions({"x": A.inv() * b_})
    np.testing.assert_allclose(kernel(A=2 * np.eye(3), b=np.ones((3, 1))).outputs["x"], 0.5)
    with pytest.raises(symdl.EvaluationError, match="singular"):
        kernel(A=np.zeros((3, 3)), b=np.ones((3, 1)))


@pytest.mark.parametrize("axis", [0, 1])
def test_row_maxima_found_in_every_lane_and_the_tail(axis: int) -> None:
    """The softmax row statistics keep eight running maxima over chunks of eight, then a
    tail: the largest logit is placed at every position of a 21-long lane (lanes 0..7 of two
    chunks and the 5-entry tail), 1000 above the rest, so a missed maximum overflows exp."""
    L = 21
    Zs = sp.MatrixSymbol("Z", n, k) if axis == 1 else sp.MatrixSymbol("Z", k, n)
    loss = symdl.total(symdl.logsumexp(Zs, axis=axis))
    kernel = symdl.derive(loss, wrt=[Zs]).compile()
    assert "_stats" in kernel.source
    logits = np.random.default_rng(5).normal(size=(L, L))
    logits[np.arange(L), np.arange(L)] += 1000.0
    Zv = logits if axis == 1 else logits.T.copy()
    got = kernel(Z=Zv)
    want = np.sum(np.max(logits, axis=1) + np.log(np.sum(
        np.exp(logits - np.max(logits, axis=1, keepdims=True)), axis=1)))
    np.testing.assert_allclose(got.value, want, rtol=1e-13)
    assert np.all(np.isfinite(got.grad[str(Zs.name)]))


@pytest.mark.parametrize("rows, cols", [(400, 200), (1000, 40_000), (7, 3)])
def test_row_stream_blocks_cover_every_row(rows: int, cols: int) -> None:
    """The one-pass loop over X works in blocks of rows sized to the cache (163 rows of 200
    columns: blocks of 163, 163 and 74; one row per block at 40,000 columns; one short
    block): every row is counted once, in the value and in the gradient."""
    X = sp.MatrixSymbol("X", n, d)
    kernel = symdl.derive(symdl.binary_cross_entropy_with_logits(X * w, y), wrt=[w]).compile()
    assert "_stream" in kernel.source
    rng = np.random.default_rng(rows)
    Xv, wv = rng.normal(size=(rows, cols)), rng.normal(size=(cols, 1)) / np.sqrt(cols)
    yv = (rng.random((rows, 1)) < 0.5).astype(float)
    z = Xv @ wv
    value = np.mean(np.logaddexp(0, z) - yv * z)
    grad = Xv.T @ (1 / (1 + np.exp(-z)) - yv) / rows
    got = kernel(X=Xv, w=wv, y=yv, parallel=False)
    np.testing.assert_allclose(got.value, value, rtol=1e-12)
    np.testing.assert_allclose(got.grad["w"], grad, rtol=1e-10, atol=1e-14)


def test_row_stream_reads_a_transposed_matrix() -> None:
    """X stored d x n and used as X^T w: the one-pass loop runs over X's columns (a property
    test found it running over the rows and reading past the end)."""
    X_t = sp.MatrixSymbol("X", d, n)
    der = symdl.derive(symdl.binary_cross_entropy_with_logits(X_t.T * w, y), wrt=[w])
    kernel = der.compile()
    assert "_stream" in kernel.source
    rng = np.random.default_rng(0)
    Xv, wv = rng.normal(size=(3, 5)), rng.normal(size=(3, 1))
    yv = (rng.random((5, 1)) < 0.5).astype(float)
    s = 1 / (1 + np.exp(-(Xv.T @ wv)))
    for parallel in (False, True):
        got = kernel(X=Xv, w=wv, y=yv, parallel=parallel).grad["w"]
        np.testing.assert_allclose(got, Xv @ (s - yv) / 5, rtol=1e-12, atol=1e-15)


def test_a_product_needed_with_two_coefficients_is_computed_once() -> None:
    # 2 (A B) and 3 (A B) were two BLAS products; a logistic-regression Adam step computed
    # X^T (sigmoid(X w) - y) / n twice that way (as its gradient and, times 1 - beta1, for
    # the first moment): 2.3 ms a step, 1.2 ms with one product.
    A, B = sp.MatrixSymbol("A", n, d), sp.MatrixSymbol("B", d, k)
    kernel = symdl.compile_expressions({"P": 2 * A * B, "Q": 3 * A * B},
                                       "scaled products", jit=False)
    body = kernel.source.split("def _steps_serial_code", 1)[1].split("_steps_serial_jit")[0]
    assert body.count("np.dot(") == 1, body
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(3, 5))
    result = kernel(A=a, B=b)
    for name, scale in (("P", 2), ("Q", 3)):
        np.testing.assert_allclose(result.outputs[name], scale * a @ b, rtol=1e-14, atol=1e-14)
