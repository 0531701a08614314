"""One-expression definitions get named intermediates, and printing stays bounded (issue 15,
item 17).

Before: a batch-norm + ReLU layer written in one expression took minutes to print its
backprop equations (2,305 characters for four equations), and a 3-step GRU's closed-form
gradient took 225 s and 182,784 characters. The sizes asserted here are deterministic; the
time bounds are generous (a tenth of what it took).
"""

from __future__ import annotations

import time

import numpy as np
import sympy as sp
import torch

import symdl
from benchmarks.print_cost_models import bn_relu_one_liner, gru_named_steps, n
from symdl.printing.plain import plain

torch.set_default_dtype(torch.float64)


def _bn_values(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"X": rng.normal(size=(6, 4)), "W": rng.normal(size=(4, 3)),
            "gamma": rng.normal(size=(1, 3)), "beta": rng.normal(size=(1, 3)),
            "G": rng.normal(size=(6, 3)), "eps": np.asarray(1e-3)}


def _bn_torch(values: dict) -> dict[str, np.ndarray]:
    t = {k: torch.tensor(v, requires_grad=k in ("X", "W", "gamma", "beta"))
         for k, v in values.items()}
    z = t["X"] @ t["W"]
    c = z - z.mean(dim=0, keepdim=True)
    r = 1 / torch.sqrt((c * c).mean(dim=0, keepdim=True) + t["eps"])
    loss = (t["G"] * torch.relu(c * r * t["gamma"] + t["beta"])).sum()
    names = ["X", "W", "gamma", "beta"]
    grads = torch.autograd.grad(loss, [t[k] for k in names])
    return {k: g.numpy() for k, g in zip(names, grads, strict=True)}


def test_one_expression_batchnorm_prints_short_backprop_equations() -> None:
    loss, params = bn_relu_one_liner()
    der = symdl.derive(loss, params)
    start = time.perf_counter()
    equations = der.equations()
    text = [plain(e.rhs) for e in equations]
    assert time.perf_counter() - start < 13  # took 132 s
    # Generated steps t1, t2, ... each with an adjoint; every equation short.
    assert [str(s) for s, _ in der.steps[:-1]] == ["t1", "t2", "t3", "t4"]
    assert sum(map(len, text)) < 700, text  # was 2,305 characters in 4 equations
    assert max(map(len, text)) < 200, text
    assert der.source_steps[0][1] == loss  # the definition as written stays available


def test_one_expression_batchnorm_gradients_are_right_and_bounded() -> None:
    loss, params = bn_relu_one_liner()
    der = symdl.derive(loss, params)
    values = _bn_values(np.random.default_rng(0))
    dims = der.infer_dims(values)
    want = _bn_torch(values)
    start = time.perf_counter()
    for p in params:
        grad = der.gradient(p)
        assert len(plain(grad)) < 1200
        np.testing.assert_allclose(symdl.evaluate(grad, values, dims), want[p.name],
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(der.evaluate(values, dims)[f"grad:{p.name}"], want[p.name],
                                   rtol=1e-10, atol=1e-12)
    assert time.perf_counter() - start < 30  # took more than 200 s


def test_gru_closed_form_gradient_is_bounded_in_size_and_time() -> None:
    model, params = gru_named_steps(3)
    der = symdl.derive(model, params)
    bz = params[6]
    start = time.perf_counter()
    text = plain(der.gradient(bz))
    assert time.perf_counter() - start < 23  # took 225 s
    assert len(text) < 8000, len(text)  # was 182,784 characters


def test_printing_a_deep_shared_definition_does_not_expand_the_dag() -> None:
    # Each level uses the previous one three times: written out as a tree the definition
    # has about 3^8 nodes; as a DAG, 30.
    d = sp.Symbol("d", integer=True, positive=True)
    X, W = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("W", d, d)
    A = X * W
    for _ in range(8):
        A = symdl.tanh(sp.hadamard_product(A, A) + A * W)
    der = symdl.derive(symdl.total(A), [W])
    start = time.perf_counter()
    equations = sum(len(plain(e.rhs)) for e in der.equations())
    closed = len(plain(der.gradient(W)))
    assert time.perf_counter() - start < 30
    assert equations < 3000 and closed < 12000, (equations, closed)


def test_generated_names_never_collide_with_user_names() -> None:
    # Inputs named like the generated steps (t1) and their adjoints (dt2) are skipped.
    t1, dt2 = sp.MatrixSymbol("t1", n, 3), sp.MatrixSymbol("dt2", n, 3)
    w = sp.MatrixSymbol("w", 3, 1)
    z = symdl.tanh(t1 * w + dt2 * w)
    loss = symdl.total(sp.hadamard_product(z, z)) + symdl.total(symdl.exp(z))
    der = symdl.derive(loss, [w])
    names = [str(s) for s, _ in der.steps if s is not None]
    assert names and not {"t1", "t2", "dt2"} & set(names), names
    adjoints = {str(e.lhs) for e in der.equations()}
    assert not {"dt1", "dt2"} & (adjoints - {"dw"}), adjoints
    rng = np.random.default_rng(1)
    values = {"t1": rng.normal(size=(5, 3)), "dt2": rng.normal(size=(5, 3)),
              "w": rng.normal(size=(3, 1))}
    tv = {k: torch.tensor(v, requires_grad=k == "w") for k, v in values.items()}
    tz = torch.tanh(tv["t1"] @ tv["w"] + tv["dt2"] @ tv["w"])
    (want,) = torch.autograd.grad((tz * tz).sum() + torch.exp(tz).sum(), tv["w"])
    got = symdl.evaluate(der.gradient(w), values, {n: 5})
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-14)


def test_named_step_definitions_get_no_generated_names() -> None:
    # The README's network: written as named steps, its equations stay the textbook ones.
    from symdl import catalog as registry

    der = registry.load("two_layer_mlp").derive()
    assert [str(s) for s, _ in der.steps] == ["Z1", "A1", "Z2", "L"]
    assert [str(e.lhs) for e in der.equations()][:3] == ["dZ2", "dA1", "dZ1"]
