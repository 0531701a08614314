"""The convolutional derivations (derivations/layer_conv*, layer_*pool2d, layer_embedding,
model_cnn) against torch.nn.functional in float64 (values and gradients to 1e-10), and a
training step that updates tensor parameters against torch's Adam.

Oracle: PyTorch 2.13 autograd; no kernel is compiled here (``der.evaluate`` and one
interpreted training step): tests/kernels/ compiles the windowed kernels, the demo trains the
CNN compiled.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from symdl import catalog
from symdl.define.optimizers import Adam
from symdl.training import TrainingStep

torch = pytest.importorskip("torch")
F = torch.nn.functional
RNG = np.random.default_rng(17)
LAST = (0, 2, 3, 1)


def _t(a):
    return torch.tensor(a, requires_grad=True)


def _conv1d(v):
    t = {k: _t(a) for k, a in v.items()}
    return t, (F.conv1d(t["X"], t["W"], padding=1) * t["G"]).sum()


def _conv2d(v):
    t = {k: _t(a) for k, a in v.items()}
    x = t["X"].permute(0, 3, 1, 2)
    k = t["K"].permute(3, 2, 0, 1)
    y = F.conv2d(x, k, t["bias"], padding=1).permute(*LAST)
    return t, (y * t["G"]).sum()


def _maxpool(v):
    t = {k: _t(a) for k, a in v.items()}
    y = F.max_pool2d(t["X"].permute(0, 3, 1, 2), 2).permute(*LAST)
    return t, (y * t["G"]).sum()


def _avgpool(v):
    t = {k: _t(a) for k, a in v.items()}
    return t, (F.avg_pool2d(t["X"], 3, 1, 1) * t["G"]).sum()


def _embedding(v):
    t = {k: _t(a) for k, a in v.items() if k != "idx"}
    return t, (F.embedding(torch.tensor(v["idx"]), t["E"]) * t["G"]).sum()


def _cnn(v):
    t = {k: _t(a) for k, a in v.items()}
    z1 = F.conv2d(t["X"].permute(0, 3, 1, 2), t["K1"].permute(3, 2, 0, 1), t["b1"])
    p1 = F.max_pool2d(F.relu(z1), 2).permute(*LAST).reshape(len(v["X"]), -1)
    z2 = p1 @ t["W2"] + t["b2"]
    return t, -(F.log_softmax(z2, dim=1) * t["Y"]).sum() / len(v["X"])


CASES = {
    "layer_conv1d": ({"n": 2, "c": 3, "o": 2, "t": 7}, _conv1d),
    "layer_conv2d": ({"n": 2, "h": 5, "w": 4, "c": 3, "o": 2}, _conv2d),
    "layer_maxpool2d": ({"n": 2, "c": 3}, _maxpool),
    "layer_avgpool2d": ({"n": 2, "c": 2, "h": 5, "w": 4}, _avgpool),
    "layer_embedding": ({"n": 6, "v": 4, "d": 3}, _embedding),
    "model_cnn": ({"n": 3}, _cnn),
}


def _values(der, module, sizes: dict) -> tuple[dict, dict]:
    dims = {d: sizes[str(d)] for d in der.dims}
    values = {name: RNG.normal(size=tuple(int(sp.sympify(s).subs(dims)) for s in leaf.shape))
              for name, leaf in der.leaves.items()}
    if "Y" in values:
        values["Y"] = np.eye(10)[RNG.integers(0, 10, dims[next(iter(der.dims))])]
    hook = getattr(module, "sample_inputs", None)
    if hook is not None:
        values.update(hook(RNG, sizes))
    return values, dims


@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_derivation_matches_torch(name):
    entry = catalog.load(name)
    der = entry.derive()
    sizes, forward = CASES[name]
    values, dims = _values(der, entry.module, sizes)
    out = der.evaluate(values, dims)
    tensors, ref = forward(values)
    names = [str(getattr(p, "name", p)) for p in der.wrt]
    grads = torch.autograd.grad(ref, [tensors[k] for k in names])
    np.testing.assert_allclose(out["value"], ref.item(), rtol=1e-10)
    for k, g in zip(names, grads, strict=True):
        np.testing.assert_allclose(out[f"grad:{k}"], g.numpy().reshape(out[f"grad:{k}"].shape),
                                   rtol=1e-10, atol=1e-12, err_msg=f"{name}: {k}")


def test_a_training_step_updates_tensor_parameters_like_torch_adam():
    entry = catalog.load("model_cnn")
    der = entry.derive()
    values, dims = _values(der, entry.module, {"n": 2})
    params = {k: values[k] for k in ("K1", "b1", "W2", "b2")}
    step = TrainingStep(der, Adam(lr=0.01), params, jit=False)
    losses = [step(X=values["X"], Y=values["Y"]) for _ in range(2)]
    tensors = {k: _t(a) for k, a in params.items()}
    opt = torch.optim.Adam(list(tensors.values()), lr=0.01)
    for k in range(2):
        t, ref = _cnn({**values, **{n: t.detach().numpy() for n, t in tensors.items()}})
        grads = torch.autograd.grad(ref, [t[n] for n in tensors])
        for p, g in zip(tensors.values(), grads, strict=True):
            p.grad = g
        opt.step()
        assert losses[k] == pytest.approx(ref.item(), rel=1e-12)
    for k, p in tensors.items():
        np.testing.assert_allclose(step.params[k], p.detach().numpy(), rtol=1e-10, atol=1e-12)
        assert step.params[k].shape == params[k].shape
