"""The shipped pre-norm transformer block (derivations/model_transformer_block.py) against
PyTorch modules with its weights mapped by hand: nn.LayerNorm, nn.MultiheadAttention (no
biases, in_proj_weight split into Wq, Wk, Wv), nn.Linear and the exact nn.GELU, in float64
(1e-10) and float32 (1e-5). The kernel runs interpreted (``jit=False``, the same generated
source): the block's Numba compile takes 20 s, the suite's budget has no room for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from symdl import catalog

SIZES = {"B": 2, "T": 4, "d": 6, "H": 2, "d_k": 3, "f": 5}


@pytest.fixture(scope="module")
def block():
    entry = catalog.load("model_transformer_block")
    return entry.module, entry.derive().compile(jit=False)


def _values(module, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, t, d, h, dk, f = (SIZES[k] for k in ("B", "T", "d", "H", "d_k", "f"))
    shapes = {"X": (b, t, d), "G": (b, t, d), "g1": (d,), "beta1": (d,), "g2": (d,),
              "beta2": (d,), "Wq": (d, h, dk), "Wk": (d, h, dk), "Wv": (d, h, dk),
              "Wo": (h, dk, d), "W1": (d, f), "b1": (f,), "W2": (f, d), "b2": (d,)}
    values = {k: rng.normal(size=s) for k, s in shapes.items()}
    values.update(module.sample_inputs(rng, SIZES))
    return values


def _torch_block(values: dict, dtype: torch.dtype) -> tuple[float, dict]:
    d, h, dk = values["Wq"].shape

    def tensor(a):
        return torch.tensor(np.asarray(a), dtype=dtype)

    ln1, ln2 = torch.nn.LayerNorm(d, eps=1e-5), torch.nn.LayerNorm(d, eps=1e-5)
    mha = torch.nn.MultiheadAttention(d, h, bias=False, batch_first=True)
    width = values["W1"].shape[1]
    fc1, fc2 = torch.nn.Linear(d, width), torch.nn.Linear(width, d)
    for m in (ln1, ln2, mha, fc1, fc2):
        m.to(dtype)
    with torch.no_grad():
        ln1.weight.copy_(tensor(values["g1"]))
        ln1.bias.copy_(tensor(values["beta1"]))
        ln2.weight.copy_(tensor(values["g2"]))
        ln2.bias.copy_(tensor(values["beta2"]))
        mha.in_proj_weight.copy_(torch.cat([tensor(values[w].reshape(d, d).T)
                                            for w in ("Wq", "Wk", "Wv")]))
        mha.out_proj.weight.copy_(tensor(values["Wo"].reshape(d, d).T))
        fc1.weight.copy_(tensor(values["W1"].T))
        fc1.bias.copy_(tensor(values["b1"]))
        fc2.weight.copy_(tensor(values["W2"].T))
        fc2.bias.copy_(tensor(values["b2"]))
    x = tensor(values["X"]).requires_grad_(True)
    n1 = ln1(x)
    r = x + mha(n1, n1, n1, attn_mask=tensor(values["M"]), need_weights=False)[0]
    y = r + fc2(torch.nn.functional.gelu(fc1(ln2(r))))
    objective = (tensor(values["G"]) * y).sum()
    objective.backward()
    inp = mha.in_proj_weight.grad.T.reshape(d, 3, h, dk)
    grads = {"X": x.grad, "g1": ln1.weight.grad, "beta1": ln1.bias.grad,
             "g2": ln2.weight.grad, "beta2": ln2.bias.grad, "Wq": inp[:, 0], "Wk": inp[:, 1],
             "Wv": inp[:, 2], "Wo": mha.out_proj.weight.grad.T.reshape(h, dk, d),
             "W1": fc1.weight.grad.T, "b1": fc1.bias.grad, "W2": fc2.weight.grad.T,
             "b2": fc2.bias.grad}
    return objective.item(), {k: v.numpy() for k, v in grads.items()}


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_transformer_block_matches_torch_modules(block, dtype, rtol):
    module, kernel = block
    values = _values(module, seed=21)
    result = kernel(**{k: np.asarray(v, dtype=dtype) for k, v in values.items()})
    want, grads = _torch_block(values, torch.float64 if dtype == np.float64 else torch.float32)
    np.testing.assert_allclose(result.value, want, rtol=rtol)
    for name, g in grads.items():
        np.testing.assert_allclose(result.grad[name], g, rtol=rtol,
                                   atol=rtol * np.abs(g).max(), err_msg=name)


def test_transformer_block_has_no_nan_at_large_scores(block):
    module, kernel = block
    values = _values(module, seed=22)
    values["Wq"] = values["Wq"] * 30.0
    values["Wk"] = values["Wk"] * 30.0
    result = kernel(**values)
    want, grads = _torch_block(values, torch.float64)
    assert all(np.all(np.isfinite(g)) for g in result.grad.values())
    np.testing.assert_allclose(result.value, want, rtol=1e-10)
    for name, g in grads.items():
        np.testing.assert_allclose(result.grad[name], g, rtol=1e-8,
                                   atol=1e-9 * np.abs(g).max(), err_msg=name)
