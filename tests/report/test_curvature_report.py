"""The Hessian spectrum in the demo report and on the command line, on small networks (an
interpreted HVP kernel for the report, so nothing is compiled): the section's numbers against
``numpy.linalg.eigvalsh`` of the full Hessian, the LaTeX section, ``symdl curvature``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from symdl.cli import main
from symdl.report import demo
from symdl.report.document import write_report
from symdl.verify.check import draw_inputs


def torch_hessian(values: dict, lam: float) -> np.ndarray:
    """The oracle: the demo network's loss in torch, its Hessian over the concatenated
    parameters (W1, b1, W2, b2), on one torch thread (its OpenMP workers would spin)."""
    import torch

    names = ("W1", "b1", "W2", "b2")
    X, Y = torch.tensor(values["X"]), torch.tensor(values["Y"])
    shapes = [values[p].shape for p in names]

    def loss(flat):
        pieces = torch.split(flat, [int(np.prod(s)) for s in shapes])
        W1, b1, W2, b2 = (p.reshape(s) for p, s in zip(pieces, shapes, strict=True))
        Z2 = torch.tanh(X @ W1 + b1) @ W2 + b2
        data = (torch.logsumexp(Z2, 1) - (Y * Z2).sum(1)).mean()
        return data + lam / 2 * ((W1 ** 2).sum() + (W2 ** 2).sum())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flat = torch.tensor(np.concatenate([values[p].ravel() for p in names]))
        return torch.func.hessian(loss)(flat).numpy()
    finally:
        torch.set_num_threads(threads)


OPTIONS = {"iterations": 60, "density_probes": 2, "density_steps": 10, "trace_probes": 4}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """The demo's section for a 3-hidden-unit network on 30 digits (227 parameters)."""
    split = demo.digits()
    X, Y = split.X_train[:30], split.Y_train[:30]
    small = demo.Split(X, Y, split.X_test[:5], split.Y_test[:5])
    initial = demo.initial_parameters(small, hidden=3, seed=0)
    rng = np.random.default_rng(1)
    # A second point (training would compile the step kernel): the section's columns.
    trained = {k: v + 0.3 * rng.normal(size=v.shape) for k, v in initial.items()}
    der = demo.network_derivation()
    points = {"initialisation": initial, "trained": trained}
    reports = demo.hessian_spectra(der, points, X, Y, 1e-4, jit=False, **OPTIONS)
    out = tmp_path_factory.mktemp("curvature")
    metrics: dict = {"data": {"name": "digits", "train": 30, "test": 5},
                     "final_test_accuracy": 0.5, "final_train_accuracy": 0.5,
                     "final_train_loss": 1.0, "timings": {"steps": 1, "train_s": 0.1}}
    figures = ["training.pdf"]
    demo.add_curvature(out, metrics, figures, reports)
    exact = {name: np.linalg.eigvalsh(torch_hessian({**params, "X": X, "Y": Y}, 1e-4))
             for name, params in points.items()}
    return out, metrics, figures, der, exact


def test_section_numbers_match_eigvalsh(small_demo) -> None:
    _, metrics, figures, _, exact = small_demo
    assert figures == ["training.pdf", "curvature.pdf"]
    for name in ("initialisation", "trained"):
        spectrum, eigenvalues = metrics["curvature"][name], exact[name]
        assert spectrum["dim"] == 64 * 3 + 3 + 3 * 10 + 10
        assert spectrum["top"] == pytest.approx(eigenvalues[-1], rel=1e-8)
        assert spectrum["negative_eigenvalues"] == bool(eigenvalues[0] < -1e-8 * eigenvalues[-1])
        assert "density" not in spectrum  # the grid stays out of metrics.json
    json.dumps(metrics)


def test_report_has_the_curvature_section(small_demo) -> None:
    out, metrics, figures, der, _ = small_demo
    (out / "training.pdf").write_bytes(b"")
    tex = write_report(out / "report.tex", der, None, metrics, figures,
                       compile_pdf_too=False).read_text()
    assert "The curvature of the loss" in tex and "curvature.pdf" in tex
    assert "initialisation" in tex and "negative eigenvalues" in tex
    assert f"{metrics['curvature']['trained']['top']:.6g}" in tex
    assert (out / "curvature.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_curvature_matches_eigvalsh_of_its_inputs(capsys, tmp_path: Path) -> None:
    """Logistic regression at n=20, d=4 (a one-loop kernel): positive definite, its condition
    number against eigvalsh of X^T diag(s(1-s)) X / n at the inputs the command drew."""
    plot = tmp_path / "density.png"
    status = main(["curvature", "logistic_regression", "--json", "--dim", "n=20",
                   "--dim", "d=4", "--seed", "3", "-o", str(plot)])
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    from symdl.catalog import load

    entry = load("logistic_regression")
    der = entry.derive()
    kernel = der.compile(hvp=True, outputs=["hvp:w"])
    values, bound = draw_inputs(der, kernel, seed=3, dims={s: {"n": 20, "d": 4}[str(s)]
                                                           for s in der.dims})
    X, w = values["X"], values["w"]
    s = 1 / (1 + np.exp(-X @ w))
    exact = np.linalg.eigvalsh(X.T @ (X * s * (1 - s)) / 20)
    assert result["dims"] == {"d": 4, "n": 20} and result["dim"] == 4
    assert result["reading"] == "positive definite" and not result["negative_eigenvalues"]
    assert result["top"] == pytest.approx(exact[-1], rel=1e-8)
    assert result["bottom"] == pytest.approx(exact[0], rel=1e-8)
    assert result["condition_number"] == pytest.approx(exact[-1] / exact[0], rel=1e-8)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_curvature_errors_exit_2(tmp_path: Path, capsys) -> None:
    unknown = subprocess.run([sys.executable, "-m", "symdl", "curvature", "logistic_regression",
                              "--dim", "q=3"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "q" in unknown.stderr and "'d', 'n'" in unknown.stderr
    assert unknown.stderr.count("\n") == 1  # one line, no traceback
    source = tmp_path / "elementwise.py"
    source.write_text(textwrap.dedent('''
        """An elementwise map: its value is a matrix."""
        import sympy as sp
        import symdl

        def derivation():
            n = sp.Symbol("n", integer=True, positive=True)
            x = sp.MatrixSymbol("x", n, 1)
            return symdl.derive(symdl.tanh(x), wrt=[x])
    '''))
    assert main(["curvature", str(source)]) == 2
    assert "scalar loss" in capsys.readouterr().err
    assert main(["curvature", "logistic_regression", "--dim", "n"]) == 2
    assert "NAME=SIZE" in capsys.readouterr().err
    assert main(["curvature", "logistic_regression", "-o", str(tmp_path / "no" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
