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
from symdl import catalog as registry
from symdl.define import optimizers as optim
from symdl.derivations import two_layer_mlp
from symdl.ir.assumptions import conform
from symdl.training import compile_training_step

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


# -- the derivation files: backward pass through one step ---------------------------------

def _np_step(name, v):
    """One step of each optimizer, in NumPy: (new parameter, {state: new state})."""
    W, g = v["W"], v["grad_W"]
    if name == "sgd":
        return W - v["lr"] * (g + v["lambda"] * W), {}
    if name in ("momentum", "nesterov"):
        b = v["mu"] * v["b_W"] + g
        move = b if name == "momentum" else g + v["mu"] * b
        return W - v["lr"] * move, {"b": b}
    if name == "rmsprop":
        s = v["alpha"] * v["v_W"] + (1 - v["alpha"]) * g**2
        return W - v["lr"] * g / (np.sqrt(s) + v["eps"]), {"v": s}
    if name == "adagrad":
        s = v["s_W"] + g**2
        return W - v["lr"] * g / (np.sqrt(s) + v["eps"]), {"s": s}
    if name == "adam":
        g = g + v["lambda"] * W
    else:  # adamw: decoupled decay
        W = W * (1 - v["lr"] * v["lambda"])
    b1, b2, t = v["beta1"], v["beta2"], v["t"]
    m = b1 * v["m_W"] + (1 - b1) * g
    s = b2 * v["v_W"] + (1 - b2) * g**2
    return W - v["lr"] * m / (1 - b1**t) / (np.sqrt(s / (1 - b2**t)) + v["eps"]), {"m": m,
                                                                                   "v": s}


def _np_objective(name, v):
    new, state = _np_step(name, v)
    return float(np.sum(v["G_W"] * new) + sum(np.sum(v[f"G_{s}_W"] * a)
                                               for s, a in state.items()))


OPTIM_FILES = ["sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw"]
_DERIVED: dict[str, tuple] = {}


def _derived(name):
    """(module, derivation, kernel) of a derivation file, compiled once."""
    if name not in _DERIVED:
        entry = registry.load(name)
        der = entry.derive()
        _DERIVED[name] = (entry.module, der, der.compile())
    return _DERIVED[name]


def _file_inputs(name, seed):
    module, der, _ = _derived(name)
    rng = np.random.default_rng(seed)
    dims = {"n": 3, "d": 2}
    values = {}
    for leaf_name, leaf in der.leaves.items():
        shape = tuple(int(s.subs({x: dims[str(x)] for x in s.free_symbols})) for s in leaf.shape)
        # Declared assumptions hold (lr > 0): kernels refuse values that break them.
        values[leaf_name] = conform(leaf.symbol, rng.normal(size=shape))
    values.update(module.sample_inputs(rng, dims))
    return values


def _central(f, values, wrt, h=1e-6):
    x0 = np.asarray(values[wrt], dtype=float)
    grad = np.zeros_like(x0)
    for idx in np.ndindex(x0.shape):
        up, down = x0.copy(), x0.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (f({**values, wrt: up}) - f({**values, wrt: down})) / (2 * h)
    return grad


def test_every_optimizer_and_schedule_file_is_covered():
    names = registry.names()
    assert sorted(n for n in names if n.startswith("optim_")) == sorted(
        f"optim_{n}" for n in OPTIM_FILES)
    assert sorted(n for n in names if n.startswith("schedule_")) == sorted(SCHEDULES)


@pytest.mark.parametrize("name", OPTIM_FILES)
def test_step_backward_matches_numpy_and_finite_differences(name):
    _, der, kernel = _derived(f"optim_{name}")
    values = _file_inputs(f"optim_{name}", seed=3)
    result = kernel(**values)
    assert result.value == pytest.approx(_np_objective(name, values), rel=1e-12)
    for p in der.wrt:
        pname = str(getattr(p, "name", p))
        numeric = _central(lambda v, name=name: _np_objective(name, v), values, pname)
        np.testing.assert_allclose(result.grad[pname], numeric, rtol=1e-6, atol=1e-8,
                                   err_msg=f"optim_{name}: d/d{pname}")


# torch.optim with the file's hyperparameter symbols bound to the same values
_TORCH_FOR_FILE = {
    "sgd": lambda p, v: torch.optim.SGD([p], lr=v["lr"], weight_decay=v["lambda"]),
    "momentum": lambda p, v: torch.optim.SGD([p], lr=v["lr"], momentum=v["mu"]),
    "nesterov": lambda p, v: torch.optim.SGD([p], lr=v["lr"], momentum=v["mu"],
                                             nesterov=True),
    "rmsprop": lambda p, v: torch.optim.RMSprop([p], lr=v["lr"], alpha=v["alpha"],
                                                eps=v["eps"]),
    "adagrad": lambda p, v: torch.optim.Adagrad([p], lr=v["lr"], eps=v["eps"]),
    "adam": lambda p, v: torch.optim.Adam([p], lr=v["lr"], betas=(v["beta1"], v["beta2"]),
                                          eps=v["eps"], weight_decay=v["lambda"]),
    "adamw": lambda p, v: torch.optim.AdamW([p], lr=v["lr"], betas=(v["beta1"], v["beta2"]),
                                            eps=v["eps"], weight_decay=v["lambda"]),
}


