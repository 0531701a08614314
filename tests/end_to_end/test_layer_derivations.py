"""The layer derivations (derivations/layer_*.py): derived, compiled, and checked.

Each layer's derivation is the scalar sum(G ⊙ layer(inputs)) with an upstream gradient G,
so its gradients are the layer's backward pass. Oracles, all independent of symdl:
forward passes written in NumPy here, central finite differences of those NumPy forwards,
and PyTorch 2.13.0's torch.nn.functional (value and autograd gradients).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from symdl import catalog as registry
from symdl.cli import print_derivation

DIMS = {"n": 5, "d": 4, "k": 3, "d_k": 3, "d_v": 2, "B": 2, "T": 4, "H": 2}


def _np_sigmoid(x):
    return 0.5 * (1 + np.tanh(x / 2))


def _np_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _np_norm(x, gamma, beta, eps, axis):
    mu = x.mean(axis=axis, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axis, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def _np_attention(v):
    q, k, val = v["X"] @ v["Wq"], v["X"] @ v["Wk"], v["X"] @ v["Wv"]
    return _np_softmax(q @ k.T / math.sqrt(q.shape[1])) @ val


def _t_attention(t):
    q, k, val = t["X"] @ t["Wq"], t["X"] @ t["Wk"], t["X"] @ t["Wv"]
    return F.scaled_dot_product_attention(q[None], k[None], val[None])[0]


def _np_multihead(v, causal_rows_only=False):
    """Multi-head attention in NumPy, with the additive mask M; a fully masked row of the
    softmax is zeros (symdl's convention, see test_fully_masked_rows_give_zeros)."""
    q, k, val = (np.einsum("bsc,che->bhse", v["X"], v[w]) for w in ("Wq", "Wk", "Wv"))
    scores = np.einsum("bhse,bhte->bhst", q, k) / math.sqrt(q.shape[-1]) + v["M"]
    peak = scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(peak), peak, 0.0))
    total = weights.sum(axis=-1, keepdims=True)
    weights = weights / np.where(total > 0, total, 1.0)
    return np.einsum("bhse,heo->bso", np.einsum("bhst,bhte->bhse", weights, val), v["Wo"])


def _t_multihead(t):
    """The same with torch's fused attention (causal: the mask the derivation is given)."""
    q, k, val = (torch.einsum("bsc,che->bhse", t["X"], t[w]) for w in ("Wq", "Wk", "Wv"))
    heads = F.scaled_dot_product_attention(q, k, val, is_causal=True)
    return torch.einsum("bhse,heo->bso", heads, t["Wo"])


# name -> (NumPy forward, PyTorch forward) of the layer output, from the inputs by name
LAYERS = {
    "layer_dense": (lambda v: v["X"] @ v["W"] + v["b"],
                    lambda t: F.linear(t["X"], t["W"].T, t["b"][0])),
    "layer_sigmoid": (lambda v: _np_sigmoid(v["X"]), lambda t: torch.sigmoid(t["X"])),
    "layer_tanh": (lambda v: np.tanh(v["X"]), lambda t: torch.tanh(t["X"])),
    "layer_relu": (lambda v: np.maximum(v["X"], 0), lambda t: F.relu(t["X"])),
    "layer_leaky_relu": (lambda v: np.where(v["X"] > 0, v["X"], v["a"] * v["X"]),
                         lambda t: F.leaky_relu(t["X"], float(t["a"]))),
    "layer_softplus": (lambda v: np.logaddexp(0, v["X"]), lambda t: F.softplus(t["X"])),
    "layer_gelu": (lambda v: _np_gelu(v["X"]), lambda t: F.gelu(t["X"], approximate="tanh")),
    "layer_softmax": (lambda v: _np_softmax(v["X"]), lambda t: F.softmax(t["X"], dim=1)),
    "layer_layernorm": (
        lambda v: _np_norm(v["X"], v["gamma"], v["beta"], v["eps"], 1),
        lambda t: F.layer_norm(t["X"], (t["X"].shape[1],), t["gamma"][0], t["beta"][0],
                               float(t["eps"]))),
    "layer_batchnorm": (
        lambda v: _np_norm(v["X"], v["gamma"], v["beta"], v["eps"], 0),
        lambda t: F.batch_norm(t["X"], None, None, t["gamma"][0], t["beta"][0],
                               training=True, eps=float(t["eps"]))),
    "layer_graph_conv": (lambda v: v["Ahat"] @ v["X"] @ v["W"],
                         lambda t: t["Ahat"] @ t["X"] @ t["W"]),
    "layer_attention": (_np_attention, _t_attention),
    "layer_attention_multihead": (_np_multihead, _t_multihead),
}

_CACHE: dict[str, tuple] = {}


