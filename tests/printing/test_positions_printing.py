"""Printing computed positions (``symdl.ir.indexed``) in index notation, text and LaTeX.

A windowed read prints as the array at its affine positions (``X[j, i + 2*k - 1]``), a
scatter as the gather of the transposed convolution (``W[j + 1 - 2*m]``), a gather as
``E[idx[b], j]``, a scatter-add with an Iverson bracket, a maximum and its first arg max as
named reductions over an index. The printed gradients are evaluated again through the front
end (``symdl.evaluate``: entries outside an array read as 0) and compared with torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import ir, latex
from symdl.printing.latex import SymdlLatexPrinter
from symdl.printing.plain import PlainPrinter
from symdl.printing.to_sympy import IndexForm, SympyPrinter

torch = pytest.importorskip("torch")
F = torch.nn.functional

n, T, K = sp.symbols("n T K", integer=True, positive=True)
b, t, k = sp.symbols("b t k", integer=True)
X, W = sp.IndexedBase("X", shape=(n, T)), sp.IndexedBase("W", shape=(K,))


@pytest.fixture(scope="module")
def strided():
    """softplus of a stride-2, padding-1 convolution: its gradients read and scatter."""
    conv = sp.Sum(W[k] * X[b, 2 * t + k - 1], (k, 0, K - 1))
    loss = sp.Sum(sp.log(1 + sp.exp(conv)), (t, 0, T - K - 1), (b, 0, n - 1))
    return symdl.derive(loss, wrt=[W, X], hessian=True)


def test_gradients_print_as_reads_and_gathers_that_evaluate_like_torch(strided):
    dw, dx = strided.gradient(W), strided.gradient(X)
    assert isinstance(dw, IndexForm) and isinstance(dx, IndexForm)
    text = str(dw.expr) + str(dx.expr)
    assert "X[j, i + 2*k - 1]" in text and "W[j - 2*m + 1]" in text, text
    assert "KroneckerDelta" not in str(dx.expr)  # the transposed convolution, solved
    rng = np.random.default_rng(3)
    xv, wv = rng.normal(size=(2, 8)), rng.normal(size=3)
    sizes = {n: 2, T: 8, K: 3}
    xt, wt = torch.tensor(xv, requires_grad=True), torch.tensor(wv, requires_grad=True)
    # t < T - K = 5 windows from position -1: one zero on the left, two on the right.
    conv = F.conv1d(F.pad(xt[:, None], (1, 2)), wt[None, None], stride=2)[:, 0]
    assert conv.shape == (2, 5)
    gx, gw = torch.autograd.grad(F.softplus(conv).sum(), (xt, wt))
    values = {"X": xv, "W": wv}
    np.testing.assert_allclose(symdl.evaluate(dw, values, sizes), gw.numpy(), rtol=1e-10)
    np.testing.assert_allclose(symdl.evaluate(dx, values, sizes), gx.numpy(), rtol=1e-10,
                               atol=1e-12)


def test_a_scatter_whose_argument_is_not_zero_outside_keeps_its_condition():
    # exp of the argument is 1, not 0, past its range: the condition stays a delta.
    x = ir.leaf("x", (K,), sp.IndexedBase("x", shape=(K,)))
    body = ir.map_(sp.Lambda(sp.Symbol("z"), sp.exp(sp.Symbol("z"))), x)
    scattered = ir.affine_scatter(body, (T,), (ir.AffineMap.of([2], 1),))
    form = SympyPrinter().result(scattered)
    assert "KroneckerDelta" in str(form.expr)
    sizes = {K: 3, T: 8}
    xv = np.array([0.1, 0.2, 0.3])
    expected = np.zeros(8)
    expected[[1, 3, 5]] = np.exp(xv)
    np.testing.assert_allclose(symdl.evaluate(form, {"x": xv}, sizes), expected, rtol=1e-12)


def test_printed_hessian_blocks_of_a_window_evaluate_to_the_derivation_s(strided):
    # The blocks print Kronecker deltas of computed positions; read back by the front end.
    rng = np.random.default_rng(4)
    values = {"X": rng.normal(size=(2, 8)), "W": rng.normal(size=3)}
    sizes = {n: 2, T: 8, K: 3}
    out = strided.evaluate(values)
    for p, q in ((W, W), (W, X), (X, X)):
        printed = symdl.evaluate(strided.hessian(p, q), values, sizes)
        np.testing.assert_allclose(printed, out[f"hessian:{p},{q}"], rtol=1e-10, atol=1e-12)


def test_gathers_scatter_adds_and_maxima_print_as_named_forms(tmp_path: Path):
    V, D = sp.symbols("V D", integer=True, positive=True)
    table = ir.leaf("E", (V, D), sp.IndexedBase("E", shape=(V, D)))
    idx = ir.leaf("idx", (n,), sp.IndexedBase("idx", shape=(n,), integer=True))
    x = ir.leaf("X", (n, T), X)
    printer = SympyPrinter()
    assert str(printer.result(ir.take(table, idx)).expr) == "E[idx[i], j]"
    rows = printer.result(ir.take_adjoint(ir.take(table, idx), idx, V))
    assert str(rows.expr) == "Sum(KroneckerDelta(i, idx[k])*E[idx[k], j], (k, 0, n - 1))"
    assert str(printer.result(ir.max_along(x, 1)).expr) == "max_{k=0..T - 1}(X[i, k])"
    mask = printer.result(ir.argmax_mask(x, 1)).expr
    assert str(mask) == "KroneckerDelta(j, argmax_{k=0..T - 1}(X[i, k]))"
    assert PlainPrinter().doprint(mask) == str(mask)
    tex = SymdlLatexPrinter().doprint(mask)
    assert tex == (r"[j = \operatorname*{arg\,max}_{0 \le k \le T - 1} \left(X_{i k}\right)]")
    if shutil.which("pdflatex") is None:
        pytest.fail("pdflatex is not installed; " + latex.INSTALL_HINT)
    source = ("\\documentclass{article}\\usepackage{amsmath}\\begin{document}\n$"
              + SymdlLatexPrinter().doprint(printer.result(ir.max_along(x, 1)).expr) + "$ $"
              + tex + "$\n\\end{document}\n")
    assert latex.compile_pdf(source, tmp_path / "max.pdf").stat().st_size > 1000


def test_a_windowed_derivation_typesets_readably(strided, tmp_path: Path):
    source = strided.to_latex()
    # Computed positions are comma separated; no flattened "X_{j 2 k + l - 1}".
    assert r"X_{j, i + 2 k - 1}" in source and r"W_{j + 1 - 2 m}" in source, source
    if shutil.which("pdflatex") is None:
        pytest.fail("pdflatex is not installed; " + latex.INSTALL_HINT)
    pdf = latex.compile_pdf(latex.document(strided, title="windowed"), tmp_path / "w.pdf")
    assert pdf.stat().st_size > 1000


def test_a_maximum_over_a_window_keeps_every_index():
    """Regression: SymPy merges max_a max_c f into one reduction with two limits (a 2-D
    pooling window in model_cnn's printed Hessian). It printed the first limit only and did
    not translate back; now both print, lambdify and evaluate through the front end."""
    from symdl.printing.reductions import MaxOver

    a, c = sp.symbols("a c", integer=True)
    Y = sp.IndexedBase("Y", shape=(n, 2, 3))
    window = MaxOver(MaxOver(Y[b, a, c], (c, 0, 2)), (a, 0, 1))
    assert len(window.limits) == 2
    assert str(window) == "max_{c=0..2, a=0..1}(Y[b, a, c])"
    tex = SymdlLatexPrinter().doprint(window)
    assert r"\substack{0 \le c \le 2 \\ 0 \le a \le 1}" in tex
    y = np.random.default_rng(0).normal(size=(4, 2, 3))
    expected = y.max(axis=(1, 2))
    form = IndexForm((b,), (n,), window)
    assert np.allclose(symdl.evaluate(form, {"Y": y}, {n: 4}), expected, rtol=0, atol=0)
    lambdified = sp.lambdify([Y, b], window, modules="numpy")
    assert [lambdified(y, i) for i in range(4)] == expected.tolist()
