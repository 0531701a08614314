"""Property-based tests: random well-formed definitions, every kernel output checked.

A hypothesis strategy builds random scalar losses over symdl's vocabulary: elementwise
sigmoid, tanh, exp, softplus, relu and log of a positive input or of a sigmoid; matrix
products, transposes, sums, Hadamard products, scalar multiples, softmax, log-sum-exp, sums
and means over an axis, and compositions of these; over symbolic shapes (n, d, h, k) bound to
random sizes from 1 to 4. For each definition symdl derives every gradient and every Hessian
block, compiles kernels with Hessian-vector products, and ``symdl.check`` compares each
output with Richardson-extrapolated finite differences, with the complex step (where every
function has an analytic continuation) and with SymPy's own evaluation of the printed
formulas.

Runs: ``EXAMPLES`` (490; ``SYMDL_PROPERTY_EXAMPLES`` sets another) definitions with interpreted
kernels (``jit=False``: the same generated source run as plain Python, since Numba
compilation costs about a second per kernel) and ``JIT_EXAMPLES`` (10) with Numba-compiled
kernels. The examples are derandomised, so CI runs are reproducible; set
``SYMDL_PROPERTY_SEED`` to explore others.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import symdl

EXAMPLES = int(os.environ.get("SYMDL_PROPERTY_EXAMPLES", "490"))
JIT_EXAMPLES = 10
DIMS = sp.symbols("n d h k", integer=True, positive=True)

_SETTINGS = dict(deadline=None, derandomize="SYMDL_PROPERTY_SEED" not in os.environ,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                 print_blob=True)


class _Builder:
    """Draws one random expression tree; parameters are named P0, P1, ..., data D0, ...."""

    def __init__(self, draw):
        self.draw = draw
        self.params: list[sp.MatrixSymbol] = []
        self.data = 0

    def leaf(self, rows, cols, positive=False) -> sp.MatrixExpr:
        if positive or self.draw(st.booleans()) or not self.params:
            prefix = "Q" if positive else "P"
            symbol = sp.MatrixSymbol(f"{prefix}{len(self.params)}", rows, cols)
            self.params.append(symbol)
            return symbol
        self.data += 1
        return sp.MatrixSymbol(f"D{self.data}", rows, cols)

    def dim(self):
        return self.draw(st.sampled_from(DIMS + (1,)))

    def matrix(self, rows, cols, depth: int) -> sp.MatrixExpr:
        if depth <= 0:
            return self.leaf(rows, cols)
        kinds = ["leaf", "map", "map", "matmul", "transpose", "hadamard", "scale", "add"]
        if cols != 1:
            kinds.append("softmax")
        if cols == 1:
            kinds += ["logsumexp", "rowsum"]
        if rows == 1:
            kinds.append("colmean")
        kind = self.draw(st.sampled_from(kinds))
        sub = depth - 1
        if kind == "leaf":
            return self.leaf(rows, cols)
        if kind == "map":
            f = self.draw(st.sampled_from(["sigmoid", "tanh", "exp", "softplus", "relu",
                                           "log_positive", "log_sigmoid"]))
            if f == "log_positive":
                return symdl.log(self.leaf(rows, cols, positive=True))
            inner = self.matrix(rows, cols, sub)
            if f == "log_sigmoid":
                return symdl.log(symdl.sigmoid(inner))
            if f == "exp":  # keep exp's argument bounded
                return symdl.exp(symdl.tanh(inner))
            return getattr(symdl, f)(inner)
        if kind == "matmul":
            inner = self.dim()
            return self.matrix(rows, inner, sub) * self.matrix(inner, cols, sub)
        if kind == "transpose":
            return self.matrix(cols, rows, sub).T
        if kind == "hadamard":
            return sp.hadamard_product(self.matrix(rows, cols, sub), self.matrix(rows, cols, sub))
        if kind == "scale":
            c = self.draw(st.sampled_from([sp.Rational(1, 2), sp.Integer(-3), sp.Rational(5, 3)]))
            return c * self.matrix(rows, cols, sub)
        if kind == "add":
            return self.matrix(rows, cols, sub) + self.matrix(rows, cols, sub)
        if kind == "softmax":
            return symdl.softmax(self.matrix(rows, cols, sub))
        if kind == "logsumexp":
            return symdl.logsumexp(self.matrix(rows, self.dim(), sub))
        if kind == "rowsum":
            return symdl.sum(self.matrix(rows, self.dim(), sub), axis=1)
        return symdl.mean(self.matrix(self.dim(), cols, sub), axis=0)


@st.composite
def definitions(draw):
    """(loss, parameters, sizes): a random scalar loss over random symbolic shapes."""
    builder = _Builder(draw)
    rows, cols = builder.dim(), builder.dim()
    try:
        body = builder.matrix(rows, cols, draw(st.integers(1, 3)))
    except TypeError:  # SymPy itself refuses some 1 x 1 combinations ("Mix of Matrix and Scalar")
        assume(False)
    reduce = draw(st.sampled_from(["total", "mean", "weighted"]))
    if reduce == "total":
        loss = symdl.total(body)
    elif reduce == "mean":
        loss = symdl.mean(body)
    else:
        loss = symdl.total(sp.hadamard_product(builder.leaf(rows, cols), body))
    sizes = {s: draw(st.integers(1, 4)) for s in DIMS}
    return loss, builder.params, sizes


def _check_random_definition(case, jit: bool) -> None:
    loss, params, sizes = case
    der = symdl.derive(loss, wrt=params, hessian=True)
    used = {s: v for s, v in sizes.items() if s in der.dims}
    report = symdl.check(der, dims=used, jit=jit, seed=len(params))
    assert report.ok, f"{loss}\n{report}"
    methods = {r.method for r in report.rows}
    assert "sympy reference" in methods
    assert any(r.output.startswith("hessian:") for r in report.rows)


@settings(max_examples=EXAMPLES, **_SETTINGS)
@given(definitions())
def test_random_definitions_interpreted(case):
    _check_random_definition(case, jit=False)


@pytest.mark.filterwarnings("ignore::numba.NumbaPerformanceWarning")
@settings(max_examples=JIT_EXAMPLES, **_SETTINGS)
@given(definitions())
def test_random_definitions_jitted(case):
    _check_random_definition(case, jit=True)


# ---------------------------------------------------------------------------------------------
# Random windowed definitions (affine indices), against torch.nn.functional

WINDOWED_EXAMPLES = 8  # about 0.4 s each


@st.composite
def windowed(draw):
    """A random 1-D or 2-D convolution written in plain SymPy with random stride, dilation
    and padding (X[b, c, s*t + d*k - p]), its sizes, and the input arrays."""
    rank = draw(st.sampled_from([1, 2]))
    stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    width, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    length = draw(st.integers(max(1, dilation * (width - 1) + 1 - 2 * padding), 6))
    out = (length + 2 * padding - dilation * (width - 1) - 1) // stride + 1
    assume(out >= 1)
    channels, outputs = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    return rank, stride, dilation, width, padding, length, out, channels, outputs, seed


@settings(max_examples=WINDOWED_EXAMPLES, **_SETTINGS)
@given(windowed())
def test_random_windowed_definitions_match_torch(case):
    torch = pytest.importorskip("torch")
    rank, stride, dilation, width, padding, length, out, channels, outputs, seed = case
    n, C, Co, L, R, Lo = sp.symbols("n C Co L R Lo", integer=True, positive=True)
    b, c, o, r, q, i, j = sp.symbols("b c o r q i j", integer=True)
    spatial = (i, j)[:rank]
    kernel = (r, q)[:rank]
    X = sp.IndexedBase("X", shape=(n, C) + (L,) * rank)
    W = sp.IndexedBase("W", shape=(Co, C) + (R,) * rank)
    G = sp.IndexedBase("G", shape=(n, Co) + (Lo,) * rank)
    positions = tuple(stride * s + dilation * k - padding
                      for s, k in zip(spatial, kernel, strict=True))
    conv = sp.Sum(W[(o, c) + kernel] * X[(b, c) + positions], (c, 0, C - 1),
                  *[(k, 0, R - 1) for k in kernel])
    loss = sp.Sum(G[(b, o) + spatial] * sp.tanh(conv), (b, 0, n - 1), (o, 0, Co - 1),
                  *[(s, 0, Lo - 1) for s in spatial])
    der = symdl.derive(loss, wrt=[W, X])
    rng = np.random.default_rng(seed)
    xv = rng.normal(size=(2, channels) + (length,) * rank)
    wv = rng.normal(size=(outputs, channels) + (width,) * rank)
    gv = rng.normal(size=(2, outputs) + (out,) * rank)
    got = der.evaluate({"X": xv, "W": wv, "G": gv})
    xt, wt = torch.tensor(xv, requires_grad=True), torch.tensor(wv, requires_grad=True)
    conv_fn = torch.nn.functional.conv1d if rank == 1 else torch.nn.functional.conv2d
    y = conv_fn(xt, wt, stride=stride, padding=padding, dilation=dilation)
    ref = (torch.tensor(gv) * torch.tanh(y)).sum()
    gx, gw = torch.autograd.grad(ref, (xt, wt))
    np.testing.assert_allclose(got["value"], ref.item(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["grad:X"], gx.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["grad:W"], gw.numpy(), rtol=1e-10, atol=1e-12)
