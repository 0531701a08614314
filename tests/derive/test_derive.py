"""Tests of symdl's derivation core: ``symdl.derive`` and the ``Derivation`` it returns.

Every derived formula is checked three ways where it makes sense:

* against a closed form known from the matrix-calculus literature (to ~1e-10);
* against central finite differences of the *original* definition, evaluated by SymPy itself
  (``tests/oracles.py``: explicit entries + ``lambdify``), so the reference shares no code with
  symdl's IR;
* by evaluating the printed SymPy result both with ``symdl.evaluate`` and with SymPy's own
  explicit path, which must agree.

Dimension symbols are bound to several small sizes, always including 1 and odd sizes.
All symbols are created once at module level: symdl interns IR leaves by name and shape, so
re-creating a same-named symbol with other assumptions inside one test run would couple tests
(see ``TestLeafIdentity`` for that behaviour tested on purpose).
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from oracles import (
    binding_id,
    bindings,
    central_diff,
    fd_gradient,
    name_of,
    one_hot,
    random_values,
    shape_of,
    sympy_function,
)
from sympy.matrices.expressions.diagonal import DiagMatrix
from sympy.matrices.expressions.matexpr import MatrixExpr

import symdl

# --------------------------------------------------------------------------------------------
# Symbols shared by all tests

n, d, k, h, m, p, q, d2 = sp.symbols("n d k h m p q d2", integer=True, positive=True)

X = sp.MatrixSymbol("X", n, d)
X2 = sp.MatrixSymbol("X2", n, d2)
w = sp.MatrixSymbol("w", d, 1)
w2 = sp.MatrixSymbol("w2", d2, 1)
v = sp.MatrixSymbol("v", d, 1)
v2 = sp.MatrixSymbol("v2", d2, 1)
y = sp.MatrixSymbol("y", n, 1)
W = sp.MatrixSymbol("W", d, k)
V = sp.MatrixSymbol("V", d, k)
Y = sp.MatrixSymbol("Y", n, k)
Z = sp.MatrixSymbol("Z", n, k)
C = sp.MatrixSymbol("C", n, k)
c_col = sp.MatrixSymbol("c_col", n, 1)
c_row = sp.MatrixSymbol("c_row", 1, k)
b_row = sp.MatrixSymbol("b", 1, k)
b_col = sp.MatrixSymbol("bc", k, 1)
zvec = sp.MatrixSymbol("z", n, 1)
Q = sp.MatrixSymbol("Q", d, d)  # square matrix of a quadratic form
lam = sp.Symbol("lam", real=True)
c = sp.Symbol("c", real=True)

RTOL_FD = 1e-6
ATOL_FD = 1e-6
RTOL_EXACT = 1e-10
ATOL_EXACT = 1e-10


# --------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def params(table, *symbols):
    """``pytest.mark.parametrize`` over dimension bindings, with readable ids."""
    bs = bindings(symbols, table)
    return pytest.mark.parametrize("dims", bs, ids=[binding_id(b) for b in bs])


def evaluate_both(expr, values, dims) -> np.ndarray:
    """Evaluates a derived SymPy result with symdl.evaluate and with SymPy's explicit path;
    asserts they agree and returns the value."""
    ours = np.asarray(symdl.evaluate(expr, values, dims), dtype=float)
    reference = np.asarray(sympy_function(expr, dims)(values), dtype=float)
    np.testing.assert_allclose(ours, reference.reshape(ours.shape),
                               rtol=RTOL_EXACT, atol=ATOL_EXACT,
                               err_msg=f"symdl.evaluate and SymPy disagree on {expr}")
    return ours


def assert_fd(actual, expected, what=""):
    np.testing.assert_allclose(np.asarray(actual, dtype=float),
                               np.asarray(expected, dtype=float).reshape(np.shape(actual)),
                               rtol=RTOL_FD, atol=ATOL_FD, err_msg=what)


def assert_exact(actual, expected, what=""):
    np.testing.assert_allclose(np.asarray(actual, dtype=float),
                               np.asarray(expected, dtype=float).reshape(np.shape(actual)),
                               rtol=RTOL_EXACT, atol=ATOL_EXACT, err_msg=what)


def check_gradients_fd(der, loss, wrt, values, dims, both=True):
    """Every gradient of ``der``, as printed SymPy and as ``der.evaluate``, equals central
    differences of the original ``loss`` evaluated by SymPy."""
    f = sympy_function(loss, dims)
    ir_values = der.evaluate(values, dims)
    assert ir_values["value"] == pytest.approx(f(values), rel=1e-12, abs=1e-12)
    for param in wrt:
        name = name_of(param)
        fd = fd_gradient(f, values, name)
        g = der.gradient(param)
        printed = evaluate_both(g, values, dims) if both else symdl.evaluate(g, values, dims)
        assert_fd(printed.reshape(shape_of(param, dims)), fd, f"printed gradient of {name}")
        assert_fd(ir_values[f"grad:{name}"].reshape(shape_of(param, dims)), fd,
                  f"der.evaluate gradient of {name}")


def has_index_notation(expr) -> bool:
    return expr.has(sp.KroneckerDelta) or expr.has(sp.Piecewise) or expr.has(sp.Sum)


def sigmoid_np(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def softmax_np(z, axis=1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# --------------------------------------------------------------------------------------------
# Classic matrix-calculus identities


@params([(1, 1, 1), (3, 2, 5), (2, 7, 1), (5, 3, 3)], m, p, q)
def test_trace_AXB(dims, rng):
    """d/dX tr(A X B) = Aᵀ Bᵀ for A: m×p, X: p×q, B: q×m."""
    A = sp.MatrixSymbol("A", m, p)
    Xs = sp.MatrixSymbol("X", p, q)
    B = sp.MatrixSymbol("B", q, m)
    loss = sp.Trace(A * Xs * B)
    der = symdl.derive(loss, wrt=[Xs])
    g = der.gradient(Xs)
    assert isinstance(g, MatrixExpr) and g.shape == (p, q)
    assert not has_index_notation(g)
    values = random_values([A, Xs, B], dims, rng)
    assert_exact(evaluate_both(g, values, dims), values["A"].T @ values["B"].T)
    check_gradients_fd(der, loss, [Xs], values, dims)


@pytest.mark.parametrize("form", ["trace", "total"])
@params([(1,), (2,), (5,), (7,)], d)
def test_quadratic_form(dims, form, rng):
    """d/dx xᵀ A x = (A + Aᵀ) x and the Hessian is A + Aᵀ (A not symmetric)."""
    quad = w.T * Q * w
    loss = sp.Trace(quad) if form == "trace" else symdl.total(quad)
    der = symdl.derive(loss, wrt=[w], hessian=True)
    g, H = der.gradient(w), der.hessian(w)
    assert isinstance(g, MatrixExpr) and g.shape == (d, 1)
    assert isinstance(H, MatrixExpr) and H.shape == (d, d)
    values = random_values([Q, w], dims, rng)
    A, x = values["Q"], values["w"]
    assert_exact(evaluate_both(g, values, dims), (A + A.T) @ x)
    assert_exact(evaluate_both(H, values, dims), A + A.T)
    check_gradients_fd(der, loss, [w], values, dims)


@pytest.mark.parametrize("form", ["hadamard_power", "hadamard_product"])
@params([(1, 1), (3, 1), (5, 3), (7, 2), (2, 5)], n, d)
def test_least_squares(dims, form, rng):
    """‖Xw − y‖²: gradient 2Xᵀ(Xw − y), Hessian 2XᵀX, both in matrix form."""
    r = X * w - y
    loss = symdl.total(sp.HadamardPower(r, 2) if form == "hadamard_power"
                       else sp.hadamard_product(r, r))
    der = symdl.derive(loss, wrt=[w], hessian=True)
    g, H = der.gradient(w), der.hessian(w)
    assert isinstance(g, MatrixExpr) and g.shape == (d, 1)
    assert isinstance(H, MatrixExpr) and H.shape == (d, d)
    assert not has_index_notation(g) and not has_index_notation(H)
    values = random_values([X, w, y], dims, rng)
    Xv, wv, yv = values["X"], values["w"], values["y"]
    assert_exact(evaluate_both(g, values, dims), 2 * Xv.T @ (Xv @ wv - yv))
    assert_exact(evaluate_both(H, values, dims), 2 * Xv.T @ Xv)
    check_gradients_fd(der, loss, [w], values, dims)
    ir = der.evaluate(values, dims)
    assert_exact(ir["hessian:w,w"], 2 * Xv.T @ Xv)


# --------------------------------------------------------------------------------------------
# Logistic regression

LOGISTIC_DIMS = [(1, 1), (5, 3), (7, 2), (2, 5), (3, 1)]


def logistic_loss():
    z = X * w
    return symdl.mean(symdl.softplus(z) - sp.hadamard_product(y, z))


def logistic_values(dims, rng):
    values = random_values([X, w], dims, rng)
    values["y"] = rng.integers(0, 2, size=(dims[n], 1)).astype(float)
    return values


@params(LOGISTIC_DIMS, n, d)
def test_logistic_gradient_and_hessian(dims, rng):
    """Logistic regression: gradient Xᵀ(σ(Xw) − y)/n and Hessian Xᵀ diag(σ(1−σ)) X / n,
    the Hessian printed as a matrix expression with a DiagMatrix (no index notation)."""
    loss = logistic_loss()
    der = symdl.derive(loss, wrt=[w], hessian=True)
    g, H = der.gradient(w), der.hessian(w)
    assert isinstance(g, MatrixExpr) and g.shape == (d, 1)
    assert isinstance(H, MatrixExpr) and H.shape == (d, d)
    assert H.has(DiagMatrix)
    assert not has_index_notation(g) and not has_index_notation(H)

    values = logistic_values(dims, rng)
    Xv, wv, yv = values["X"], values["w"], values["y"]
    s = sigmoid_np(Xv @ wv)
    N = dims[n]
    assert_exact(evaluate_both(g, values, dims), Xv.T @ (s - yv) / N)
    assert_exact(evaluate_both(H, values, dims), Xv.T @ np.diagflat(s * (1 - s)) @ Xv / N)
    check_gradients_fd(der, loss, [w], values, dims)

    # The Hessian is the derivative of the gradient: FD of the printed gradient.
    grad_fn = sympy_function(g, dims)
    fd_H = central_diff(lambda x: grad_fn({**values, "w": x}), wv)  # (d,1,d,1)
    assert_fd(evaluate_both(H, values, dims), fd_H.reshape(dims[d], dims[d]))
    assert_exact(der.evaluate(values, dims)["hessian:w,w"],
                 Xv.T @ np.diagflat(s * (1 - s)) @ Xv / N)


@params(LOGISTIC_DIMS, n, d)
def test_logistic_hvp(dims, rng):
    """hvp(w, v) is H v, as a d×1 matrix expression, with v given alone or as a dict."""
    der = symdl.derive(logistic_loss(), wrt=[w])
    values = logistic_values(dims, rng)
    values["v"] = rng.standard_normal((dims[d], 1))
    H = symdl.evaluate(der.hessian(w), values, dims)
    for hv in (der.hvp(w, v), der.hvp(w, {w: v})):
        assert isinstance(hv, MatrixExpr) and hv.shape == (d, 1)
        assert_exact(evaluate_both(hv, values, dims), H @ values["v"])


# --------------------------------------------------------------------------------------------
# Softmax cross-entropy


@params([(1, 2), (3, 1), (5, 3), (2, 7)], n, k)
def test_softmax_cross_entropy_wrt_logits(dims, rng):
    """∂/∂Z mean_i CE(softmax(Z_i), Y_i) = (softmax(Z) − Y)/n for one-hot Y."""
    loss = symdl.softmax_cross_entropy(Z, Y)
    der = symdl.derive(loss, wrt=[Z])
    g = der.gradient(Z)
    assert isinstance(g, MatrixExpr) and g.shape == (n, k)
    assert g.has(symdl.Softmax) and not has_index_notation(g)
    values = random_values([Z], dims, rng)
    values["Y"] = one_hot(dims[n], dims[k], rng)
    expected = (softmax_np(values["Z"]) - values["Y"]) / dims[n]
    assert_exact(evaluate_both(g, values, dims), expected)
    check_gradients_fd(der, loss, [Z], values, dims)


# --------------------------------------------------------------------------------------------
# Two-layer tanh network with softmax cross-entropy

W1 = sp.MatrixSymbol("W1", d, h)
b1 = sp.MatrixSymbol("b1", 1, h)
W2 = sp.MatrixSymbol("W2", h, k)
b2 = sp.MatrixSymbol("b2", 1, k)
Z1 = sp.MatrixSymbol("Z1", n, h)
A1 = sp.MatrixSymbol("A1", n, h)
Z2 = sp.MatrixSymbol("Z2", n, k)
L = sp.Symbol("L")
MLP_PARAMS = [W1, b1, W2, b2]
MLP_DIMS = [(1, 1, 1, 2), (3, 2, 5, 3), (4, 3, 1, 3), (5, 1, 3, 1)]


def mlp_steps():
    return [
        (Z1, X * W1 + symdl.bias(b1, n)),
        (A1, symdl.tanh(Z1)),
        (Z2, A1 * W2 + symdl.bias(b2, n)),
        (L, symdl.softmax_cross_entropy(Z2, Y)),
    ]


def mlp_inlined_loss():
    """The same loss as one expression (the FD reference differentiates this)."""
    a1 = symdl.tanh(X * W1 + symdl.bias(b1, n))
    return symdl.softmax_cross_entropy(a1 * W2 + symdl.bias(b2, n), Y)


def mlp_values(dims, rng):
    values = random_values([X] + MLP_PARAMS, dims, rng)
    values["Y"] = one_hot(dims[n], dims[k], rng)
    return values


def mlp_numpy_backprop(values):
    """Forward pass and textbook backprop in NumPy: intermediates, adjoints and gradients."""
    Xv, Yv = values["X"], values["Y"]
    N = Xv.shape[0]
    z1 = Xv @ values["W1"] + values["b1"]
    a1 = np.tanh(z1)
    z2 = a1 @ values["W2"] + values["b2"]
    P = softmax_np(z2)
    dz2 = (P - Yv) / N
    da1 = dz2 @ values["W2"].T
    dz1 = da1 * (1 - a1**2)
    return {
        "Z1": z1, "A1": a1, "Z2": z2, "dZ2": dz2, "dA1": da1, "dZ1": dz1,
        "dW1": Xv.T @ dz1, "db1": dz1.sum(axis=0, keepdims=True),
        "dW2": a1.T @ dz2, "db2": dz2.sum(axis=0, keepdims=True),
    }


@params(MLP_DIMS, n, d, h, k)
def test_mlp_gradients(dims, rng):
    """All four parameter gradients of the 2-layer tanh/softmax network match central
    differences of the inlined loss (SymPy-evaluated) and hand-written NumPy backprop."""
    der = symdl.derive(mlp_steps(), wrt=MLP_PARAMS)
    values = mlp_values(dims, rng)
    ref = mlp_numpy_backprop(values)
    f = sympy_function(mlp_inlined_loss(), dims)
    ir = der.evaluate(values, dims)
    assert ir["value"] == pytest.approx(f(values), rel=1e-12)
    for param in MLP_PARAMS:
        name = name_of(param)
        g = der.gradient(param)
        assert isinstance(g, MatrixExpr) and g.shape == param.shape
        printed = symdl.evaluate(g, values, dims)
        assert_exact(printed, ref["d" + name], f"printed d{name} vs NumPy backprop")
        assert_exact(ir[f"grad:{name}"], ref["d" + name], f"der.evaluate d{name}")
        assert_fd(printed, fd_gradient(f, values, name), f"d{name} vs finite differences")


@params(MLP_DIMS, n, d, h, k)
def test_mlp_equations(dims, rng):
    """equations() lists the adjoints dZ2, dA1, dZ1 in backprop order, then the gradients in
    wrt order; each rhs, evaluated with NumPy values for the named quantities, equals NumPy
    backprop."""
    der = symdl.derive(mlp_steps(), wrt=MLP_PARAMS)
    eqs = der.equations()
    names = [str(e.lhs.name) if isinstance(e.lhs, sp.MatrixSymbol) else str(e.lhs) for e in eqs]
    assert names == ["dZ2", "dA1", "dZ1", "dW1", "db1", "dW2", "db2"]
    values = mlp_values(dims, rng)
    ref = mlp_numpy_backprop(values)
    env = dict(values)
    env.update({key: ref[key] for key in ("Z1", "A1", "Z2", "dZ2", "dA1", "dZ1")})
    for eq, name in zip(eqs, names, strict=True):
        assert isinstance(eq.rhs, MatrixExpr), f"{name} is not a matrix expression"
        assert eq.rhs.shape == eq.lhs.shape, f"{name}: rhs {eq.rhs.shape} vs lhs {eq.lhs.shape}"
        assert_exact(evaluate_both(eq.rhs, env, dims), ref[name], f"equation for {name}")
    # The equations refer to the named intermediates, not their definitions.
    assert eqs[3].rhs.has(sp.MatrixSymbol("dZ1", n, h))
    assert eqs[0].rhs.has(Z2)


# --------------------------------------------------------------------------------------------
# Mixed Hessian blocks


@params([(1, 1, 1), (5, 3, 2), (4, 1, 3), (7, 2, 1)], n, d, d2)
def test_mixed_hessian_two_weight_vectors(dims, rng):
    """H[w, w2] = Xᵀ diag(σ(1−σ)) X2 / n for logits X w + X2 w2, = FD of grad_w along w2;
    H[w2, w] is its transpose; hvp with a dict of directions sums the blocks."""
    z = X * w + X2 * w2
    loss = symdl.binary_cross_entropy_with_logits(z, y)
    der = symdl.derive(loss, wrt=[w, w2], hessian=True)
    H12, H21 = der.hessian(w, w2), der.hessian(w2, w)
    assert isinstance(H12, MatrixExpr) and H12.shape == (d, d2)
    assert isinstance(H21, MatrixExpr) and H21.shape == (d2, d)
    assert H12.has(DiagMatrix) and not has_index_notation(H12)

    values = random_values([X, X2, w, w2], dims, rng)
    values["y"] = rng.integers(0, 2, size=(dims[n], 1)).astype(float)
    s = sigmoid_np(values["X"] @ values["w"] + values["X2"] @ values["w2"])
    closed = values["X"].T @ np.diagflat(s * (1 - s)) @ values["X2"] / dims[n]
    h12 = evaluate_both(H12, values, dims)
    assert_exact(h12, closed)
    assert_exact(evaluate_both(H21, values, dims), closed.T)
    grad_fn = sympy_function(der.gradient(w), dims)
    fd = central_diff(lambda x: grad_fn({**values, "w2": x}), values["w2"])
    assert_fd(h12, fd.reshape(dims[d], dims[d2]))
    assert_exact(der.evaluate(values, dims)["hessian:w,w2"], closed)
    check_gradients_fd(der, loss, [w, w2], values, dims)

    values["v"] = rng.standard_normal((dims[d], 1))
    values["v2"] = rng.standard_normal((dims[d2], 1))
    hv = evaluate_both(der.hvp(w, {w: v, w2: v2}), values, dims)
    H11 = symdl.evaluate(der.hessian(w), values, dims)
    assert_exact(hv, H11 @ values["v"] + closed @ values["v2"])


@params([(1, 1), (5, 3), (2, 4)], n, d)
def test_mixed_hessian_scalar_bias(dims, rng):
    """With a scalar bias c (a real Symbol) in the logits, H[w, c] and H[c, w] (d×1 after
    dropping c's empty axes) and H[c, c] match FD of the gradients."""
    z = X * w + c * sp.OneMatrix(n, 1)
    loss = symdl.binary_cross_entropy_with_logits(z, y)
    der = symdl.derive(loss, wrt=[w, c], hessian=True)
    values = random_values([X, w, c], dims, rng)
    values["y"] = rng.integers(0, 2, size=(dims[n], 1)).astype(float)
    check_gradients_fd(der, loss, [w, c], values, dims)
    s = sigmoid_np(values["X"] @ values["w"] + values["c"])
    hwc = values["X"].T @ (s * (1 - s)) / dims[n]
    assert_exact(evaluate_both(der.hessian(w, c), values, dims), hwc)
    assert_exact(evaluate_both(der.hessian(c, w), values, dims), hwc)
    assert float(evaluate_both(der.hessian(c), values, dims)) == pytest.approx(
        float(np.sum(s * (1 - s))) / dims[n], rel=1e-10)
    grad_c = sympy_function(der.gradient(c), dims)
    fd = central_diff(lambda x: grad_c({**values, "w": x}), values["w"])
    assert_fd(evaluate_both(der.hessian(c, w), values, dims), fd)


# --------------------------------------------------------------------------------------------
# Hessian of a matrix parameter: four indices, IndexForm


@params([(1, 1, 1), (3, 2, 3), (4, 3, 1), (2, 1, 5), (5, 3, 2)], n, d, k)
def test_matrix_parameter_hessian_indexform(dims, rng):
    """‖XW − Y‖² wrt W (d×k): the Hessian block is an IndexForm with W's axes then W's axes,
    H[i,j,l,m] = 2 (XᵀX)[i,l] δ[j,m], equal to FD of the gradient."""
    loss = symdl.total(sp.HadamardPower(X * W - Y, 2))
    der = symdl.derive(loss, wrt=[W], hessian=True)
    H = der.hessian(W)
    assert isinstance(H, symdl.IndexForm)
    assert tuple(H.shape) == (d, k, d, k)
    assert len(H.indices) == 4
    values = random_values([X, W, Y], dims, rng)
    Hv = symdl.evaluate(H, values, dims)
    D, K = dims[d], dims[k]
    assert Hv.shape == (D, K, D, K)
    closed = 2 * np.einsum("il,jm->ijlm", values["X"].T @ values["X"], np.eye(K))
    assert_exact(Hv, closed)
    grad_fn = sympy_function(der.gradient(W), dims)
    fd = central_diff(lambda x: grad_fn({**values, "W": x}), values["W"])
    assert_fd(Hv, fd)
    assert_exact(der.evaluate(values, dims)["hessian:W,W"], closed)
    check_gradients_fd(der, loss, [W], values, dims)


@params([(1, 1, 2), (3, 2, 3), (4, 3, 1)], n, d, k)
def test_matrix_parameter_mixed_hessian_indexform(dims, rng):
    """Softmax regression wrt W and a bias row b: H[W, b] (axes d, k, k after dropping b's
    size-1 row axis) equals FD of grad_W along b."""
    loss = symdl.softmax_cross_entropy(X * W + symdl.bias(b_row, n), Y)
    der = symdl.derive(loss, wrt=[W, b_row], hessian=True)
    H = der.hessian(W, b_row)
    values = random_values([X, W, b_row], dims, rng)
    values["Y"] = one_hot(dims[n], dims[k], rng)
    check_gradients_fd(der, loss, [W, b_row], values, dims)
    Hv = symdl.evaluate(H, values, dims)
    grad_fn = sympy_function(der.gradient(W), dims)
    fd = central_diff(lambda x: grad_fn({**values, "b": x}), values["b"])  # (d,k,1,k)
    assert_fd(Hv, fd.reshape(Hv.shape))
    assert Hv.shape == (dims[d], dims[k], dims[k])


# --------------------------------------------------------------------------------------------
# Jacobians


@params([(1, 1), (4, 3), (3, 1), (2, 5)], n, d)
def test_jacobian_sigmoid_layer(dims, rng):
    """J = ∂σ(Xw)/∂w is the n×d matrix diag(σ(1−σ)) X."""
    f_expr = symdl.sigmoid(X * w)
    der = symdl.derive(f_expr, wrt=[w])
    J = der.jacobian(w)
    assert isinstance(J, MatrixExpr) and J.shape == (n, d)
    assert not has_index_notation(J)
    values = random_values([X, w], dims, rng)
    s = sigmoid_np(values["X"] @ values["w"])
    Jv = evaluate_both(J, values, dims)
    assert_exact(Jv, np.diagflat(s * (1 - s)) @ values["X"])
    f = sympy_function(f_expr, dims)
    fd = central_diff(lambda x: f({**values, "w": x}), values["w"])  # (n,1,d,1)
    assert_fd(Jv, fd.reshape(dims[n], dims[d]))


@params([(1, 1, 1), (3, 2, 4)], n, d, k)
def test_jacobian_of_matrix_wrt_matrix(dims, rng):
    """∂tanh(XW)/∂W is an IndexForm with axes of the output (n, k) then of W (d, k)."""
    f_expr = symdl.tanh(X * W)
    J = symdl.derive(f_expr, wrt=[W]).jacobian(W)
    assert isinstance(J, symdl.IndexForm) and tuple(J.shape) == (n, k, d, k)
    values = random_values([X, W], dims, rng)
    f = sympy_function(f_expr, dims)
    fd = central_diff(lambda x: f({**values, "W": x}), values["W"])
    assert_fd(symdl.evaluate(J, values, dims), fd)


# --------------------------------------------------------------------------------------------
# Scalar Symbols and index notation


@params([(1, 1), (4, 3), (3, 5)], n, d)
def test_scalar_symbol_parameter_weight_decay(dims, rng):
    """Loss + λ‖w‖² wrt λ and w: ∂/∂λ = ‖w‖², ∂/∂w = 2Xᵀ(Xw − y) + 2λw, H[λ, w] = 2w."""
    loss = symdl.total(sp.HadamardPower(X * w - y, 2)) + lam * symdl.total(
        sp.hadamard_product(w, w))
    der = symdl.derive(loss, wrt=[lam, w], hessian=True)
    g_lam = der.gradient(lam)
    assert not isinstance(g_lam, MatrixExpr)
    values = random_values([X, w, y, lam], dims, rng)
    Xv, wv, yv, lv = values["X"], values["w"], values["y"], values["lam"]
    assert float(evaluate_both(g_lam, values, dims)) == pytest.approx(np.sum(wv**2), rel=1e-10)
    assert_exact(evaluate_both(der.gradient(w), values, dims),
                 2 * Xv.T @ (Xv @ wv - yv) + 2 * lv * wv)
    assert_exact(evaluate_both(der.hessian(lam, w), values, dims), 2 * wv)
    assert_exact(evaluate_both(der.hessian(w, lam), values, dims), 2 * wv)
    assert float(evaluate_both(der.hessian(lam), values, dims)) == 0.0
    check_gradients_fd(der, loss, [lam, w], values, dims)


X_IDX = sp.IndexedBase("x", shape=(d,))
A_IDX = sp.IndexedBase("A", shape=(d, d))
I_IDX, J_IDX = sp.Idx("i", d), sp.Idx("j", d)


def index_sq_loss():
    return sp.Sum((X_IDX[I_IDX] - c) ** 2, (I_IDX, 0, d - 1))


def index_quad_loss():
    return sp.Sum(A_IDX[I_IDX, J_IDX] * X_IDX[I_IDX] * X_IDX[J_IDX],
                  (I_IDX, 0, d - 1), (J_IDX, 0, d - 1))


@params([(1,), (3,), (6,)], d)
def test_indexed_sum_ir_gradient(dims, rng):
    """Σ_i (x_i − c)² in index notation: der.evaluate gives ∂/∂x = 2(x − c) and
    ∂/∂c = −2 Σ(x − c), matching FD (IR level, no printing)."""
    loss = index_sq_loss()
    der = symdl.derive(loss, wrt=[X_IDX, c])
    values = random_values([X_IDX, c], dims, rng)
    f = sympy_function(loss, dims)
    ir = der.evaluate(values, dims)
    x, cv = values["x"], values["c"]
    assert_exact(ir["grad:x"].ravel(), 2 * (x - cv))
    assert float(ir["grad:c"]) == pytest.approx(-2 * np.sum(x - cv), rel=1e-10)
    assert_fd(ir["grad:x"].ravel(), fd_gradient(f, values, "x"))
    assert_fd(ir["grad:c"], fd_gradient(f, values, "c"))


@params([(1,), (3,), (6,)], d)
def test_indexed_sum_printed_gradient(dims, rng):
    """The printed gradients of Σ_i (x_i − c)² (w.r.t. the IndexedBase x and the Symbol c)
    are SymPy expressions that evaluate to the FD gradient."""
    loss = index_sq_loss()
    der = symdl.derive(loss, wrt=[X_IDX, c])
    values = random_values([X_IDX, c], dims, rng)
    f = sympy_function(loss, dims)
    gx = symdl.evaluate(der.gradient(X_IDX), values, dims)
    assert_fd(np.ravel(gx), fd_gradient(f, values, "x"))
    gc = symdl.evaluate(der.gradient(c), values, dims)
    assert_fd(gc, fd_gradient(f, values, "c"))


@params([(1,), (3,), (5,)], d)
def test_indexed_quadratic_form(dims, rng):
    """Σ_i Σ_j A_ij x_i x_j: gradient (A + Aᵀ)x and Hessian A + Aᵀ, printed and evaluated."""
    loss = index_quad_loss()
    der = symdl.derive(loss, wrt=[X_IDX], hessian=True)
    values = random_values([A_IDX, X_IDX], dims, rng)
    A, x = values["A"], values["x"]
    ir = der.evaluate(values, dims)
    assert_exact(ir["grad:x"].ravel(), (A + A.T) @ x)
    assert_exact(ir["hessian:x,x"], A + A.T)
    f = sympy_function(loss, dims)
    assert_fd(ir["grad:x"].ravel(), fd_gradient(f, values, "x"))
    H = symdl.evaluate(der.hessian(X_IDX), values, dims)
    assert_exact(H, A + A.T)
    g = symdl.evaluate(der.gradient(X_IDX), values, dims)
    assert_exact(np.ravel(g), (A + A.T) @ x)


# --------------------------------------------------------------------------------------------
# Parameters the definition does not depend on


@params([(1, 1, 1), (3, 2, 4)], n, d, k)
def test_absent_parameter_is_zero(dims, rng):
    """Derivatives w.r.t. parameters absent from the definition are zero of the right shape
    (gradients, Hessian blocks, der.evaluate), not errors."""
    loss = symdl.total(sp.HadamardPower(X * w - y, 2))
    der = symdl.derive(loss, wrt=[w, V, lam], hessian=True)
    gV, gl = der.gradient(V), der.gradient(lam)
    assert isinstance(gV, MatrixExpr) and gV.shape == (d, k)
    assert gV.is_ZeroMatrix or gV == sp.ZeroMatrix(d, k)
    assert gl == 0
    values = random_values([X, w, y, V, lam], dims, rng)
    D, K = dims[d], dims[k]
    assert_exact(symdl.evaluate(gV, values, dims), np.zeros((D, K)))
    HVw = symdl.evaluate(der.hessian(V, w), values, dims)
    assert HVw.shape == (D, K, D) and not HVw.any()
    Hwl = symdl.evaluate(der.hessian(w, lam), values, dims)
    assert Hwl.size == D and not Hwl.any()
    ir = der.evaluate(values, dims)
    assert ir["grad:V"].shape == (D, K) and not ir["grad:V"].any()
    assert float(ir["grad:lam"]) == 0.0
    assert ir["hessian:V,V"].shape == (D, K, D, K) and not ir["hessian:V,V"].any()
    check_gradients_fd(der, loss, [w, V, lam], values, dims)


def test_absent_parameter_dims_inferred_from_its_value(rng):
    """der.evaluate without dims infers every dimension from the arrays given, including the
    shape of a parameter that the definition does not use."""
    loss = symdl.total(sp.HadamardPower(X * w - y, 2))
    der = symdl.derive(loss, wrt=[w, V])
    values = random_values([X, w, y, V], {n: 3, d: 2, k: 4}, rng)
    ir = der.evaluate(values)
    assert ir["grad:V"].shape == (2, 4) and not ir["grad:V"].any()


# --------------------------------------------------------------------------------------------
# The vocabulary, each function at least once in an FD-checked loss


def _away_from_zero(a):
    return np.sign(a) * (0.2 + np.abs(a)) + (a == 0) * 0.2


VOCAB_CASES = {
    # name: (loss builder, parameters, value transform for Z)
    "sigmoid": (lambda: symdl.total(sp.hadamard_product(C, symdl.sigmoid(Z))), [Z], None),
    "softplus": (lambda: symdl.total(sp.hadamard_product(C, symdl.softplus(Z))), [Z], None),
    "relu": (lambda: symdl.total(sp.hadamard_product(C, symdl.relu(Z))), [Z], _away_from_zero),
    "tanh": (lambda: symdl.total(sp.hadamard_product(C, symdl.tanh(Z))), [Z], None),
    "exp": (lambda: symdl.total(sp.hadamard_product(C, symdl.exp(Z))), [Z], None),
    "log": (lambda: symdl.total(sp.hadamard_product(C, symdl.log(Z))), [Z],
            lambda a: 0.5 + np.abs(a)),
    "logsumexp_rows": (lambda: symdl.total(sp.hadamard_product(c_col, symdl.logsumexp(Z))),
                       [Z], None),
    "logsumexp_cols": (lambda: symdl.total(
        sp.hadamard_product(c_row, symdl.logsumexp(Z, axis=0))), [Z], None),
    "softmax_rows": (lambda: symdl.total(sp.hadamard_product(C, symdl.softmax(Z))), [Z], None),
    "softmax_cols": (lambda: symdl.total(sp.hadamard_product(C, symdl.softmax(Z, axis=0))),
                     [Z], None),
    "log_softmax_rows": (lambda: symdl.total(sp.hadamard_product(C, symdl.log_softmax(Z))),
                         [Z], None),
    "log_softmax_cols": (lambda: symdl.total(
        sp.hadamard_product(C, symdl.log_softmax(Z, axis=0))), [Z], None),
    "sum_all": (lambda: symdl.sum(sp.hadamard_product(C, Z)) ** 2, [Z], None),
    "sum_axis0": (lambda: symdl.total(sp.HadamardPower(symdl.sum(sp.hadamard_product(C, Z),
                                                                 axis=0), 2)), [Z], None),
    "sum_axis1": (lambda: symdl.total(sp.HadamardPower(symdl.sum(sp.hadamard_product(C, Z),
                                                                 axis=1), 2)), [Z], None),
    "mean_all": (lambda: symdl.mean(sp.HadamardPower(Z - C, 3)), [Z], None),
    "mean_axis0": (lambda: symdl.total(sp.HadamardPower(symdl.mean(Z, axis=0), 2)), [Z], None),
    "mean_axis1": (lambda: symdl.total(sp.HadamardPower(symdl.mean(Z, axis=1), 2)), [Z], None),
    "bias_row": (lambda: symdl.total(sp.hadamard_product(C, symdl.tanh(
        Z + symdl.bias(b_row, n)))), [Z, b_row], None),
    "bias_column": (lambda: symdl.total(sp.hadamard_product(C, symdl.tanh(
        Z + symdl.bias(b_col, n)))), [Z, b_col], None),
    "softmax_cross_entropy": (lambda: symdl.softmax_cross_entropy(Z, Y), [Z], None),
    "bce_with_logits": (lambda: symdl.binary_cross_entropy_with_logits(Z, Y), [Z], None),
    "mse": (lambda: symdl.mse(symdl.tanh(Z), C), [Z], None),
}


@pytest.mark.parametrize("case", list(VOCAB_CASES))
@params([(1, 1), (3, 4), (5, 2), (2, 1)], n, k)
def test_vocabulary_gradient(dims, case, rng):
    """Each vocabulary function, inside a scalar loss, has a gradient (printed and IR) equal
    to central differences of the SymPy-evaluated loss."""
    build, wrt, transform = VOCAB_CASES[case]
    loss = build()
    der = symdl.derive(loss, wrt=wrt)
    values = random_values([Z, C, c_col, c_row, b_row, b_col], dims, rng)
    if transform is not None:
        values["Z"] = transform(values["Z"])
    if case == "softmax_cross_entropy":
        values["Y"] = one_hot(dims[n], dims[k], rng)
    else:
        values["Y"] = rng.integers(0, 2, size=(dims[n], dims[k])).astype(float)
    for param in wrt:
        g = der.gradient(param)
        assert isinstance(g, MatrixExpr) and g.shape == param.shape
    check_gradients_fd(der, loss, wrt, values, dims)


# --------------------------------------------------------------------------------------------
# Numerical stability of the derived forms


@pytest.mark.parametrize("which", ["softplus", "bce"])
def test_stable_forms_softplus_and_bce(which):
    """Gradients and Hessians of softplus-based losses are written with sigmoid, never exp."""
    loss = (symdl.total(symdl.softplus(X * w)) if which == "softplus"
            else symdl.binary_cross_entropy_with_logits(X * w, y))
    der = symdl.derive(loss, wrt=[w], hessian=True)
    for result in (der.gradient(w), der.hessian(w)):
        text = str(result)
        assert "sigmoid" in text
        assert "exp(" not in text, text


def test_stable_form_logsumexp():
    """The gradient of a log-sum-exp loss is written with Softmax, never exp."""
    der = symdl.derive(symdl.total(symdl.logsumexp(Z)), wrt=[Z])
    g = der.gradient(Z)
    assert g.has(symdl.Softmax)
    assert "exp(" not in str(g)
    der = symdl.derive(symdl.softmax_cross_entropy(Z, Y), wrt=[Z])
    assert der.gradient(Z).has(symdl.Softmax) and "exp(" not in str(der.gradient(Z))


def test_bce_at_extreme_logits():
    """BCE with logits ±1000: value, gradient and Hessian are finite and equal their limits
    (σ(1000) = 1, σ(−1000) = 0), in der.evaluate and in the printed formulas."""
    loss = symdl.binary_cross_entropy_with_logits(zvec, y)
    der = symdl.derive(loss, wrt=[zvec], hessian=True)
    zv = np.array([[1000.0], [-1000.0], [1000.0], [-1000.0], [0.0]])
    yv = np.array([[1.0], [0.0], [0.0], [1.0], [1.0]])
    values = {"z": zv, "y": yv}
    dims = {n: 5}
    ir = der.evaluate(values, dims)
    # softplus(z) - y z: 0, 0, 1000, 1000, log 2
    assert float(ir["value"]) == pytest.approx((2000 + np.log(2)) / 5, rel=1e-12)
    s_lim = np.array([[1.0], [0.0], [1.0], [0.0], [0.5]])
    expected_grad = (s_lim - yv) / 5
    expected_hess = np.diagflat(s_lim * (1 - s_lim)) / 5
    for grad, hess in ((ir["grad:z"], ir["hessian:z,z"]),
                       (symdl.evaluate(der.gradient(zvec), values, dims),
                        symdl.evaluate(der.hessian(zvec), values, dims))):
        assert np.all(np.isfinite(grad)) and np.all(np.isfinite(hess))
        assert_exact(grad, expected_grad)
        assert_exact(hess, expected_hess)


def test_softmax_cross_entropy_at_extreme_logits():
    """Softmax CE with logits ±1000: finite value and gradient equal to the limits."""
    der = symdl.derive(symdl.softmax_cross_entropy(Z, Y), wrt=[Z])
    Zv = np.array([[1000.0, -1000.0], [-1000.0, 1000.0], [0.0, 0.0]])
    Yv = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    values, dims = {"Z": Zv, "Y": Yv}, {n: 3, k: 2}
    ir = der.evaluate(values, dims)
    assert float(ir["value"]) == pytest.approx((2000 + np.log(2)) / 3, rel=1e-12)
    P = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    for g in (ir["grad:Z"], symdl.evaluate(der.gradient(Z), values, dims)):
        assert np.all(np.isfinite(g))
        assert_exact(g, (P - Yv) / 3)


# --------------------------------------------------------------------------------------------
# Typed errors


def test_unsupported_elementwise_function():
    """An unsupported function applied elementwise raises UnsupportedError naming it."""
    with pytest.raises(symdl.UnsupportedError, match="gamma"):
        symdl.derive(symdl.total((X * w).applyfunc(sp.gamma)), wrt=[w])


def test_unsupported_scalar_function():
    """An unsupported function in a scalar loss raises UnsupportedError naming it."""
    with pytest.raises(symdl.UnsupportedError, match="gamma"):
        symdl.derive(sp.gamma(lam) ** 2, wrt=[lam])


def test_unsupported_undefined_function():
    """An undefined function f(x) raises UnsupportedError naming it."""
    f = sp.Function("f")
    with pytest.raises(symdl.UnsupportedError, match="f"):
        symdl.derive(f(lam), wrt=[lam])


def test_shape_mismatch_declared_step():
    """A model step declared with a shape its definition does not have raises
    ShapeMismatchError naming the step and both shapes."""
    bad = sp.MatrixSymbol("Zbad", n, k)
    with pytest.raises(symdl.ShapeMismatchError, match="Zbad") as info:
        symdl.derive([(bad, X * w), (L, symdl.total(bad))], wrt=[w])
    assert info.value.left == (n, k)
    assert info.value.right == (n, 1)


def test_shape_mismatch_index_form():
    """An index shared by arrays of different dimensions (a Hadamard in index form) raises
    ShapeMismatchError naming both dimensions."""
    xd = sp.IndexedBase("x", shape=(d,))
    zk = sp.IndexedBase("zk", shape=(k,))
    i = sp.Idx("i", d)
    with pytest.raises(symdl.ShapeMismatchError) as info:
        symdl.derive(sp.Sum(xd[i] * zk[i], (i, 0, d - 1)), wrt=[xd])
    assert "d" in str(info.value) and "k" in str(info.value)


def test_shape_mismatch_sum_range():
    """A Sum whose range runs past the dimension of the array it indexes plainly raises
    ShapeMismatchError naming the index. (A range provably shorter reads the first entries,
    as a Sum from 1 does once shifted: tests/define/test_positions.py.)"""
    i = sp.Symbol("i", integer=True)
    with pytest.raises(symdl.ShapeMismatchError, match="i"):
        symdl.derive(sp.Sum(X_IDX[i] ** 2, (i, 0, d)), wrt=[X_IDX])


def test_shape_mismatch_bias():
    """bias() of a matrix that is neither a row nor a column raises ShapeMismatchError."""
    with pytest.raises(symdl.ShapeMismatchError, match="bias"):
        symdl.bias(W, n)


def test_wrt_expression_is_derivation_error():
    """wrt=[X*w] (not a symbol) raises DerivationError naming the expression."""
    with pytest.raises(symdl.DerivationError, match=r"X\*w"):
        symdl.derive(symdl.total(X * w), wrt=[X * w])


def test_wrt_integer_symbol_is_derivation_error():
    """An integer Symbol (a dimension) as parameter raises DerivationError naming it."""
    with pytest.raises(symdl.DerivationError, match=r"\bn\b.*integer"):
        symdl.derive(symdl.total(X * w), wrt=[n])


def test_wrt_named_intermediate_is_derivation_error():
    """A named intermediate is not a parameter: DerivationError naming it."""
    with pytest.raises(symdl.DerivationError, match="Z1"):
        symdl.derive(mlp_steps(), wrt=[Z1])


def test_gradient_of_parameter_not_in_wrt():
    """Asking for the gradient of a symbol not in wrt raises DerivationError naming it."""
    der = symdl.derive(symdl.total(X * w), wrt=[w])
    with pytest.raises(symdl.DerivationError, match="X"):
        der.gradient(X)


def test_gradient_of_matrix_valued_definition():
    """A matrix-valued definition has a Jacobian, not a gradient: DerivationError."""
    der = symdl.derive(X * w, wrt=[w])
    with pytest.raises(symdl.DerivationError, match="jacobian"):
        der.gradient(w)


def test_hvp_direction_with_wrong_shape():
    """A direction shaped unlike the parameter raises DerivationError naming both shapes."""
    der = symdl.derive(logistic_loss(), wrt=[w])
    with pytest.raises(symdl.DerivationError, match=r"\(n, 1\).*\(d, 1\)"):
        der.hvp(w, sp.MatrixSymbol("u", n, 1))


# --------------------------------------------------------------------------------------------
# Results are expressed in the caller's own symbols


class TestLeafIdentity:
    """A derivation's results are written in the symbols of *its* definition, whatever other
    derivations exist in the process at the same time."""

    def test_same_name_other_assumptions(self):
        """Two scalar Symbols named 'a' with different assumptions, two live derivations:
        each gradient contains its own symbol (so .subs works on it)."""
        a_real = sp.Symbol("a", real=True)
        a_pos = sp.Symbol("a", positive=True)
        der_real = symdl.derive(a_real**3, wrt=[a_real])
        der_pos = symdl.derive(a_pos**3, wrt=[a_pos])
        g_pos = der_pos.gradient(a_pos)
        used = [s.assumptions0.get("positive") for s in g_pos.free_symbols]
        assert g_pos.free_symbols == {a_pos}, f"gradient uses 'a' with positive={used}"
        assert g_pos.subs(a_pos, 2) == 12
        assert der_real.gradient(a_real).free_symbols == {a_real}

    def test_matrix_symbol_and_indexed_base_with_same_name(self):
        """An IndexedBase 'A' (d×d) in one live derivation does not replace the MatrixSymbol
        'A' (d×d) in another one's printed result."""
        A_mat = sp.MatrixSymbol("A", d, d)
        i, j = sp.Idx("i", d), sp.Idx("j", d)
        keep = symdl.derive(sp.Sum(A_IDX[i, j] ** 2, (i, 0, d - 1), (j, 0, d - 1)),
                            wrt=[A_IDX])
        g = symdl.derive(sp.Trace(w.T * A_mat * w), wrt=[w]).gradient(w)
        assert g.has(A_mat)
        assert keep is not None
