"""Every shipped derivation: its gradients and Hessians agree with central finite differences
of its value, both as IR nodes and as the SymPy expressions a user gets."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import catalog as registry
from symdl.errors import UnsupportedError
from symdl.ir.assumptions import conform
from symdl.ir.evaluate import evaluate
from symdl.ir.keys import Value

SIZES = [{"default": 1}, {"default": 3}, {"default": 4, "n": 7}]


def _inputs(der: symdl.Derivation, rng: np.random.Generator, sizes: dict,
            module: object = None) -> tuple[dict, dict]:
    dims = {dim: sizes.get(str(dim), sizes["default"]) for dim in der.dims}
    # A large model declares the sizes its checks afford (an entry-by-entry difference of
    # a transformer block at 4 and 7 took a minute): they cap the ones asked for.
    cap = getattr(module, "CHECK_DIMS", {})
    dims = {dim: min(size, cap.get(dim, size)) for dim, size in dims.items()}
    values = {}
    for name, leaf in der.leaves.items():
        shape = tuple(int(sp.sympify(s).subs(dims)) for s in leaf.shape)
        if name == "Y":  # one-hot labels: each row sums to one
            values[name] = np.eye(shape[1])[rng.integers(0, shape[1], shape[0])]
        elif name == "y":
            values[name] = rng.integers(0, 2, shape).astype(float)
        else:
            # Declared assumptions hold (lr > 0): evaluation refuses values that break them.
            values[name] = conform(leaf.symbol, rng.normal(size=shape))
    hook = getattr(module, "sample_inputs", None)  # inputs that must be restricted
    if hook is not None:
        values.update(hook(rng, {str(dim): size for dim, size in dims.items()}))
    return values, dims


def _finite_difference(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x, dtype=float)
    for idx in np.ndindex(x.shape):
        step = h * max(1.0, abs(x[idx]))
        up, down = x.copy(), x.copy()
        up[idx] += step
        down[idx] -= step
        grad[idx] = (f(up) - f(down)) / (2 * step)
    return grad


@pytest.mark.parametrize("name", registry.names())
@pytest.mark.parametrize("sizes", SIZES, ids=["size1", "size3", "size4n7"])
def test_gradients_match_finite_differences(name: str, sizes: dict) -> None:
    entry = registry.load(name)
    der = entry.derive()
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # the same inputs in every run
    values, dims = _inputs(der, rng, sizes, entry.module)
    value = der.output_nodes()[Value()]
    for p in der.wrt:
        pname = str(p.name) if isinstance(p, sp.MatrixSymbol) else str(p)
        x0 = np.asarray(values[pname], dtype=float)

        def value_at(x, pname=pname):  # the value alone: not every gradient at each step
            return float(evaluate([value], {**values, pname: x}, dims)[0])

        numeric = _finite_difference(value_at, x0)
        derived = der.evaluate(values, dims)[f"grad:{pname}"]
        # Central differences at h = 1e-6 lose about 1e-10 |L| to rounding (a convolution's
        # loss sums hundreds of terms): the absolute tolerance scales with |L|.
        scale = max(1.0, abs(value_at(x0)))
        np.testing.assert_allclose(derived, numeric, rtol=1e-6, atol=1e-8 * scale)
        printed = symdl.evaluate(der.gradient(p), values | _named_values(der, values, dims),
                                 dims)
        np.testing.assert_allclose(printed.reshape(numeric.shape), numeric, rtol=1e-6, atol=1e-8)


GRADIENTS_ONLY = {"reg_nuclear_norm": {("W", "W")}}
"""Hessian blocks a shipped derivation states it does not have (through singular values),
which must raise ``UnsupportedError``; its other blocks are checked."""


def _named_values(der: symdl.Derivation, values: dict, dims: dict) -> dict:
    """The values of the named steps and their adjoints: a closed form too large to write
    out keeps some by name (``symdl.ir.naming.INLINE_LIMIT``; a transformer block's ``dN1``)."""
    named = [n for pair in der.adjoints for n in pair]
    arrays = evaluate([n.body for n in named], values, dims)
    return {n.name: a for n, a in zip(named, arrays, strict=True)}


def _with_printed_hessians() -> list[str]:
    """The derivations whose every printed Hessian block is compared here. A model with many
    parameters declares ``PRINTED_HESSIANS = False`` (a transformer block: 13 parameters,
    169 blocks of rank up to 6): its Hessian is checked through Hessian-vector products
    against finite differences by ``symdl.check`` (tests/verify/test_check.py)."""
    return [name for name in registry.names()
            if getattr(registry.load(name).module, "PRINTED_HESSIANS", True)]


@pytest.mark.parametrize("name", _with_printed_hessians())
def test_hessian_blocks_match_finite_differences_of_the_gradient(name: str) -> None:
    entry = registry.load(name)
    der = entry.derive()
    rng = np.random.default_rng(7)
    values, dims = _inputs(der, rng, {"default": 3, "n": 5}, entry.module)
    names = {p: str(getattr(p, "name", p)) for p in der.wrt}
    for q in der.wrt:
        qname = names[q]
        x0 = np.asarray(values[qname], dtype=float)
        # One evaluation gives every gradient: the finite differences along q serve all p.
        numeric = {p: np.zeros(np.shape(values[names[p]]) + x0.shape) for p in der.wrt}
        for idx in np.ndindex(x0.shape):
            step = 1e-6 * max(1.0, abs(x0[idx]))
            up, down = x0.copy(), x0.copy()
            up[idx] += step
            down[idx] -= step
            at_up = der.evaluate({**values, qname: up}, dims)
            at_down = der.evaluate({**values, qname: down}, dims)
            for p in der.wrt:
                difference = at_up[f"grad:{names[p]}"] - at_down[f"grad:{names[p]}"]
                numeric[p][(...,) + idx] = np.reshape(difference, numeric[p].shape[
                    :np.ndim(values[names[p]])]) / (2 * step)
        for p in der.wrt:
            if name in GRADIENTS_ONLY and (names[p], qname) in GRADIENTS_ONLY[name]:
                with pytest.raises(UnsupportedError, match="gradients only"):
                    der.hessian(p, q)
                continue
            printed = symdl.evaluate(der.hessian(p, q), values, dims)
            np.testing.assert_allclose(
                printed.reshape(-1), numeric[p].reshape(-1), rtol=1e-5, atol=1e-7,
                err_msg=f"{name}: Hessian block ({names[p]}, {qname})",
            )


def test_two_layer_network_backprop_reads_as_the_textbook() -> None:
    der = registry.load("two_layer_mlp").derive()
    from symdl.printing.plain import plain

    text = {str(lhs): plain(rhs) for lhs, rhs in der.equations()}
    assert list(text) == ["dZ2", "dA1", "dZ1", "dW1", "db1", "dW2", "db2"]
    assert text["dZ2"] == "(softmax(Z2) - Y)/n"
    assert text["dA1"] == "dZ2*W2^T"
    assert text["dZ1"] == "dA1 ⊙ (1 - A1^⊙2)"
    assert text["dW1"] == "X^T*dZ1"
    assert text["dW2"] == "A1^T*dZ2"
    assert text["db2"] == "1_n^T*dZ2"
