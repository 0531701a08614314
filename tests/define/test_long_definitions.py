"""Long definitions (issue 15, item 5): a chain of a thousand named steps and a sum of
thousands of terms derive, print and compute with no recursion on their length, and the
generated code is split into functions and expressions of bounded size.

The recursion checks run under a recursion limit only 200 frames above the test's own depth:
any walk that recursed once per step or per term would fail there. Expected values come from
hand-written NumPy backprop, never from symdl.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import sys

import numpy as np
import pytest
import sympy as sp

import symdl
import symdl.ir.naming
from symdl.define.limits import MAX_DEPTH, DefinitionTooLargeError
from symdl.errors import DerivationError
from symdl.kernels.driver import MAX_DRIVER_STATEMENTS

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
w = sp.MatrixSymbol("w", d, 1)


@contextlib.contextmanager
def shallow_stack(headroom: int = 200):
    """Python's recursion limit set ``headroom`` frames above the current depth."""
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + headroom)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def chain(steps: int) -> list:
    """Z0 = X w, Z_k = tanh(Z_{k-1}), L = sum(Z_N ⊙ Z_N)."""
    definition = []
    previous = X * w
    for k in range(steps):
        z = sp.MatrixSymbol(f"Z{k}", n, 1)
        body = previous if k == 0 else symdl.tanh(previous)
        definition.append((z, body))
        previous = z
    definition.append((sp.Symbol("L"), symdl.sum(sp.hadamard_product(previous, previous))))
    return definition


def chain_oracle(steps: int, x: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """The loss and its gradient by hand-written forward and backward passes."""
    zs = [x @ weights]
    for _ in range(1, steps):
        zs.append(np.tanh(zs[-1]))
    loss = float(np.sum(zs[-1] ** 2))
    grad_z = 2 * zs[-1]
    for z in reversed(zs[:-1]):
        grad_z = grad_z * (1 - np.tanh(z) ** 2)
    return loss, x.T @ grad_z


def test_chain_of_1000_named_steps_derives_prints_and_computes():
    steps = 1000
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)) * 0.3
    weights = rng.normal(size=(3, 1)) * 0.3
    with shallow_stack():
        der = symdl.derive(chain(steps), wrt=[w])
        equations = der.equations()
        # SymPy's str costs ~10 ms per equation here: both ends of the chain are printed.
        text = "\n".join(f"{lhs} = {rhs}" for lhs, rhs in equations[:3] + equations[-3:])
        kernel = der.compile(jit=False)
        out = kernel(X=x, w=weights)
    assert len(equations) == steps + 1  # one adjoint per named step, then dw
    assert "dZ0 = " in text and f"dZ{steps - 1} = " in text and "dw = X.T*dZ0" in text
    loss, grad = chain_oracle(steps, x, weights)
    np.testing.assert_allclose(out.value, loss, rtol=1e-12)
    np.testing.assert_allclose(out.grad["w"], grad, rtol=1e-10, atol=1e-12)


def hadamard_chain(steps: int) -> list:
    """Z0 = c ⊙ (X w), then alternately Z_k = c ⊙ tanh(Z_{k-1}) and Z_k = c ⊙ Z_{k-1}."""
    definition, previous = [], X * w
    for k in range(steps):
        z = sp.MatrixSymbol(f"Z{k}", n, 1)
        inner = symdl.tanh(previous) if k % 2 else previous
        definition.append((z, sp.hadamard_product(C, inner)))
        previous = z
    definition.append((sp.Symbol("L"), symdl.sum(previous)))
    return definition


C = sp.MatrixSymbol("c", n, 1)


def test_closed_form_through_60_steps_prints_without_recursion(monkeypatch):
    # Printed children first into the printer's memo, not recursively, and without SymPy's
    # doit re-evaluating the closed form at every level (time exponential in the depth).
    # Written out in full: no step keeps its name (the default bound would keep some).
    monkeypatch.setattr(symdl.ir.naming, "INLINE_LIMIT", 10**9)
    with shallow_stack():
        der = symdl.derive(hadamard_chain(60), wrt=[w])
        closed = der.gradient(w)
    assert isinstance(closed, sp.MatrixExpr) and closed.shape == (d, 1)
    rng = np.random.default_rng(3)
    values = {"X": rng.normal(size=(4, 3)), "w": rng.normal(size=(3, 1)),
              "c": rng.uniform(0.9, 1.1, size=(4, 1))}
    zs = [values["c"] * (values["X"] @ values["w"])]
    for k in range(1, 60):
        zs.append(values["c"] * (np.tanh(zs[-1]) if k % 2 else zs[-1]))
    grad_z = np.ones_like(zs[-1])
    for k in range(59, 0, -1):
        grad_z = grad_z * values["c"] * ((1 - np.tanh(zs[k - 1]) ** 2) if k % 2 else 1)
    expected = values["X"].T @ (grad_z * values["c"])
    np.testing.assert_allclose(symdl.evaluate(closed, values, {n: 4, d: 3}), expected,
                               rtol=1e-10)


def test_closed_form_too_deep_for_sympy_is_a_typed_error(monkeypatch):
    monkeypatch.setattr(symdl.ir.naming, "INLINE_LIMIT", 10**9)  # asked for in full
    der = symdl.derive(hadamard_chain(400), wrt=[w])
    with shallow_stack(), pytest.raises(DerivationError, match="inline=False"):
        der.gradient(w)  # SymPy recurses through the 400 levels of the matrix expression
    assert der.gradient(w, inline=False).shape == (d, 1)


