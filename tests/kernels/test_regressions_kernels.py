"""Regressions of compiled kernels against PyTorch autograd (float64), issue 15.

A loop plan recomputes cheap functions of the inputs (``A + B``, ``A + I``) inside every loop
that reads them; a loop that also read such a value at a transposed index once took the
loop's temporary for it, and the gradient of a GCN's degree normalisation was silently
wrong. Each definition here is compiled jitted and interpreted (``jit=False`` runs the same
generated source in Python) and compared with torch's gradient to 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl.kernels import plan as kernel_plan

n, d, h, k = sp.symbols("n d h k", integer=True, positive=True)
A = sp.MatrixSymbol("A", n, n)
B = sp.MatrixSymbol("B", n, n)
G = sp.MatrixSymbol("G", n, d)
X = sp.MatrixSymbol("X", n, d)
W1 = sp.MatrixSymbol("W1", d, h)
W2 = sp.MatrixSymbol("W2", h, k)
Y = sp.MatrixSymbol("Y", n, k)
r = sp.MatrixSymbol("r", n, 1)
Ahat = sp.MatrixSymbol("Ahat", n, n)
L = sp.Symbol("L")
SIZES = {n: 6, d: 4, h: 5, k: 3}

# M of the degree-weighted step, in SymPy and in torch.
VARIANTS: dict[str, tuple[Callable, Callable]] = {
    "A+B": (lambda: A + B, lambda t: t["A"] + t["B"]),
    "A+I": (lambda: A + sp.Identity(n), lambda t: t["A"] + torch.eye(6, dtype=torch.float64)),
    "A": (lambda: A, lambda t: t["A"]),
    "A.T+A": (lambda: A.T + A, lambda t: t["A"].T + t["A"]),
    "A.T+B": (lambda: A.T + B, lambda t: t["A"].T + t["B"]),
    "2A-B.T": (lambda: 2 * A - B.T, lambda t: 2 * t["A"] - t["B"].T),
}


def _inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    N, D, H, K = SIZES[n], SIZES[d], SIZES[h], SIZES[k]
    return {"A": rng.uniform(0.0, 1.0, (N, N)),  # non-symmetric, positive row sums
            "B": rng.normal(size=(N, N)), "G": rng.normal(size=(N, D)),
            "X": rng.normal(size=(N, D)), "W1": rng.normal(size=(D, H)),
            "W2": rng.normal(size=(H, K)), "Y": np.eye(K)[rng.integers(0, K, N)]}


def _torch_grads(values: dict, wrt: list[str], loss: Callable) -> tuple[float, dict]:
    t = {name: torch.tensor(v, dtype=torch.float64, requires_grad=name in wrt)
         for name, v in values.items()}
    value = loss(t)
    value.backward()
    return value.item(), {name: t[name].grad.numpy() for name in wrt}


def _compare(der: symdl.Derivation, values: dict, wrt: list[str], loss: Callable,
             jit: bool) -> None:
    kernel = der.compile(jit=jit)
    out = kernel(**{name: values[name] for name in kernel.inputs})
    expected_value, expected = _torch_grads(values, wrt, loss)
    np.testing.assert_allclose(out.value, expected_value, rtol=1e-10, atol=1e-10)
    for name in wrt:
        scale = np.abs(expected[name]).max()
        np.testing.assert_allclose(out.grad[name], expected[name], rtol=1e-10,
                                   atol=1e-10 * scale, err_msg=f"gradient of {name}")


def _degree_weighted(m: sp.MatrixExpr) -> symdl.Derivation:
    """The issue's definition: a named row sum reused in a Hadamard product with its outer
    product, then a matrix product."""
    return symdl.derive([(r, m * sp.OneMatrix(n, 1)),
                         (Ahat, sp.hadamard_product(m, r * r.T)),
                         (L, symdl.sum(sp.hadamard_product(G, Ahat * X)))], wrt=[A])


@pytest.mark.parametrize("jit", [False, True], ids=["interpreted", "jit"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_degree_weighted_gradient_matches_torch(variant: str, jit: bool) -> None:
    sym, tm = VARIANTS[variant]

    def loss(t):
        m = tm(t)
        rows = m.sum(1, keepdim=True)
        return (t["G"] * ((m * (rows @ rows.T)) @ t["X"])).sum()

    _compare(_degree_weighted(sym()), _inputs(0), ["A"], loss, jit)


def _gcn() -> symdl.Derivation:
    """Two GCN layers with the symmetric normalisation D^-1/2 (A + I) D^-1/2, named steps."""
    At, Ah = sp.MatrixSymbol("At", n, n), sp.MatrixSymbol("Ah", n, n)
    deg, s = sp.MatrixSymbol("deg", n, 1), sp.MatrixSymbol("s", n, 1)
    H, Z = sp.MatrixSymbol("H", n, h), sp.MatrixSymbol("Z", n, k)
    return symdl.derive([(At, A + sp.Identity(n)), (deg, At * sp.OneMatrix(n, 1)),
                         (s, symdl.rsqrt(deg)), (Ah, sp.hadamard_product(At, s * s.T)),
                         (H, symdl.tanh(Ah * X * W1)), (Z, Ah * H * W2),
                         (L, symdl.softmax_cross_entropy(Z, Y))], wrt=[A, W1, W2])


def _gcn_torch(t):
    at = t["A"] + torch.eye(6, dtype=torch.float64)
    s = at.sum(1, keepdim=True) ** -0.5
    ah = at * (s @ s.T)
    z = ah @ torch.tanh(ah @ t["X"] @ t["W1"]) @ t["W2"]
    return -(t["Y"] * torch.log_softmax(z, 1)).sum() / 6


@pytest.mark.parametrize("jit", [False, True], ids=["interpreted", "jit"])
def test_gcn_two_layers_normalised_adjacency_matches_torch(jit: bool) -> None:
    _compare(_gcn(), _inputs(1), ["A", "W1", "W2"], _gcn_torch, jit)


def test_gcn_gradient_transposed_adjacency_matches_torch() -> None:
    """The same network on A^T + I: the transposed read now sits in the forward pass."""
    At, Ah = sp.MatrixSymbol("At", n, n), sp.MatrixSymbol("Ah", n, n)
    s, Z = sp.MatrixSymbol("s", n, 1), sp.MatrixSymbol("Z", n, d)
    der = symdl.derive([(At, A.T + sp.Identity(n)), (s, symdl.rsqrt(At * sp.OneMatrix(n, 1))),
                        (Ah, sp.hadamard_product(At, s * s.T)), (Z, Ah * X),
                        (L, symdl.sum(sp.hadamard_product(G, symdl.tanh(Z))))], wrt=[A])

    def loss(t):
        at = t["A"].T + torch.eye(6, dtype=torch.float64)
        s_ = at.sum(1, keepdim=True) ** -0.5
        return (t["G"] * torch.tanh((at * (s_ @ s_.T)) @ t["X"])).sum()

    _compare(der, _inputs(2), ["A"], loss, jit=False)


def test_stored_input_function_is_written_once() -> None:
    """``A + B`` is recomputed in two loops but stored by the first only: one array."""
    kernel = _degree_weighted(A + B).compile(jit=False)
    # In the plain driver (the compiled variants repeat its statements).
    driver = kernel.source.split("\ndef _steps(", 1)[1].split("\n\n\n", 1)[0]
    allocations = [line.split("=")[0].strip() for line in driver.splitlines()
                   if "np.empty(" in line]
    # Temporaries that grow with the dimensions are made once by _scratch (one per line,
    # named in a comment) and passed to the driver (symdl.kernels.scratch).
    scratch = kernel.source.partition("\ndef _scratch(")[2].split("\n\n\n", 1)[0]
    allocations += [line.rsplit("# ", 1)[1] for line in scratch.splitlines()
                    if "np.empty(" in line]
    assert allocations
    assert len(allocations) == len(set(allocations)), allocations


def test_codegen_refuses_a_temporary_read_at_another_index(monkeypatch) -> None:
    """The old planner's mistake (a recomputed value read transposed inside its loop) must
    never become code: generating such a plan is an internal error, not a wrong number."""
    monkeypatch.setattr(kernel_plan, "computes", lambda group, node: False)
    der = _degree_weighted(A + B)
    with pytest.raises(RuntimeError, match="internal error"):
        der.compile(jit=False)


# --------------------------------------------------------------------------------------------
# NaN propagates through the kinked functions (issue 15, item 9): as NumPy's maximum, sign,
# heaviside and abs do. A NaN input gives a NaN value and a NaN gradient entry (relu'(NaN) is
# Heaviside(NaN) = NaN); every other entry keeps its stated convention.

x_col = sp.MatrixSymbol("x", n, 1)
g_col = sp.MatrixSymbol("g", n, 1)
X_NAN = np.array([[np.nan], [2.0], [-3.0], [0.0], [0.5]])
G_ONES = np.array([[1.0], [2.0], [-1.0], [0.5], [3.0]])
KINKED: dict[str, tuple[Callable, Callable, Callable]] = {
    # name: (symdl definition, NumPy value, NumPy derivative with the documented conventions)
    "relu": (symdl.relu, lambda v: np.maximum(v, 0), lambda v: np.heaviside(v, 0.0)),
    "leaky_relu": (lambda m: symdl.leaky_relu(m, sp.Rational(1, 10)),
                   lambda v: np.where(np.isnan(v), v, np.where(v > 0, v, 0.1 * v)),
                   lambda v: np.where(np.isnan(v), v, np.where(v > 0, 1.0, 0.1))),
    "absolute": (symdl.absolute, np.abs, np.sign),
    "huber": (symdl.huber, lambda v: np.where(np.abs(v) <= 1, v * v / 2, np.abs(v) - 0.5),
              lambda v: np.clip(v, -1, 1)),
    "sign": (lambda m: m.applyfunc(sp.sign), np.sign, lambda v: 0 * v),
    "heaviside": (lambda m: m.applyfunc(lambda t: sp.Heaviside(t, 0)),
                  lambda v: np.heaviside(v, 0.0), lambda v: 0 * v),
}


@pytest.mark.parametrize("jit", [False, True], ids=["interpreted", "jit"])
@pytest.mark.parametrize("name", list(KINKED))
def test_nan_propagates_through_kinked_functions(name: str, jit: bool) -> None:
    f, value, derivative = KINKED[name]
    der = symdl.derive(symdl.sum(sp.hadamard_product(g_col, f(x_col))), wrt=[x_col])
    out = der.compile(jit=jit)(x=X_NAN, g=G_ONES)
    assert np.isnan(out.value)
    assert np.isnan(np.sum(G_ONES * value(X_NAN)))  # the oracle agrees: NaN in, NaN out
    expected = G_ONES * derivative(X_NAN)
    if name in ("sign", "heaviside"):  # derivative 0 by convention, a constant
        expected = np.zeros_like(X_NAN)
    else:
        assert np.isnan(expected[0, 0])
    np.testing.assert_array_equal(out.grad["x"], expected)
    evaluated = np.asarray(symdl.evaluate(der.gradient(x_col), {"x": X_NAN, "g": G_ONES},
                                          {n: 5}), dtype=float)
    np.testing.assert_array_equal(evaluated, expected)


@pytest.mark.parametrize("jit", [False, True], ids=["interpreted", "jit"])
def test_relu_of_nan_is_nan_elementwise(jit: bool) -> None:
    """The issue's report: relu(NaN) was 0. The activation itself, entry by entry."""
    Xm = sp.MatrixSymbol("X", n, d)
    Wm = sp.MatrixSymbol("W", d, d)
    der = symdl.derive(symdl.sum(symdl.relu(Xm * Wm)), wrt=[Wm])
    values = {"X": np.array([[np.nan, 1.0], [1.0, -2.0]]), "W": np.eye(2)}
    out = der.compile(jit=jit)(**values)
    assert np.isnan(out.value)
    # NumPy's dW = X^T H(XW): NaN * 0 is NaN, so row 0 of XW, of H and all of dW are NaN.
    product = values["X"] @ values["W"]
    expected = values["X"].T @ np.heaviside(product, 0.0)
    assert np.isnan(expected).all()
    np.testing.assert_array_equal(out.grad["W"], expected)


