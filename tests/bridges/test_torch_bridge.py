"""The PyTorch bridge: a derived loss inside ``torch.autograd`` (issue 17, item 1).

The oracle is PyTorch's own autograd of the same model written with torch operations, and
``torch.autograd.gradcheck`` (finite differences in float64).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import symdl
from symdl import catalog
from symdl.bridges import BridgeError
from symdl.bridges import torch as symdl_torch


@pytest.fixture(scope="module")
def mlp_loss():
    """The shipped two-layer network (tanh, softmax cross-entropy) as a torch function."""
    return symdl_torch.function(catalog.load("two_layer_mlp").derive())


@pytest.fixture(scope="module")
def logistic_loss():
    return symdl_torch.function(catalog.load("logistic_regression").derive())


def _torch_mlp(X, Y, W1, b1, W2, b2):
    Z2 = torch.tanh(X @ W1 + b1) @ W2 + b2
    return -(Y * torch.log_softmax(Z2, dim=1)).sum() / X.shape[0]


class Net(torch.nn.Module):
    """A user's module whose loss comes from the symdl kernel."""

    def __init__(self, loss_fn, d: int, h: int, k: int, dtype: torch.dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.loss_fn = loss_fn
        self.W1 = torch.nn.Parameter(torch.randn(d, h, generator=g, dtype=dtype) / d ** 0.5)
        self.b1 = torch.nn.Parameter(torch.zeros(1, h, dtype=dtype))
        self.W2 = torch.nn.Parameter(torch.randn(h, k, generator=g, dtype=dtype) / h ** 0.5)
        self.b2 = torch.nn.Parameter(torch.zeros(1, k, dtype=dtype))

    def forward(self, X, Y):
        return self.loss_fn(X=X, Y=Y, W1=self.W1, b1=self.b1, W2=self.W2, b2=self.b2)


def _batch(n: int, d: int, k: int, dtype: torch.dtype, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    Y = torch.nn.functional.one_hot(torch.randint(0, k, (n,), generator=g), k).to(dtype)
    return X, Y


def test_module_trains_like_the_same_model_in_torch(mlp_loss) -> None:
    dtype = torch.float64
    net = Net(mlp_loss, 5, 4, 3, dtype)
    twin = {name: p.detach().clone().requires_grad_() for name, p in net.named_parameters()
            if name != "loss_fn"}
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    twin_opt = torch.optim.SGD(twin.values(), lr=0.5)
    tol = 1e-12
    X, Y = _batch(7, 5, 3, dtype)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        twin_opt.zero_grad()
        loss = net(X, Y)
        want = _torch_mlp(X, Y, **twin)
        loss.backward()
        want.backward()
        assert loss.dtype == dtype and loss.shape == ()
        losses.append(loss.item())
        torch.testing.assert_close(loss, want.detach(), rtol=tol, atol=tol)
        for name, p in net.named_parameters():
            torch.testing.assert_close(p.grad, twin[name].grad, rtol=tol, atol=tol)
        opt.step()
        twin_opt.step()
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


def test_gradcheck_in_float64(mlp_loss) -> None:
    X, Y = _batch(4, 5, 3, torch.float64)
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
              for s in [(5, 2), (1, 2), (2, 3), (1, 3)]]

    def loss(W1, b1, W2, b2):
        return mlp_loss(X=X, Y=Y, W1=W1, b1=b1, W2=W2, b2=b2)

    assert torch.autograd.gradcheck(loss, params)


def test_only_inputs_that_require_grad_get_one_and_the_output_is_scaled(logistic_loss) -> None:
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.normal(size=(6, 3)))
    y = rng.uniform(size=(6, 1))   # a NumPy array is data: passed through
    w = torch.tensor(rng.normal(size=(3, 1)), requires_grad=True)
    (3.0 * logistic_loss(X=X, w=w, y=y)).backward()
    w_twin = w.detach().clone().requires_grad_()
    z = X @ w_twin
    (3.0 * (torch.nn.functional.softplus(z) - torch.tensor(y) * z).mean()).backward()
    torch.testing.assert_close(w.grad, w_twin.grad, rtol=1e-12, atol=1e-14)
    assert X.grad is None


def _hvp(loss, params: list[torch.Tensor], directions: list[torch.Tensor]):
    """The Hessian-vector product by double backward (no forward-over-reverse)."""
    params = [p.detach().clone().requires_grad_() for p in params]
    grads = torch.autograd.grad(loss(*params), params, create_graph=True)
    return torch.autograd.grad(grads, params, grad_outputs=directions)


def test_float32_in_float32_out(logistic_loss) -> None:
    # (float32 on the small model: each dtype is a Numba compile of its own.)
    rng = np.random.default_rng(2)
    X = torch.tensor(rng.normal(size=(6, 3)), dtype=torch.float32)
    y = torch.tensor(rng.uniform(size=(6, 1)), dtype=torch.float32)
    w = torch.tensor(rng.normal(size=(3, 1)), dtype=torch.float32, requires_grad=True)
    loss = logistic_loss(X=X, w=w, y=y)
    loss.backward()
    twin = w.detach().double().requires_grad_()
    z = X.double() @ twin
    want = (torch.nn.functional.softplus(z) - y.double() * z).mean()
    want.backward()
    assert loss.dtype == torch.float32 and w.grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w.grad.double(), twin.grad, rtol=1e-5, atol=1e-7)


