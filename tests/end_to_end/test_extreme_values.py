"""Extreme logits: value and gradient of every loss stay finite and accurate.

The reference is independent of symdl's IR: the SymPy definition is written out at concrete
small sizes (``doit`` on the explicit sums), differentiated entry by entry with SymPy and
evaluated at 50 digits (mpmath through ``evalf``). float64 kernels must agree to a relative
error of 1e-10 (max-norm, relative to the largest reference entry, or to ``TINY``) for logits
up to ±1000; float32 kernels must stay finite for logits up to ±80.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl import catalog as registry

SIZES = 2, 3  # rows, columns of the logits
DIGITS = 50
TINY = 1e-30
"""Below this magnitude the error is measured against it: a value of 1e-59 that float64
computes as a difference of order-one terms (a KL divergence of nearly equal distributions)
is 0.0 to every float64 algorithm."""


def _vocabulary_cases():
    n, c = sp.symbols("n c", integer=True, positive=True)
    Z = sp.MatrixSymbol("Z", n, c)
    Y = sp.MatrixSymbol("Y", n, c)
    return {
        "softmax_cross_entropy": (symdl.softmax_cross_entropy(Z, Y), Z),
        "binary_cross_entropy_with_logits": (symdl.binary_cross_entropy_with_logits(Z, Y), Z),
        "mse": (symdl.mse(Z, Y), Z),
        "log_softmax": (symdl.total(symdl.log_softmax(Z)), Z),
        "logsumexp": (symdl.total(symdl.logsumexp(Z)), Z),
    }


def _registry_cases():
    cases = {}
    for name in registry.names():
        logits = getattr(importlib.import_module(f"symdl.derivations.{name}"), "LOGITS", None)
        if logits is not None:
            cases[f"derivations.{name}"] = (name, logits)
    return cases


VOCABULARY = _vocabulary_cases()
REGISTRY = _registry_cases()


def _single_expression(der: symdl.Derivation) -> sp.Basic:
    expr = der.steps[-1][1]
    for symbol, definition in reversed(der.steps[:-1]):
        expr = expr.xreplace({symbol: definition})
    return expr


def _setup(der: symdl.Derivation, logits_name: str, scale: float, dtype, seed: int):
    rng = np.random.default_rng(seed)
    dims = sorted(der.dims, key=str)
    leaves = der.leaves
    logits_leaf = leaves[logits_name]
    sizes = dict.fromkeys(dims, SIZES[1])
    if len(logits_leaf.shape) == 2 and isinstance(logits_leaf.shape[0], sp.Symbol):
        sizes[logits_leaf.shape[0]] = SIZES[0]
    values = {}
    for name, leaf in leaves.items():
        shape = tuple(int(sp.sympify(s).subs(sizes)) for s in leaf.shape)
        if name == logits_name:
            array = scale * rng.uniform(-1, 1, shape)
            array.flat[0] = scale
            array.flat[-1] = -scale
        else:
            array = rng.uniform(0.05, 1.0, shape)  # labels, targets, weights: probabilities
            if len(shape) == 2 and shape[-1] > 1:
                array /= array.sum(axis=1, keepdims=True)
        values[name] = array.astype(dtype) if shape else float(array)
    return sizes, values


def _expand_sum(total: sp.Sum) -> sp.Basic:
    """Writes a sum over concrete ranges out term by term."""
    terms = [total.function]
    for index, low, high in total.limits:
        terms = [t.xreplace({index: sp.Integer(k)}) for t in terms
                 for k in range(int(low), int(high) + 1)]
    return sp.Add(*terms)


def _reference(expr: sp.Basic, sizes, values, logits_name):
    explicit = expr.subs(sizes).doit()
    if isinstance(explicit, sp.MatrixBase):
        explicit = explicit[0, 0]
    explicit = explicit.replace(lambda e: isinstance(e, sp.Sum), _expand_sum)
    substitutions = {}
    entries = []
    for element in explicit.atoms(sp.matrices.expressions.matexpr.MatrixElement):
        name = str(element.parent.name)
        i, j = int(element.i), int(element.j)
        substitutions[element] = sp.Float(repr(float(values[name][i, j])), DIGITS + 10)
        if name == logits_name:
            entries.append((element, (i, j)))
    for symbol in explicit.free_symbols:
        if isinstance(symbol, sp.Symbol) and str(symbol) in values:
            substitutions[symbol] = sp.Float(repr(float(values[str(symbol)])), DIGITS + 10)
    value = float(explicit.xreplace(substitutions).evalf(DIGITS))
    grad = np.zeros(values[logits_name].shape)
    for element, (i, j) in entries:
        grad[i, j] = float(sp.diff(explicit, element).xreplace(substitutions).evalf(DIGITS))
    return value, grad


def _check(der, expr, logits_name, seed):
    kernel = der.compile()
    for scale in (1000.0, 30.0):
        sizes, values = _setup(der, logits_name, scale, np.float64, seed)
        result = kernel(**values)
        value, grad = _reference(expr, sizes, values, logits_name)
        assert np.isfinite(result.value) and np.all(np.isfinite(result.grad[logits_name]))
        assert abs(result.value - value) <= 1e-10 * max(abs(value), TINY), (scale, value)
        error = np.max(np.abs(result.grad[logits_name] - grad))
        assert error <= 1e-10 * max(np.max(np.abs(grad)), TINY), (scale, error)
    sizes, values = _setup(der, logits_name, 80.0, np.float32, seed)
    result = kernel(**values)
    assert np.isfinite(result.value) and np.all(np.isfinite(result.grad[logits_name]))


@pytest.mark.parametrize("name", list(VOCABULARY))
def test_vocabulary_loss_extreme_logits(name):
    expr, logits = VOCABULARY[name]
    der = symdl.derive(expr, wrt=[logits])
    _check(der, expr, "Z", seed=len(name))


@pytest.mark.parametrize("case", list(REGISTRY))
def test_shipped_loss_extreme_logits(case):
    name, logits_name = REGISTRY[case]
    der = registry.load(name).derive()
    params = {str(getattr(p, "name", p)) for p in der.wrt}
    if logits_name not in params:
        leaf = der.leaves[logits_name]
        der = symdl.derive(list(der.steps) if len(der.steps) > 1 else der.steps[-1][1],
                           wrt=[leaf.symbol])
    _check(der, _single_expression(der), logits_name, seed=len(name))


# -- binary cross-entropy with logits: exact entry by entry ------------------------------------

BCE_LOGITS = np.concatenate([np.linspace(-1000, 1000, 41), [-40, -37, -20, -1e-3, 0, 1e-3, 20,
                                                              37, 40, 700, 705]])


SUBNORMAL = np.finfo(np.float64).tiny
"""Below the smallest normal float64 (2.2e-308, e^-708) a number has fewer digits: only the
absolute error means something there (softplus(-750) is 0 or the smallest subnormal)."""


def _bce_reference(z: float, y: float) -> tuple[float, float]:
    """softplus(z) - y z and σ(z) - y with mpmath, written as the definition says; 1500
    digits, because at z = 1000 the difference is e^-1000 next to 1000 (435 digits apart)."""
    import mpmath

    with mpmath.workdps(1500):
        zm, ym = mpmath.mpf(z), mpmath.mpf(y)
        value = mpmath.log1p(mpmath.exp(zm)) - ym * zm
        grad = 1 / (1 + mpmath.exp(-zm)) - ym
        return float(value), float(grad)


@pytest.mark.parametrize("jit", [False, True])
def test_binary_cross_entropy_with_logits_exact_entrywise(jit):
    """Issue 15 item 7: at z = 40, y = 1 the loss is 4.2e-18, not 0 (softplus(z) - y z
    cancels); every entry of the loss and of its gradient σ(z) - y within 1e-13 relative,
    for z in [-1000, 1000] and y in {0, 0.3, 1}."""
    z = sp.MatrixSymbol("z", sp.Symbol("n", integer=True, positive=True), 1)
    y = sp.MatrixSymbol("y", *z.shape)
    der = symdl.derive(symdl.binary_cross_entropy_with_logits(z, y), wrt=[z])
    kernel = der.compile(jit=jit)
    for label in (0.0, 0.3, 1.0):
        for logit in BCE_LOGITS:
            value, grad = _bce_reference(float(logit), label)
            arrays = {"z": np.array([[logit]]), "y": np.array([[label]])}
            for how, got in (("kernel", kernel(**arrays)), ("evaluate", None)):
                if got is None:
                    result = der.evaluate(arrays)
                    got_value, got_grad = float(result["value"]), float(result["grad:z"][0, 0])
                else:
                    got_value, got_grad = float(got.value), float(got.grad["z"][0, 0])
                where = f"{how}: z = {logit}, y = {label}"
                assert got_value == pytest.approx(value, rel=1e-13, abs=SUBNORMAL), where
                assert got_grad == pytest.approx(grad, rel=1e-13, abs=SUBNORMAL), where


# -- masked logits: -inf off the label ---------------------------------------------------------

MASKED_LOGITS = np.array([[0.5, -np.inf, 1.0, -2.0],
                          [-np.inf, -np.inf, 3.0, -np.inf],
                          [2.0, 3.0, -np.inf, 700.0]])
MASKED_LABELS = np.array([0, 2, 1])


def _torch_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    import torch

    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(z, torch.tensor(labels))
    (grad,) = torch.autograd.grad(loss, z, create_graph=True)
    hessian_rows = [torch.autograd.grad(grad.flatten()[m], z, retain_graph=True)[0].flatten()
                    for m in range(z.numel())]
    hessian = torch.stack(hessian_rows).detach().numpy()
    return loss.item(), grad.detach().numpy(), hessian


@pytest.mark.parametrize("jit", [False, True])
def test_softmax_cross_entropy_masked_logits(jit):
    """Issue 15 item 8: one-hot labels with -inf logits off the label (padding, attention
    masks) give PyTorch's finite loss, gradient and Hessian, not NaN from 0 · -inf."""
    n, c = sp.symbols("n c", integer=True, positive=True)
    Z, Y = sp.MatrixSymbol("Z", n, c), sp.MatrixSymbol("Y", n, c)
    der = symdl.derive(symdl.softmax_cross_entropy(Z, Y), wrt=[Z], hessian=True)
    onehot = np.eye(MASKED_LOGITS.shape[1])[MASKED_LABELS]
    value, grad, hessian = _torch_cross_entropy(MASKED_LOGITS, MASKED_LABELS)
    direction = np.linspace(-1, 1, MASKED_LOGITS.size).reshape(MASKED_LOGITS.shape)
    got = der.compile(jit=jit, hvp=True)(Z=MASKED_LOGITS, Y=onehot, v_Z=direction)
    evaluated = der.evaluate({"Z": MASKED_LOGITS, "Y": onehot})
    for how, (v, g, h) in {
        "kernel": (got.value, got.grad["Z"], got.hessian[("Z", "Z")]),
        "evaluate": (evaluated["value"], evaluated["grad:Z"], evaluated["hessian:Z,Z"]),
    }.items():
        assert float(v) == pytest.approx(value, rel=1e-13), how
        np.testing.assert_allclose(g, grad, rtol=1e-13, atol=1e-16, err_msg=how)
        np.testing.assert_allclose(np.reshape(h, hessian.shape), hessian, rtol=1e-12,
                                   atol=1e-16, err_msg=how)
    hvp = hessian @ direction.reshape(-1)
    np.testing.assert_allclose(got.hvp["Z"].reshape(-1), hvp, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("jit", [False, True])
def test_masked_rows_in_softmax_and_logsumexp(jit):
    """Softmax and log-sum-exp stay finite wherever a row has one finite entry: the masked
    entries get probability 0 and gradient 0 (against PyTorch)."""
    import torch

    n, c = sp.symbols("n c", integer=True, positive=True)
    Z, Y = sp.MatrixSymbol("Z", n, c), sp.MatrixSymbol("Y", n, c)
    weights = np.linspace(0.1, 1.0, MASKED_LOGITS.size).reshape(MASKED_LOGITS.shape)
    loss = symdl.total(symdl.logsumexp(Z)) + symdl.total(sp.hadamard_product(Y, symdl.softmax(Z)))
    der = symdl.derive(loss, wrt=[Z])
    z = torch.tensor(MASKED_LOGITS, requires_grad=True)
    expected = (torch.logsumexp(z, 1).sum()
                + (torch.tensor(weights) * torch.softmax(z, 1)).sum())
    (grad,) = torch.autograd.grad(expected, z)
    got = der.compile(jit=jit)(Z=MASKED_LOGITS, Y=weights)
    evaluated = der.evaluate({"Z": MASKED_LOGITS, "Y": weights})
    for v, g in ((got.value, got.grad["Z"]), (evaluated["value"], evaluated["grad:Z"])):
        assert float(v) == pytest.approx(expected.item(), rel=1e-13)
        np.testing.assert_allclose(g, grad.numpy(), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("jit", [False, True])
def test_binary_cross_entropy_of_linear_logits_exact(jit):
    """The same exactness when the logits are a product ``X w`` (the logistic regression of
    ``symdl.derivations``), for the loss and for the gradient ``Xᵀ (σ(X w) - y) / n``."""
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, w, y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
    der = symdl.derive(symdl.binary_cross_entropy_with_logits(X * w, y), wrt=[w])
    kernel = der.compile(jit=jit)
    for logit, label in ((40.0, 1.0), (-40.0, 0.0), (700.0, 1.0), (37.0, 0.3)):
        value, grad = _bce_reference(logit, label)
        arrays = {"X": np.array([[1.0, 0.0]]), "w": np.array([[logit], [0.3]]),
                  "y": np.array([[label]])}
        got = kernel(**arrays)
        evaluated = der.evaluate(arrays)
        for how, v, g in (("kernel", got.value, got.grad["w"]),
                          ("evaluate", evaluated["value"], evaluated["grad:w"])):
            where = f"{how}: z = {logit}, y = {label}"
            assert float(v) == pytest.approx(value, rel=1e-13, abs=SUBNORMAL), where
            assert float(g[0, 0]) == pytest.approx(grad, rel=1e-13, abs=SUBNORMAL), where
            assert float(g[1, 0]) == 0.0, where


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_max_pool_padding_never_wins_over_huge_negative_inputs(dtype):
    # Every entry far below zero (-1e35 in float64, -1e37 in float32, both finite): padded
    # windows must still take their maximum among the entries read, as torch's -inf padding.
    torch = pytest.importorskip("torch")
    nb = sp.Symbol("n", integer=True, positive=True)
    x = sp.IndexedBase("X", shape=(nb, 4, 4, 2))
    g = sp.IndexedBase("G", shape=(nb, 2, 2, 2))
    b, i, j, c = sp.symbols("b i j c", integer=True)
    pooled = sp.IndexedBase("P", shape=(nb, 2, 2, 2))
    model = [(pooled, symdl.max_pool2d(x, 3, stride=2, padding=1)),
             (sp.Symbol("L"), sp.Sum(pooled[b, i, j, c] * g[b, i, j, c],
                                     (b, 0, nb - 1), (i, 0, 1), (j, 0, 1), (c, 0, 1)))]
    der = symdl.derive(model, wrt=[x])
    rng = np.random.default_rng(5)
    scale = 1e35 if dtype == np.float64 else 1e37
    xv = (-scale * (1 + rng.random((3, 4, 4, 2)))).astype(dtype)
    gv = rng.normal(size=(3, 2, 2, 2)).astype(dtype)
    xt = torch.tensor(xv.astype(np.float64), requires_grad=True)
    top = torch.nn.functional.max_pool2d(xt.permute(0, 3, 1, 2), 3, 2, 1).permute(0, 2, 3, 1)
    (gx,) = torch.autograd.grad((top * torch.tensor(gv.astype(np.float64))).sum(), (xt,))
    for jit in (False, True):
        got = der.compile(jit=jit)(X=xv, G=gv)
        want = float((top.detach().numpy() * gv).sum())
        assert got.value == pytest.approx(want, rel=1e-5 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(got.grad["X"], gx.numpy(), rtol=1e-6)
