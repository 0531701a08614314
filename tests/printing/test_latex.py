"""LaTeX export: stored copies, readable forms, name mapping and real pdflatex runs.

The stored copies live in ``tests/golden/<name>.tex``. When the LaTeX changes on purpose,
rewrite them with ``SYMDL_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_latex.py``
and review the diff before committing; without the variable a difference is a failure.

pdflatex is required, not optional: ``make test`` installs Debian's texlive-latex-base and
texlive-latex-recommended when it is missing, and a missing pdflatex fails these tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sympy as sp

import symdl
from symdl import catalog as registry
from symdl.errors import UnsupportedError
from symdl.printing import latex
from symdl.printing.latex import LatexError, latex_name

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_NAMES = ["logistic_regression", "two_layer_mlp", "linear_regression"]
INTERNALS = ["Dummy", "_i_1", "KroneckerDelta", "Piecewise", "Lambda", "symdlplaceholder"]


def _require_pdflatex() -> None:
    if shutil.which("pdflatex") is None:
        pytest.fail("pdflatex is not installed; " + latex.INSTALL_HINT + " (make test does it)")


@pytest.fixture(scope="module")
def mlp_latex() -> str:
    return registry.load("two_layer_mlp").derive().to_latex()


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_stored_copy(name: str) -> None:
    der = registry.load(name).derive()
    if name != "two_layer_mlp":
        der.hessian(der.wrt[0])
    text = der.to_latex() + "\n"
    path = GOLDEN / f"{name}.tex"
    if os.environ.get("SYMDL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no stored copy {path}; run with SYMDL_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(encoding="utf-8"), (
        f"the LaTeX of {name} changed; if on purpose, rerun with SYMDL_UPDATE_GOLDEN=1")


def test_logistic_gradient_reads_as_matrix_form() -> None:
    der = registry.load("logistic_regression").derive()
    text = der.to_latex()
    grad = next(line for line in text.splitlines() if line.startswith(r"\nabla_{w} L"))
    assert r"X^{\top}" in grad and r"\sigma\left(X w\right)" in grad
    assert r"\frac{1}{n}" in grad and "- y" in grad


def test_mlp_backprop_is_the_textbook(mlp_latex: str) -> None:
    lines = mlp_latex.splitlines()
    # One delta per layer: the adjoints of Z_2 and Z_1, nothing else called delta.
    assert set(re.findall(r"\\delta_\{(\d*)\}", mlp_latex)) == {"1", "2"}
    assert any(line.startswith(r"\delta_{2} = \frac{\partial L}{\partial Z_{2}}") for line in lines)
    assert r"&= \frac{1}{n} (\operatorname{softmax}\left(Z_{2}\right) - Y)" in mlp_latex
    assert r"&= A_{1}^{\top} \delta_{2}" in mlp_latex
    assert (r"&= (\delta_{2} W_{2}^{\top}) \odot (\mathbf{1} - A_{1} \odot A_{1})"
            in mlp_latex)
    assert r"&= X^{\top} \delta_{1}" in mlp_latex
    assert r"&= \mathbf{1}_{n}^{\top} \delta_{1}" in mlp_latex
    # Chain rule before the matrix form: dL/dA1 from its one consumer Z2.
    assert (r"\frac{\partial L}{\partial A_{1}} &= \frac{\partial L}{\partial Z_{2}} "
            r"\frac{\partial Z_{2}}{\partial A_{1}}") in mlp_latex
    assert r"\nabla_{W_{1}} L" in mlp_latex
    # Shapes beside the equations.
    assert r"&& n \times h" in mlp_latex and r"&& d \times h" in mlp_latex
    for internal in INTERNALS:
        assert internal not in mlp_latex


@pytest.mark.parametrize(("name", "expected"), [
    ("W1", "W_{1}"), ("b2", "b_{2}"), ("delta", r"\delta"), ("sigma", r"\sigma"),
    ("Lambda", r"\Lambda"), ("Xhat", r"\hat{X}"), ("m_W_new", r"m_{W,\mathrm{new}}"),
    ("Wq", "W_{q}"), ("var", r"\mathrm{var}"), ("δ2", r"\delta_{2}"),
    ("a}b$c\\d%e&f#g^h~i", r"\text{a\}b\$c\textbackslash{}d\%e\&f\#g\textasciicircum{}h"
                           r"\textasciitilde{}i}"),
    ("x__y", r"\text{x\_\_y}"),
])
def test_name_mapping(name: str, expected: str) -> None:
    assert latex_name(name) == expected


def test_hostile_names_compile(tmp_path: Path) -> None:
    _require_pdflatex()
    n = sp.Symbol("n", integer=True, positive=True)
    x = sp.MatrixSymbol("x}\\end{document}%", n, 1)
    w = sp.MatrixSymbol("w$&#", n, 1)
    der = symdl.derive(symdl.total(sp.HadamardProduct(x, w)), wrt=[w])
    source = latex.document(der, title="title }\\bad{ $ & % # _ ^ ~ é")
    assert "\\end{document}%" not in source.split("\\begin{document}")[1].replace(
        "\\end{document}\n", "")
    pdf = latex.compile_pdf(source, tmp_path / "hostile.pdf")
    assert pdf.stat().st_size > 1000


def test_repr_latex() -> None:
    der = registry.load("logistic_regression").derive()
    shown = der._repr_latex_()
    assert shown.startswith("$$\\begin{aligned}") and shown.endswith("\\end{aligned}$$")
    assert shown == "$$" + der.to_latex() + "$$"


class _Report:
    def to_latex(self) -> str:
        return "\\begin{tabular}{lr}\\toprule output & error\\\\ \\midrule grad:w & 1e-9\\\\ " \
               "\\bottomrule\\end{tabular}"


def test_document_includes_check_table() -> None:
    der = registry.load("linear_regression").derive()
    source = latex.document(der, title="t", check_report=_Report())
    assert "Finite-difference check" in source and "grad:w & 1e-9" in source
    assert source.count("\\begin{document}") == 1 and "\\usepackage{amsmath" in source


def test_every_shipped_derivation_compiles(tmp_path: Path) -> None:
    """Every shipped derivation, with all its Hessian blocks (none for those declaring
    ``PRINTED_HESSIANS = False``), compiles without a line running off the page (no "Overfull
    \\hbox" in the log)."""
    _require_pdflatex()
    sources = {}
    for entry in registry.entries():
        der = entry.derive()
        if der.is_scalar:
            # A derivation whose Hessian has too many blocks to print one by one
            # (PRINTED_HESSIANS = False: the transformer block, GRU, LSTM) typesets its
            # gradients only.
            every = getattr(entry.module, "PRINTED_HESSIANS", True)
            for k, p in enumerate(der.wrt if every else []):
                for q in der.wrt[k:]:
                    try:
                        der.hessian_node(p, q)
                    except UnsupportedError:  # gradients only (singular values: stated)
                        assert entry.name == "reg_nuclear_norm"
        sources[entry.name] = latex.document(der, title=entry.title)
        for internal in INTERNALS:
            assert internal not in sources[entry.name], (entry.name, internal)

    def build(item):
        name, source = item
        folder = tmp_path / name
        folder.mkdir()
        (folder / "doc.tex").write_text(source, encoding="utf-8")
        subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                       cwd=folder, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        log = (folder / "doc.log").read_text(errors="replace")
        return name, (folder / "doc.pdf").is_file(), log

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(build, sources.items()))
    assert len(results) == len(registry.names())
    for name, compiled, log in results:
        assert compiled, f"{name}: " + latex._log_errors(log)
        assert "Overfull \\hbox" not in log, f"{name}: a line runs off the page"


