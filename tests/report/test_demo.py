"""The main job end to end (shorter than `make demo`: 10 epochs): real digits, the fused
training-step kernel checked by finite differences, >= 95% held-out accuracy, Newton's
method, the three outputs, and the exported kernels running without symdl."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from symdl.report import demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo")
    # The CNN and the RNN (their own compiles) are checked in tests/end_to_end/test_cnn.py
    # and tests/report/test_sequence_demo.py, not here.
    metrics = demo.run(out, newton=True, epochs=10, progress=False, curvature=False, cnn=False,
                       rnn=False)
    return out, metrics


def test_demo_trains_to_95_percent(demo_run) -> None:
    out, metrics = demo_run
    assert metrics["final_test_accuracy"] >= 0.95
    assert metrics["data"] == {"name": "scikit-learn digits", "train": 1437, "test": 360}
    assert metrics["check"]["ok"]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))


def test_demo_compiles_before_the_first_epoch(demo_run, capsys) -> None:
    """Compiling is its own announced phase before the progress bar starts (a bar started
    first stood still through the compile, with an ETA of minutes), once: the epochs are
    timed after it (kernels compiled by demo_run: this run loads them)."""
    _, _, _, timings = demo.train(demo.digits(), epochs=2, progress=True)
    printed = capsys.readouterr().out
    assert "compiling the training step and the forward pass" in printed
    assert "compiled in" in printed
    assert len(timings["epoch_s"]) == 2 and timings["compile_s"] > 0
    _, metrics = demo_run
    assert len(metrics["timings"]["epoch_s"]) == 10


def test_demo_newton_converges_in_at_most_10_iterations(demo_run) -> None:
    _, metrics = demo_run
    newton = metrics["newton"]
    assert newton["newton_iterations"] <= 10
    assert newton["gd_iterations_to_match"] is None or newton["gd_iterations_to_match"] > 50


def test_demo_writes_the_report(demo_run) -> None:
    out, _ = demo_run
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    tex = (out / "report.tex").read_text()
    assert r"\delta" in tex and "Finite-difference check" in tex and "newton.pdf" in tex


def test_exported_kernels_run_without_symdl(demo_run, tmp_path: Path) -> None:
    """kernels.py imports only numpy and numba: run it in a process where importing symdl
    fails, on the demo network's shapes, and compare with NumPy."""
    out, _ = demo_run
    script = textwrap.dedent(f"""
        import sys, json
        import importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "symdl" or name.startswith("symdl."):
                    raise ImportError("symdl is blocked in this process")
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(out)!r})
        import numpy as np
        import kernels
        rng = np.random.default_rng(0)
        n, d, h, k = 5, 64, 64, 10
        arrays = {{"W1": rng.normal(size=(d, h)) * 0.1, "W2": rng.normal(size=(h, k)) * 0.1,
                   "X": rng.random((n, d)), "Y": np.eye(k)[rng.integers(0, k, n)],
                   "b1": np.zeros((1, h)), "b2": np.zeros((1, k)), "t": 1.0}}
        for p in ("W1", "W2", "b1", "b2"):
            arrays["m_" + p] = np.zeros_like(arrays[p])
            arrays["v_" + p] = np.zeros_like(arrays[p])
        # Every input by keyword, named after its symbol (lambda, a keyword, as lambda_).
        results = kernels.compute(lambda_=1e-4, **arrays)
        try:
            kernels.compute(lambda_=1e-4, **{{**arrays, "W1": arrays["W2"]}})
            raise SystemExit("a swapped array was accepted")
        except kernels.KernelArgumentError:
            pass
        print(json.dumps({{"value": results["value"]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    value = json.loads(proc.stdout.strip().splitlines()[-1])["value"]
    rng = np.random.default_rng(0)
    W1, W2 = rng.normal(size=(64, 64)) * 0.1, rng.normal(size=(64, 10)) * 0.1
    X, Y = rng.random((5, 64)), np.eye(10)[rng.integers(0, 10, 5)]
    Z2 = np.tanh(X @ W1) @ W2
    lse = np.log(np.exp(Z2 - Z2.max(1, keepdims=True)).sum(1)) + Z2.max(1)
    expected = np.mean(lse - (Y * Z2).sum(1)) + 0.5e-4 * ((W1**2).sum() + (W2**2).sum())
    assert value == pytest.approx(expected, rel=1e-12)
