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
from symdl.printing.plain import plain

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


# --------------------------------------------------------------------------------------------
# LaTeX: every name (matrices, scalars, indices, steps, dimensions) and title is text in the
# document and the PDF, never TeX that runs; pdflatex itself may not read or write files
# outside its folder nor run programs.

SECRET = "7193846205"  # digits: the same bytes in every font pdflatex uses here


def _tex_payloads(folder: Path) -> list[str]:
    secret = folder / "secret.tex"
    secret.write_text(SECRET + "\n")
    marker = folder / "TEX-MARKER"
    return [
        rf"\input{{{secret}}}",
        r"\input{/etc/passwd}",
        r'\input|"kpsewhich -var-value=TEXMFROOT"',  # prints TeX Live's folder: .../texlive
        rf"\immediate\write18{{touch {marker}}}",
        rf"^^5cinput^^7b{secret}^^7d",
        r"\catcode`\^^M=9 }$%#&_~<>|\"'`--",
        "line\nbreak\ttab",
        "权重 é Δ",
        "}",
        "$",
    ]


def _pdf_text(pdf: bytes) -> str:
    """The text a PDF draws, roughly: every string literal of every decompressed stream,
    concatenated (TeX positions words by moves, not spaces; kerning splits strings)."""
    import re
    import zlib

    escapes = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
    pieces = []
    for match in re.finditer(rb"stream\r?\n(.*?)endstream", pdf, re.S):
        try:
            data = zlib.decompress(match.group(1))
        except zlib.error:
            continue
        for literal in re.finditer(rb"\(((?:[^()\\]|\\.)*)\)\s*-?\d*\.?\d*", data, re.S):
            raw = literal.group(1)
            out, k = bytearray(), 0
            while k < len(raw):
                if raw[k:k + 1] == b"\\" and k + 1 < len(raw):
                    nxt = raw[k + 1:k + 2]
                    octal = re.match(rb"[0-7]{1,3}", raw[k + 1:k + 4])
                    if octal:
                        out.append(int(octal.group(0), 8) & 0xFF)
                        k += 1 + len(octal.group(0))
                        continue
                    out += escapes.get(nxt, nxt)
                    k += 2
                else:
                    out += raw[k:k + 1]
                    k += 1
            pieces.append(bytes(out))
    # The text font's ligatures ff, fi, fl, ffi, ffl sit at bytes 11 to 15.
    ligatures = dict(zip("\x0b\x0c\x0d\x0e\x0f", ["ff", "fi", "fl", "ffi", "ffl"], strict=True))
    text = b"".join(pieces).decode("latin-1")
    return "".join(ligatures.get(ch, ch) for ch in text)


def _hostile_derivations(names: list[str]):
    n = sp.Symbol(names[0], integer=True, positive=True)
    d = sp.Symbol(names[1], integer=True, positive=True)
    X = sp.MatrixSymbol(names[2], n, d)
    w = sp.MatrixSymbol(names[3], d, 1)
    s = sp.Symbol(names[4], real=True)
    z = sp.MatrixSymbol(names[5], n, 1)
    loss = sp.Symbol(names[9], real=True)
    model = symdl.derive([(z, X * w), (loss, s * symdl.mean(symdl.softplus(z)))],
                         wrt=[w, s])
    model.hessian(w)
    # Index notation: a hostile IndexedBase and a hostile summation index.
    k = sp.Symbol(names[6], integer=True, positive=True)
    v = sp.IndexedBase(names[7], shape=(k,))
    i = sp.Idx(names[8], k)
    index = symdl.derive(sp.Sum(v[i] ** 2, (i, 0, k - 1)), wrt=[v])
    index.hessian(v)
    return [model, index]


def _assert_safe_pdf(pdf: Path, folder: Path) -> None:
    text = _pdf_text(pdf.read_bytes())
    assert "Definition" in text and "Gradients" in text  # the extraction works ...
    assert "etc/passwd" in text and "kpsewhich" in text and "catcode" in text  # names as text
    assert SECRET not in text and "texlive" not in text  # ... and no file or program output
    passwd = Path("/etc/passwd").read_text(errors="replace").splitlines()
    first_user = passwd[0].split(":")[0] + ":" if passwd else None
    assert first_user is None or passwd[0].replace(":", "")[:12] not in text.replace(":", "")
    assert not (folder / "TEX-MARKER").exists()


