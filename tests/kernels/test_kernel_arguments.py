"""How kernels take their arguments (issue 15, item 14): any input name works, generated
inputs never merge with a user's, torch tensors are read as arrays, and a malformed ``out=``
gets a typed error. Oracle: the formulas written out in NumPy here."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl.define import optimizers
from symdl.errors import KernelArgumentError
from symdl.ir.keys import Gradient, HessianBlock, Value
from symdl.training import TrainingStep, training_names

n, d = sp.symbols("n d", integer=True, positive=True)
RNG = np.random.default_rng(5)
XV, WV, YV = RNG.normal(size=(6, 3)), RNG.normal(size=(3, 1)), RNG.normal(size=(6, 1))


def _mse_grad(xv, wv, yv):
    r = xv @ wv - yv
    return np.mean(r**2), 2 * xv.T @ r / xv.shape[0]


# -- names that were the kernel's own keywords ----------------------------------------------

KEYWORDS = ["out", "self", "parallel", "compiled", "inplace", "run", "arrays", "kernel"]


@pytest.mark.parametrize("name", KEYWORDS)
@pytest.mark.parametrize("role", ["input", "parameter"])
def test_any_name_is_a_kernel_argument(name, role):
    """``out``, ``self`` and ``parallel`` used to clash with ``Kernel.__call__``'s own
    arguments (TypeError, or the array taken as the option)."""
    X = sp.MatrixSymbol(name if role == "input" else "X", n, d)
    w = sp.MatrixSymbol(name if role == "parameter" else "w", d, 1)
    y = sp.MatrixSymbol("y", n, 1)
    k = symdl.derive(symdl.mse(X * w, y), wrt=[w]).compile(jit=False)
    value, grad = _mse_grad(XV, WV, YV)
    result = k(**{str(X.name): XV, str(w.name): WV, "y": YV})
    assert result.value == pytest.approx(value, rel=1e-14)
    np.testing.assert_allclose(result.grad[str(w.name)], grad, rtol=1e-13)
    result = k.run({str(X.name): XV, str(w.name): WV, "y": YV})
    np.testing.assert_allclose(result.grad[str(w.name)], grad, rtol=1e-13)


@pytest.fixture(scope="module")
def out_kernel():
    """A kernel with an input named ``out``."""
    out = sp.MatrixSymbol("out", n, d)
    w = sp.MatrixSymbol("w", d, 1)
    y = sp.MatrixSymbol("y", n, 1)
    return symdl.derive(symdl.mse(out * w, y), wrt=[w]).compile(jit=False)


def test_options_through_run_when_an_input_is_named_out(out_kernel):
    buffer = np.empty((3, 1))
    result = out_kernel.run({"out": XV, "w": WV, "y": YV}, out={"grad:w": buffer},
                            parallel=False)
    assert result.grad["w"] is buffer
    np.testing.assert_allclose(buffer, _mse_grad(XV, WV, YV)[1], rtol=1e-13)


def test_out_option_on_a_kernel_with_an_input_named_out_says_use_run(out_kernel):
    with pytest.raises(KernelArgumentError, match=r"input named 'out'.*k\.run"):
        out_kernel(out={"grad:w": np.empty((3, 1))}, w=WV, y=YV)


def test_out_and_parallel_options_still_work():
    X, w, y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
    k = symdl.derive(symdl.mse(X * w, y), wrt=[w]).compile(jit=False)
    buffer = np.empty((3, 1))
    k(out={"grad:w": buffer}, parallel=False, X=XV, w=WV, y=YV)
    np.testing.assert_allclose(buffer, _mse_grad(XV, WV, YV)[1], rtol=1e-13)
    with pytest.raises(KernelArgumentError, match="dict by name"):
        k.run([XV, WV, YV])


def test_training_step_takes_data_named_self():
    s = sp.MatrixSymbol("self", n, d)
    w, y = sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
    step = TrainingStep(symdl.derive(symdl.mse(s * w, y), wrt=[w]), optimizers.SGD(lr=0.1),
                        {"w": WV}, jit=False)
    value, grad = _mse_grad(XV, WV, YV)
    assert step(self=XV, y=YV) == pytest.approx(value, rel=1e-14)
    np.testing.assert_allclose(step.params["w"], WV - 0.1 * grad, rtol=1e-13)


# -- generated inputs never merge with a user's ---------------------------------------------

def test_hvp_direction_gets_a_fresh_name_next_to_an_input_named_v_w():
    """``v_w`` was both the user's array and the HVP direction (silently merged)."""
    X, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1)
    v_w = sp.MatrixSymbol("v_w", d, 1)
    loss = symdl.sum(X * w) + symdl.sum(sp.hadamard_product(w, w, v_w))
    k = symdl.derive(loss, wrt=[w]).compile(hvp=True, jit=False)
    assert k.hvp_inputs == {"w": "v_w_1"}
    assert set(k.inputs) == {"X", "w", "v_w", "v_w_1"}
    data, direction = RNG.normal(size=(3, 1)), RNG.normal(size=(3, 1))
    result = k(X=XV, w=WV, v_w=data, v_w_1=direction)
    # loss = Σ X w + Σ w² v: the Hessian is diag(2 v), its product with u is 2 v ⊙ u.
    np.testing.assert_allclose(result.hvp["w"], 2 * data * direction, rtol=1e-14)
    np.testing.assert_allclose(result.grad["w"], XV.sum(0)[:, None] + 2 * WV * data,
                               rtol=1e-13)


