"""Hostile symbol names: kernels compile and run with sanitised identifiers, and code hidden
in a name never runs (a marker file the payload would create stays absent)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl.pretty import plain

PAYLOADS = {
    "keyword-lambda": "lambda",
    "keyword-class": "class",
    "space": "my weights",
    "quotes": "q'\"",
    "newline": "x\ny",
    "greek": "Δ",
    "cjk": "权重",
    "import-call": "__import__('os').system('touch {marker}')",
    "string-breakout": '"); import os; os.system("touch {marker}"); ("',
    "triple-single": "'''",
    "docstring-breakout": '"""\nimport os; os.system("touch {marker}")\n"""',
    "hash": "#",
    "backslash": "a\\b\\",
}

JITTED = (PAYLOADS["import-call"], PAYLOADS["docstring-breakout"])


def _names(template: str, marker: Path) -> tuple[str, str, str]:
    base = template.replace("{marker}", str(marker))
    return base, base + "_w", base + "_s"


@pytest.mark.parametrize("template", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_kernel_with_hostile_names(template, tmp_path):
    marker = tmp_path / "MARKER"
    xname, wname, sname = _names(template, marker)
    n, d = sp.symbols("n d", integer=True, positive=True)
    X = sp.MatrixSymbol(xname, n, d)
    w = sp.MatrixSymbol(wname, d, 1)
    s = sp.Symbol(sname, real=True)
    der = symdl.derive(s * symdl.mean(symdl.softplus(X * w)), wrt=[w, s])
    # Two payloads go through Numba; the rest run the same source as plain Python (fast).
    kernel = der.compile(jit=template in JITTED)
    rng = np.random.default_rng(1)
    xv, wv, sv = rng.standard_normal((4, 3)), rng.standard_normal((3, 1)), 1.7
    result = kernel(**{xname: xv, wname: wv, sname: sv})
    z = xv @ wv
    sig = 1 / (1 + np.exp(-z))
    assert result.value == pytest.approx(sv * np.mean(np.logaddexp(0, z)), rel=1e-12)
    np.testing.assert_allclose(result.grad[wname], sv * xv.T @ sig / 4, rtol=1e-12)
    assert result.grad[sname] == pytest.approx(np.mean(np.logaddexp(0, z)), rel=1e-12)
    source = kernel.source
    compile(source, "<kernel>", "exec")
    for name in (xname, wname, sname):
        if not name.isascii() or "\n" in name:
            assert name not in source  # only ascii()-escaped forms appear
    assert plain(der.gradient(w))
    module_path = kernel.export(tmp_path / "exported.py")
    spec = importlib.util.spec_from_file_location("exported_kernel", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.kernel)
    for name in (xname, wname):
        assert ascii(name) in module.__doc__
    assert not marker.exists()


def test_cli_derive_with_hostile_names(tmp_path):
    marker = tmp_path / "MARKER"
    names = [t.replace("{marker}", str(marker)) for t in PAYLOADS.values()]
    lines = ["import sympy as sp", "import symdl", "",
             "n = sp.Symbol('n', integer=True, positive=True)",
             f"NAMES = {names!r}",
             "X = sp.MatrixSymbol(NAMES[7], n, 1)",
             "W = sp.MatrixSymbol(NAMES[8], n, 1)",
             "S = sp.Symbol(NAMES[10], real=True)",
             "", "def derivation():",
             "    return symdl.derive(S * symdl.mean(symdl.softplus(X + W)), wrt=[W, S])", ""]
    path = tmp_path / "hostile.py"
    path.write_text("\n".join(lines), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "symdl", "derive", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "softplus" in done.stdout or "sigmoid" in done.stdout
    assert not marker.exists()