def test_second_derivatives_run_the_hvp_kernel_and_match_torch(mlp_loss) -> None:
    X, Y = _batch(6, 4, 3, torch.float64)
    g = torch.Generator().manual_seed(5)
    shapes = [(4, 3), (1, 3), (3, 3), (1, 3)]
    params = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    directions = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    got = _hvp(lambda W1, b1, W2, b2: mlp_loss(X=X, Y=Y, W1=W1, b1=b1, W2=W2, b2=b2),
               params, directions)
    want = _hvp(lambda *p: _torch_mlp(X, Y, *p), params, directions)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # A gradient penalty on one parameter: the others are data there (directions zero).
    W1 = params[0].clone().requires_grad_()
    W1_twin = params[0].clone().requires_grad_()
    (gW1,) = torch.autograd.grad(mlp_loss(X=X, Y=Y, W1=W1, b1=params[1], W2=params[2],
                                          b2=params[3]), W1, create_graph=True)
    (gW1 ** 2).sum().backward()
    (want_g,) = torch.autograd.grad(_torch_mlp(X, Y, W1_twin, *params[1:]), W1_twin,
                                    create_graph=True)
    (want_g ** 2).sum().backward()
    torch.testing.assert_close(W1.grad, W1_twin.grad, rtol=1e-12, atol=1e-14)


def test_gradgradcheck_and_third_derivatives_raise(logistic_loss) -> None:
    rng = np.random.default_rng(4)
    X, y = torch.tensor(rng.normal(size=(5, 3))), torch.tensor(rng.uniform(size=(5, 1)))
    w = torch.tensor(rng.normal(size=(3, 1)), requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda w: logistic_loss(X=X, w=w, y=y), (w,))
    (g,) = torch.autograd.grad(logistic_loss(X=X, w=w, y=y), w, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), w, create_graph=True)
    with pytest.raises(BridgeError, match="third derivatives.*grad_outputs=v"):
        h.sum().backward()


def test_bad_arguments_raise_typed_errors(logistic_loss) -> None:
    X, y = torch.ones(4, 2, dtype=torch.float64), torch.ones(4, 1, dtype=torch.float64)
    w = torch.zeros(2, 1, dtype=torch.float64, requires_grad=True)
    with pytest.raises(BridgeError, match="X requires grad.*wrt"):
        logistic_loss(X=X.clone().requires_grad_(), w=w, y=y)
    with pytest.raises(BridgeError, match="on meta.*cpu"):
        logistic_loss(X=X.to("meta"), w=w, y=y)
    with pytest.raises(BridgeError, match="float16.*double"):
        logistic_loss(X=X.half(), w=w, y=y)
    with pytest.raises(symdl.KernelArgumentError, match="missing arguments \\['y'\\]"):
        logistic_loss(X=X, w=w)
    with pytest.raises(symdl.KernelArgumentError, match="unexpected arguments \\['v'\\]"):
        logistic_loss(X=X, w=w, y=y, v=y)
    with pytest.raises(symdl.KernelArgumentError, match="w"):
        logistic_loss(X=X, w=w[:1], y=y)


def test_import_symdl_imports_neither_framework() -> None:
    code = ("import sys, symdl, symdl.bridges; bridges = symdl.bridges; "
            "print(sorted({'torch', 'jax'} & set(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert run.stdout.strip() == "[]", run.stdout + run.stderr


def test_only_scalar_derivations_bridge() -> None:
    import sympy as sp

    n = sp.Symbol("n", integer=True, positive=True)
    A = sp.MatrixSymbol("A", n, 2)
    with pytest.raises(BridgeError, match="scalar definition"):
        symdl_torch.function(symdl.derive(symdl.tanh(A), wrt=[A]))
    with pytest.raises(BridgeError, match="symdl.Derivation"):
        symdl_torch.function("two_layer_mlp")


def test_the_bridge_kernel_computes_value_and_gradients_only(logistic_loss) -> None:
    # logistic_regression derives its Hessian too; a backward pass never reads it.
    assert sorted(logistic_loss.kernel.output_names) == ["grad:w", "value"]


def test_scalar_parameters_and_numbers() -> None:
    import sympy as sp

    n = sp.Symbol("n", integer=True, positive=True)
    x, s, c = sp.MatrixSymbol("x", n, 1), sp.Symbol("s", real=True), sp.Symbol("c", real=True)
    loss_fn = symdl_torch.function(symdl.derive(symdl.mean(symdl.tanh(s * x)) * c, wrt=[s]))
    xs = torch.linspace(-1, 2, 5, dtype=torch.float64).reshape(5, 1)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    twin = scale.detach().clone().requires_grad_()
    loss = loss_fn(x=xs, s=scale, c=2.0)   # a number for a scalar input that is not trained
    loss.backward()
    want = torch.tanh(twin * xs).mean() * 2.0
    want.backward()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-14, atol=0)
    assert scale.grad.shape == () and scale.grad.item() == pytest.approx(twin.grad.item(),
                                                                         rel=1e-13)
