"""float32 end to end (issue 16): float32 kernels compute in float32 (no float64 literal or
scalar input promotes their loops, which then vectorise at twice the lanes), their helpers
keep float32 accuracy, a float32 training step follows PyTorch's float32 Adam, and the demo
trains in float32.

Oracles: NumPy in float64 for the helpers (ulps of the float32 result), the LLVM IR of the
same loops compiled for float64 (the lane count to double), PyTorch float32 autograd and
``torch.optim.Adam`` for the training step.
"""

from __future__ import annotations

import functools
import re

import numba
import numpy as np
import pytest
import sympy as sp

import symdl
from symdl.cli import build_parser
from symdl.define.optimizers import Adam
from symdl.kernels.scalar_code import jitted_helpers
from symdl.report import demo
from symdl.training import TrainingStep

n, d = sp.symbols("n d", integer=True, positive=True)

_DOUBLE_ARITHMETIC = re.compile(r"= (?:fadd|fsub|fmul|fdiv|fpext)\b[^\n]*\bdouble\b")
_LANES = re.compile(r"<(\d+) x (float|double)>")


@pytest.fixture(scope="module")
def helpers():
    return jitted_helpers(cache=False)


def _ulps(got: np.ndarray, exact: np.ndarray) -> float:
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return float(np.max(np.abs(got.astype(np.float64) - exact) / spacing))


_HELPERS = {
    "_exp": (np.exp, (-103.0, 88.0), 2.0),
    "_tanh": (np.tanh, (-10.0, 10.0), 4.0),
    "_sigmoid": (lambda x: 1 / (1 + np.exp(-x)), (-30.0, 30.0), 4.0),
    "_softplus": (lambda x: np.logaddexp(0.0, x), (-30.0, 30.0), 4.0),
    "_log1p_unit": (np.log1p, (0.0, 1.0), 3.0),
}


@pytest.mark.parametrize("name", list(_HELPERS))
def test_float32_helpers_compute_in_float32(helpers, name: str) -> None:
    exact_fn, (low, high), max_ulps = _HELPERS[name]
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(low, high, 2000), rng.uniform(-0.3, 0.3, 200)])
    x = np.clip(x, low, high).astype(np.float32)
    f = helpers[name]
    got = np.array([f(v) for v in x], dtype=np.float64)
    # The float32 argument is computed in float32: a float64 computation (float literals
    # promote in Numba) has half the SIMD lanes and returns a float64.
    (signature,) = [s for s in f.nopython_signatures if s.args[0] == numba.float32]
    assert str(signature.return_type) == "float32", signature
    assert _ulps(got.astype(np.float32), exact_fn(x.astype(np.float64))) <= max_ulps
    assert np.isnan(f(np.float32("nan")))


@pytest.fixture(scope="module")
def pointwise():
    """Constants, a scalar input, pi, a cube and the tanh/sigmoid helpers in one loop."""
    X = sp.MatrixSymbol("X", n, d)
    c = sp.Symbol("c", real=True)
    expr = (symdl.tanh(c * X) + symdl.sigmoid(X) / 3 + sp.pi * X + 2 * sp.OneMatrix(n, d)
            + sp.HadamardPower(X, 3) / 7)
    kernel = symdl.compile_expressions({"Y": expr}, "float32 literals")
    rng = np.random.default_rng(1)
    X64 = rng.normal(size=(37, 19))
    return kernel, X64


def _loop_ir(kernel, dtype) -> str:
    module = kernel.module
    loops = [getattr(module, name) for name in dir(module)
             if re.fullmatch(r"_loop\d+", name)]
    assert loops, "the expression is computed in a fused loop"
    text = []
    for loop in loops:
        for signature in loop.signatures:
            if str(signature[0].dtype) == np.dtype(dtype).name:
                text.append(loop.inspect_llvm(signature))
    return "\n".join(text)


def test_float32_loops_compute_in_float32_at_twice_the_lanes(pointwise) -> None:
    kernel, X64 = pointwise
    out32 = kernel(X=X64.astype(np.float32), c=0.7).outputs["Y"]
    out64 = kernel(X=X64, c=0.7).outputs["Y"]
    assert out32.dtype == np.float32
    ir32, ir64 = _loop_ir(kernel, np.float32), _loop_ir(kernel, np.float64)
    promoted = _DOUBLE_ARITHMETIC.findall(ir32)
    assert not promoted, f"float64 arithmetic in a float32 loop: {promoted[:3]}"
    lanes32 = max((int(k) for k, t in _LANES.findall(ir32) if t == "float"), default=1)
    lanes64 = max((int(k) for k, t in _LANES.findall(ir64) if t == "double"), default=1)
    assert lanes64 > 1 and lanes32 == 2 * lanes64
    # x**3 as products: a call of pow keeps a loop scalar (GELU's tanh form: 17 -> 1.2 ms).
    assert not re.search(r"call [^\n]*@(llvm\.)?pow", ir32 + ir64)
    torch = pytest.importorskip("torch")
    X = torch.tensor(X64, dtype=torch.float32)
    oracle = torch.tanh(0.7 * X) + torch.sigmoid(X) / 3 + np.pi * X + 2 + X**3 / 7
    np.testing.assert_allclose(out32, oracle.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-6)