# --------------------------------------------------------------------------------------------
# out= buffers (issue 15, item 10): only the exact input array may take an in-place update;
# any other overlap, decided exactly, and masked arrays raise KernelArgumentError.

w_col = sp.MatrixSymbol("w", n, 1)


@pytest.fixture(scope="module")
def sgd_update() -> symdl.Kernel:
    from symdl.define.optimizers import SGD, update_kernel_outputs
    return symdl.compile_expressions(update_kernel_outputs(SGD(lr=0.5), w_col))


@pytest.mark.parametrize("shift", [1, -1, 3])
def test_out_view_shifted_over_its_input_is_refused(sgd_update, shift: int) -> None:
    """The issue's SGD update: out one entry over the input returned [0.5, 0, -0.5, ...]."""
    buf = np.arange(16.0) + 0.5
    start = max(shift, 0)
    dst = buf[start:start + 8].reshape(-1, 1)
    src = buf[start - shift:start - shift + 8].reshape(-1, 1)
    before = buf.copy()
    with pytest.raises(symdl.KernelArgumentError, match="overlaps input 'w'"):
        sgd_update(w=src, grad_w=np.ones((8, 1)), out={"w": dst})
    np.testing.assert_array_equal(buf, before)  # refused before anything was written


def test_out_that_is_its_input_updates_in_place(sgd_update) -> None:
    w = np.arange(8.0).reshape(-1, 1) + 0.5
    g = np.linspace(-1, 1, 8).reshape(-1, 1)
    expected = w - 0.5 * g  # torch.optim.SGD's step, by hand
    result = sgd_update(w=w, grad_w=g, out={"w": w})
    assert result.outputs["w"] is w
    np.testing.assert_array_equal(w, expected)


