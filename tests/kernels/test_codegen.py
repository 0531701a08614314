"""Unit tests of the code generator (``symdl.kernels.codegen``) and golden files of the
generated kernels of six representative definitions.

Golden files: ``tests/kernels/golden/<name>.txt`` hold the generated source of each kernel
in ``GOLDEN`` (text files: neither pytest nor ruff reads them as modules). The test
regenerates the source from the plan (``codegen.generate``, nothing compiled) and compares
the text. A change to the generated code fails here until the files are
updated on purpose and the diff reviewed:

    SYMDL_UPDATE_GOLDEN=1 python -m pytest tests/kernels/test_codegen.py -k golden

rewrites the files (the test then passes); ``git diff tests/kernels/golden`` shows what
changed in the kernels.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sympy as sp

import symdl
from symdl import catalog
from symdl.kernels import codegen
from symdl.kernels.plan import plan

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SYMDL_UPDATE_GOLDEN") == "1"


def _adam_update() -> symdl.Kernel:
    """An optimizer update whose outputs are written into their inputs (in-place loops)."""
    N = sp.Symbol("N", integer=True, positive=True)  # noqa: N806 - a math name
    p, g, m, v = (sp.MatrixSymbol(name, N, 1) for name in "pgmv")
    m_new, v_new = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * sp.hadamard_product(g, g)
    denominator = v_new.applyfunc(sp.sqrt) + 1e-8 * sp.OneMatrix(N, 1)
    p_new = p - 0.01 * sp.hadamard_product(m_new, sp.HadamardPower(denominator, -1))
    return symdl.compile_expressions({"p": p_new, "m": m_new, "v": v_new}, title="adam update")


def _newton_step() -> symdl.Kernel:
    """``w - H^{-1} g``: a linear solve, a weighted Gram matrix and a row stream."""
    return catalog.load("model_logistic_newton").module.newton_step_kernel()


GOLDEN = {
    # what each covers, besides fused loops
    "logistic_regression": lambda: catalog.load("logistic_regression").derive(),  # row stream
    "two_layer_mlp": lambda: catalog.load("two_layer_mlp").derive(),  # BLAS, row statistics
    "loss_cross_entropy": lambda: catalog.load("loss_cross_entropy").derive(),  # sunk loop
    "layer_batchnorm": lambda: catalog.load("layer_batchnorm").derive(),  # reductions
    "newton_step": _newton_step,  # linear solve, X^T diag(c) X
    "adam_update": _adam_update,  # in-place variants
}


def _kernel(name: str) -> symdl.Kernel:
    made = GOLDEN[name]()
    return made.compile(jit=False) if isinstance(made, symdl.Derivation) else made


def _regenerated(kernel: symdl.Kernel) -> str:
    """The kernel's source generated again from a fresh plan of its outputs."""
    fresh = plan(kernel._outputs)
    return codegen.generate(fresh, list(kernel._leaves.values()), kernel._title).text


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_kernel_source(name: str) -> None:
    kernel = _kernel(name)
    text = _regenerated(kernel)
    assert text == kernel.source  # generation is deterministic
    path = GOLDEN_DIR / f"{name}.txt"
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with SYMDL_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"the generated kernel of {name} changed: review the diff, then run with "
        "SYMDL_UPDATE_GOLDEN=1 to accept it")
