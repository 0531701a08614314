"""Every optimizer for every parameter shape, in float64 and float32 (issue 15, item 13).

A ``1 x 1`` parameter (the bias of a one-output layer) with Adam or RMSprop used to raise
``UnsupportedError: matrix power ... exponent 1/2``: SymPy turns ``applyfunc(sqrt)`` of a
``1 x 1`` matrix into a matrix power. Oracles: each optimizer written by hand in NumPy from
``torch.optim``'s documented algorithms, and ``torch.optim`` itself, over several steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl.define import optimizers
from symdl.define.translate import Translator, dimension_symbols, translate_matrix_or_scalar
from symdl.derivation import compile_expressions
from symdl.kernels.kernel import Kernel
from symdl.training import TrainingStep

STEPS = 6
HYPER = {
    "SGD": dict(lr=0.1, weight_decay=0.01),
    "Momentum": dict(lr=0.1, momentum=0.8, weight_decay=0.01),
    "Nesterov": dict(lr=0.1, momentum=0.8, weight_decay=0.01),
    "RMSprop": dict(lr=0.05, alpha=0.9, eps=1e-8, weight_decay=0.01),
    "Adagrad": dict(lr=0.3, eps=1e-10, weight_decay=0.01),
    "Adam": dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-8, weight_decay=0.01),
    "AdamW": dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-8, weight_decay=0.1),
}


def _torch_optimizer(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    h = HYPER[name]
    if name == "SGD":
        return torch.optim.SGD(params, lr=h["lr"], weight_decay=h["weight_decay"])
    if name in ("Momentum", "Nesterov"):
        return torch.optim.SGD(params, lr=h["lr"], momentum=h["momentum"],
                               weight_decay=h["weight_decay"], nesterov=name == "Nesterov")
    if name == "RMSprop":
        return torch.optim.RMSprop(params, lr=h["lr"], alpha=h["alpha"], eps=h["eps"],
                                   weight_decay=h["weight_decay"])
    if name == "Adagrad":
        return torch.optim.Adagrad(params, lr=h["lr"], eps=h["eps"],
                                   weight_decay=h["weight_decay"])
    cls = torch.optim.Adam if name == "Adam" else torch.optim.AdamW
    return cls(params, lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
               weight_decay=h["weight_decay"])


def _numpy_step(name: str, p: np.ndarray, g: np.ndarray, state: dict, t: int) -> np.ndarray:
    """One step of ``torch.optim``'s algorithm (its documentation's pseudocode), by hand."""
    h = HYPER[name]
    lr, wd = h["lr"], h["weight_decay"]
    if name == "AdamW":
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    if name == "SGD":
        return p - lr * g
    if name in ("Momentum", "Nesterov"):
        state["b"] = h["momentum"] * state.get("b", 0.0) + g
        step = g + h["momentum"] * state["b"] if name == "Nesterov" else state["b"]
        return p - lr * step
    if name == "RMSprop":
        state["v"] = h["alpha"] * state.get("v", 0.0) + (1 - h["alpha"]) * g * g
        return p - lr * g / (np.sqrt(state["v"]) + h["eps"])
    if name == "Adagrad":
        state["s"] = state.get("s", 0.0) + g * g
        return p - lr * g / (np.sqrt(state["s"]) + h["eps"])
    b1, b2 = h["beta1"], h["beta2"]
    state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * g
    state["v"] = b2 * state.get("v", 0.0) + (1 - b2) * g * g
    denominator = np.sqrt(state["v"]) / np.sqrt(1 - b2**t) + h["eps"]
    return p - lr / (1 - b1**t) * state["m"] / denominator


k, m = sp.symbols("k m", integer=True, positive=True)
SHAPES = {
    "1x1": (sp.MatrixSymbol("p", 1, 1), (1, 1)),
    "row-1xk": (sp.MatrixSymbol("p", 1, k), (1, 4)),
    "column-kx1": (sp.MatrixSymbol("p", k, 1), (4, 1)),
    "matrix-kxm": (sp.MatrixSymbol("p", k, m), (3, 2)),
    "literal-2x3": (sp.MatrixSymbol("p", 2, 3), (2, 3)),
    "scalar": (sp.Symbol("p", real=True), ()),
}


def _update_kernel(optimizer, param) -> Kernel:
    """The stand-alone update kernel, run as plain Python (the same generated source a jitted
    kernel runs; 42 Numba compilations would dominate the suite's time)."""
    outputs = optimizers.update_kernel_outputs(optimizer, param)
    exprs = [sp.sympify(e) for e in outputs.values()]
    translator = Translator(dimension_symbols(exprs))
    nodes = {n: translate_matrix_or_scalar(translator, e)
             for n, e in zip(outputs, exprs, strict=True)}
    return Kernel(nodes, list(translator.leaves.values()), "update", jit=False)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(HYPER))