def _compiled(name: str):
    """(module, derivation, kernel), compiled once per test session."""
    if name not in _CACHE:
        entry = registry.load(name)
        der = entry.derive()
        _CACHE[name] = (entry.module, der, der.compile())
    return _CACHE[name]


def _inputs(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    module, der, _ = _compiled(name)
    rng = np.random.default_rng(seed)
    values = {}
    for leaf_name, leaf in der.leaves.items():
        shape = tuple(int(s.subs({sym: DIMS[str(sym)] for sym in s.free_symbols}))
                      for s in leaf.shape)
        values[leaf_name] = rng.normal(size=shape)
    if "a" in values:
        values["a"] = np.asarray(0.1)
    if hasattr(module, "sample_inputs"):
        values.update(module.sample_inputs(rng, DIMS))
    return values


def _objective(name: str, values: dict) -> float:
    return float(np.sum(values["G"] * LAYERS[name][0](values)))


def _central_difference(name: str, values: dict, wrt: str, h: float = 1e-6) -> np.ndarray:
    x0 = np.asarray(values[wrt], dtype=float)
    grad = np.zeros_like(x0)
    for idx in np.ndindex(x0.shape):
        up, down = x0.copy(), x0.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (_objective(name, {**values, wrt: up})
                     - _objective(name, {**values, wrt: down})) / (2 * h)
    return grad


# Checked against torch in test_cnn.py without a Numba compile each (the kernels of windows,
# pools and gathers are compiled in tests/kernels/, the CNN's in the demo).
WINDOWED = {"layer_conv1d", "layer_conv2d", "layer_maxpool2d", "layer_avgpool2d",
            "layer_embedding"}
# Recurrences over a sequence (symdl.scan): their oracle is torch.nn.RNN, GRU and LSTM, with
# the weights mapped by hand, in a file of their own.
COVERED_ELSEWHERE = {"layer_rnn": "test_recurrent_layers.py",
                     "layer_gru": "test_recurrent_layers.py",
                     "layer_lstm": "test_recurrent_layers.py"}


def test_every_layer_file_is_covered():
    shipped = sorted(n for n in registry.names() if n.startswith("layer_"))
    assert shipped == sorted(set(LAYERS) | WINDOWED | set(COVERED_ELSEWHERE))
    here = Path(__file__).parent
    for name, test_file in COVERED_ELSEWHERE.items():
        assert f'"{name}"' in (here / test_file).read_text()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_kernel_matches_numpy_and_finite_differences(name):
    _, der, kernel = _compiled(name)
    values = _inputs(name)
    result = kernel(**values)
    assert result.value == pytest.approx(_objective(name, values), rel=1e-12, abs=1e-12)
    for p in der.wrt:
        pname = str(getattr(p, "name", p))
        numeric = _central_difference(name, values, pname)
        np.testing.assert_allclose(result.grad[pname], numeric, rtol=1e-6, atol=1e-8,
                                   err_msg=f"{name}: gradient wrt {pname}")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_kernel_matches_torch(name):
    _, der, kernel = _compiled(name)
    values = _inputs(name, seed=1)
    result = kernel(**values)
    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}
    wrt = [str(getattr(p, "name", p)) for p in der.wrt]
    tensors.pop("M", None)  # torch's causal attention builds its own mask
    for pname in wrt:
        if pname != "a":  # torch takes the leaky-ReLU slope as a Python float
            tensors[pname].requires_grad_(True)
    out = LAYERS[name][1](tensors)
    objective = (tensors["G"] * out).sum()
    objective.backward()
    np.testing.assert_allclose(result.value, objective.item(), rtol=1e-12, atol=1e-12)
    for pname in wrt:
        if pname == "a":
            continue
        np.testing.assert_allclose(result.grad[pname], tensors[pname].grad.numpy(),
                                   rtol=1e-10, atol=1e-12, err_msg=f"{name}: d/d{pname}")


