"""Fused training steps: loss, backprop and optimizer update in one kernel.

Oracle: the 2-layer network's forward and backward pass written by hand in NumPy below, and
Adam written by hand in NumPy; the step kernel must follow them for many steps, on the
validated first call and on the unchecked fast path of later calls.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl.derivations import two_layer_mlp
from symdl.errors import DerivationError, KernelArgumentError
from symdl.training import TrainingStep, compile_training_step


class _Adam:
    """Adam written out in SymPy here (the protocol of symdl.training), constants inline."""

    state_names = ("m", "v")

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps

    def update(self, p, g, state, t):
        m = self.beta1 * state["m"] + (1 - self.beta1) * g
        v = self.beta2 * state["v"] + (1 - self.beta2) * sp.hadamard_product(g, g)
        denominator = (v / (1 - self.beta2**t)).applyfunc(sp.sqrt) + self.eps * sp.OneMatrix(
            *p.shape)
        step = sp.hadamard_product(m, sp.HadamardPower(denominator, -1))
        return p - self.lr / (1 - self.beta1**t) * step, {"m": m, "v": v}


class _SGD:
    state_names: tuple[str, ...] = ()

    def __init__(self, lr):
        self.lr = lr

    def update(self, p, g, state, t):
        return p - self.lr * g, {}


def _numpy_mlp(X, Y, W1, b1, W2, b2):
    """Loss and gradients of the 2-layer network, by hand."""
    n = X.shape[0]
    A1 = np.tanh(X @ W1 + b1)
    Z2 = A1 @ W2 + b2
    Z2s = Z2 - Z2.max(axis=1, keepdims=True)
    P = np.exp(Z2s) / np.exp(Z2s).sum(axis=1, keepdims=True)
    loss = -(Y * (Z2s - np.log(np.exp(Z2s).sum(axis=1, keepdims=True)))).sum() / n
    dZ2 = (P - Y) / n
    dZ1 = (dZ2 @ W2.T) * (1 - A1**2)
    return loss, {"W1": X.T @ dZ1, "b1": dZ1.sum(0, keepdims=True),
                  "W2": A1.T @ dZ2, "b2": dZ2.sum(0, keepdims=True)}


def _problem(n=7, d=5, h=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    params = {"W1": rng.normal(size=(d, h)) * 0.5, "b1": rng.normal(size=(1, h)) * 0.1,
              "W2": rng.normal(size=(h, k)) * 0.5, "b2": rng.normal(size=(1, k)) * 0.1}
    X = rng.normal(size=(n, d))
    Y = np.eye(k)[rng.integers(0, k, n)]
    return params, X, Y


@pytest.fixture(scope="module")
def mlp():
    return two_layer_mlp.derivation()


def test_adam_steps_follow_numpy(mlp):
    params, X, Y = _problem()
    step = TrainingStep(mlp, _Adam(lr=0.05), params)
    ref = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(a) for k, a in params.items()}
    for t in range(1, 26):  # the first call is validated, the rest take the fast path
        loss, grads = _numpy_mlp(X, Y, **ref)
        assert step(X=X, Y=Y) == pytest.approx(loss, rel=1e-12)
        for name, g in grads.items():
            m[name] = 0.9 * m[name] + 0.1 * g
            v[name] = 0.999 * v[name] + 0.001 * g * g
            denom = np.sqrt(v[name] / (1 - 0.999**t)) + 1e-8
            ref[name] = ref[name] - 0.05 / (1 - 0.9**t) * m[name] / denom
        for name in ref:
            np.testing.assert_allclose(step.params[name], ref[name], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(step.state["m_W1"], m["W1"], rtol=1e-10, atol=1e-12)
    assert step.t == 26


def test_adam_step_computes_each_product_once(mlp):
    # Adam's first moment reads the gradient scaled by 1 - beta1: each weight gradient
    # X^T dZ was a second BLAS product with that coefficient, next to the unscaled one the
    # step returns (a 3-layer MLP's step 24 ms against its gradient's 17 ms). The step's
    # products are now the gradient's.
    step = compile_training_step(mlp, _Adam(lr=0.05), jit=False)
    gradient = mlp.compile(jit=False)

    def products(kernel):
        body = kernel.source.split("def _steps_serial_code", 1)[1].split("_steps_serial_jit")[0]
        # np.dot(A, B, into): the product is what comes before its target
        return sorted(line.strip().rsplit(",", 1)[0] for line in body.splitlines()
                      if "np.dot(" in line)

    step_products = products(step)
    assert len(step_products) == len(set(step_products)) == len(products(gradient)), step_products


def test_sgd_step_and_batch_size_change(mlp):
    params, X, Y = _problem(n=9)
    step = TrainingStep(mlp, _SGD(lr=0.1), params)
    ref = {k: v.copy() for k, v in params.items()}
    for rows in (9, 9, 4, 4, 1):  # a smaller last batch is validated again
        loss, grads = _numpy_mlp(X[:rows], Y[:rows], **ref)
        assert step(X=X[:rows], Y=Y[:rows]) == pytest.approx(loss, rel=1e-12)
        ref = {k: ref[k] - 0.1 * grads[k] for k in ref}
    for name in ref:
        np.testing.assert_allclose(step.params[name], ref[name], rtol=1e-10, atol=1e-12)


def test_kernel_arguments_run_the_step_s_kernel_without_stepping(mlp):
    """``kernel_arguments`` (for profiling the generated code) gives what the kernel takes:
    run on them, it computes the loss NumPy computes; the step's parameters stay put."""
    params, X, Y = _problem(n=6)
    step = TrainingStep(mlp, _SGD(lr=0.1), params)
    before = step.t
    arguments, buffers = step.kernel_arguments(X=X, Y=Y)
    step.kernel.run_unchecked(arguments, buffers)
    loss, _ = _numpy_mlp(X, Y, **params)
    assert float(buffers[0][0]) == pytest.approx(loss, rel=1e-12)
    assert step.t == before
    for name in params:
        np.testing.assert_array_equal(step.params[name], params[name])
    with pytest.raises(KernelArgumentError, match="belong to the training step"):
        step.kernel_arguments(X=X, Y=Y, **{next(iter(params)): params[next(iter(params))]})