def test_update_kernel_follows_numpy_and_torch(name, shape):
    param, size = SHAPES[shape]
    optimizer = optimizers.OPTIMIZERS[name](**HYPER[name])
    kernel = _update_kernel(optimizer, param)
    rng = np.random.default_rng(7)
    p0 = rng.normal(size=size)
    grads = [rng.normal(size=size) for _ in range(STEPS)]

    current = {"p": p0.copy(), **{f"{s}_p": np.zeros(size) for s in optimizer.state_names}}
    reference, ref_state = p0.copy(), {}
    tensor = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    torch_opt = _torch_optimizer(name, [tensor])
    for t, g in enumerate(grads, start=1):
        args = {n: (float(a) if a.ndim == 0 else a) for n, a in current.items()}
        args["grad_p"] = float(g) if g.ndim == 0 else g
        if "t" in kernel.inputs:
            args["t"] = float(t)
        result = kernel(**args).outputs
        current = {n: np.asarray(result[n], dtype=np.float64).reshape(size) for n in current}
        reference = _numpy_step(name, reference, g, ref_state, t)
        tensor.grad = torch.tensor(g, dtype=torch.float64)
        torch_opt.step()
        np.testing.assert_allclose(current["p"], reference, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(current["p"], tensor.detach().numpy(), rtol=1e-12,
                                   atol=1e-14)
    for s in optimizer.state_names:
        np.testing.assert_allclose(current[f"{s}_p"], ref_state[s], rtol=1e-12, atol=1e-14)


def test_update_kernel_for_a_bias_of_one_output_compiles():
    """The jitted path of the issue's example: Adam on a 1 x 1 bias."""
    b = sp.MatrixSymbol("b", 1, 1)
    kernel = compile_expressions(optimizers.update_kernel_outputs(optimizers.Adam(lr=0.1), b))
    result = kernel(b=np.array([[1.0]]), grad_b=np.array([[2.0]]), m_b=np.zeros((1, 1)),
                    v_b=np.zeros((1, 1)), t=1.0).outputs
    # First Adam step: m̂ = g, v̂ = g², so the step is lr * g / (|g| + eps).
    np.testing.assert_allclose(result["b"], [[1.0 - 0.1 * 2.0 / (2.0 + 1e-8)]], rtol=1e-15)


# -- fused training steps: every shape in one model, every optimizer ------------------------

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
Y = sp.MatrixSymbol("Y", n, 1)
W = sp.MatrixSymbol("W", d, k)   # a matrix
B = sp.MatrixSymbol("B", 1, k)   # a row (the bias of a k-output layer)
V = sp.MatrixSymbol("V", k, 1)   # a column
C = sp.MatrixSymbol("C", 1, 1)   # the bias of a one-output layer
ONES = sp.OneMatrix(n, 1)
MODEL = [(sp.MatrixSymbol("H", n, k), (X * W + ONES * B).applyfunc(sp.tanh)),
         (sp.Symbol("L"), symdl.mse(sp.MatrixSymbol("H", n, k) * V + ONES * C, Y))]
NAMES = ("W", "B", "V", "C")


@pytest.fixture(scope="module")
def model():
    return symdl.derive(MODEL, wrt=[W, B, V, C])


def _torch_loss(t: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(x @ t["W"] + t["B"])
    return ((h @ t["V"] + t["C"] - y) ** 2).mean()


def _data(dtype, seed=3):
    rng = np.random.default_rng(seed)
    params = {"W": rng.normal(size=(3, 4)) * 0.5, "B": rng.normal(size=(1, 4)) * 0.1,
              "V": rng.normal(size=(4, 1)) * 0.5, "C": rng.normal(size=(1, 1))}
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 1))
    return ({p: a.astype(dtype) for p, a in params.items()}, x.astype(dtype), y.astype(dtype))


# Numba compiles a training step in about 30 s on a busy machine: the two cases run
# jitted, every other optimizer runs the same generated source as plain Python.
JITTED = {"Adam"}