def test_out_buffers_overlapping_by_one_entry_are_refused() -> None:
    der = symdl.derive(symdl.sum(sp.hadamard_product(g_col, symdl.tanh(w_col))), wrt=[w_col])
    kernel = der.compile(jit=False)
    buf = np.zeros(5)  # the value's entry is the gradient's last
    with pytest.raises(symdl.KernelArgumentError, match="share memory"):
        kernel(w=np.ones((5, 1)), g=np.ones((5, 1)),
               out={"grad:w": buf.reshape(-1, 1), "value": buf[4:]})


def test_out_overlapping_an_input_the_kernel_reads_later_is_refused() -> None:
    """The gradient written over an input that a later step still reads."""
    der = symdl.derive(symdl.sum(sp.hadamard_product(g_col, symdl.tanh(w_col))), wrt=[w_col])
    kernel = der.compile(jit=False)
    g = np.ones((5, 1))
    with pytest.raises(symdl.KernelArgumentError, match="'g'"):
        kernel(w=np.ones((5, 1)), g=g, out={"grad:w": g})


def test_overlaps_are_checked_again_when_an_array_or_its_role_changes() -> None:
    # The pairwise test is skipped when a call passes the very arrays, under the same names,
    # of the last call that passed it (a training loop's buffers). A new view, or the same
    # arrays in other roles, are tested again.
    der = symdl.derive(symdl.sum(sp.hadamard_product(g_col, symdl.tanh(w_col))), wrt=[w_col])
    kernel = der.compile(jit=False)
    w, g = np.linspace(-1, 1, 5).reshape(-1, 1), np.ones((5, 1))
    grad, value = np.empty((5, 1)), np.empty(1)
    for _ in range(2):
        result = kernel(w=w, g=g, out={"grad:w": grad, "value": value})
        np.testing.assert_allclose(result.grad["w"], 1 - np.tanh(w) ** 2)
    with pytest.raises(symdl.KernelArgumentError, match="'g'"):  # g read after grad:w written
        kernel(w=w, g=grad, out={"grad:w": grad, "value": value})
    buf = np.zeros(5)
    with pytest.raises(symdl.KernelArgumentError, match="share memory"):
        kernel(w=w, g=g, out={"grad:w": buf.reshape(-1, 1), "value": buf[4:]})
    kernel(w=w, g=g, out={"grad:w": grad, "value": value})  # the checked set again
    with pytest.raises(symdl.KernelArgumentError, match="share memory"):
        kernel(w=w, g=g, out={"grad:w": grad, "value": grad[4]})