def test_cli_writes_tex_and_pdf(tmp_path: Path) -> None:
    _require_pdflatex()
    out = tmp_path / "x.tex"
    proc = subprocess.run(
        [sys.executable, "-m", "symdl", "latex", "two_layer_mlp", "-o", str(out), "--pdf"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert r"\delta_{2}" in out.read_text()
    pdf = tmp_path / "x.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
        assert "Backpropagation" in text


def test_pdflatex_failure_shows_the_log_errors(tmp_path: Path) -> None:
    _require_pdflatex()
    broken = "\\documentclass{article}\\begin{document}$\\frac{1}{$\\undefinedmacro\n" \
             "\\end{document}\n"
    with pytest.raises(LatexError, match=r"pdflatex failed:\n!") as info:
        latex.compile_pdf(broken, tmp_path / "broken.pdf")
    assert not (tmp_path / "broken.pdf").exists()
    assert isinstance(info.value, symdl.errors.SymdlError)


def test_missing_pdflatex_is_a_typed_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(latex.shutil, "which", lambda name: None)
    with pytest.raises(LatexError, match="apt-get install texlive-latex-base"):
        latex.compile_pdf("x", tmp_path / "x.pdf")


def test_cli_check_includes_the_report_table(tmp_path: Path, monkeypatch, capsys) -> None:
    from symdl.cli import main

    seen = []

    def fake_check(der):
        seen.append(der)
        return _Report()

    monkeypatch.setattr(symdl, "check", fake_check)
    out = tmp_path / "lr.tex"
    assert main(["latex", "linear_regression", "-o", str(out), "--check", "--hessian"]) == 0
    text = out.read_text()
    assert len(seen) == 1 and "grad:w & 1e-9" in text and "Hessian blocks" in text


def test_cli_check_without_symdl_check_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    from symdl.cli import main

    monkeypatch.delattr(symdl, "check", raising=False)
    out = tmp_path / "lr.tex"
    assert main(["latex", "linear_regression", "-o", str(out), "--check"]) == 0
    assert "--check needs symdl.check" in capsys.readouterr().err
    assert "Finite-difference check" not in out.read_text()


def test_index_notation_states_ranges_once() -> None:
    der = registry.load("reg_l2").derive()
    W = next(p for p in der.wrt if str(p) == "W")
    der.hessian_node(W, W)
    text = der.to_latex()
    row = next(line for line in text.splitlines() if r"\partial W\, \partial W" in line)
    assert r"\right]_{i j l m}" in row and "[i = l]" in row and "[j = m]" in row
    assert r"\text{for } i,l \in \{0, \dots, d - 1\},\ j,m \in \{0, \dots, k - 1\}" in text
    assert "_{0" not in row


def test_jacobians_of_a_matrix_valued_definition() -> None:
    n, d = sp.symbols("n d", integer=True, positive=True)
    x = sp.MatrixSymbol("x", d, 1)
    A = sp.MatrixSymbol("A", n, d)
    text = symdl.derive(A * x, wrt=[x]).to_latex()
    assert r"\frac{\partial f}{\partial x} &= A && n \times d" in text


def test_report_figures_compile_with_restricted_file_access(tmp_path: Path) -> None:
    """pdflatex reads no file by an absolute path (compile_pdf's paranoid mode): the demo
    report names its figures by file name and they are copied beside the document; a folder
    with a space in its path works too."""
    _require_pdflatex()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from symdl.report.document import write_report

    folder = tmp_path / "my report"
    folder.mkdir()
    plt.figure()
    plt.plot([0, 1], [1, 0])
    plt.savefig(folder / "training.pdf")
    plt.close("all")
    metrics = {"data": {"name": "digits", "train": 10, "test": 5},
               "final_test_accuracy": 0.9, "final_train_accuracy": 0.95,
               "final_train_loss": 0.1, "timings": {"steps": 3, "train_s": 0.5}}
    der = registry.load("linear_regression").derive()
    tex = write_report(folder / "report.tex", der, None, metrics, ["training.pdf"])
    assert r"\includegraphics[width=0.95\linewidth]{training.pdf}" in tex.read_text()
    pdf = tex.with_suffix(".pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/Subtype /Form" in pdf  # the figure is embedded


def test_a_result_too_large_to_write_out_is_a_typed_error_and_a_listed_block(
        tmp_path: Path, monkeypatch) -> None:
    """Regression: the transformer block's Hessian blocks are up to 750,000 IR nodes as one
    expression (rank-4 intermediates have no names to print them by); printing one ran for
    hours. A result over the limit raises ClosedFormTooLargeError at once, and a document
    lists the blocks it leaves out instead of running for minutes into pages of one formula.
    Here the limits are lowered so that a small MLP's Hessian exceeds them."""
    from symdl import derivation
    from symdl.errors import ClosedFormTooLargeError, DerivationError

    der = registry.load("two_layer_mlp").derive()
    p = der.wrt[0]
    der.hessian_node(p, p)
    small = der.hessian(p, p, inline=False)  # under the limit: printed as before
    monkeypatch.setattr(derivation, "WRITTEN_OUT_LIMIT", 3)
    with pytest.raises(ClosedFormTooLargeError, match="der.compile") as info:
        der.hessian(p, p)
    assert isinstance(info.value, DerivationError)
    monkeypatch.setattr(latex, "DOCUMENT_TERMS_LIMIT", 3)
    source = latex.document(der, title="mlp")
    assert "Not written out, being larger than 3 terms" in source
    assert r"\partial^2" not in source and small is not None
    _require_pdflatex()
    assert latex.compile_pdf(source, tmp_path / "mlp.pdf").stat().st_size > 1000