def _follow_torch(step, name: str, params: dict, x, y, rel: float, rtol: float,
                  atol: float) -> None:
    """``STEPS`` steps of ``step`` against the same steps of ``torch.optim`` (in the arrays'
    own precision): the loss before each step, then every parameter after it."""
    tensors = {p: torch.tensor(a, requires_grad=True) for p, a in params.items()}
    torch_opt = _torch_optimizer(name, list(tensors.values()))
    tx, ty = torch.tensor(x), torch.tensor(y)
    for _ in range(STEPS):
        torch_opt.zero_grad()
        loss = _torch_loss(tensors, tx, ty)
        loss.backward()
        torch_opt.step()
        assert step(X=x, Y=y) == pytest.approx(loss.item(), rel=rel)
        for p in NAMES:
            np.testing.assert_allclose(step.params[p], tensors[p].detach().numpy(),
                                       rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", list(HYPER))
def test_training_step_follows_torch_for_every_shape(model, name):
    params, x, y = _data(np.float64)
    step = TrainingStep(model, optimizers.OPTIMIZERS[name](**HYPER[name]), params,
                        jit=name in JITTED)
    _follow_torch(step, name, params, x, y, rel=1e-12, rtol=1e-11, atol=1e-13)


def test_float32_training_step_follows_torch_in_float32(model):
    """Float32 parameters make a float32 step (no ``dtype=`` needed; it failed with "X is
    float32 but other arguments are float64"): Adam on every shape follows ``torch.optim``
    run in float32."""
    params, x, y = _data(np.float32)
    step = TrainingStep(model, optimizers.Adam(**HYPER["Adam"]), params)
    _follow_torch(step, "Adam", params, x, y, rel=1e-5, rtol=1e-5, atol=1e-6)
    arrays = [*step.params.values(), *step.state.values(), *step.grad.values()]
    assert len(arrays) == 16 and all(a.dtype == np.float32 for a in arrays)


@pytest.mark.parametrize("name", list(HYPER))
def test_float32_states_stay_float32(model, name):
    """Every optimizer's states, parameters and gradients keep float32 (the generated source
    run as plain Python computes in float32 throughout, so its numbers are compared with
    torch only in the jitted test above)."""
    params, x, y = _data(np.float32)
    step = TrainingStep(model, optimizers.OPTIMIZERS[name](**HYPER[name]), params, jit=False)
    for _ in range(2):
        assert np.isfinite(step(X=x, Y=y))
    arrays = [*step.params.values(), *step.state.values(), *step.grad.values()]
    expected = 4 * (2 + len(optimizers.OPTIMIZERS[name].state_names))
    assert len(arrays) == expected and all(a.dtype == np.float32 for a in arrays)
    assert step.dtype == np.float32


def test_float32_step_converts_float64_data(model):
    """A float32 step given NumPy's default float64 data casts it to the step's precision
    (the parameters decide the precision) rather than failing on the mix."""
    params, x, y = _data(np.float32)
    step = TrainingStep(model, optimizers.SGD(lr=0.1), params, jit=False)
    expected = step.kernel.run({**params, "X": x, "Y": y}).value
    assert step(X=x.astype(np.float64), Y=y.astype(np.float64)) == pytest.approx(expected,
                                                                              rel=1e-6)
    step(X=x.astype(np.float64), Y=y.astype(np.float64))  # the fast path converts too
    assert all(a.dtype == np.float32 for a in step.params.values())


def test_explicit_dtype_wins_and_bad_dtype_is_typed(model):
    params, x, y = _data(np.float32)
    step = TrainingStep(model, optimizers.Adam(lr=0.01), params, dtype=np.float64, jit=False)
    step(X=x, Y=y)
    assert all(a.dtype == np.float64 for a in [*step.params.values(), *step.state.values()])
    with pytest.raises(symdl.errors.KernelArgumentError, match="float32 or float64"):
        TrainingStep(model, optimizers.SGD(lr=0.1), params, dtype=np.int32, jit=False)


s_ = sp.Symbol("s", real=True)


@pytest.mark.parametrize("make, value, grad", [
    (lambda b: b.applyfunc(sp.sqrt), np.sqrt(2.0), 0.5 / np.sqrt(2.0)),
    (lambda b: sp.MatPow(b, -2), 0.25, -0.25),
    (lambda b: sp.MatPow(b, sp.Rational(3, 2)), 2.0**1.5, 1.5 * np.sqrt(2.0)),
    (lambda b: sp.MatPow(b, s_), 2.0**0.7, 0.7 * 2.0**-0.3),
], ids=["applyfunc-sqrt", "power-minus-2", "power-3/2", "symbolic-power"])
def test_powers_of_a_1x1_matrix_are_entry_powers(make, value, grad):
    """SymPy writes ``applyfunc(sqrt)`` of a 1 x 1 matrix as the matrix power ``b**(1/2)``; a
    rule written elementwise for any shape (a user's own optimizer) must work for a bias of
    one output. For a 1 x 1 matrix every real power is the power of its entry."""
    b = sp.MatrixSymbol("b", 1, 1)
    kernel = symdl.derive(symdl.sum(make(b)), wrt=[b]).compile(jit=False)
    args = {"b": np.array([[2.0]])}
    if "s" in kernel.inputs:
        args["s"] = 0.7
    result = kernel(**args)
    assert result.value == pytest.approx(value, rel=1e-14)
    np.testing.assert_allclose(result.grad["b"], [[grad]], rtol=1e-14)