@pytest.mark.parametrize("role", ["input", "out"])
def test_masked_arrays_are_refused(role: str) -> None:
    der = symdl.derive(symdl.sum(sp.hadamard_product(g_col, symdl.tanh(w_col))), wrt=[w_col])
    kernel = der.compile(jit=False)
    masked = np.ma.masked_array(np.ones((4, 1)), mask=[[True], [False], [False], [False]])
    with pytest.raises(symdl.KernelArgumentError, match="masked array"):
        if role == "input":
            kernel(w=masked, g=np.ones((4, 1)))
        else:
            kernel(w=np.ones((4, 1)), g=np.ones((4, 1)), out={"grad:w": masked})


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_matrix_subclass_is_read_and_written_as_its_values() -> None:
    """np.matrix (and other ndarray subclasses without a mask) are used by their memory."""
    der = symdl.derive(symdl.sum(sp.hadamard_product(g_col, symdl.tanh(w_col))), wrt=[w_col])
    kernel = der.compile(jit=False)
    w = np.linspace(-1, 1, 4).reshape(-1, 1)
    out = np.matrix(np.zeros((4, 1)))
    kernel(w=np.matrix(w), g=np.matrix(np.ones((4, 1))), out={"grad:w": out})
    np.testing.assert_allclose(np.asarray(out), 1 - np.tanh(w) ** 2, rtol=1e-15)


