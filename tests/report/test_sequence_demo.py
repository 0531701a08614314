"""The demo's recurrent network (``symdl.report.sequence_demo``): its fused training step
(forward, backprop through time, Adam) against torch (nn.RNN + a linear layer +
cross-entropy, autograd, torch.optim.Adam) in float64 and float32, training on a few digits,
and its part of the report. The generated step runs as plain Python (``jit=False``): the
Numba compile is `symdl demo`'s, and the kernels' own tests compile the scan loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from symdl.define.optimizers import Adam
from symdl.report import demo, sequence_demo
from symdl.report.document import _rnn_section
from symdl.training import TrainingStep

SIZES = {"T": 3, "n": 4, "d": 5, "k": 6}
LR, DECAY = 0.01, 0.1


@pytest.fixture(scope="module")
def derivation():
    return sequence_demo.rnn_derivation()


def _batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    T, n, d = SIZES["T"], SIZES["n"], SIZES["d"]
    return {"X": rng.normal(size=(T, n, d)),
            "Y": np.eye(sequence_demo.CLASSES)[rng.integers(0, sequence_demo.CLASSES, n)]}


def torch_steps(init: dict[str, np.ndarray], batch: dict[str, np.ndarray], steps: int):
    """Losses, last gradients and parameters after ``steps`` Adam steps, by torch in float64:
    h_t = tanh(x_t W + h_{t-1} U + b) is nn.RNN with weight_ih = W^T, weight_hh = U^T,
    bias_ih = b, bias_hh = 0; the logits h_T V + c, softmax cross-entropy and λ/2 (‖W‖² +
    ‖U‖² + ‖V‖²)."""
    d, k = init["W"].shape
    rnn = torch.nn.RNN(d, k, nonlinearity="tanh", dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.tensor(init["W"].T))
        rnn.weight_hh_l0.copy_(torch.tensor(init["U"].T))
        rnn.bias_ih_l0.copy_(torch.tensor(init["b"][0]))
    rnn.bias_hh_l0.requires_grad_(False)
    rnn.bias_hh_l0.data.zero_()
    V = torch.tensor(init["V"], requires_grad=True)
    c = torch.tensor(init["c"], requires_grad=True)
    params = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, V, c]
    optimizer = torch.optim.Adam(params, lr=LR)
    x, y = torch.tensor(batch["X"]), torch.tensor(batch["Y"])
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        states, _ = rnn(x)
        logits = states[-1] @ V + c
        loss = torch.nn.functional.cross_entropy(logits, y) + DECAY / 2 * (
            (rnn.weight_ih_l0 ** 2).sum() + (rnn.weight_hh_l0 ** 2).sum() + (V ** 2).sum())
        loss.backward()
        losses.append(loss.item())
        grads = {"W": rnn.weight_ih_l0.grad.numpy().T.copy(),
                 "U": rnn.weight_hh_l0.grad.numpy().T.copy(),
                 "b": rnn.bias_ih_l0.grad.numpy()[None].copy(),
                 "V": V.grad.numpy().copy(), "c": c.grad.numpy().copy()}
        optimizer.step()
    new = {"W": rnn.weight_ih_l0.detach().numpy().T, "U": rnn.weight_hh_l0.detach().numpy().T,
           "b": rnn.bias_ih_l0.detach().numpy()[None], "V": V.detach().numpy(),
           "c": c.detach().numpy()}
    return losses, grads, new


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_training_step_matches_torch(derivation, dtype, tol):
    # Two steps: the second reads the Adam states and the step counter the first wrote.
    init = sequence_demo.initial_rnn_parameters(np.random.default_rng(0), SIZES["d"],
                                                SIZES["k"])
    init["b"] = np.random.default_rng(1).normal(size=init["b"].shape)  # not all zero
    batch = _batch(2)
    step = TrainingStep(derivation, Adam(lr=LR), init, dtype=dtype,
                        hyperparameters={"lambda": DECAY}, jit=False)
    losses = [step(**batch) for _ in range(2)]
    want_losses, want_grads, want_params = torch_steps(init, batch, 2)
    np.testing.assert_allclose(losses, want_losses, rtol=tol)
    for name in want_grads:
        scale = np.max(np.abs(want_grads[name]))
        np.testing.assert_allclose(step.grad[name], want_grads[name], rtol=tol,
                                   atol=tol * scale, err_msg=f"gradient of {name}")
        np.testing.assert_allclose(step.params[name], want_params[name], rtol=tol, atol=tol,
                                   err_msg=f"{name} after two Adam steps")
        assert step.params[name].dtype == dtype


def test_the_demo_part_trains_checks_and_reports(tmp_path):
    # 120 digits, 8 hidden units, 4 epochs in float32: the loss falls at every epoch, the
    # finite-difference check of the step (in float64) passes, and the report's section shows
    # the adjoint recurrence.
    split = demo.digits()
    small = demo.Split(split.X_train[:120], split.Y_train[:120], split.X_test[:40],
                       split.Y_test[:40])
    metrics: dict = {}
    figures: list[str] = []
    der = sequence_demo.add_rnn(tmp_path, metrics, figures, small, epochs=4, progress=False,
                                dtype="float32", hidden=8, batch=30, lr=0.05, jit=False,
                                check_rows=1)
    rnn = metrics["rnn"]
    losses = rnn["history"]["train_loss"]
    assert np.all(np.diff(losses) < 0) and losses[-1] < 0.7 * losses[0]
    assert rnn["final_train_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert rnn["check"]["ok"] and rnn["timings"]["steps"] == 16 and rnn["dtype"] == "float32"
    assert figures == ["training_rnn.pdf"] and (tmp_path / "training_rnn.png").is_file()
    tex = _rnn_section(der, metrics, tmp_path / "training_rnn.pdf")
    assert "A recurrent network" in tex and "Backpropagation through time" in tex
    # The adjoint recurrence runs from t = T down to 1 and is named delta_h (braced: read at
    # t, {\delta_{h}}_{t}), not a second dL/dH beside the direct part's.
    assert r"{\delta_{h}} &=" in tex and r"t=T,\dots,1" in tex
    assert tex.count(r"\frac{\partial L}{\partial H} &=") == 1 and r"{\delta_{h}}_{t}" in tex
    assert r"\sum_{t=1}^{T}" in tex  # the parameter gradients: sums over t


def test_rows_as_sequence_reads_each_image_row_by_row():
    images = np.arange(2 * 64, dtype=float).reshape(2, 64)
    seq = sequence_demo.rows_as_sequence(images)
    assert seq.shape == (8, 2, 8) and seq.flags.c_contiguous
    np.testing.assert_array_equal(seq[3, 1], images[1].reshape(8, 8)[3])
