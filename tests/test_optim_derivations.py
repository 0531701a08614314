"""Optimizers (symdl.optimizers), their derivation files and the learning-rate schedules.

Oracles: torch.optim (2.13.0, CPU) for every update rule, stepped side by side with the
generated update kernels for several steps; NumPy re-implementations written here.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl import optimizers as optim

n, d = sp.symbols("n d", integer=True, positive=True)
W = sp.MatrixSymbol("W", n, d)

# (symdl optimizer, the same optimizer in torch.optim)
TORCH_PAIRS = {
    "SGD": (optim.SGD(lr=0.1, weight_decay=0.01),
            lambda p: torch.optim.SGD([p], lr=0.1, weight_decay=0.01)),
    "Momentum": (optim.Momentum(lr=0.1, momentum=0.8),
                 lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.8)),
    "Nesterov": (optim.Nesterov(lr=0.1, momentum=0.9, weight_decay=0.05),
                 lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True,
                                           weight_decay=0.05)),
    "RMSprop": (optim.RMSprop(lr=0.01, alpha=0.9, eps=1e-6),
                lambda p: torch.optim.RMSprop([p], lr=0.01, alpha=0.9, eps=1e-6)),
    "Adagrad": (optim.Adagrad(lr=0.1), lambda p: torch.optim.Adagrad([p], lr=0.1)),
    "Adam": (optim.Adam(lr=0.01, weight_decay=0.1),
             lambda p: torch.optim.Adam([p], lr=0.01, weight_decay=0.1)),
    "AdamW": (optim.AdamW(lr=0.01, beta1=0.8, beta2=0.99, weight_decay=0.1),
              lambda p: torch.optim.AdamW([p], lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
}

_KERNELS: dict[str, object] = {}


def _update_kernel(name: str):
    if name not in _KERNELS:
        _KERNELS[name] = symdl.compile_expressions(
            optim.update_kernel_outputs(TORCH_PAIRS[name][0], W))
    return _KERNELS[name]


@pytest.mark.parametrize("name", sorted(TORCH_PAIRS))
def test_update_kernel_matches_torch_optim(name):
    optimizer, make_torch = TORCH_PAIRS[name]
    kernel = _update_kernel(name)
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(4, 3))
    p = torch.tensor(p0, requires_grad=True)
    reference = make_torch(p)
    current = {"W": p0.copy(), **{f"{s}_W": np.zeros_like(p0) for s in optimizer.state_names}}
    for step in range(1, 8):
        g = rng.normal(size=p0.shape)
        p.grad = torch.tensor(g)
        reference.step()
        arguments = dict(current, grad_W=g)
        if "t" in kernel.input_names:
            arguments["t"] = float(step)
        result = kernel(**arguments)
        current = {k: result.outputs[k] for k in current}
        np.testing.assert_allclose(current["W"], p.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_symbolic_hyperparameters_are_kernel_inputs():
    lr, beta1 = sp.symbols("lr beta1", positive=True)
    adam = optim.Adam(lr=lr, beta1=beta1)
    kernel = symdl.compile_expressions(optim.update_kernel_outputs(adam, W))
    assert {"lr", "beta1", "t"} <= set(kernel.input_names)
    rng = np.random.default_rng(2)
    w, g = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    m, v = rng.normal(size=(2, 3)), rng.random((2, 3))
    out = kernel(W=w, grad_W=g, m_W=m, v_W=v, t=3.0, lr=0.05, beta1=0.7).outputs
    m1 = 0.7 * m + 0.3 * g
    v1 = 0.999 * v + 0.001 * g**2
    expected = w - 0.05 * (m1 / (1 - 0.7**3)) / (np.sqrt(v1 / (1 - 0.999**3)) + 1e-8)
    np.testing.assert_allclose(out["W"], expected, rtol=1e-13)
    np.testing.assert_allclose(out["m_W"], m1, rtol=1e-14)
    np.testing.assert_allclose(out["v_W"], v1, rtol=1e-14)


def test_scalar_parameter_gives_scalar_update():
    x = sp.Symbol("x")
    rmsprop = optim.RMSprop(lr=0.1, alpha=0.5)
    kernel = symdl.compile_expressions(optim.update_kernel_outputs(rmsprop, x))
    out = kernel(x=2.0, grad_x=3.0, v_x=1.0).outputs
    v = 0.5 * 1.0 + 0.5 * 9.0
    assert out["v_x"] == pytest.approx(v, rel=1e-14)
    assert out["x"] == pytest.approx(2.0 - 0.1 * 3.0 / (np.sqrt(v) + 1e-8), rel=1e-14)


def test_bad_hyperparameters_and_arguments_raise_typed_errors():
    with pytest.raises(symdl.DefinitionError, match="beta1 = 1.5 is out of range"):
        optim.Adam(beta1=1.5)
    with pytest.raises(symdl.DefinitionError, match="lr = -1 is out of range"):
        optim.SGD(lr=-1)
    with pytest.raises(symdl.DefinitionError, match="scalar SymPy expression"):
        optim.SGD(lr=W)
    with pytest.raises(symdl.ShapeMismatchError, match="gradient"):
        optim.SGD(lr=0.1).update(W, sp.MatrixSymbol("G", d, n), {}, 1)
    with pytest.raises(symdl.DefinitionError, match="missing \\['v'\\]"):
        optim.Adam().update(W, sp.MatrixSymbol("G", n, d), {"m": W}, 1)