# --------------------------------------------------------------------------------------------
# Declared assumptions (issue 15, item 11): SymPy folds |p| to p for a positive p while the
# user writes the definition; a value that violates the declaration is refused, by kernels
# and by symdl.evaluate, naming the symbol and the assumption.

ASSUMED = [
    # (assumption, a value violating it, a value satisfying it, the definition's body, NumPy)
    ("positive", -2.0, 2.0, lambda p: sp.Abs(p), abs),
    ("nonnegative", -0.5, 0.0, lambda p: sp.Abs(p), abs),
    ("negative", 3.0, -3.0, lambda p: sp.Abs(p), abs),
    ("nonpositive", 1.5, -1.5, lambda p: sp.sqrt(p**2), abs),
    ("integer", 0.5, 3.0, lambda p: sp.floor(p) * p, lambda v: np.floor(v) * v),
]


def _scaled_by(body: sp.Expr) -> tuple[symdl.Derivation, sp.MatrixSymbol]:
    return symdl.derive(body * symdl.sum(w_col), wrt=[w_col]), w_col


@pytest.mark.parametrize("jit", [False, True], ids=["interpreted", "jit"])
@pytest.mark.parametrize("assumption,bad,good,body,numpy_body", ASSUMED,
                         ids=[a[0] for a in ASSUMED])
def test_kernel_refuses_values_violating_declared_assumptions(assumption, bad, good, body,
                                                              numpy_body, jit) -> None:
    p = sp.Symbol("p", **{assumption: True})
    der, w = _scaled_by(body(p))
    kernel = der.compile(jit=jit)
    ones = np.ones((3, 1))
    with pytest.raises(symdl.KernelArgumentError, match=f"p was declared {assumption}=True"):
        kernel(p=bad, w=ones)
    out = kernel(p=good, w=ones)
    assert out.value == pytest.approx(3 * numpy_body(good), rel=1e-15, abs=1e-300)
    with pytest.raises(symdl.EvaluationError, match=f"{assumption}=True"):
        symdl.evaluate(der.gradient(w), {"p": bad, "w": ones}, {n: 3})


def test_nan_satisfies_a_declared_assumption() -> None:
    """NaN propagates (README): it is not refused as a violation."""
    p = sp.Symbol("p", positive=True)
    der, _ = _scaled_by(sp.Abs(p))
    assert np.isnan(der.compile(jit=False)(p=np.nan, w=np.ones((2, 1))).value)


def test_indexed_input_declared_positive_is_checked_entrywise() -> None:
    i = sp.Idx("i", n)
    x = sp.IndexedBase("x", shape=(n,), positive=True)
    der = symdl.derive(sp.Sum(sp.Abs(x[i]) * w_col[i, 0], (i, 0, n - 1)), wrt=[w_col])
    kernel = der.compile(jit=False)
    with pytest.raises(symdl.KernelArgumentError, match=r"x was declared positive.*index \[1\]"):
        kernel(x=np.array([1.0, -2.0, 3.0]), w=np.ones((3, 1)))
    assert kernel(x=np.array([1.0, 2.0, 3.0]), w=np.ones((3, 1))).value == 6.0


def test_check_draws_values_that_satisfy_declarations() -> None:
    """symdl.check draws its test points inside the declared sets (negative here)."""
    q = sp.Symbol("q", negative=True)
    der = symdl.derive(sp.Abs(q) * symdl.sum(symdl.tanh(w_col)), wrt=[w_col])
    report = symdl.check(der, dims={n: 3}, jit=False)
    assert report.ok, report