def test_closed_form_through_150_steps_keeps_names_within_the_bound():
    """By default a closed form writes a named step out only while it stays small: the
    gradient through 150 steps is bounded and refers to the steps beyond by name."""
    der = symdl.derive(hadamard_chain(150), wrt=[w])
    with shallow_stack():
        closed = der.gradient(w)
    assert closed.shape == (d, 1)
    assert len(str(closed)) < 20_000
    named = {str(s) for s in closed.free_symbols}
    assert named & {f"dZ{k}" for k in range(150)} or named & {f"Z{k}" for k in range(150)}


def test_sum_of_5000_terms_compiles_and_computes():
    terms = 5000
    x = sp.Symbol("x")
    a = sp.symbols(f"a0:{terms}")
    loss = sp.Add(*[a[k] * x ** (k % 3 + 1) for k in range(terms)])
    rng = np.random.default_rng(1)
    coefficients = rng.normal(size=terms)
    x0 = 0.7
    values = {f"a{k}": coefficients[k] for k in range(terms)} | {"x": x0}
    with shallow_stack():
        der = symdl.derive(loss, wrt=[x])
        kernel = der.compile(jit=False)
        out = kernel(**values)
    powers = np.arange(terms) % 3 + 1
    expected = np.sum(coefficients * x0 ** powers)
    expected_grad = np.sum(coefficients * powers * x0 ** (powers - 1))
    np.testing.assert_allclose(out.value, expected, rtol=1e-12)
    np.testing.assert_allclose(out.grad["x"], expected_grad, rtol=1e-12)
    _assert_bounded(kernel.source)


def _assert_bounded(source: str) -> None:
    """No generated function longer than the loop or driver budget; no operator chain
    longer than ``MAX_OPERANDS``."""
    from symdl.kernels.codegen import MAX_OPERANDS

    tree = ast.parse(source)
    for function in (f for f in tree.body if isinstance(f, ast.FunctionDef)):
        statements = sum(isinstance(s, ast.stmt) for s in ast.walk(function))
        assert statements <= 4 * MAX_DRIVER_STATEMENTS, (function.name, statements)
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp):
            length, inner = 1, node
            while isinstance(inner, ast.BinOp):
                length, inner = length + 1, inner.left
            assert length <= MAX_OPERANDS + 1


def test_long_chain_source_is_split_into_bounded_functions():
    der = symdl.derive(chain(300), wrt=[w])
    kernel = der.compile(jit=False)
    _assert_bounded(kernel.source)
    # The driver is split into parts of at most MAX_DRIVER_STATEMENTS statements (with its
    # temporaries allocated in _scratch, 300 steps fit in one part).
    for node in ast.walk(ast.parse(kernel.source)):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("_steps"):
            assert len(node.body) <= MAX_DRIVER_STATEMENTS + 2, (node.name, len(node.body))


def test_jitted_chain_compiles_in_bounded_parts():
    steps = 30  # past MAX_INLINED_CALLS: the helpers are called, not inlined
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3)) * 0.3
    weights = rng.normal(size=(3, 1)) * 0.3
    kernel = symdl.derive(chain(steps), wrt=[w]).compile()
    out = kernel(X=x, w=weights)
    loss, grad = chain_oracle(steps, x, weights)
    np.testing.assert_allclose(out.value, loss, rtol=1e-12)
    np.testing.assert_allclose(out.grad["w"], grad, rtol=1e-10, atol=1e-12)


def test_deep_single_expression_gets_typed_error_that_says_how_to_split():
    x = sp.Symbol("x")
    expr = x
    for _ in range(MAX_DEPTH + 5):
        expr = sp.sin(expr)
    with pytest.raises(DefinitionTooLargeError, match="named steps"):
        symdl.derive(expr, wrt=[x])


def test_slow_compile_is_reported(caplog, monkeypatch):
    from symdl.kernels import progress

    monkeypatch.setattr(progress, "PROGRESS_AFTER_S", 0.0)
    der = symdl.derive(chain(3), wrt=[w])
    kernel = der.compile()
    with caplog.at_level(logging.INFO, logger="symdl"):
        kernel(X=np.ones((2, 3)), w=np.ones((3, 1)))
    messages = [r.getMessage() for r in caplog.records if r.name == "symdl"]
    assert any(m.startswith("compiling kernel") and "loops)..." in m for m in messages)
    assert any(m.startswith("compiled kernel") and m.endswith(" s") for m in messages)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="symdl"):
        kernel(X=np.ones((2, 3)), w=np.ones((3, 1)))  # compiled already: nothing to say
    assert not [r for r in caplog.records if r.name == "symdl"]


def test_compile_progress_goes_to_stderr_when_logging_is_not_configured(monkeypatch, capsys):
    import time

    from symdl.kernels import progress

    monkeypatch.setattr(progress.logger, "hasHandlers", lambda: False)
    with progress.compile_progress("k", 3, after_s=0.0):
        time.sleep(0.05)
    err = capsys.readouterr().err
    assert "compiling kernel k (3 loops)..." in err and "compiled kernel k in " in err
    monkeypatch.setattr(progress.logger, "level", logging.WARNING)  # the user silenced it
    with progress.compile_progress("k", 3, after_s=0.0):
        time.sleep(0.05)
    assert capsys.readouterr().err == ""
