"""The README's code runs: every ```python block, in order, in one namespace (later blocks use
what earlier ones defined, as a reader would).

What the test adds is listed here, by the line of the block it concerns, so that it stays
visible and small:

* ``PREAMBLES``: definitions the README's prose leaves to the reader (the sizes and symbols of
  a network, the arrays a kernel is called with), run before the block;
* ``SKIPPED``: blocks that are not Python as written, with the reason;
* every kernel runs its generated source interpreted, as ``jit=False`` does (the same code;
  Numba's compiles are tested in ``tests/kernels``, and a cold cache would add a minute here).

A preamble or skip whose line is no longer in the README fails the test: delete it (the
README then spells out what it needed).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

PREAMBLES = {
    "Z1, A1, Z2 = sp.MatrixSymbol": (
        "the network's sizes and parameters",
        """
h, k = sp.symbols("h k", integer=True, positive=True)
W1, b1 = sp.MatrixSymbol("W1", d, h), sp.MatrixSymbol("b1", 1, h)
W2, b2 = sp.MatrixSymbol("W2", h, k), sp.MatrixSymbol("b2", 1, k)
Y = sp.MatrixSymbol("Y", n, k)
"""),
    "k = der.compile(hvp=True)": (
        "the logistic regression of the first block, and arrays for its symbols",
        """
der = symdl.derive(loss, wrt=[w], hessian=True)
rng = np.random.default_rng(0)
X, w, y, v = (rng.standard_normal(s) for s in [(8, 3), (3, 1), (8, 1), (3, 1)])
"""),
    "k = symdl.compile_expressions(symdl.optimizers.update_kernel_outputs(adam, W))": (
        "arrays for the parameter, its gradient and Adam's states",
        """
rng = np.random.default_rng(1)
w, g, m = (rng.standard_normal((4, 3)) for _ in range(3))
v = rng.random((4, 3))
"""),
    "report = symdl.check(der)": (
        "the logistic regression's kernel and arrays (the block before made k an update)",
        """
k = der.compile()
rng = np.random.default_rng(2)
X, w, y = (rng.standard_normal(s) for s in [(8, 3), (3, 1), (8, 1)])
"""),
}

SKIPPED = {
    "step = TrainingStep(der, symdl.optimizers.Adam(lr=1e-3)":
        '{"W1": W1, "b1": b1, ...} elides parameters: not Python as written',
}


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"),
                      flags=re.S | re.M)


def _find(table: dict, block: str) -> str | None:
    found = [anchor for anchor in table if anchor in block]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_readme_python_blocks_run(monkeypatch, tmp_path):
    import symdl.kernels.kernel
    from symdl.kernels.jit import load_interpreted

    monkeypatch.setattr(symdl.kernels.kernel, "load", load_interpreted)
    monkeypatch.chdir(tmp_path)  # k.export(...) writes into the working folder
    blocks = _blocks()
    assert len(blocks) >= 6
    used = set()
    namespace: dict = {"np": np}
    for number, block in enumerate(blocks, 1):
        skip = _find(SKIPPED, block)
        if skip is not None:
            used.add(skip)
            continue
        preamble = _find(PREAMBLES, block)
        if preamble is not None:
            used.add(preamble)
            exec(compile(PREAMBLES[preamble][1], f"<preamble of block {number}>", "exec"),
                 namespace)
        try:
            exec(compile(block, f"<README.md python block {number}>", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"README python block {number} raised {type(exc).__name__}: {exc}\n"
                        f"{block}")
        if preamble == "k = der.compile(hvp=True)":
            _check_logistic_regression(namespace)
    stale = (set(PREAMBLES) | set(SKIPPED)) - used
    assert not stale, f"no README block has these lines any more: delete their entries {stale}"
    assert namespace["report"].ok


def _check_logistic_regression(ns: dict) -> None:
    """The kernel block's numbers against the logistic loss written out in NumPy."""
    X, w, y, v, out = ns["X"], ns["w"], ns["y"], ns["v"], ns["out"]
    z = X @ w
    sig = 1 / (1 + np.exp(-z))
    assert out.value == pytest.approx(np.mean(np.logaddexp(0, z) - y * z), rel=1e-12)
    np.testing.assert_allclose(out.grad["w"], X.T @ (sig - y) / len(X), rtol=1e-12)
    hessian = X.T @ (sig * (1 - sig) * X) / len(X)
    np.testing.assert_allclose(out.hessian["w", "w"], hessian, rtol=1e-12)
    np.testing.assert_allclose(out.hvp["w"], hessian @ v, rtol=1e-12)
    assert Path("logreg_kernels.py").is_file()
