"""Row-separability decided from the derivation (no Dask, no kernel compiled).

Expected verdicts come from hand math on each loss's formula: a sum or mean of per-row terms
(plus data-free terms beside a mean) splits; batch statistics, functions of a mean, softmax
over the batch and products of two rows do not.
"""

from __future__ import annotations

import pytest
import sympy as sp

import symdl
from symdl import catalog
from symdl.errors import DerivationError, SymdlError
from symdl.scale.separable import NotRowSeparableError, row_split

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
y = sp.MatrixSymbol("y", n, 1)
w = sp.MatrixSymbol("w", d, 1)
Z = X * w


@pytest.mark.parametrize("name, scale, data", [
    ("logistic_regression", 1 / n, {"X": 0, "y": 0}),        # mean(softplus(z) - y z)
    ("linear_regression", sp.Integer(1), {"X": 0, "y": 0}),  # sum of squared residuals
    ("softmax_regression", 1 / n, {"X": 0, "Y": 0}),         # mean CE + lambda/2 |W|^2
    ("two_layer_mlp", 1 / n, {"X": 0, "Y": 0}),
])
def test_shipped_losses_that_split_over_rows(name, scale, data):
    split = row_split(catalog.load(name).derive())
    assert str(split.rows) == "n"
    assert sp.simplify(split.scale - scale) == 0
    assert split.data == data


@pytest.mark.parametrize("name, why", [
    ("layer_batchnorm", "statistic over all rows"),      # mu, var over the batch, used per row
    ("layer_attention", "two row indices"),     # Q K^T: row i meets row j
    ("layer_graph_conv", "two axes"),                    # the n x n adjacency
    ("model_map_gaussian_prior", "once per chunk"),      # d log(tau) beside a plain sum
])
def test_shipped_losses_that_couple_rows_are_refused(name, why):
    der = catalog.load(name).derive()
    with pytest.raises(NotRowSeparableError, match=why) as info:
        row_split(der, rows="n")
    assert isinstance(info.value, SymdlError) and isinstance(info.value, DerivationError)


def test_batchnorm_refusal_names_the_step():
    with pytest.raises(NotRowSeparableError, match=r"not row-separable over n.*step defining C"):
        row_split(catalog.load("layer_batchnorm").derive())


@pytest.mark.parametrize("loss, why", [
    (sp.log(symdl.mean(symdl.exp(Z))), "function"),                 # log of a mean
    (symdl.mean(Z) ** 2, "function"),                                # square of a mean
    (symdl.total(Z) + symdl.mean(symdl.exp(Z)), "normalisations"),   # sum + mean
    (symdl.total(symdl.softmax(Z, axis=0)), "softmax along the rows"),
    (symdl.total(sp.hadamard_product(Z - symdl.broadcast(sp.OneMatrix(1, n) * Z / n, n, 1),
                                     Z)), "two row indices"),   # the IR flattens the mean in
    (symdl.total(Z.T * Z) * symdl.total(Z), "two row indices"),
    (symdl.total(Z) + sp.log(n) * symdl.total(w), "once per chunk"),  # log(n) beside a sum
])
def test_losses_coupling_rows_are_refused(loss, why):
    der = symdl.derive(loss, wrt=[w])
    with pytest.raises(NotRowSeparableError, match=why):
        row_split(der)


def test_regulariser_beside_a_mean_and_n_log_sigma_beside_a_sum_split():
    sigma = sp.Symbol("sigma", positive=True)
    reg = symdl.mean(symdl.softplus(Z)) + 3 * symdl.total(sp.hadamard_product(w, w))
    nll = symdl.total(sp.HadamardPower(Z - y, 2)) / (2 * sigma**2) + n * sp.log(sigma)
    assert row_split(symdl.derive(reg, wrt=[w])).scale == 1 / n
    split = row_split(symdl.derive(nll, wrt=[w, sigma]))
    assert split.scale == 1 and set(split.shared) == {"w", "sigma"}


def test_chunk_weights_are_the_share_of_rows_for_a_mean_and_one_for_a_sum():
    mean = row_split(catalog.load("logistic_regression").derive())
    total = row_split(catalog.load("linear_regression").derive())
    assert mean.weight(30, 120) == pytest.approx(0.25, rel=1e-15)
    assert total.weight(30, 120) == 1.0


def test_per_row_parameters_and_unknown_rows_are_typed_errors():
    with pytest.raises(NotRowSeparableError, match=r"parameters \['X'\] have the batch"):
        row_split(catalog.load("layer_dense").derive(), rows="n")
    with pytest.raises(NotRowSeparableError, match="rows='k' is not a dimension"):
        row_split(catalog.load("logistic_regression").derive(), rows="k")
    with pytest.raises(NotRowSeparableError, match="not a scalar"):
        row_split(symdl.derive(Z, wrt=[w]))
    with pytest.raises(DerivationError, match="needs a Derivation"):
        row_split("logistic_regression")