VALUES = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0, np.inf, -np.inf)
ALLOWED = {  # by hand: which of VALUES each declaration admits
    "positive": (0.5, 1.0, 2.0, 3.0, np.inf),
    "negative": (-2.0, -1.0, -np.inf),
    "nonnegative": (0.0, 0.5, 1.0, 2.0, 3.0, np.inf),
    "nonpositive": (-2.0, -1.0, 0.0, -np.inf),
    "nonzero": (-2.0, -1.0, 0.5, 1.0, 2.0, 3.0, np.inf, -np.inf),
    "integer": (-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, np.inf, -np.inf),
    "even": (-2.0, 0.0, 2.0),
    "odd": (-1.0, 1.0, 3.0),
}


@pytest.mark.parametrize("assumption", list(ALLOWED))
def test_declared_assumption_checks_admit_exactly_their_sets(assumption: str) -> None:
    from symdl.ir.assumptions import conform, violation
    p = sp.Symbol("p", **{assumption: True})
    for v in VALUES:
        assert (violation(p, v) is None) == (v in ALLOWED[assumption]), v
        assert (violation(p, np.array([1.5, v])) is None) == (
            v in ALLOWED[assumption] and violation(p, 1.5) is None), v
    assert violation(p, np.nan) is None
    drawn = np.random.default_rng(0).normal(size=20)
    assert violation(p, conform(p, drawn)) is None
    assert violation(p, conform(p, float(drawn[0]))) is None


@pytest.mark.parametrize("jit", [False, True])
def test_gram_hessian_with_unit_weight_is_computed(jit):
    """The Hessian of a squared residual through a named nonlinearity is ``2 A^T diag(1) A``:
    its weight is a ones vector, which has no array (the generated code read an undefined
    one). Checked against the Hessian written by hand with NumPy."""
    n, d, h = sp.symbols("n d h", integer=True, positive=True)
    X, W = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("W", d, h)
    V, y = sp.MatrixSymbol("V", h, 1), sp.MatrixSymbol("y", n, 1)
    S = sp.MatrixSymbol("S", n, 1)
    der = symdl.derive([(S, sp.HadamardPower(symdl.tanh(X * W) * V - y, 2)),
                        (sp.Symbol("L"), symdl.sum(S))],
                       wrt=[V], hessian=True)
    rng = np.random.default_rng(3)
    x, w, v, yy = (rng.standard_normal(s) for s in [(7, 3), (3, 5), (5, 1), (7, 1)])
    out = der.compile(jit=jit)(X=x, W=w, V=v, y=yy)
    a = np.tanh(x @ w)
    np.testing.assert_allclose(out.hessian["V", "V"], 2 * a.T @ a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.grad["V"], 2 * a.T @ (a @ v - yy), rtol=1e-12, atol=1e-12)


def test_interpreted_float32_kernel_computes_exp_right():
    """``jit=False`` runs the generated source with NumPy scalars: a float32 entry kept its
    precision through _exp's rounding constant and exp came out wrong (a float32 softmax
    cross-entropy 32.76 instead of 28.02). Checked against torch in float64."""
    n, k = sp.symbols("n k", integer=True, positive=True)
    Z, Y = sp.MatrixSymbol("Z", n, k), sp.MatrixSymbol("Y", n, k)
    loss = (symdl.softmax_cross_entropy(Z, Y) + symdl.sum(symdl.tanh(Z))
            + symdl.sum(symdl.sigmoid(Z)) + symdl.sum(symdl.softplus(Z)))
    der = symdl.derive(loss, wrt=[Z])
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(4, 5)) * 3).astype(np.float32)
    y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 4)]
    out = der.compile(jit=False)(Z=z, Y=y)
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y, dtype=torch.float64)
    ref = (torch.nn.functional.cross_entropy(zt, yt.argmax(1)) + torch.tanh(zt).sum()
           + torch.sigmoid(zt).sum() + torch.nn.functional.softplus(zt).sum())
    ref.backward()
    np.testing.assert_allclose(out.value, ref.item(), rtol=1e-5)
    np.testing.assert_allclose(out.grad["Z"], zt.grad.numpy(), rtol=1e-5, atol=1e-6)