def test_hvp_inputs_are_named_v_w_without_a_clash():
    X, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1)
    k = symdl.derive(symdl.sum(X * w), wrt=[w]).compile(hvp=True, jit=False)
    assert k.hvp_inputs == {"w": "v_w"}


def test_training_step_state_and_counter_never_merge_with_data():
    """A definition that reads an array ``t`` (a time input) and one named ``m_a`` (Adam's
    first moment of ``a``): the step counter and the state get fresh names. A scalar
    ``Symbol`` parameter and a 1 x 1 one train as torch does."""
    t, y = sp.MatrixSymbol("t", n, 1), sp.MatrixSymbol("y", n, 1)
    m_a = sp.MatrixSymbol("m_a", n, 1)
    a, c = sp.Symbol("a", real=True), sp.MatrixSymbol("c", 1, 1)
    der = symdl.derive(symdl.mse(a * t + m_a + sp.OneMatrix(n, 1) * c, y), wrt=[a, c])
    adam = optimizers.Adam(lr=0.1)
    names = training_names(der, adam)
    assert names.step == "t_1" and names.states[("m", "a")] == "m_a_1"
    step = TrainingStep(der, adam, {"a": 0.5, "c": np.zeros((1, 1))}, jit=False)
    tv, yv, mv = RNG.normal(size=(5, 1)), RNG.normal(size=(5, 1)), RNG.normal(size=(5, 1))
    ta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    tc = torch.zeros((1, 1), dtype=torch.float64, requires_grad=True)
    reference = torch.optim.Adam([ta, tc], lr=0.1)
    for _ in range(4):
        reference.zero_grad()
        loss = ((ta * torch.tensor(tv) + torch.tensor(mv) + tc - torch.tensor(yv)) ** 2).mean()
        loss.backward()
        reference.step()
        assert step(t=tv, y=yv, m_a=mv) == pytest.approx(loss.item(), rel=1e-13)
        assert float(step.params["a"]) == pytest.approx(ta.item(), rel=1e-12)
        np.testing.assert_allclose(step.params["c"], tc.detach().numpy(), rtol=1e-12)
    assert step.state["m_a_1"].shape == ()


def test_training_step_refuses_batch_arrays_that_are_its_own():
    w, X = sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("X", n, d)
    step = TrainingStep(symdl.derive(symdl.sum(X * w), wrt=[w]), optimizers.Adam(lr=0.1),
                        {"w": WV}, jit=False)
    with pytest.raises(KernelArgumentError, match="belong to the training step"):
        step(X=XV, w=WV)


# -- torch tensors ---------------------------------------------------------------------------

X_, W_, Y_ = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)


@pytest.fixture(scope="module")
def mse_kernel():
    return symdl.derive(symdl.mse(X_ * W_, Y_), wrt=[W_]).compile(jit=False)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_torch_tensors_are_inputs(mse_kernel, requires_grad):
    """A tensor with requires_grad raised torch's RuntimeError ("Can't call numpy() on
    Tensor that requires grad"); it is read like an array now (detached)."""
    w = torch.tensor(WV, requires_grad=requires_grad)
    result = mse_kernel(X=torch.tensor(XV), w=w, y=torch.tensor(YV))
    value, grad = _mse_grad(XV, WV, YV)
    assert result.value == pytest.approx(value, rel=1e-14)
    np.testing.assert_allclose(result.grad["w"], grad, rtol=1e-13)


def test_float32_torch_tensors_give_float32_results(mse_kernel):
    result = mse_kernel(X=torch.tensor(XV, dtype=torch.float32),
                        w=torch.tensor(WV, dtype=torch.float32),
                        y=torch.tensor(YV, dtype=torch.float32))
    assert result.grad["w"].dtype == np.float32
    np.testing.assert_allclose(result.grad["w"], _mse_grad(XV, WV, YV)[1], rtol=1e-5)


def test_a_torch_scalar_and_a_bfloat16_tensor():
    x = sp.Symbol("x", real=True)
    k = symdl.derive(x**3, wrt=[x]).compile(jit=False)
    assert k(x=torch.tensor(2.0, requires_grad=True)).grad["x"] == pytest.approx(12.0)
    with pytest.raises(KernelArgumentError, match=r"bfloat16.*\.double\(\)"):
        k(x=torch.tensor(2.0, dtype=torch.bfloat16))


