"""Notebook displays: HTML for check reports, kernels and derivations (issue 17, item 4).

The expected content comes from the objects' own data (names, shapes) and hand-written
fragments; each user string is checked to arrive escaped.
"""

from __future__ import annotations

import html
import re

import sympy as sp

import symdl
from symdl.printing.html import FAIL_COLOUR, PASS_COLOUR
from symdl.verify.report import CheckReport, CheckRow, Skipped


def _row(output: str, passed: bool, error: float) -> CheckRow:
    return CheckRow(output, "w<b>", "0", 1.0, 1.0 + error, error, error, 1e-6,
                    "central-richardson", passed)


def test_check_report_is_a_table_with_pass_and_fail_colours() -> None:
    report = CheckReport(rows=[_row("grad:w<b>", True, 1e-9), _row("value", False, 0.5)],
                         notes=["a <note>"], dims={"n": 3},
                         skipped=[Skipped("hessian:w,w", "w", "sympy reference", "over 10 s")])
    page = report._repr_html_()
    rows = re.findall(r"<tr[^>]*>.*?</tr>", page, flags=re.S)
    assert len(rows) == 1 + 3  # the header, two summary rows, one comparison not run
    assert PASS_COLOUR in rows[1] and "grad:w&lt;b&gt;" in rows[1] and ">ok<" in rows[1]
    assert FAIL_COLOUR in rows[2] and ">FAILED<" in rows[2] and "5.0e-01" in rows[2]
    assert "over 10 s" in rows[3]
    assert f'background: {FAIL_COLOUR}' in page.split("<table")[0]  # the verdict line
    assert "gradient check FAILED" in page and "a &lt;note&gt;" in page
    assert "w<b>" not in page


def test_kernel_lists_inputs_outputs_shapes_and_steps() -> None:
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, w, y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
    z = X * w
    der = symdl.derive(symdl.mean(symdl.softplus(z) - sp.hadamard_product(y, z)), wrt=[w])
    page = der.compile(hvp=True, jit=False)._repr_html_()
    for name, shape in [("X", "n × d"), ("w", "d × 1"), ("y", "n × 1"), ("v_w", "d × 1"),
                        ("value", "scalar"), ("grad:w", "d × 1"), ("hvp:w", "d × 1")]:
        assert re.search(rf">{re.escape(name)}</td>\s*<td[^>]*>{shape}</td>", page), name
    assert "HVP direction of w" in page
    # The HVP's X^T (s ⊙ (X v)) has BLAS products; the value and gradient one row pass.
    assert "matrix product (BLAS)" in page and "one pass over the rows" in page
    total = int(re.search(r"<p>(\d+) steps</p>", page).group(1))
    counts = re.findall(r"<td[^>]*>(\d+)</td></tr>", page.split("steps</p>")[1])
    assert sum(map(int, counts)) == total >= 2


def test_derivation_shows_its_shapes_beside_its_latex() -> None:
    n = sp.Symbol("n", integer=True, positive=True)
    A, b = sp.MatrixSymbol("A&1", n, 2), sp.MatrixSymbol("b", 2, 1)
    der = symdl.derive(symdl.mean(symdl.tanh(A * b)), wrt=[b])
    page = der._repr_html_()
    assert "$$" + html.escape(der.to_latex()) + "$$" in page
    assert re.search(r">b</td>\s*<td[^>]*>2 × 1</td>\s*<td[^>]*>parameter", page)
    assert re.search(r">A&amp;1</td>\s*<td[^>]*>n × 2</td>\s*<td[^>]*>input", page)
    assert re.search(r">value</td>\s*<td[^>]*>scalar</td>", page)
