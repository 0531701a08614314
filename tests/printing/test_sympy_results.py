"""Derived results are SymPy that SymPy's own tools accept (issue 15, item 16).

``sympy.lambdify(args, der.gradient(w), "numpy")`` gives working NumPy code for every result a
shipped derivation has in matrix form (gradients and Hessian blocks), agreeing with
``symdl.evaluate`` and, for a few, with PyTorch autograd; index-form Hessians lambdify through
``IndexForm.lambdify``. Printed results carry no ``Lambda``, no dummies and no Kronecker delta
where a matrix form exists.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
import symdl.primitives.functions
from symdl import catalog as registry
from symdl.errors import UnsupportedError
from symdl.printing.plain import plain
from tests.end_to_end.test_derivations import _inputs

torch.set_default_dtype(torch.float64)

# SymPy's dummies print with a leading underscore (_d, _x0); Lambda is its anonymous function.
UNREADABLE = re.compile(r"Lambda|(?<![A-Za-z0-9])_[A-Za-z]|KroneckerDelta")


def _results(der: symdl.Derivation) -> dict[str, object]:
    out = {}
    for p in der.wrt:
        out[f"grad {p}"] = der.gradient(p)
        for q in der.wrt:
            try:
                out[f"hessian {p},{q}"] = der.hessian(p, q)
            except UnsupportedError as exc:  # singular values: gradients only, stated
                assert "gradients only" in str(exc)
    return out


def _arguments(expr: sp.Basic, shape: tuple = ()) -> list[sp.Basic]:
    """Every symbol the expression reads, dimension symbols included (``n`` in ``G/n``)."""
    # An array entry X[i, j] reads the array X (an IndexedBase), not a symbol of its own.
    # A printed recurrence binds its carries and slots (read as entries of rank > 2): only
    # the entries among the free symbols are arrays to pass.
    free = set(expr.free_symbols)
    entries = {e for e in expr.atoms(sp.Indexed) if e in free}
    symbols = free - entries - {e.base.label for e in entries}
    symbols |= {e.base for e in entries}
    for dim in shape:
        symbols |= sp.sympify(dim).free_symbols
    return sorted(symbols, key=str)


def _values_for(args: list, values: dict, dims: dict) -> list:
    named = {str(getattr(a, "name", a)): a for a in args}
    return [dims[a] if a in dims else np.asarray(values[name], dtype=float)
            for name, a in named.items()]


def _lambdified_entrywise() -> list[str]:
    """The derivations whose results are lambdified here, entry by entry in Python. A model
    of rank-4 tensors declares ``ENTRYWISE_LAMBDIFY = False`` (multi-head attention took 210 s
    at size 2): its printed results are evaluated against finite differences by
    tests/end_to_end/test_derivations.py, and lambdified by ``symdl.check``'s reference."""
    return [name for name in registry.names()
            if getattr(registry.load(name).module, "ENTRYWISE_LAMBDIFY", True)]


@pytest.mark.parametrize("name", _lambdified_entrywise())
def test_every_shipped_result_lambdifies_and_agrees_with_symdl_evaluate(name: str) -> None:
    entry = registry.load(name)
    der = entry.derive()
    if not der.is_scalar:
        pytest.skip("no gradients: the definition is not a scalar")
    # Small distinct sizes: an index-form Hessian is lambdified entry by entry (a Python call
    # each), which at 3 and 5 took two minutes for the attention layer alone.
    values, dims = _inputs(der, np.random.default_rng(11), {"default": 2, "n": 3},
                           entry.module)
    for what, result in _results(der).items():
        want = symdl.evaluate(result, values, dims)
        if isinstance(result, symdl.IndexForm):
            # Index notation keeps its Kronecker deltas (δ_ik δ_jl is the 4-index identity).
            assert not re.search(r"Lambda|(?<![A-Za-z0-9])_[A-Za-z]", str(result)), str(result)
            args = _arguments(result.expr, result.shape)
            args = [a for a in args if a not in result.indices]
            got = result.lambdify(args)(*_values_for(args, values, dims))
        else:
            text = str(result)
            assert not UNREADABLE.search(text), f"{name} {what}: {text}"
            args = _arguments(result)
            got = sp.lambdify(args, result, "numpy")(*_values_for(args, values, dims))
        np.testing.assert_allclose(np.reshape(got, np.shape(want)), want, rtol=1e-10,
                                   atol=1e-12, err_msg=f"{name} {what}")


