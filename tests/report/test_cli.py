"""The symdl command: list, derive, errors; run as a user would, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from symdl import catalog as registry


def _symdl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "symdl", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_lists_the_commands() -> None:
    result = _symdl("--help")
    assert result.returncode == 0
    assert "derive" in result.stdout and "list" in result.stdout


def test_list_shows_every_shipped_derivation() -> None:
    result = _symdl("list")
    assert result.returncode == 0
    for name in registry.names():
        assert name in result.stdout


def test_derive_prints_backprop_equations_with_shapes() -> None:
    result = _symdl("derive", "two_layer_mlp")
    assert result.returncode == 0, result.stderr
    assert "dZ2 = (softmax(Z2) - Y)/n    [n × k]" in result.stdout
    assert "dW1 = X^T*dZ1    [d × h]" in result.stdout


def test_derive_accepts_a_file(tmp_path: Path) -> None:
    source = tmp_path / "ridge.py"
    source.write_text(textwrap.dedent('''
        """Ridge regression."""
        import sympy as sp
        import symdl

        n, d = sp.symbols("n d", integer=True, positive=True)
        X, y, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("y", n, 1), sp.MatrixSymbol("w", d, 1)
        lam = sp.Symbol("lam", positive=True)

        def derivation():
            r = X * w - y
            penalty = lam * symdl.total(sp.hadamard_product(w, w))
            loss = symdl.total(sp.hadamard_product(r, r)) + penalty
            return symdl.derive(loss, wrt=[w], hessian=True)
    '''))
    result = _symdl("derive", str(source), "--hessian")
    assert result.returncode == 0, result.stderr
    assert "Ridge regression" in result.stdout
    assert "H[w,w]" in result.stdout


def test_unknown_derivation_is_a_clear_error() -> None:
    result = _symdl("derive", "no_such_model")
    assert result.returncode == 2
    assert "no derivation named 'no_such_model'" in result.stderr
    assert "Traceback" not in result.stderr