@pytest.mark.parametrize("name", OPTIM_FILES)
def test_file_update_kernel_matches_torch_optim(name):
    module, _, _ = _derived(f"optim_{name}")
    kernel = symdl.compile_expressions(optim.update_kernel_outputs(module.OPTIMIZER, module.W))
    rng = np.random.default_rng(5)
    hyper = {k: float(v) for k, v in module.sample_inputs(rng, {"n": 3, "d": 2}).items()
             if v.ndim == 0 and k != "t"}
    p0 = rng.normal(size=(3, 2))
    p = torch.tensor(p0, requires_grad=True)
    reference = _TORCH_FOR_FILE[name](p, hyper)
    current = {"W": p0, **{f"{s}_W": np.zeros_like(p0) for s in module.OPTIMIZER.state_names}}
    for step in range(1, 6):
        g = rng.normal(size=p0.shape)
        p.grad = torch.tensor(g)
        reference.step()
        arguments = {**current, "grad_W": g, **{k: v for k, v in hyper.items()
                                                if k in kernel.input_names}}
        if "t" in kernel.input_names:
            arguments["t"] = float(step)
        out = kernel(**arguments).outputs
        current = {k: out[k] for k in current}
        np.testing.assert_allclose(current["W"], p.detach().numpy(), rtol=1e-12, atol=1e-14)


# -- learning-rate schedules ------------------------------------------------------------

SCHEDULES = {
    # name -> (NumPy rate at step t, torch scheduler factory, parameter values)
    "schedule_step": (lambda v: v["lr"] * v["gamma"] ** np.floor(v["t"] / v["s"]),
                      lambda o, v: torch.optim.lr_scheduler.StepLR(
                          o, step_size=int(v["s"]), gamma=v["gamma"]),
                      {"lr": 0.1, "gamma": 0.5, "s": 3.0}),
    "schedule_exponential": (lambda v: v["lr"] * v["gamma"] ** v["t"],
                             lambda o, v: torch.optim.lr_scheduler.ExponentialLR(
                                 o, gamma=v["gamma"]),
                             {"lr": 0.1, "gamma": 0.9}),
    "schedule_cosine": (lambda v: v["lr_min"] + (v["lr"] - v["lr_min"]) * (
                            1 + np.cos(np.pi * v["t"] / v["T_max"])) / 2,
                        lambda o, v: torch.optim.lr_scheduler.CosineAnnealingLR(
                            o, T_max=int(v["T_max"]), eta_min=v["lr_min"]),
                        {"lr": 0.1, "lr_min": 0.001, "T_max": 12.0}),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_value_and_gradients(name):
    _, der, kernel = _derived(name)
    rate = SCHEDULES[name][0]
    for seed in range(3):
        values = {"lr": 0.05, **_file_inputs(name, seed)}
        values = {k: float(v) for k, v in values.items()}
        result = kernel(**values)
        assert float(result.value) == pytest.approx(rate(values), rel=1e-13)
        for p in der.wrt:
            numeric = _central(lambda v: float(rate(v)), values, str(p))
            np.testing.assert_allclose(result.grad[str(p)], numeric, rtol=1e-6, atol=1e-10,
                                       err_msg=f"{name}: d/d{p}")


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_array_kernel_matches_torch_scheduler(name):
    module, _, _ = _derived(name)
    _, make_scheduler, params = SCHEDULES[name]
    steps = sp.MatrixSymbol("steps", sp.Symbol("T", integer=True, positive=True), 1)
    column = module.SCHEDULE(steps, *[params[str(p)] for p in module.PARAMETERS])
    kernel = symdl.compile_expressions({"lr": column})
    rates = kernel(steps=np.arange(30.0)[:, None]).outputs["lr"].ravel()
    p = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([p], lr=params["lr"])
    scheduler = make_scheduler(optimizer, params)
    expected = []
    for _ in range(30):
        expected.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(rates, expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("name", ["AdamW"])
def test_fused_training_step_follows_torch(name):
    """A fused training-step kernel (forward, backward and this optimizer's update in one
    kernel, symdl.training) against the same network trained by torch.optim for 5 steps."""
    optimizer, make_torch = TORCH_PAIRS[name]
    rng = np.random.default_rng(6)
    params = {"W1": rng.normal(size=(5, 4)) * 0.5, "b1": rng.normal(size=(1, 4)) * 0.1,
              "W2": rng.normal(size=(4, 3)) * 0.5, "b2": rng.normal(size=(1, 3)) * 0.1}
    X = rng.normal(size=(8, 5))
    Y = np.eye(3)[rng.integers(0, 3, 8)]
    kernel = compile_training_step(two_layer_mlp.derivation(), optimizer)
    current = dict(params)
    current.update({f"{s}_{k}": np.zeros_like(v) for k, v in params.items()
                    for s in optimizer.state_names})
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    references = {k: make_torch(t) for k, t in tensors.items()}
    for t in range(1, 6):
        out = kernel(X=X, Y=Y, t=float(t), **current).outputs
        current = {k: out[f"new:{k}"] for k in current}
        hidden = torch.tanh(torch.tensor(X) @ tensors["W1"] + tensors["b1"])
        logits = hidden @ tensors["W2"] + tensors["b2"]
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor(Y))
        for tensor in tensors.values():
            tensor.grad = None
        expected.backward()
        for reference in references.values():
            reference.step()
        assert float(out["value"]) == pytest.approx(expected.item(), rel=1e-12)
    for k, tensor in tensors.items():
        np.testing.assert_allclose(current[k], tensor.detach().numpy(), rtol=1e-10, atol=1e-12)