def test_latex_document_with_hostile_names_compiles_as_text(tmp_path):
    from symdl.printing import latex

    names = _tex_payloads(tmp_path)
    source = latex.document(_hostile_derivations(names), title=names[2] + " " + names[3])
    body = source.split("\\begin{document}", 1)[1]
    for dangerous in ("\\input", "\\write18", "^^", "\\catcode", "/etc/passwd}"):
        assert dangerous not in body
    assert "\\textbackslash{}input" in body  # the name, spelled as text
    pdf = latex.compile_pdf(source, tmp_path / "hostile.pdf")
    _assert_safe_pdf(pdf, tmp_path)


def test_cli_latex_pdf_with_hostile_names(tmp_path):
    names = _tex_payloads(tmp_path)
    lines = ['"""' + names[0].replace("\\", "\\\\") + ' a title."""',
             "import sympy as sp", "import symdl", "",
             f"NAMES = {names!r}", "",
             "def derivation():",
             "    n = sp.Symbol(NAMES[0], integer=True, positive=True)",
             "    d = sp.Symbol(NAMES[2], integer=True, positive=True)",
             "    X = sp.MatrixSymbol(NAMES[1], n, d)",
             "    w = sp.MatrixSymbol(NAMES[3], d, 1)",
             "    s = sp.Symbol(NAMES[4], real=True)",
             "    z = sp.MatrixSymbol(NAMES[5], n, 1)",
             "    loss = sp.Symbol(NAMES[6], real=True)",
             "    return symdl.derive([(z, X * w), (loss, s * symdl.mean(symdl.softplus(z)))],",
             "                        wrt=[w, s])", ""]
    model = tmp_path / "model.py"
    model.write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "out.tex"
    done = subprocess.run([sys.executable, "-m", "symdl", "latex", str(model), "-o", str(out),
                           "--pdf", "--hessian"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_safe_pdf(out.with_suffix(".pdf"), tmp_path)


def test_escape_text_leaves_nothing_tex_acts_on(tmp_path):
    import re

    from symdl.printing.latex import UNICODE_TEXT, SymdlLatexPrinter, escape_text, latex_name

    payloads = [*_tex_payloads(tmp_path), *PAYLOADS.values(), "".join(map(chr, range(1, 256)))]
    for text in payloads:
        for escaped in (escape_text(text), latex_name(text)):
            assert escaped.isascii() and escaped.isprintable()
            assert "^^" not in escaped and "$$" not in escaped
            for formula in UNICODE_TEXT.values():  # symdl's own formulas for ², ×, ...
                escaped = escaped.replace("{" + formula + "}", "")
            # Backslashes only start the escaping commands; braces only close them.
            commands = set(re.findall(r"\\([A-Za-z]+|.)", escaped))
            assert commands <= {"textbackslash", "textasciicircum", "textasciitilde", "textless",
                                "textgreater", "textbar", "ttfamily", "char", "textquotesingle",
                                "textasciigrave", "text", "dots", "{", "}", "$", "&", "#", "%",
                                "_", "'", "`", '"', "times", "odot", "cdot", "geq", "leq",
                                "sum", "Sigma", "Delta", "nabla", "top", "to", "|", "mathrm",
                                *UNICODE_GREEK_COMMANDS}, (text, escaped)
            unescaped = re.sub(r"\\([A-Za-z]+|.)", "", escaped)
            assert not set(unescaped) & set("\\%#^~&"), (text, escaped)
        # Every other way SymPy prints a name: undefined functions, Str, class names.
        printer = SymdlLatexPrinter()
        x = sp.Symbol("x")
        for shown in (printer.doprint(sp.Function(text)(x)), printer.doprint(sp.Symbol(text)),
                      printer.doprint(sp.MatrixSymbol(text, 2, 2)),
                      printer.doprint(sp.IndexedBase(text)[x])):
            assert "\\input" not in shown and "^^" not in shown and "%" not in shown.replace(
                "\\%", ""), (text, shown)


UNICODE_GREEK_COMMANDS = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
                          "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho",
                          "varsigma", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega"}


def test_compile_pdf_runs_no_program_and_reads_no_outside_file(tmp_path):
    """A document with raw TeX in it (symdl's own documents never have any): pdflatex runs
    without shell escape and in paranoid file mode."""
    from symdl.printing import latex

    secret = tmp_path / "secret.tex"
    secret.write_text(SECRET + "\n")
    marker = tmp_path / "MARKER"
    out_file = tmp_path / "written.tex"
    attacks = {
        "input-absolute": rf"\input{{{secret}}}",
        "input-parent": r"\input{../../../../../../../../" + str(secret).lstrip("/") + "}",
        "pipe": r'\input|"kpsewhich -var-value=TEXMFROOT"',
        "write18": rf"\immediate\write18{{touch {marker}}}",
        "openout": (rf"\newwrite\f \immediate\openout\f={out_file}"
                    r"\immediate\write\f{x}\immediate\closeout\f"),
    }
    for name, attack in attacks.items():
        source = ("\\documentclass{article}\\begin{document}Hello " + attack
                  + " world\\end{document}\n")
        try:
            pdf = latex.compile_pdf(source, tmp_path / f"{name}.pdf")
        except latex.LatexError:
            continue  # refused: nothing was read, run or written
        text = _pdf_text(pdf.read_bytes())
        assert "Hello" in text, name
        assert SECRET not in text and "texlive" not in text, name
    assert not marker.exists() and not out_file.exists()


def test_check_report_table_with_hostile_names(tmp_path):
    from symdl.printing import latex
    from symdl.verify.report import CheckReport, CheckRow

    names = _tex_payloads(tmp_path)
    report = CheckReport(rows=[CheckRow(f"grad:{name}", name, "0", 1.0, 1.0, 0.0, 0.0, 1e-8,
                                        name, True) for name in names])
    table = report.to_latex()
    assert "^^" not in table and "\\input" not in table and "\\write18" not in table
    n = sp.Symbol("n", integer=True, positive=True)
    w = sp.MatrixSymbol("w", n, 1)
    source = latex.document(symdl.derive(symdl.total(sp.HadamardProduct(w, w)), wrt=[w]),
                            title="t", check_report=report)
    text = _pdf_text(latex.compile_pdf(source, tmp_path / "check.pdf").read_bytes())
    assert "Gradients" in text and "etc/passwd" in text
    assert SECRET not in text and "texlive" not in text


# --------------------------------------------------------------------------------------------
# Output keys: a parameter may have any name SymPy takes, separators of the old string names
# ("grad:w", "hessian:p,q") included; results are keyed by symdl.ir.keys, never parsed back.
# Oracle: the loss s * mean(softplus(X w)) and its derivatives written out in NumPy.

KEY_NAMES = {
    "comma": ("a,b", "b,a"),
    "ambiguous-hessian": ("a", "a,a"),  # hessian:a,a,a would name both cross blocks
    "colon": ("x:y", "grad:w"),
    "old-spellings": ("value", "hessian:w,w"),
    "quotes-spaces": ("q'\" x", " s "),
    "unicode-keyword": ("Δ", "class"),
    "backslash-keyword": ("a\\b", "lambda"),
}
FULL_REFERENCE = ("comma", "ambiguous-hessian")
"""Cases checked against the SymPy reference too (2 s each); the others by finite
differences only."""


def _by_hand(xv, wv, sv, vw, vs):
    """Value, gradients, Hessian blocks (size-1 axes dropped) and HVPs of s mean softplus(Xw)."""
    n = xv.shape[0]
    z = xv @ wv
    sig = 1 / (1 + np.exp(-z))
    value = sv * np.mean(np.logaddexp(0, z))
    gw, gs = sv * xv.T @ sig / n, np.mean(np.logaddexp(0, z))
    hww = sv * xv.T @ (sig * (1 - sig) * xv) / n
    hws = (xv.T @ sig / n).ravel()
    hessian = {"ww": hww, "ws": hws, "sw": hws, "ss": 0.0}
    hvp = {"w": hww @ vw + hws.reshape(-1, 1) * vs, "s": float(hws @ vw.ravel())}
    return value, {"w": gw, "s": gs}, hessian, hvp


@pytest.mark.parametrize("case", list(KEY_NAMES))
def test_any_parameter_name_through_every_output(case):
    from symdl.ir.keys import HVP, Gradient, HessianBlock, OutputKeyError, Value
    from symdl.optimizers import Momentum
    from symdl.training import TrainingStep

    wname, sname = names = KEY_NAMES[case]
    n, d = sp.symbols("n d", integer=True, positive=True)
    X = sp.MatrixSymbol("X", n, d)
    w = sp.MatrixSymbol(wname, d, 1)
    s = sp.Symbol(sname, real=True)
    der = symdl.derive(s * symdl.mean(symdl.softplus(X * w)), wrt=[w, s], hessian=True)
    kernel = der.compile(hvp=True, jit=False)
    rng = np.random.default_rng(3)
    xv, wv, sv = rng.standard_normal((5, 3)), rng.standard_normal((3, 1)), 0.7
    vw, vs = rng.standard_normal((3, 1)), -1.3
    arrays = {"X": xv, wname: wv, sname: sv, kernel.hvp_inputs[wname]: vw,
              kernel.hvp_inputs[sname]: vs}
    value, grad, hessian, hvp = _by_hand(xv, wv, sv, vw, vs)
    by = {"w": wname, "s": sname}

    buffer = np.empty((3, 3))
    result = kernel.run(arrays, out={HessianBlock(wname, wname): buffer})
    assert result.value == pytest.approx(value, rel=1e-13)
    for p in "ws":
        np.testing.assert_allclose(result.grad[by[p]], grad[p], rtol=1e-12)
        np.testing.assert_allclose(result.hvp[by[p]], hvp[p], rtol=1e-12, atol=1e-15)
        for q in "ws":
            np.testing.assert_allclose(result.hessian[by[p], by[q]], hessian[p + q],
                                       rtol=1e-12, atol=1e-15)
    assert result.hessian[wname, wname] is buffer
    # Every key reads the outputs, and so does its spelling (names quoted where needed).
    keys = [Value(), Gradient(wname), Gradient(sname), HVP(wname), HVP(sname)] + [
        HessianBlock(p, q) for p in (wname, sname) for q in (wname, sname)]
    assert sorted(kernel.output_keys) == sorted(keys)
    for key in keys:
        assert np.array_equal(result.outputs[key], result.outputs[str(key)])
    # The plain spelling where it names one output, a typed error where it names two.
    plain = f"hessian:{wname},{sname}"
    if names == KEY_NAMES["ambiguous-hessian"]:
        with pytest.raises(OutputKeyError, match="names 2 outputs"):
            result.outputs[plain]
        with pytest.raises(symdl.KernelArgumentError, match="names 2 outputs"):
            kernel.run(arrays, out={plain: np.empty(3)})
    else:
        np.testing.assert_allclose(result.outputs[plain], hessian["ws"], rtol=1e-12)
        out = np.empty(3)
        kernel.run(arrays, out={plain: out})
        np.testing.assert_allclose(out, hessian["ws"], rtol=1e-12)
    evaluated = der.evaluate({"X": xv, wname: wv, sname: sv})
    np.testing.assert_allclose(evaluated[Gradient(sname)], grad["s"], rtol=1e-12)
    np.testing.assert_allclose(evaluated[str(HessianBlock(sname, wname))], hessian["sw"],
                               rtol=1e-12)
    only = der.compile(outputs=[Gradient(wname), str(HessianBlock(sname, sname))], jit=False)
    assert only.output_keys == [Gradient(wname), HessianBlock(sname, sname)]

    report = symdl.check(der, kernel=kernel, jit=False,
                         reference_budget=None if case in FULL_REFERENCE else 0)
    assert report.ok, str(report)
    assert {r.output for r in report.rows} >= set(keys) - {Value()}  # the value: reference
    if case in FULL_REFERENCE:
        compared = {(r.output, r.method) for r in report.rows}
        assert {(HessianBlock(wname, sname), "sympy reference"),
                (Gradient(sname), "complex step")} <= compared
    json_rows = report.to_dict()["rows"]
    assert {(r["key"]["kind"], tuple(r["key"]["names"])) for r in json_rows} >= {
        ("hessian", (sname, wname)), ("hvp", (wname,)), ("grad", (sname,))}

    step = TrainingStep(der, Momentum(lr=0.1, momentum=0.9), {wname: wv, sname: sv},
                        jit=False)
    assert step(X=xv) == pytest.approx(value, rel=1e-13)
    np.testing.assert_allclose(step.params[wname], wv - 0.1 * grad["w"], rtol=1e-12)
    assert float(step.params[sname]) == pytest.approx(sv - 0.1 * grad["s"], rel=1e-12)
    np.testing.assert_allclose(step.state[step.names.states[("b", wname)]], grad["w"],
                               rtol=1e-12)
    assert "Hessian" in symdl.latex.document(der, title=wname) and der.to_latex()


def test_string_output_names_say_how_to_write_an_ambiguous_one():
    from symdl.ir.keys import Gradient, HessianBlock, Named, OutputKeyError, Update, Value, parse

    assert parse("value") == Value() and parse("grad:a,b") == Gradient("a,b")
    assert parse("hessian:'a,b',c") == HessianBlock("a,b", "c") == "hessian:'a,b',c"
    assert parse("new:m_W") == Update("m_W") and parse("W") == Named("W")
    assert parse("'value'") == Named("value") != Value()
    with pytest.raises(OutputKeyError, match=r"HessianBlock\(p, q\).*hessian:'a,b','c'"):
        parse("hessian:a,b,c")
    with pytest.raises(OutputKeyError, match="as strings"):
        Gradient(sp.Symbol("w"))
    for key in (Value(), Gradient("a,b"), HessianBlock("", "x:y"), Update("q'\""),
                Named("grad:w"), Named("Δ")):
        assert parse(str(key)) == key and repr(key).startswith(type(key).__name__)