def test_leaky_relu_slope_gradient_and_kink_conventions():
    _, _, kernel = _compiled("layer_leaky_relu")
    values = _inputs("layer_leaky_relu")
    values["X"][0, :2] = 0.0  # on the kink: the derivative is the slope, as PyTorch's
    result = kernel(**values)
    x = torch.tensor(values["X"], requires_grad=True)
    (torch.tensor(values["G"]) * F.leaky_relu(x, 0.1)).sum().backward()
    np.testing.assert_allclose(result.grad["X"], x.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(result.grad["X"][0, :2], 0.1 * values["G"][0, :2], rtol=1e-12)
    expected_slope = np.sum(values["G"] * np.minimum(values["X"], 0))
    assert result.grad["a"] == pytest.approx(expected_slope, rel=1e-12)


def test_relu_derivative_at_zero_is_zero():
    _, _, kernel = _compiled("layer_relu")
    values = _inputs("layer_relu")
    values["X"][1, :] = 0.0
    grad = kernel(**values).grad["X"]
    np.testing.assert_array_equal(grad[1], 0.0)
    x = torch.tensor(values["X"], requires_grad=True)
    (torch.tensor(values["G"]) * F.relu(x)).sum().backward()
    np.testing.assert_array_equal(grad, x.grad.numpy())


def test_softmax_and_attention_are_stable_for_large_scores():
    _, _, kernel = _compiled("layer_softmax")
    values = _inputs("layer_softmax")
    values["X"] = values["X"] * 1000.0
    result = kernel(**values)
    x = torch.tensor(values["X"], requires_grad=True)
    (torch.tensor(values["G"]) * F.softmax(x, dim=1)).sum().backward()
    assert np.isfinite(result.value) and np.all(np.isfinite(result.grad["X"]))
    np.testing.assert_allclose(result.grad["X"], x.grad.numpy(), rtol=1e-9, atol=1e-12)
    _, _, kernel = _compiled("layer_attention")
    values = _inputs("layer_attention")
    values["Wq"] = values["Wq"] * 300.0
    result = kernel(**values)
    assert np.all(np.isfinite(result.grad["Wq"])) and np.all(np.isfinite(result.grad["X"]))


def test_float32_kernels_follow_float64():
    for name in ("layer_layernorm", "layer_attention", "layer_gelu"):
        _, _, kernel = _compiled(name)
        values = _inputs(name, seed=3)
        r64 = kernel(**values)
        r32 = kernel(**{k: np.asarray(v, dtype=np.float32) for k, v in values.items()})
        for pname, g in r64.grad.items():
            assert r32.grad[pname].dtype == np.float32
            np.testing.assert_allclose(r32.grad[pname], g, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_symdl_derive_prints_backprop(name):
    entry = registry.load(name)
    _, der, _ = _compiled(name)
    out = io.StringIO()
    print_derivation(entry.name, entry.title, der, False, out)
    text = out.getvalue()
    assert "backward (reverse mode):" in text
    for p in der.wrt:
        assert f"  d{getattr(p, 'name', p)} " in text


def test_vocabulary_helpers_evaluate_as_numpy():
    import sympy as sp

    import symdl

    n, d = sp.symbols("n d", integer=True, positive=True)
    X = sp.MatrixSymbol("X", n, d)
    x = np.random.default_rng(4).random((5, 3)) + 0.5
    dims = {n: 5, d: 3}
    for axis in (None, 0, 1):
        got = symdl.evaluate(symdl.variance(X, axis), {"X": x}, dims)
        want = x.var(axis=axis, keepdims=axis is not None)
        np.testing.assert_allclose(np.reshape(got, np.shape(want)), want, rtol=1e-13)
    np.testing.assert_allclose(symdl.evaluate(symdl.sqrt(X), {"X": x}, dims), np.sqrt(x))
    np.testing.assert_allclose(symdl.evaluate(symdl.rsqrt(X), {"X": x}, dims), x**-0.5)
    np.testing.assert_allclose(symdl.evaluate(symdl.gelu(X), {"X": x}, dims), _np_gelu(x))
    slope = sp.Symbol("s")
    np.testing.assert_allclose(
        symdl.evaluate(symdl.leaky_relu(X - sp.OneMatrix(n, d), slope),
                       {"X": x, "s": 0.2}, dims),
        np.where(x > 1, x - 1, 0.2 * (x - 1)), rtol=1e-14)
    row = sp.MatrixSymbol("r", 1, d)
    np.testing.assert_allclose(symdl.evaluate(symdl.broadcast(row, n, d), {"r": x[:1]}, dims),
                               np.repeat(x[:1], 5, axis=0))
    with pytest.raises(symdl.ShapeMismatchError, match="cannot be repeated"):
        symdl.broadcast(sp.MatrixSymbol("c", d, 1), n, d)
    with pytest.raises(symdl.DefinitionError, match="variance axis"):
        symdl.variance(X, 2)


# --------------------------------------------------------------------------------------------
# Multi-head attention in tensor notation (issue 14, items 2 and 3): one compiled kernel.


def _mha_values(rng, batch=2, length=5, heads=2, head_dim=3, scale=1.0):
    width = heads * head_dim  # nn.MultiheadAttention's embed_dim
    return {"X": rng.normal(size=(batch, length, width)),
            "Wq": scale * rng.normal(size=(width, heads, head_dim)) / math.sqrt(width),
            "Wk": scale * rng.normal(size=(width, heads, head_dim)) / math.sqrt(width),
            "Wv": rng.normal(size=(width, heads, head_dim)) / math.sqrt(width),
            "Wo": rng.normal(size=(heads, head_dim, width)) / math.sqrt(width),
            "G": rng.normal(size=(batch, length, width)),
            "M": np.triu(np.full((length, length), -np.inf), k=1)}


def _torch_mha_module(values, dtype):
    """nn.MultiheadAttention (no biases, batch first) with symdl's weights mapped by hand:
    in_proj_weight stacks the three d x d projections (output feature h * d_k + e, input c),
    so Wq[c, h, e] = in_proj_weight[h * d_k + e, c]; out_proj.weight[o, h * d_k + e] =
    Wo[h, e, o]. Returns the objective Σ G ⊙ Y and the gradients by symdl's names."""
    width, heads, head_dim = values["Wq"].shape
    module = torch.nn.MultiheadAttention(width, heads, bias=False, batch_first=True)
    module = module.to(dtype)
    proj = [torch.tensor(values[w].reshape(width, width).T, dtype=dtype)
            for w in ("Wq", "Wk", "Wv")]
    out = torch.tensor(values["Wo"].reshape(width, width).T, dtype=dtype)
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.cat(proj))
        module.out_proj.weight.copy_(out)
    x = torch.tensor(values["X"], dtype=dtype, requires_grad=True)
    mask = torch.tensor(values["M"], dtype=dtype)
    y, _ = module(x, x, x, attn_mask=mask, need_weights=False)
    objective = (torch.tensor(values["G"], dtype=dtype) * y).sum()
    objective.backward()
    inp = module.in_proj_weight.grad.T.reshape(width, 3, heads, head_dim)
    grads = {"X": x.grad, "Wq": inp[:, 0], "Wk": inp[:, 1], "Wv": inp[:, 2],
             "Wo": module.out_proj.weight.grad.T.reshape(heads, head_dim, width)}
    return objective.item(), {k: v.numpy() for k, v in grads.items()}


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_multihead_attention_matches_nn_multihead_attention(dtype, rtol):
    _, _, kernel = _compiled("layer_attention_multihead")
    values = _mha_values(np.random.default_rng(5))
    result = kernel(**{k: np.asarray(v, dtype=dtype) for k, v in values.items()})
    want, grads = _torch_mha_module(values, torch.float64 if dtype == np.float64
                                    else torch.float32)
    np.testing.assert_allclose(result.value, want, rtol=rtol)
    for name, g in grads.items():
        assert result.grad[name].dtype == dtype
        # Relative to the gradient's scale: float32 entries near 0 carry absolute rounding.
        np.testing.assert_allclose(result.grad[name], g, rtol=rtol,
                                   atol=rtol * np.abs(g).max(), err_msg=name)


def test_multihead_attention_is_finite_and_exact_at_scores_of_1e3():
    _, _, kernel = _compiled("layer_attention_multihead")
    values = _mha_values(np.random.default_rng(6), scale=40.0)
    q = np.einsum("bsc,che->bhse", values["X"], values["Wq"])
    k = np.einsum("bsc,che->bhse", values["X"], values["Wk"])
    scores = np.einsum("bhse,bhte->bhst", q, k) / math.sqrt(q.shape[-1])
    assert np.abs(scores).max() > 1e3
    result = kernel(**values)
    assert np.isfinite(result.value)
    assert all(np.all(np.isfinite(g)) for g in result.grad.values())
    want, grads = _torch_mha_module(values, torch.float64)
    np.testing.assert_allclose(result.value, want, rtol=1e-10)
    for name, g in grads.items():
        np.testing.assert_allclose(result.grad[name], g, rtol=1e-9,
                                   atol=1e-10 * np.abs(g).max(), err_msg=name)


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    """A query that may see no key (its row of the mask all -inf, as padding) attends to
    nothing: its output is 0 and it adds nothing to any gradient, where torch's softmax gives
    NaN that spreads into every weight gradient. The oracle is torch without that query."""
    _, _, kernel = _compiled("layer_attention_multihead")
    values = _mha_values(np.random.default_rng(7))
    values["M"][1, :] = -np.inf  # query 1 sees nothing
    result = kernel(**values)
    assert all(np.all(np.isfinite(g)) for g in result.grad.values())
    t = {k: torch.tensor(v, requires_grad=k in ("X", "Wq", "Wk", "Wv", "Wo"))
         for k, v in values.items()}
    keep = [0, 2, 3, 4]
    q, k, val = (torch.einsum("bsc,che->bhse", t["X"], t[w]) for w in ("Wq", "Wk", "Wv"))
    heads = F.scaled_dot_product_attention(q[:, :, keep], k, val,
                                           attn_mask=t["M"][keep])
    y = torch.einsum("bhse,heo->bso", heads, t["Wo"])
    objective = (t["G"][:, keep] * y).sum()
    objective.backward()
    np.testing.assert_allclose(result.value, objective.item(), rtol=1e-12)
    for name in ("X", "Wq", "Wk", "Wv", "Wo"):
        np.testing.assert_allclose(result.grad[name], t[name].grad.numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=name)
