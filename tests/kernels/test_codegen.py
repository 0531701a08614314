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
from symdl import catalog, ir
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
    fresh = plan(kernel.output_nodes)
    return codegen.generate(fresh, kernel.leaves, kernel.title).text


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


# -- unit tests of the generator on hand-built plans ------------------------------------------

n, d, h = sp.symbols("n d h", integer=True, positive=True)
x0 = sp.Symbol("x0", real=True)


def _leaf(name: str, *dims) -> ir.Leaf:
    return ir.leaf(name, dims, sp.MatrixSymbol(name, *dims))


def _generator(outputs: dict[str, ir.Node], leaves: list[ir.Leaf]) -> codegen.Generator:
    return codegen.Generator(plan(outputs), leaves, "unit")


def _function(source: str, name: str) -> str:
    """The text of the generated function ``name`` (up to the next blank line)."""
    start = source.index(f"def {name}(")
    return source[start:source.index("\n\n", start)]


def test_a_transposed_product_is_one_blas_call_on_the_arrays_as_given() -> None:
    X, W = _leaf("X", n, d), _leaf("W", n, h)  # noqa: N806 - math names
    product = ir.einsum([X, W], [(1, 0), (1, 2)], (0, 2))  # X^T W
    gen = _generator({"out": product}, [X, W])
    (step,) = gen.plan.steps
    assert step.emit(gen, 0) == ["np.dot(a1.T, a0, out0)"]  # arguments by name: W is a0


def test_an_update_written_in_place_writes_through_the_input_array() -> None:
    """The in-place variant is generated from the loop (no rewriting of its text): every
    store and read of the output goes through the input's array ``a0``."""
    p, g = _leaf("p", n, 1), _leaf("g", n, 1)
    update = ir.add(p, ir.scale(g, sp.Rational(-1, 10)))
    source = codegen.generate(plan({"p": update}), [p, g], "sgd")
    assert source.in_place == ["p"]
    plain, through = _function(source.text, "_loop0"), _function(source.text, "_loop0_inplace")
    assert "out0[i0, 0] = " in plain and "a1[i0, 0] = " not in plain
    assert "a1[i0, 0] = " in through and "out0[" not in through
    assert through.replace("a1[i0, 0] = ", "out0[i0, 0] = ").replace(
        "_loop0_inplace(", "_loop0(") == plain


def test_loop_code_of_a_reduction_accumulates_then_stores() -> None:
    X = _leaf("X", n, d)  # noqa: N806 - a math name
    values = ir.map_(sp.Lambda((x0,), sp.exp(x0)), X)
    total = ir.einsum([values], [(0, 1)], ())
    gen = _generator({"value": total}, [X])
    (group,) = gen.plan.steps
    code = gen.loop_code(group, ["i0", "i1"], {})
    assert code.before == ["acc0 = 0.0"]
    assert code.body[-1] == "acc0 += t0"
    assert code.after == ["out0[0] = acc0"]
    assert code.arrays == {"a0", "out0"}
    through = gen.loop_code(group, ["i0", "i1"], {}, write_through={"out0": "a0"})
    assert through.after == ["a0[0] = acc0"] and through.body == code.body


def test_the_module_docstring_counts_the_steps_and_their_operations() -> None:
    X, W = _leaf("X", n, d), _leaf("W", d, h)  # noqa: N806 - math names
    z = ir.einsum([X, W], [(0, 1), (1, 2)], (0, 2))
    text = codegen.generate(plan({"p": ir.softmax(z, 1)}), [X, W], "softmax").text
    assert "Steps: 3 (1 BLAS products, 1 fused loops, 1 softmax row passes)\n" in text
    # X W: 2 n d h; the row statistics: 4 n h; softmax: 3 per entry.
    line = text.split("Floating-point operations, about: ")[1].split("\n")[0]
    flops = sp.sympify(line, locals={"n": n, "d": d, "h": h})
    assert sp.expand(flops - (2 * n * d * h + 4 * n * h + 3 * n * h)) == 0


def test_the_module_docstring_names_each_kind_of_step() -> None:
    """A linear solve and a row stream are counted as what they are (they were once
    counted as softmax row passes); kinds absent from the plan are not listed."""
    X, A = _leaf("X", n, d), _leaf("A", d, d)  # noqa: N806 - math names
    v, y = _leaf("v", d, 1), _leaf("y", n, 1)
    z = ir.einsum([X, v], [(0, 1), (1, 2)], (0, 2))
    residual = ir.add(ir.map_(sp.Lambda((x0,), sp.tanh(x0)), z), ir.scale(y, -1))
    gradient = ir.einsum([X, residual], [(1, 0), (1, 2)], (0, 2))
    outputs = {"g": gradient, "s": ir.solve(A, v)}
    text = codegen.generate(plan(outputs), [A, X, v, y], "stream and solve").text
    assert "Steps: 2 (1 linear solves, 1 row streams)\n" in text
