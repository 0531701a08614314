"""The first call of a kernel (issue 16, item 5): a training step compiles one driver variant,
once; ``TrainingStep.compile`` compiles without updating; ``background=True`` answers first
calls with the NumPy evaluator while Numba compiles, with the jitted kernel's numbers.

Oracle: least squares written by hand in NumPy (value ``|X w - y|^2 / 2``, gradient
``X^T (X w - y)``, an SGD step ``w - lr g``). One small derivation, two compiles in all.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl.define.optimizers import SGD
from symdl.errors import KernelArgumentError
from symdl.training import TrainingStep

LR = 0.05


@pytest.fixture(scope="module")
def least_squares() -> symdl.Derivation:
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, w, y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
    r = sp.MatrixSymbol("r", n, 1)
    return symdl.derive([(r, X * w - y), (sp.Symbol("L"), symdl.total(
        sp.hadamard_product(r, r)) / 2)], wrt=[w])


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"X": rng.normal(size=(9, 4)), "y": rng.normal(size=(9, 1)),
            "w": rng.normal(size=(4, 1))}


def _by_hand(X, y, w):  # noqa: N803 - math names
    r = X @ w - y
    return 0.5 * float((r.T @ r)[0, 0]), X.T @ r


@pytest.fixture(scope="module")
def step_after_three(least_squares, data):
    """A training step compiled by ``compile`` and then run three times, serially."""
    step = TrainingStep(least_squares, SGD(lr=LR), {"w": data["w"]})
    step.compile(X=data["X"], y=data["y"])
    compiled_t, compiled_w = step.t, step.params["w"].copy()
    losses = [step(X=data["X"], y=data["y"]) for _ in range(3)]
    return step, compiled_t, compiled_w, losses


def test_training_step_compiles_once_and_only_the_serial_variant(step_after_three) -> None:
    """The first step ran the compiled driver that later steps run (one compile, not the plain
    driver and then the compiled one), and a serial call compiled no parallel loop: one jitted
    driver that chose its loops at run time compiled every loop it could call (the demo's
    Adam step: 2.8 s and then 10.3 s)."""
    step = step_after_three[0]
    jitted = {name: f for name, f in vars(step.kernel.module).items()
              if hasattr(f, "signatures")}
    compiled = sorted(name for name, f in jitted.items() if f.signatures)
    assert compiled and not [name for name in compiled if "parallel" in name], compiled
    assert all(len(jitted[name].signatures) == 1 for name in compiled)
    drivers = [name for name in compiled if name.startswith("_steps")]
    assert drivers == ["_steps_serial_jit"]


def test_compile_updates_nothing_and_steps_follow_numpy(step_after_three, data) -> None:
    step, compiled_t, compiled_w, losses = step_after_three
    assert compiled_t == 1
    np.testing.assert_array_equal(compiled_w, data["w"])
    w = data["w"].copy()
    for loss in losses:
        value, grad = _by_hand(data["X"], data["y"], w)
        assert loss == pytest.approx(value, rel=1e-13)
        w = w - LR * grad
    np.testing.assert_allclose(step.params["w"], w, rtol=1e-13)
    assert step.t == 4


def test_background_kernel_gives_the_jitted_numbers(least_squares, data) -> None:
    """The first call is answered by the NumPy evaluator while Numba compiles in a thread;
    after ``wait_compiled`` the jitted kernel answers: both match the hand-written NumPy
    to 1e-12, and out= buffers are filled."""
    kernel = least_squares.compile(background=True)
    assert kernel.background
    value, grad = _by_hand(data["X"], data["y"], data["w"])
    first = kernel(**data)
    assert first.value == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(first.grad["w"], grad, rtol=1e-12)
    buffer = np.empty((4, 1))
    again = kernel(out={"grad:w": buffer}, **data)  # into out= buffers too
    assert again.grad["w"] is buffer
    np.testing.assert_allclose(buffer, grad, rtol=1e-12)
    assert kernel.wait_compiled(timeout=300)
    later = kernel(**data)
    assert later.value == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(later.grad["w"], grad, rtol=1e-12)
    np.testing.assert_allclose(later.grad["w"], first.grad["w"], rtol=1e-12)
    assert not least_squares.compile().background


def test_background_training_step_follows_numpy(least_squares, data, step_after_three) -> None:
    """A step made with background=True (its kernel: the one step_after_three compiled, or
    the NumPy evaluator until its thread has run it) updates as SGD by hand, and later
    steps, after wait_compiled, too."""
    step = TrainingStep(least_squares, SGD(lr=LR), {"w": data["w"]}, background=True)
    w = data["w"].copy()
    for k in range(4):
        if k == 2:
            assert step.kernel.wait_compiled(timeout=300)
        value, grad = _by_hand(data["X"], data["y"], w)
        assert step(X=data["X"], y=data["y"]) == pytest.approx(value, rel=1e-12)
        w = w - LR * grad
        np.testing.assert_allclose(step.params["w"], w, rtol=1e-12)


def test_background_must_be_a_bool(least_squares) -> None:
    with pytest.raises(KernelArgumentError, match="background="):
        least_squares.compile(jit=False, background="yes")


def test_checks_still_run_on_calls_with_a_known_layout(data) -> None:
    """Calls with the argument layout of an earlier call skip the per-call work that layout
    decides (dimension sizes, result shapes): everything that depends on values still runs,
    and a changed layout is checked in full (interpreted kernel: nothing compiled)."""
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, w, y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
    lam = sp.Symbol("lam", positive=True)
    der = symdl.derive([(sp.Symbol("L"), symdl.total(sp.hadamard_product(X * w - y, X * w - y))
                         + lam * symdl.total(sp.hadamard_product(w, w)))], wrt=[w])
    kernel = der.compile(jit=False)
    args = {**data, "lam": 0.5}
    value, grad = _by_hand(data["X"], data["y"], data["w"])
    for _ in range(2):  # validated in full, then by its layout
        got = kernel(**args)
        assert got.value == pytest.approx(2 * value + 0.5 * float(np.sum(data["w"] ** 2)),
                                          rel=1e-13)
        np.testing.assert_allclose(got.grad["w"], 2 * grad + data["w"], rtol=1e-13)
    with pytest.raises(KernelArgumentError, match="positive"):
        kernel(**{**args, "lam": -1.0})  # a value: checked on every call
    with pytest.raises(KernelArgumentError, match="shares memory|overlaps"):
        kernel(out={"grad:w": args["w"]}, **args)
    with pytest.raises(KernelArgumentError, match="y has n = 8"):
        kernel(**{**args, "y": data["y"][:8]})  # another layout: checked in full
    with pytest.raises(KernelArgumentError, match="missing"):
        kernel(**{k: v for k, v in args.items() if k != "y"})
    transposed = np.asfortranarray(data["X"])  # not C-contiguous: copied, same numbers
    np.testing.assert_allclose(kernel(**{**args, "X": transposed}).grad["w"],
                               2 * grad + data["w"], rtol=1e-13)