def test_non_contiguous_batches_on_the_fast_path(mlp):
    params, X, Y = _problem(n=8)
    step = TrainingStep(mlp, _SGD(lr=0.1), params)
    fortran = np.asfortranarray(X)
    step(X=X, Y=Y)
    expected_loss, _ = _numpy_mlp(fortran, Y, **step.params)
    assert step(X=fortran, Y=Y) == pytest.approx(expected_loss, rel=1e-12)


def test_training_step_float32(mlp):
    params, X, Y = _problem()
    step = TrainingStep(mlp, _SGD(lr=0.1), params, dtype=np.float32)
    loss = step(X=X.astype(np.float32), Y=Y.astype(np.float32))
    expected, _ = _numpy_mlp(X, Y, **params)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert step.params["W1"].dtype == np.float32


def test_training_step_errors(mlp):
    params, X, Y = _problem()
    with pytest.raises(KernelArgumentError, match="b2"):
        TrainingStep(mlp, _SGD(lr=0.1), {k: v for k, v in params.items() if k != "b2"})
    step = TrainingStep(mlp, _SGD(lr=0.1), params)
    with pytest.raises(KernelArgumentError, match="X"):
        step(X=X[:, :3], Y=Y)
    n = sp.Symbol("n", integer=True, positive=True)
    W = sp.MatrixSymbol("W", n, n)
    with pytest.raises(DerivationError, match="scalar"):
        compile_training_step(symdl.derive(2 * W, wrt=[W]), _SGD(lr=0.1))


def test_update_in_place_only_where_safe():
    """An Adam update may write into its own inputs (one loop reads each entry before it
    writes it); a kernel whose BLAS product still reads the input may not."""
    N = sp.Symbol("N", integer=True, positive=True)
    p, g, m = (sp.MatrixSymbol(name, N, 1) for name in "pgm")
    kernel = symdl.compile_expressions({"p": p - 0.1 * (0.9 * m + g), "m": 0.9 * m + g})
    rng = np.random.default_rng(0)
    values = {name: rng.normal(size=(6, 1)) for name in "pgm"}
    expected = kernel(**values)
    in_place = {name: a.copy() for name, a in values.items()}
    kernel(out={"p": in_place["p"], "m": in_place["m"]}, **in_place)
    np.testing.assert_allclose(in_place["p"], expected.outputs["p"], rtol=1e-15)
    np.testing.assert_allclose(in_place["m"], expected.outputs["m"], rtol=1e-15)

    A = sp.MatrixSymbol("A", 3, 3)
    x = sp.MatrixSymbol("x", 3, 1)
    product = symdl.compile_expressions({"x": A * x})
    x0 = rng.normal(size=(3, 1))
    with pytest.raises(KernelArgumentError, match="shares memory"):
        product(out={"x": x0}, A=rng.normal(size=(3, 3)), x=x0)