def _logistic() -> tuple[symdl.Derivation, dict]:
    module = registry.load("logistic_regression").module
    return module.derivation(), {"X": module.X, "w": module.w, "y": module.y, "n": module.n}


def test_lambdified_logistic_gradient_and_hessian_match_pytorch() -> None:
    der, s = _logistic()
    grad = der.gradient(s["w"])
    assert str(grad) == "1/n*X.T*(sigmoid(X*w) - y)"
    rng = np.random.default_rng(0)
    n, d = 7, 3
    X, y = rng.normal(size=(n, d)), rng.integers(0, 2, (n, 1)).astype(float)
    w = rng.normal(size=(d, 1)) * 30  # saturated logits: the stable sigmoid matters
    args = [s["X"], s["w"], s["y"], s["n"]]
    g = sp.lambdify(args, grad, "numpy")(X, w, y, n)
    h = sp.lambdify(args, der.hessian(s["w"]), "numpy")(X, w, y, n)

    tX, ty = torch.tensor(X), torch.tensor(y)

    def loss(tw: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(tX @ tw, ty)

    tw = torch.tensor(w, requires_grad=True)
    (tg,) = torch.autograd.grad(loss(tw), tw)
    th = torch.autograd.functional.hessian(loss, torch.tensor(w)).reshape(d, d)
    np.testing.assert_allclose(g, tg.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(h, th.numpy(), rtol=1e-10, atol=1e-15)


def _mlp_torch(values: dict) -> dict[str, np.ndarray]:
    t = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    a1 = torch.tanh(t["X"] @ t["W1"] + t["b1"])
    z2 = a1 @ t["W2"] + t["b2"]
    loss = -(t["Y"] * torch.log_softmax(z2, dim=1)).sum() / z2.shape[0]
    params = ["W1", "b1", "W2", "b2"]
    grads = torch.autograd.grad(loss, [t[p] for p in params])
    return {p: g.numpy() for p, g in zip(params, grads, strict=True)}


def test_lambdified_mlp_gradients_match_pytorch() -> None:
    module = registry.load("two_layer_mlp").module
    der = module.derivation()
    rng = np.random.default_rng(1)
    sizes = {module.n: 6, module.d: 4, module.h: 5, module.k: 3}
    values = {
        "X": rng.normal(size=(6, 4)), "Y": np.eye(3)[rng.integers(0, 3, 6)],
        "W1": rng.normal(size=(4, 5)), "b1": rng.normal(size=(1, 5)),
        "W2": rng.normal(size=(5, 3)), "b2": rng.normal(size=(1, 3)),
    }
    want = _mlp_torch(values)
    for p in module.PARAMETERS:
        grad = der.gradient(p)
        assert not UNREADABLE.search(str(grad)), str(grad)
        args = _arguments(grad)
        got = sp.lambdify(args, grad, "numpy")(*_values_for(args, values, sizes))
        np.testing.assert_allclose(got, want[p.name], rtol=1e-10, atol=1e-14)


def test_index_form_hessian_lambdifies_and_matches_pytorch() -> None:
    module = registry.load("two_layer_mlp").module
    der = module.derivation()
    hessian = der.hessian(module.W2, module.W2)
    assert isinstance(hessian, symdl.IndexForm)
    rng = np.random.default_rng(2)
    values = {
        "X": rng.normal(size=(4, 2)), "Y": np.eye(3)[rng.integers(0, 3, 4)],
        "W1": rng.normal(size=(2, 2)), "b1": rng.normal(size=(1, 2)),
        "W2": rng.normal(size=(2, 3)), "b2": rng.normal(size=(1, 3)),
    }
    args = [module.X, module.Y, module.W1, module.b1, module.W2, module.b2, module.n]
    got = hessian.lambdify(args)(*[values[str(a)] if str(a) in values else 4 for a in args])

    t = {k: torch.tensor(v) for k, v in values.items()}

    def loss(w2: torch.Tensor) -> torch.Tensor:
        z2 = torch.tanh(t["X"] @ t["W1"] + t["b1"]) @ w2 + t["b2"]
        return -(t["Y"] * torch.log_softmax(z2, dim=1)).sum() / 4

    want = torch.autograd.functional.hessian(loss, t["W2"]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_index_form_lambdify_says_which_size_is_missing() -> None:
    module = registry.load("reg_l2").module
    der = module.derivation()
    (W,) = [p for p in der.wrt if isinstance(p, sp.MatrixSymbol)]
    hessian = der.hessian(W, W)
    lam = [s for s in hessian.expr.free_symbols if str(s) == "lambda"]
    with pytest.raises(symdl.EvaluationError, match="not known from the arguments"):
        hessian.lambdify(lam)(0.5)


@pytest.mark.parametrize("function, exact", [
    (symdl.primitives.functions.sigmoid, lambda z: 1 / (1 + np.exp(-z))),
    (symdl.primitives.functions.softplus,
     lambda z: np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))),
    (symdl.primitives.functions.relu, lambda z: np.maximum(z, 0)),
])
def test_lambdified_functions_are_stable_and_propagate_nan(function, exact) -> None:
    # Elementwise over a matrix (what results are made of) and on a scalar symbol.
    from symdl.primitives.sympy_results import ElementwiseFunction

    n = sp.Symbol("n", integer=True, positive=True)
    Z, x = sp.MatrixSymbol("Z", n, 1), sp.Symbol("x", real=True)
    z = np.array([[-1000.0], [-30.0], [0.0], [2.5], [1000.0], [np.nan]])
    with np.errstate(over="ignore"):
        want = exact(z)
    for expr, arg in ((ElementwiseFunction(function, Z), Z), (function(x), x)):
        assert str(expr) in (f"{function.__name__}(Z)", f"{function.__name__}(x)")
        with np.errstate(over="raise"):  # no overflow anywhere
            got = sp.lambdify([arg], expr, "numpy")(z)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(z))
        np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-15, atol=1e-300)