def test_out_into_torch_tensors(mse_kernel):
    buffer = torch.empty((3, 1), dtype=torch.float64)
    mse_kernel(out={"grad:w": buffer}, X=XV, w=WV, y=YV)
    np.testing.assert_allclose(buffer.numpy(), _mse_grad(XV, WV, YV)[1], rtol=1e-13)
    with pytest.raises(KernelArgumentError, match="requires grad"):
        mse_kernel(out={"grad:w": torch.empty((3, 1), dtype=torch.float64,
                                              requires_grad=True)}, X=XV, w=WV, y=YV)


def test_training_step_from_torch_parameters():
    X, w, y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
    w0 = torch.tensor(WV, requires_grad=True)
    step = TrainingStep(symdl.derive(symdl.mse(X * w, y), wrt=[w]), optimizers.SGD(lr=0.1),
                        {"w": w0}, jit=False)
    step(X=torch.tensor(XV), y=torch.tensor(YV))
    np.testing.assert_allclose(step.params["w"], WV - 0.1 * _mse_grad(XV, WV, YV)[1],
                               rtol=1e-13)


def test_derivation_evaluate_reads_torch_tensors():
    der = symdl.derive(symdl.mse(X_ * W_, Y_), wrt=[W_])
    values = der.evaluate({"X": torch.tensor(XV), "w": torch.tensor(WV, requires_grad=True),
                           "y": torch.tensor(YV)})
    np.testing.assert_allclose(values["grad:w"], _mse_grad(XV, WV, YV)[1], rtol=1e-13)


# -- malformed out= ----------------------------------------------------------------------------

def _read_only():
    a = np.empty((3, 1))
    a.flags.writeable = False
    return a


OUT_ERRORS = [
    ("list", [np.empty((3, 1))], ["dict of result arrays", "list"]),
    ("tuple", (np.empty((3, 1)),), ["dict of result arrays", "tuple"]),
    ("array", np.empty((3, 1)), ["dict of result arrays", "ndarray"]),
    ("list-value", {"grad:w": [[0.0], [0.0], [0.0]]}, ["grad:w", "NumPy array", "list"]),
    ("read-only", {"grad:w": _read_only()}, ["grad:w", "read-only", "copy()"]),
    ("broadcast-view", {"grad:w": np.broadcast_to(np.empty((1, 1)), (3, 1))},
     ["grad:w", "read-only"]),
    ("non-string-key", {0: np.empty((3, 1))}, ["output names", "0"]),
    ("unknown-output", {"grad:X": np.empty((6, 3))}, ["grad:X", "does not compute", "grad:w"]),
    ("unknown-key", {Gradient("y"): np.empty((6, 1))}, ["grad:y", "does not compute"]),
]


@pytest.mark.parametrize("out, words", [c[1:] for c in OUT_ERRORS],
                         ids=[c[0] for c in OUT_ERRORS])
def test_malformed_out_is_a_typed_error(mse_kernel, out, words):
    with pytest.raises(KernelArgumentError) as info:
        mse_kernel(out=out, X=XV, w=WV, y=YV)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# -- outputs by key ------------------------------------------------------------------------------

def test_out_takes_keys_and_spellings(mse_kernel):
    """``out=`` names an output by its key or its spelling; the two name one output."""
    grad, value = np.empty((3, 1)), np.empty(1)
    result = mse_kernel(out={Gradient("w"): grad, "value": value}, X=XV, w=WV, y=YV)
    want_value, want_grad = _mse_grad(XV, WV, YV)
    assert result.grad["w"] is grad and result.outputs[Gradient("w")] is grad
    np.testing.assert_allclose(grad, want_grad, rtol=1e-13)
    assert value[0] == pytest.approx(want_value, rel=1e-14)
    assert mse_kernel.output_keys == [Value(), Gradient("w")] == ["value", "grad:w"]
    assert {Gradient("w"): 1}["grad:w"] == 1 and sorted([Gradient("w"), Value()])[0] == "grad:w"


def test_one_output_under_two_spellings_is_refused():
    a = sp.MatrixSymbol("a,b", 3, 1)
    k = symdl.derive(symdl.total(sp.hadamard_product(a, a)), wrt=[a]).compile(jit=False)
    with pytest.raises(KernelArgumentError, match="twice"):
        k.run({"a,b": np.ones((3, 1))}, out={"grad:a,b": np.empty((3, 1)),
                                            Gradient("a,b"): np.empty((3, 1))})
    grad = np.empty((3, 1))
    k.run({"a,b": np.ones((3, 1))}, out={"grad:a,b": grad})
    np.testing.assert_array_equal(grad, 2.0)


def test_compile_outputs_by_key_or_spelling():
    der = symdl.derive(symdl.mse(X_ * W_, Y_), wrt=[W_], hessian=True)
    assert der.compile(outputs=[HessianBlock("w", "w")], jit=False).output_keys == [
        "hessian:w,w"]
    assert der.compile(outputs="grad:w", jit=False).output_keys == [Gradient("w")]
    with pytest.raises(symdl.DerivationError, match=r"no outputs named \['grad:v'\].*grad:w"):
        der.compile(outputs=["grad:v"], jit=False)