@pytest.mark.parametrize("parallel", [False, True])
def test_in_place_updates_run_the_loops_that_write_through_the_inputs(parallel):
    """When every output named like an input is written into that input, the kernel runs the
    loop variant that reads and writes through one array (it vectorises; two overlapping
    arguments do not). When only some are, the general loops run. Both give the numbers of
    a call with separate buffers."""
    N = sp.Symbol("N", integer=True, positive=True)
    p, g, m, v = (sp.MatrixSymbol(name, N, 1) for name in "pgmv")
    m_new, v_new = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * sp.hadamard_product(g, g)
    denominator = v_new.applyfunc(sp.sqrt) + 1e-8 * sp.OneMatrix(N, 1)
    p_new = p - 0.01 * sp.hadamard_product(m_new, sp.HadamardPower(denominator, -1))
    kernel = symdl.compile_expressions({"p": p_new, "m": m_new, "v": v_new})
    assert sorted(kernel.in_place) == ["m", "p", "v"]
    assert "_inplace(" in kernel.source and "_inplace_parallel(" in kernel.source
    rng = np.random.default_rng(1)
    size = 40_000  # above the parallel threshold
    values = {"p": rng.normal(size=(size, 1)), "g": rng.normal(size=(size, 1)),
              "m": rng.normal(size=(size, 1)), "v": rng.random((size, 1))}
    expected = kernel(parallel=parallel, **values).outputs

    suffix = "_inplace_parallel" if parallel else "_inplace"
    variants = [f for name, f in vars(kernel.module).items() if name.endswith(suffix)]
    assert variants and not any(f.signatures for f in variants)  # not run (nor compiled) yet
    arrays = {name: a.copy() for name, a in values.items()}
    kernel(out={name: arrays[name] for name in "pmv"}, parallel=parallel, **arrays)
    assert all(f.signatures for f in variants)
    for name in "pmv":
        np.testing.assert_array_equal(arrays[name], expected[name])

    arrays = {name: a.copy() for name, a in values.items()}
    m_out = np.empty_like(arrays["m"])  # m to its own buffer: p and v in place, m not
    kernel(out={"p": arrays["p"], "m": m_out, "v": arrays["v"]}, parallel=parallel, **arrays)
    np.testing.assert_array_equal(arrays["m"], values["m"])
    for name, got in (("p", arrays["p"]), ("m", m_out), ("v", arrays["v"])):
        np.testing.assert_array_equal(got, expected[name])


def test_a_loop_that_only_reads_an_in_place_output_keeps_its_own_arguments():
    """The update of p reads m's new value (written by another loop); only the loop that
    writes m gets the in-place variant. The review of the in-place change found the reading
    loop rewritten to an input it was never passed, which broke the compiled driver (used by
    training steps) even for calls with separate buffers."""
    N = sp.Symbol("N", integer=True, positive=True)
    p, g, m = (sp.MatrixSymbol(name, N, 1) for name in "pgm")
    m_new = 0.9 * m + g
    p_new = p - 0.01 * symdl.total(sp.hadamard_product(g, g)) * m_new
    kernel = symdl.compile_expressions({"m": m_new, "p": p_new})
    rng = np.random.default_rng(2)
    values = {name: rng.normal(size=(7, 1)) for name in "pgm"}
    expected = {"m": 0.9 * values["m"] + values["g"]}
    expected["p"] = values["p"] - 0.01 * np.sum(values["g"] ** 2) * expected["m"]
    got = kernel(**values).outputs
    for name in "mp":
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-14)
    buffers = [np.empty((7, 1)) for _ in kernel.output_names]
    kernel.run_unchecked([values[name] for name in kernel.input_names], buffers)
    for name, buffer in zip(kernel.output_names, buffers, strict=True):
        np.testing.assert_allclose(buffer, expected[name], rtol=1e-14)
    arrays = {name: a.copy() for name, a in values.items()}
    kernel(out={"m": arrays["m"], "p": arrays["p"]}, **arrays)
    for name in "mp":
        np.testing.assert_allclose(arrays[name], expected[name], rtol=1e-14)


