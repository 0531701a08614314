"""The recurrent layers (derivations/layer_rnn.py, layer_gru.py, layer_lstm.py), checked
against torch.nn.RNN, GRU and LSTM (weights mapped by hand; float64 autograd is the oracle):
the NumPy evaluation of the derived gradients, the generated kernel source run as Python
(every layer) and the Numba kernel (the RNN), in float64 (1e-10) and float32 (1e-5); and the
SymPy reference of ``symdl.check`` (symdl.verify.reference), which evaluates the definition's
recurrence and the printed backpropagation through time as loops over t."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl.ir.keys import Gradient
from symdl.verify import reference

SIZES = {"T": 4, "n": 3, "d": 4, "k": 2}
LAYERS = ["rnn", "gru", "lstm"]
GATES = {"rnn": "", "gru": "rzm", "lstm": "ifgo"}


NAMES = {"rnn": "layer_rnn", "gru": "layer_gru", "lstm": "layer_lstm"}
"""The shipped derivations checked here (test_layer_derivations.py's COVERED_ELSEWHERE)."""


def _module(layer):
    return importlib.import_module(f"symdl.derivations.{NAMES[layer]}")


@pytest.fixture(scope="module")
def derivations():
    return {layer: _module(layer).derivation() for layer in LAYERS}


def _values(der, seed, sizes=SIZES):
    rng = np.random.default_rng(seed)
    values = {}
    for name, leaf in der.leaves.items():
        shape = tuple(int(s.subs({sym: sizes[str(sym)] for sym in s.free_symbols}))
                      for s in leaf.shape)
        values[name] = rng.normal(size=shape)
    return values


def torch_oracle(layer, v):
    """The value and every gradient of Σ G ⊙ H from torch's module, in float64."""
    d, k = v["X"].shape[2], v["h0"].shape[1]
    gates = GATES[layer]
    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[layer]
    module = cls(d, k, dtype=torch.float64)
    with torch.no_grad():
        if layer == "rnn":
            module.weight_ih_l0.copy_(torch.tensor(v["W"].T))
            module.weight_hh_l0.copy_(torch.tensor(v["U"].T))
            module.bias_ih_l0.copy_(torch.tensor(v["b"][0]))
            module.bias_hh_l0.zero_()
        else:
            module.weight_ih_l0.copy_(torch.tensor(np.concatenate([v[f"W_{g}"].T for g in gates])))
            module.weight_hh_l0.copy_(torch.tensor(np.concatenate([v[f"U_{g}"].T for g in gates])))
            module.bias_ih_l0.copy_(torch.tensor(np.concatenate([v[f"b_{g}"][0] for g in gates])))
            hidden_bias = np.zeros(len(gates) * k)
            if layer == "gru":  # the candidate's hidden bias sits inside the reset gate
                hidden_bias[2 * k:] = v["c_m"][0]
            module.bias_hh_l0.copy_(torch.tensor(hidden_bias))
    x = torch.tensor(v["X"], requires_grad=True)
    h = torch.tensor(v["h0"][None], requires_grad=True)
    state = (h, torch.tensor(v["c0"][None], requires_grad=True)) if layer == "lstm" else h
    out, _ = module(x, state)
    loss = (out * torch.tensor(v["G"])).sum()
    loss.backward()
    want = {"value": loss.item(), "X": x.grad.numpy(), "h0": h.grad.numpy()[0]}
    if layer == "lstm":
        want["c0"] = state[1].grad.numpy()[0]
    if layer == "rnn":
        want.update(W=module.weight_ih_l0.grad.numpy().T, U=module.weight_hh_l0.grad.numpy().T,
                    b=module.bias_ih_l0.grad.numpy()[None])
        return want
    w_grad, u_grad = module.weight_ih_l0.grad.numpy().T, module.weight_hh_l0.grad.numpy().T
    b_grad = module.bias_ih_l0.grad.numpy()
    for q, g in enumerate(gates):
        cols = slice(q * k, (q + 1) * k)
        want.update({f"W_{g}": w_grad[:, cols], f"U_{g}": u_grad[:, cols],
                     f"b_{g}": b_grad[None, cols]})
    if layer == "gru":
        want["c_m"] = module.bias_hh_l0.grad.numpy()[None, 2 * k:]
    return want


def _assert_matches(got, want, rtol, atol, what):
    for key, expected in want.items():
        np.testing.assert_allclose(np.asarray(got(key), dtype=float), expected, rtol=rtol,
                                   atol=atol, err_msg=f"{what}: {key}")


@pytest.mark.parametrize("layer", LAYERS)
def test_derived_gradients_match_torch(derivations, layer):
    der = derivations[layer]
    values = _values(der, 0)
    result = der.evaluate(values)
    want = torch_oracle(layer, values)
    assert {str(getattr(p, "name", getattr(p, "label", p))) for p in der.wrt} == set(want) - {
        "value"}
    _assert_matches(lambda key: result["value" if key == "value" else f"grad:{key}"], want,
                    1e-10, 1e-10, layer)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_generated_kernel_source_matches_torch(derivations, layer, dtype, tol):
    # The generated module run as plain Python (no Numba compile): the loop over t, the
    # reverse loop and the step's code, in both precisions.
    der = derivations[layer]
    kernel = der.compile(jit=False)
    values = _values(der, 1)
    result = kernel(**{name: a.astype(dtype) for name, a in values.items()})
    want = torch_oracle(layer, values)
    scale = max(np.max(np.abs(w)) for w in want.values())
    _assert_matches(lambda key: result.value if key == "value" else result.grad[key], want,
                    tol, tol * scale, f"{layer} {dtype.__name__}")


@pytest.fixture(scope="module")
def rnn_kernel(derivations):
    return derivations["rnn"].compile()


def test_numba_kernel_matches_torch(derivations, rnn_kernel):
    # The same source compiled by Numba (float64: one compile; float32 is checked above on
    # the same source run as Python).
    values = _values(derivations["rnn"], 2)
    result = rnn_kernel(**values)
    _assert_matches(lambda key: result.value if key == "value" else result.grad[key],
                    torch_oracle("rnn", values), 1e-10, 1e-10, "rnn numba")


def test_the_kernel_loops_over_t_and_does_not_unroll(rnn_kernel):
    source = rnn_kernel.source
    # One loop over t per recurrence: the forward states, the adjoint recurrence (backwards)
    # and the sums over t; the step's code appears once in each, whatever T is.
    assert source.count("for t") >= 3
    assert "- 1, -1, -1):" in source


REFERENCE_SIZES = {"T": 3, "n": 2, "d": 3, "k": 2}
"""Three steps (the middle one reads a state and is read by the next), distinct small sizes:
the SymPy reference writes each step out entry by entry."""


@pytest.mark.parametrize("layer", LAYERS)
def test_sympy_reference_of_the_recurrence_and_its_gradients_matches_torch(derivations,
                                                                            layer):
    # What symdl.check compares the kernel with: the definition (a Recurrence) and the
    # printed backward equations (recurrences run from t = T down to 1, sums over t), each
    # written out and lambdified by SymPy and run as a loop over t.
    der = derivations[layer]
    values = _values(der, 3, REFERENCE_SIZES)
    dims = {dim: REFERENCE_SIZES[str(dim)] for dim in der.dims}
    env, value = reference.Chain(der.source_steps, dims)(values)
    grads = reference.Chain(der.equations(), dims)(env)[0]
    want = torch_oracle(layer, values)
    _assert_matches(lambda key: value if key == "value" else grads[f"d{key}"], want, 1e-10,
                    1e-12, f"{layer} sympy reference")


def test_check_compares_every_rnn_gradient_with_the_sympy_reference(derivations):
    # Before, the reference refused a recurrence: every row was skipped as "not applicable".
    der = derivations["rnn"]
    report = symdl.check(der, jit=False, dims={sp.Symbol(s, integer=True, positive=True): v
                                                for s, v in REFERENCE_SIZES.items()},
                         reference_budget=600)
    assert report.ok, str(report)
    assert not [s for s in report.skipped if s.method == "sympy reference"], str(report)
    compared = {r.output for r in report.rows if r.method == "sympy reference"}
    assert {Gradient(p) for p in ("W", "U", "b", "h0", "X")} <= compared