def _torch_adam_steps(params: dict, batches: list, lam: float, lr: float):
    torch = pytest.importorskip("torch")
    p = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in params.items()}
    optimizer = torch.optim.Adam(list(p.values()), lr=lr)
    losses = []
    for X, Y in batches:
        X, Y = torch.tensor(X), torch.tensor(Y)
        logits = torch.tanh(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
        loss = (-(Y * torch.log_softmax(logits, dim=1)).sum() / X.shape[0]
                + lam / 2 * ((p["W1"] ** 2).sum() + (p["W2"] ** 2).sum()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {k: v.detach().numpy() for k, v in p.items()}


@pytest.mark.parametrize("jit", [False])
def test_float32_training_step_follows_torch_adam(jit: bool) -> None:
    # jit=False runs the generated source itself (float32 NumPy scalars through the same
    # LITERAL casts and helpers): the numbers of the compiled step without its 15 s compile.
    rng = np.random.default_rng(2)
    d_, h_, k_, rows = 9, 6, 4, 16
    params = {"W1": rng.normal(size=(d_, h_)) / 3, "b1": rng.normal(size=(1, h_)) / 10,
              "W2": rng.normal(size=(h_, k_)) / 2, "b2": rng.normal(size=(1, k_)) / 10}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    batches = [(rng.normal(size=(rows, d_)).astype(np.float32),
                np.eye(k_, dtype=np.float32)[rng.integers(0, k_, rows)]) for _ in range(4)]
    step = TrainingStep(demo.network_derivation(), Adam(lr=0.01), params,
                        hyperparameters={"lambda": 1e-2}, jit=jit)
    assert step.dtype == np.float32
    losses = [step(X=X, Y=Y) for X, Y in batches]
    torch_losses, torch_params = _torch_adam_steps(params, batches, 1e-2, 0.01)
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-5)
    for name, value in torch_params.items():
        assert step.params[name].dtype == np.float32
        assert step.state[f"m_{name}"].dtype == np.float32
        np.testing.assert_allclose(step.params[name], value, rtol=1e-5, atol=1e-6)


def test_demo_trains_in_float32(monkeypatch) -> None:
    # The plain-Python step (jit=False): the demo's float32 path without a 15 s compile.
    monkeypatch.setattr(demo, "TrainingStep", functools.partial(TrainingStep, jit=False))
    rng = np.random.default_rng(3)
    X = rng.uniform(size=(24, 64))
    Y = np.eye(10)[np.arange(24) % 10]
    split = demo.Split(X[:16], Y[:16], X[16:], Y[16:])
    step, _, history, _ = demo.train(split, hidden=6, epochs=2, batch=8, progress=False,
                                     dtype="float32")
    assert step.dtype == np.float32
    assert all(p.dtype == np.float32 for p in step.params.values())
    assert all(np.isfinite(history.train_loss))
    args = build_parser().parse_args(["demo", "--dtype", "float32", "--no-pdf"])
    assert args.dtype == "float32"


def test_float32_pinv_refuses_rank_deficient_matrices_at_float32_rounding() -> None:
    # The rank test of the Gram matrix's Cholesky pivots is at the kernel's machine epsilon:
    # a float32 Gram matrix of a rank-deficient matrix has pivots at float32 rounding level
    # (~1e-4 of the largest), which float64's epsilon took for full rank.
    X = sp.MatrixSymbol("X", n, d)
    # jit=False: the test runs in the driver (NumPy), the same source compiled or not.
    kernel = symdl.compile_expressions({"P": symdl.pinv(X)}, "float32 pinv", jit=False)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 3))
    out = kernel(X=x.astype(np.float32)).outputs["P"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.linalg.pinv(x.astype(np.float32).astype(np.float64)),
                               rtol=1e-4, atol=1e-5)
    x[:, 2] = x[:, 0] - x[:, 1]  # rank 2 of 3 columns
    with pytest.raises(symdl.EvaluationError, match="singular"):
        kernel(X=x.astype(np.float32))