def test_step_exposes_the_gradients_it_used(mlp):
    params, X, Y = _problem()
    step = TrainingStep(mlp, _Adam(lr=0.05), params)
    before = {k: v.copy() for k, v in step.params.items()}
    for _ in range(2):  # validated call, then the fast path
        before = {k: v.copy() for k, v in step.params.items()}
        step(X=X, Y=Y)
    _, grads = _numpy_mlp(X, Y, **before)
    for name, g in grads.items():
        np.testing.assert_allclose(step.grad[name], g, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------------------------
# Forward pass, held-out evaluation, saving and loading the state. Oracles: the NumPy
# evaluation of the definition's own SymPy steps (symdl.evaluate, no kernel), a PyTorch twin
# of the network, and a step that trains on without saving.

def _forward_oracles(params, X):
    """Z2 by symdl.evaluate of the definition's steps, and by PyTorch."""
    torch = pytest.importorskip("torch")
    n_, d_, h_, k_ = two_layer_mlp.n, two_layer_mlp.d, two_layer_mlp.h, two_layer_mlp.k
    dims = {n_: X.shape[0], d_: X.shape[1], h_: params["W1"].shape[1],
            k_: params["W2"].shape[1]}
    values = {"X": X, **params}
    for symbol, definition in two_layer_mlp.MODEL[:3]:  # Z1, A1, Z2
        values[str(symbol)] = symdl.evaluate(definition, values, dims)
    t = {k: torch.tensor(v) for k, v in values.items()}
    twin = torch.tanh(t["X"] @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"]
    return values["Z2"], twin.numpy()


def test_predict_and_evaluate_at_the_current_parameters(mlp):
    params, X, Y = _problem()
    step = TrainingStep(mlp, _SGD(lr=0.1), params, jit=False, output=two_layer_mlp.Z2)
    for _ in range(3):
        step(X=X, Y=Y)
    _, X_test, Y_test = _problem(n=11, seed=5)
    current = {k: v.copy() for k, v in step.params.items()}
    logits = step.predict(X=X_test)
    by_evaluate, by_torch = _forward_oracles(current, X_test)
    np.testing.assert_allclose(logits, by_evaluate, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(logits, by_torch, rtol=1e-12, atol=1e-14)
    held_out = step.evaluate(X=X_test, Y=Y_test)
    assert held_out.loss == pytest.approx(_numpy_mlp(X_test, Y_test, **current)[0], rel=1e-12)
    np.testing.assert_array_equal(held_out.output, logits)
    # Neither moved the parameters or the counter; the output is named either way.
    assert step.t == 4 and all(np.array_equal(step.params[k], current[k]) for k in current)
    assert TrainingStep(mlp, _SGD(lr=0.1), params, jit=False, output="Z2").output == "Z2"
    assert step.forward_kernel() is step.forward_kernel()  # built once


def test_predict_errors(mlp):
    params, X, Y = _problem()
    with pytest.raises(DerivationError, match="Z1, A1|'Z1', 'A1'"):
        TrainingStep(mlp, _SGD(lr=0.1), params, jit=False, output="logits")
    step = TrainingStep(mlp, _SGD(lr=0.1), params, jit=False)
    with pytest.raises(DerivationError, match="output="):
        step.predict(X=X)
    assert step.evaluate(X=X, Y=Y).output is None  # the loss needs no output=
    step = TrainingStep(mlp, _SGD(lr=0.1), params, jit=False, output="Z2")
    with pytest.raises(KernelArgumentError, match="W1"):
        step.predict(X=X, W1=params["W1"])
    with pytest.raises(KernelArgumentError):
        step.predict(X=X[:, :3])


@pytest.mark.parametrize("jit", [False, True], ids=["interpreted", "compiled"])
def test_save_load_continues_bitwise(mlp, tmp_path, jit):
    params, X, Y = _problem()
    batches = [_problem(seed=s)[1:] for s in range(6)]
    step = TrainingStep(mlp, _Adam(lr=0.05), params, jit=jit)
    for Xb, Yb in batches[:3]:
        step(X=Xb, Y=Yb)
    path = step.save(tmp_path / "state")
    assert path == tmp_path / "state" and not (tmp_path / "state.npz").exists()
    resumed = TrainingStep.load(path, mlp, _Adam(lr=0.05), jit=jit)
    assert resumed.t == step.t == 4
    for Xb, Yb in batches[3:]:
        assert resumed(X=Xb, Y=Yb) == step(X=Xb, Y=Yb)
    for name, array in {**step.params, **step.state}.items():
        other = {**resumed.params, **resumed.state}[name]
        assert array.dtype == other.dtype and np.array_equal(array, other), name
    # load_state into a step built with other initial values: the same state.
    fresh = TrainingStep(mlp, _Adam(lr=0.05), _problem(seed=9)[0], jit=jit)
    fresh.load_state(path)
    assert fresh.t == 4 and fresh(X=X, Y=Y) == TrainingStep.load(path, mlp, _Adam(lr=0.05),
                                                                 jit=jit)(X=X, Y=Y)


def test_load_refuses_what_does_not_fit(mlp, tmp_path):
    from symdl.training import TrainingStateError, read_state

    params, X, Y = _problem()
    step = TrainingStep(mlp, _Adam(lr=0.05), params, jit=False)
    step(X=X, Y=Y)
    path = step.save(tmp_path / "state.npz")
    saved = dict(np.load(path, allow_pickle=False))

    def variant(name, **changes):
        content = {**saved, **changes}
        for key in [k for k, v in changes.items() if v is None]:
            del content[key]
        target = tmp_path / f"{name}.npz"
        np.savez(target, **content)
        return target

    names = saved["names"].tolist()
    w1 = f"array{names.index('W1')}"
    bad = {
        "missing": variant("missing", **{w1: None}),
        "shape": variant("shape", **{w1: np.zeros((2, 2))}),
        "dtype": variant("dtype", **{w1: saved[w1].astype(np.float32)}),
        "version": variant("version", version=np.array(99)),
        "format": variant("format", format=np.array("something else")),
        "names": variant("names", names=np.array([n.replace("W1", "V1") for n in names])),
        "pickled": variant("pickled", **{w1: np.array([object()], dtype=object)}),
        "counter": variant("counter", t=np.array(0)),
    }
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    bad |= {"npy": tmp_path / "one.npy", "junk": tmp_path / "junk.npz",
            "absent": tmp_path / "absent.npz"}
    for case, file in bad.items():
        with pytest.raises(TrainingStateError):
            TrainingStep(mlp, _Adam(lr=0.05), params, jit=False).load_state(file)
        with pytest.raises(TrainingStateError):
            if case in {"shape", "names", "dtype"}:  # a well-formed file of another step
                TrainingStep.load(file, mlp, _Adam(lr=0.05), jit=False)
            else:
                read_state(file)
    # Another optimizer, another model (a loss with weight decay), a float32 step.
    with pytest.raises(TrainingStateError, match="Adam"):
        TrainingStep(mlp, _SGD(lr=0.1), params, jit=False).load_state(path)
    decayed = symdl.derive(two_layer_mlp.MODEL[:3] + [
        (two_layer_mlp.L, symdl.softmax_cross_entropy(two_layer_mlp.Z2, two_layer_mlp.Y)
         + symdl.total(sp.hadamard_product(two_layer_mlp.W1, two_layer_mlp.W1)))],
        wrt=two_layer_mlp.PARAMETERS)
    other = TrainingStep(decayed, _Adam(lr=0.05), params, jit=False)
    with pytest.raises(TrainingStateError, match="another model"):
        other.load_state(path)
    other.load_state(path, check_model=False)
    assert np.array_equal(other.params["W1"], step.params["W1"])
    with pytest.raises(TrainingStateError, match="float32"):
        TrainingStep(mlp, _Adam(lr=0.05), params, dtype=np.float32, jit=False).load_state(path)