def test_nesterov_hessian_block_is_a_matrix_without_kronecker_delta() -> None:
    der = registry.load("optim_nesterov").derive()
    params = {str(getattr(p, "name", p)): p for p in der.wrt}
    block = der.hessian(params["lr"], params["grad_W"])
    assert isinstance(block, sp.MatrixExpr), block
    assert "KroneckerDelta" not in str(block)


def test_results_print_readably_in_latex_and_plain_text() -> None:
    der, s = _logistic()
    grad = der.gradient(s["w"])
    assert sp.latex(grad) == r"\frac{1}{n} X^{T} \left(\sigma\left(X w\right) - y\right)"
    assert plain(grad) == "(X^T*(sigmoid(X*w) - y))/n"
    assert "sigmoid(X*w)" in sp.pretty(grad) and "↦" not in sp.pretty(grad)
    assert plain(der.hessian(s["w"])) == "(X^T*diag((1_n - sigmoid(X*w)) ⊙ sigmoid(X*w))*X)/n"


@pytest.mark.parametrize("name", ["two_layer_mlp", "layer_batchnorm", "layer_attention",
                                  "loss_gaussian_nll"])
def test_backprop_equations_lambdify_step_by_step(name: str) -> None:
    """The other printed results, ``der.definitions()`` and ``der.equations()``: each step
    lambdified on its own and run in order (forward, then backprop) ends in the gradients
    that ``symdl.evaluate`` computes from the IR (issue 17, item 2)."""
    entry = registry.load(name)
    der = entry.derive()
    values, dims = _inputs(der, np.random.default_rng(5), {"default": 2, "n": 3},
                           entry.module)
    env = {**{str(d): size for d, size in dims.items()}, **values}
    for symbol, expr in [*der.definitions(), *der.equations()]:
        assert not isinstance(expr, symdl.IndexForm), f"{name}: {symbol} has no matrix form"
        assert not UNREADABLE.search(str(expr)), f"{name} {symbol}: {expr}"
        args = _arguments(expr, getattr(symbol, "shape", ()))
        got = sp.lambdify(args, expr, "numpy")(*[env[str(getattr(a, "name", a))]
                                                 for a in args])
        env[str(symbol.name)] = np.broadcast_to(got, tuple(
            int(sp.sympify(s).subs(dims)) for s in getattr(symbol, "shape", ())))
    want = der.evaluate(values, dims)
    for p in der.wrt:
        np.testing.assert_allclose(env[f"d{p.name}"], want[f"grad:{p.name}"], rtol=1e-10,
                                   atol=1e-12, err_msg=f"{name} d{p.name}")
