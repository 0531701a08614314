"""Tensor results print as the textbook writes them (symdl.printing.tensor_forms): a
convolution as ``K ⋆ X``, its backprop as ``X ⋆ δ`` and ``δ ⋆ᵀ K``, pooling and its
transpose, flatten/unflatten, ``E[idx]`` and its scatter-add; printed forms evaluate back to
the derivation's own values."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import catalog
from symdl.printing.latex import SymdlLatexPrinter


@pytest.fixture(scope="module")
def cnn():
    return catalog.load("model_cnn").derive()


def _text(equations) -> dict[str, str]:
    return {str(eq.lhs): str(eq.rhs) for eq in equations}


def test_the_cnn_backprop_reads_as_the_textbook(cnn):
    eqs = _text(cnn.equations())
    assert eqs["dZ2"] == "1/n*(-Y + Softmax(Z2, 1))"
    assert eqs["dP1"] == "unflatten(dZ2*W2.T)"
    assert eqs["dA1"] == "maxpool2x2ᵀ(dP1; argmax A1)"
    assert eqs["dK1"] == "X ⋆ dZ1"
    assert eqs["db1"] == "sum[axes 0,1,2](dZ1)"
    assert eqs["dW2"] == "flatten(P1).T*dZ2"
    defs = _text(cnn.definitions())
    assert defs["Z1"] == "K1 ⋆ X + b1" and defs["P1"] == "maxpool2x2(A1)"


@pytest.mark.parametrize("name,lines", [
    ("layer_conv2d", {"dX": "dA ⋆ᵀ[p=1] K", "dK": "X ⋆[p=1] dA", "dbias": "sum[axes 0,1,2](dA)"}),
    ("layer_conv1d", {"dX": "dY ⋆ᵀ[p=1] W", "dW": "X ⋆[p=1] dY"}),
    ("layer_avgpool2d", {"dX": "avgpool3x3ᵀ[p=1](dP)"}),
    ("layer_embedding", {"dE": "scatter_add[idx](dA)"}),
])
def test_layer_gradients_print_in_convolution_notation(name, lines):
    eqs = _text(catalog.load(name).derive().equations())
    for lhs, rhs in lines.items():
        assert eqs[lhs] == rhs


def test_latex_uses_star_and_its_transpose():
    der = catalog.load("layer_conv2d").derive()
    tex = der.to_latex()
    assert r"K \star_{p=1} X" in tex and r"\star^{\top}_{p=1}" in tex
    assert r"n \times 5 \times 5 \times o" in tex  # tensor shapes in the right-hand column
    printer = SymdlLatexPrinter()
    X = sp.IndexedBase("X", shape=(2, 8, 8, 1))
    assert printer.doprint(symdl.max_pool2d(X, 2)) == (
        r"\operatorname{maxpool}_{2\times 2}\left(X\right)")


def test_the_chain_rule_row_of_a_tensor_step(cnn):
    assert (r"\frac{\partial L}{\partial P_{1}} \frac{\partial P_{1}}{\partial A_{1}}"
            in cnn.to_latex())


def test_printed_gradients_evaluate_to_the_derivations_values(cnn):
    rng = np.random.default_rng(5)
    values = {"X": rng.uniform(0, 1, (3, 8, 8, 1)), "Y": np.eye(10)[[1, 4, 7]],
              "K1": rng.normal(size=(3, 3, 1, 4)), "b1": rng.normal(size=4),
              "W2": rng.normal(size=(36, 10)) / 6, "b2": rng.normal(size=(1, 10))}
    dims = {cnn.dims and next(iter(cnn.dims)): 3}
    out = cnn.evaluate(values, dims)
    for p in cnn.wrt:
        name = str(getattr(p, "name", p))
        printed = symdl.evaluate(cnn.gradient(p), values, dims)  # the closed form, inlined
        np.testing.assert_allclose(np.reshape(printed, out[f"grad:{name}"].shape),
                                   out[f"grad:{name}"], rtol=1e-12, atol=1e-14)
        if name not in ("K1", "b1"):  # lambdify (slow to build) the convolution's own two
            continue
        args = sorted(cnn.gradient(p).free_symbols, key=str)
        lambdified = sp.lambdify(args, cnn.gradient(p), "numpy")
        got = lambdified(*[dims[a] if a in dims else values[str(a)] for a in args])
        np.testing.assert_allclose(np.reshape(got, out[f"grad:{name}"].shape),
                                   out[f"grad:{name}"], rtol=1e-12, atol=1e-14)


def test_an_adjoint_that_is_a_tensor_input_has_its_shape():
    tex = catalog.load("layer_maxpool2d").derive().to_latex()
    assert r"\frac{\partial L}{\partial P} &= G && n \times 2 \times 2 \times c" in tex


def test_fused_factors_print_inside_the_convolution_and_evaluate_back():
    # One expression (no named steps): einsum fusion puts relu' into the products of the
    # weight gradient and the transposed convolution; they still print as ⋆ and ⋆ᵀ.
    n = sp.Symbol("n", integer=True, positive=True)
    X = sp.IndexedBase("X", shape=(n, 6, 6, 2))
    K = sp.IndexedBase("K", shape=(3, 3, 2, 4))
    K2 = sp.IndexedBase("K2", shape=(3, 3, 4, 3))
    deep = symdl.conv2d(symdl.relu(symdl.conv2d(X, K, padding=1)), K2, stride=2)
    der = symdl.derive(symdl.total(sp.HadamardPower(symdl.flatten(deep), 2)), wrt=[K, X])
    eqs = _text(der.equations())
    assert eqs["dK"].startswith("X ⋆[p=1] ((") and "⋆ᵀ[s=2] K2) ⊙ Heaviside(" in eqs["dK"]
    assert eqs["dX"].endswith("⋆ᵀ[p=1] K")
    rng = np.random.default_rng(2)
    values = {"X": rng.normal(size=(2, 6, 6, 2)), "K": rng.normal(size=(3, 3, 2, 4)),
              "K2": rng.normal(size=(3, 3, 4, 3))}
    out = der.evaluate(values, {n: 2})
    for p, name in ((K, "K"), (X, "X")):
        printed = symdl.evaluate(der.gradient(p), values, {n: 2})
        np.testing.assert_allclose(printed, out[f"grad:{name}"], rtol=1e-12, atol=1e-12)
