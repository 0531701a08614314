"""LaTeX of derivations: the chain rule step by step, in matrix notation, with shapes.

``derivation_latex`` gives the aligned equations (``Derivation.to_latex``), ``document`` a
complete amsmath document, ``compile_pdf`` runs pdflatex on it. The printer is SymPy's
``LatexPrinter`` with the deep-learning notation (``\\odot``, ``X^{\\top}``, ``\\mathbf{1}_{n}``,
``\\sigma``), the backprop names of the textbook (``\\delta_{l}`` for the adjoint of a
pre-activation ``Z_l``, ``\\nabla_{W_1} L``) and symbol names mapped to good LaTeX.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.printing.latex import LatexPrinter

from symdl import ir
from symdl.define.symbols import symbol_name
from symdl.define.tensors import TensorExpr
from symdl.errors import SymdlError
from symdl.ir.naming import written_out_size
from symdl.primitives.sympy_results import entrywise_body
from symdl.printing.to_sympy import IndexForm

if TYPE_CHECKING:
    from symdl.derivation import Derivation

GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
    "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau",
    "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda",
    "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega",
}
# Unicode Greek letters users type in names, by their LaTeX command.
UNICODE_GREEK = {chr(0x3b1 + i): name for i, name in enumerate(
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
    "varsigma sigma tau upsilon phi chi psi omega".split())}
ALIASES = {"eps": "epsilon"}
# Short words that stay whole (upright) rather than becoming letter + subscript.
WORDS = {"var", "std", "mean", "max", "min", "exp", "log", "sum", "new", "old", "lr", "out"}
ACCENTS = {"hat": r"\hat", "bar": r"\bar", "tilde": r"\tilde", "dot": r"\dot"}
TEXT_ESCAPES = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
    "%": r"\%", "_": r"\_", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}",
    # Characters the default (OT1) text font sets as other glyphs or ligatures: < is ¡, | a
    # dash, "--" an en dash; these commands print the character itself (OT1 has no straight
    # double quote but the typewriter font's).
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", '"': r"{\ttfamily\char34}",
    "'": r"\textquotesingle{}", "`": r"\textasciigrave{}", "-": "-{}",
}
# Unicode that titles and names use, as LaTeX pdflatex can set without extra packages.
UNICODE_TEXT = {
    "²": "$^2$", "³": "$^3$", "‖": r"$\|$", "×": r"$\times$", "⊙": r"$\odot$", "−": "-",
    "–": "--", "—": "---", "·": r"$\cdot$", "≥": r"$\geq$", "≤": r"$\leq$", "∑": r"$\sum$",
    "Σ": r"$\Sigma$", "Δ": r"$\Delta$", "∇": r"$\nabla$", "ᵀ": r"$^\top$", "→": r"$\to$",
    "…": r"\dots{}", "’": "'", "“": "``", "”": "''", "é": r"\'e", "è": r"\`e", "ö": r'\"o',
    "ü": r'\"u', "ä": r'\"a',
}
# Names SymPy's own printing turns into safe LaTeX (letters, digits, sub- and superscripts).
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
PREAMBLE = r"""\documentclass[11pt]{article}
\usepackage[margin=2.2cm]{geometry}
\usepackage{amsmath,amssymb}
\usepackage{graphicx}
\usepackage{booktabs}
% Scales a display formula down to #1 of the line width when it is wider (never up).
\newsavebox{\symdlbox}
\newcommand{\symdlfit}[2]{\sbox{\symdlbox}{$\displaystyle #2$}%
  \ifdim\wd\symdlbox>#1\linewidth\resizebox{#1\linewidth}{!}{\usebox{\symdlbox}}%
  \else\usebox{\symdlbox}\fi}
\allowdisplaybreaks
"""


class LatexError(SymdlError):
    """pdflatex is missing or could not compile a document."""


def escape_text(text: str) -> str:
    """``text`` made safe for LaTeX text mode: specials escaped, non-ASCII spelled out.

    The one function every user string (names of matrices, scalars, indices, steps and
    dimensions, titles, report cells) goes through before it reaches TeX: the result holds no
    character TeX treats specially (no backslash, brace, ``$``, ``%``, ``#``, ``^`` -- so no
    ``^^5c``-style escape -- and no control or non-ASCII character), so it prints as the text
    it was and runs nothing (``\\input``, ``\\write18``, ``\\catcode`` stay text)."""
    out = []
    for ch in text:
        if ch in TEXT_ESCAPES:
            out.append(TEXT_ESCAPES[ch])
        elif ch in UNICODE_TEXT:
            # Braced: two formulas side by side must not make "$$" (display math).
            text = UNICODE_TEXT[ch]
            out.append(f"{{{text}}}" if text.startswith("$") else text)
        elif ch in UNICODE_GREEK:
            out.append(rf"{{$\{UNICODE_GREEK[ch]}$}}")
        elif ord(ch) < 32:
            out.append(" ")
        elif ord(ch) > 126:
            out.append(f"U+{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _base(word: str) -> str | None:
    """A LaTeX name for one identifier word, or None when it is not a plain identifier."""
    if word in UNICODE_GREEK:
        word = UNICODE_GREEK[word]
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", word):
        return None
    match = re.fullmatch(r"([A-Za-z]+?)(hat|bar|tilde|dot)?(\d*)", word)
    if match is None:
        return None
    letters, accent, digits = match.groups()
    letters = ALIASES.get(letters, letters)
    if letters in GREEK:
        text = "\\" + letters
    elif re.fullmatch(r"[A-Z][a-z]{1,2}", letters) and letters.lower() not in WORDS:
        # Wq, Wk: a matrix letter with a lower-case tag, as in W_{q}.
        text = f"{letters[0]}_{{{letters[1:]}}}"
        return f"{text[:-1]},{digits}}}" if digits else text
    elif len(letters) == 1:
        text = letters
    else:
        text = rf"\mathrm{{{letters}}}"
    if accent:
        text = f"{ACCENTS[accent]}{{{text}}}"
    return f"{text}_{{{digits}}}" if digits else text


def latex_name(name: str) -> str:
    """A symbol name as LaTeX: ``W1`` -> ``W_{1}``, ``delta`` -> ``\\delta``,
    ``m_W_new`` -> ``m_{W,\\mathrm{new}}``, ``Xhat`` -> ``\\hat{X}``; anything else is set
    upright with every special character escaped, so that no name can break the document."""
    parts = "".join(UNICODE_GREEK.get(ch, ch) for ch in name).split("_")
    head = _base(parts[0]) if parts[0] else None
    subs = [_base(p) for p in parts[1:]]
    if head is not None and all(s is not None for s in subs):
        if not subs:
            return head
        if head.endswith("}") and "_{" in head:
            # W1_x: the digits join the other subscripts.
            stem, digits = head[:-1].rsplit("_{", 1)
            return f"{stem}_{{{','.join([digits, *subs])}}}"
        return f"{head}_{{{','.join(subs)}}}"
    return rf"\text{{{escape_text(name)}}}"


def _shape_latex(shape: tuple) -> str:
    if not shape:
        return r"\text{scalar}"
    # symdl's printer, not sp.latex: dimension names are user strings like any other.
    printer = SymdlLatexPrinter()
    return r" \times ".join(printer.doprint(d) for d in shape)


def _is_negative(term: sp.Basic) -> bool:
    coeff = term.as_coeff_mmul()[0] if isinstance(term, sp.MatMul) else term
    if isinstance(term, sp.MatMul) or not isinstance(term, sp.MatrixExpr):
        return bool(sp.sympify(coeff).could_extract_minus_sign())
    return False


def _positive_first(terms: list[sp.Expr]) -> list[sp.Expr]:
    return sorted(terms, key=lambda t: bool(t.could_extract_minus_sign()))


class SymdlLatexPrinter(LatexPrinter):
    """``LatexPrinter`` with symdl's notation; ``names`` overrides the LaTeX of given symbols
    (the adjoints: ``dZ2`` -> ``\\delta_{2}``). Softmax, sigmoid and the other symdl
    functions print through their own ``_latex`` methods."""

    def __init__(self, names: dict[sp.Basic, str] | None = None):
        super().__init__({"mat_symbol_style": "plain", "mul_symbol": None})
        self.names = dict(names or {})
        self.ranges: dict[sp.Symbol, tuple[sp.Expr, sp.Expr]] = {}

    def _named(self, expr: sp.Basic, name: str) -> str:
        return self.names.get(expr) or latex_name(name)

    # Every other way SymPy prints a name or raw text (function and class names, Str, objects
    # it has no printer for) passes through the same escaping: no raw user text reaches TeX.
    def _deal_with_super_sub(self, string: str, style: str = "plain") -> str:
        if _IDENTIFIER.fullmatch(string):
            return super()._deal_with_super_sub(string, style=style)
        return latex_name(string)

    def _print_Function(self, expr: sp.Basic, exp: str | None = None) -> str:
        # SymPy formats an undefined function's name with %: an escaped \% would break it.
        name = expr.func.__name__
        if not isinstance(expr, AppliedUndef) or _IDENTIFIER.fullmatch(name):
            return super()._print_Function(expr, exp)
        args = ", ".join(self._print(a) for a in expr.args)
        text = rf"{latex_name(name)}\left({args}\right)"
        return rf"\left({text}\right)^{{{exp}}}" if exp is not None else text

    def _print_Str(self, expr) -> str:
        return latex_name(str(expr.name))

    def emptyPrinter(self, expr) -> str:
        return rf"\text{{{escape_text(str(expr))}}}"

    # Names: the mapped form, never SymPy's subscript guessing on raw text.
    def _print_Symbol(self, expr: sp.Symbol, style: str = "plain") -> str:
        return self._named(expr, expr.name)

    def _print_Dummy(self, expr: sp.Dummy) -> str:
        if expr in self.names:
            return self.names[expr]
        return latex_name(expr.name.lstrip("_") or "x")

    def _print_MatrixSymbol(self, expr: sp.MatrixSymbol) -> str:
        return self._named(expr, str(expr.name))

    def _print_IndexedBase(self, expr: sp.IndexedBase) -> str:
        return self._named(expr, str(expr.label))

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        return self._entry(self._print(expr.base), expr.indices, None)

    def _print_MatrixElement(self, expr) -> str:
        parent = expr.parent
        if isinstance(parent, sp.MatrixSymbol):
            base = self._print(parent)
        else:
            base = rf"\left({self._print(parent)}\right)"
        return self._entry(base, (expr.i, expr.j), parent.shape)

    def _entry(self, base: str, indices: Sequence, shape: tuple | None) -> str:
        # Entries of a row or column vector keep only the index that varies: b_{1,i}.
        if shape is not None and len(indices) == 2:
            if shape[0] == 1 and indices[0] == 0:
                indices = indices[1:]
            elif shape[1] == 1 and indices[1] == 0:
                indices = indices[:1]
        # Computed positions (X_{b, 2 t + k - 1}) need commas; plain indices read as X_{b t}.
        sep = " " if all(sp.sympify(i).is_Atom for i in indices) else ", "
        idx = sep.join(self._print(i) for i in indices)
        if "_{" in base and base.endswith("}") and not base.startswith(r"\left"):
            stem, sub = base[:-1].rsplit("_{", 1)
            return f"{stem}_{{{sub},{idx}}}"
        return f"{base}_{{{idx}}}"

    # Matrix notation.
    def _print_ElementwiseApplyFunction(self, expr: ElementwiseApplyFunction) -> str:
        # f applied entrywise prints as f(M): the scalar body with the matrix in its place.
        x, body, plain_call = entrywise_body(expr.function)
        inner = self._print(expr.expr)
        if not plain_call and not expr.expr.is_symbol:
            inner = rf"\left({inner}\right)"
        placeholder = sp.Dummy("f")
        self.names[placeholder] = inner
        try:
            return self._print(body.xreplace({x: placeholder}))
        finally:
            del self.names[placeholder]

    def _print_HadamardProduct(self, expr: sp.HadamardProduct) -> str:
        return r" \odot ".join(self._factor(a, hadamard=True) for a in expr.args)

    def _print_HadamardPower(self, expr: sp.HadamardPower) -> str:
        base = self._factor(expr.base, hadamard=True)
        if expr.exp == 2:
            return rf"{base} \odot {base}"
        return rf"{base}^{{\odot {self._print(expr.exp)}}}"

    def _print_DiagMatrix(self, expr) -> str:
        return rf"\operatorname{{diag}}\left({self._print(expr.args[0])}\right)"

    def _print_OneMatrix(self, expr: sp.OneMatrix) -> str:
        rows, cols = expr.shape
        if cols == 1:
            return rf"\mathbf{{1}}_{{{self._print(rows)}}}"
        if rows == 1:
            return rf"\mathbf{{1}}_{{{self._print(cols)}}}^{{\top}}"
        return r"\mathbf{1}"

    def _print_ZeroMatrix(self, expr) -> str:
        return r"\mathbf{0}"

    def _print_Identity(self, expr) -> str:
        return rf"I_{{{self._print(expr.shape[0])}}}"

    def _print_Transpose(self, expr: sp.Transpose) -> str:
        arg = expr.arg
        text = self._print(arg)
        if not isinstance(arg, (sp.MatrixSymbol, sp.OneMatrix)):
            text = rf"\left({text}\right)"
        return rf"{text}^{{\top}}"

    def _factor(self, arg: sp.Basic, hadamard: bool = False, negated: bool = False) -> str:
        text = self._print(arg)
        wrap = isinstance(arg, (sp.MatAdd, sp.Add))
        if hadamard:
            wrap = wrap or isinstance(arg, sp.MatMul)
        elif not negated and isinstance(arg, sp.HadamardProduct | sp.HadamardPower):
            wrap = True
        if not wrap:
            return text
        # Plain brackets unless the inside is tall: \left( grows with every superscript.
        return rf"\left({text}\right)" if r"\frac" in text or r"\sum" in text else f"({text})"

    def _print_MatAdd(self, expr: sp.MatAdd) -> str:
        # Positive terms first: "softmax(Z) - Y", not "-Y + softmax(Z)".
        terms = sorted(expr.args, key=_is_negative)
        text = self._print(terms[0])
        for t in terms[1:]:
            if _is_negative(t):
                text += " - " + self._factor(-t, negated=True)
            else:
                text += " + " + self._print(t)
        return text

    def _print_MatMul(self, expr: sp.MatMul) -> str:
        # Scalar factors first, as a fraction: \frac{1}{n} X^{\top} (...).
        coeff, factors = expr.as_coeff_mmul()
        scalars = [f for f in factors.args if not isinstance(f, sp.MatrixExpr)]
        coeff = sp.Mul(coeff, *scalars)
        mats = [f for f in factors.args if isinstance(f, sp.MatrixExpr)]
        sign = ""
        if coeff.could_extract_minus_sign():
            sign, coeff = "-", -coeff
        body = " ".join(self._factor(m) for m in mats)
        if coeff == 1:
            return sign + body
        text = self._print(coeff)
        if isinstance(coeff, sp.Add):
            text = rf"\left({text}\right)"
        return f"{sign}{text} {body}"

    def _print_Add(self, expr: sp.Add, order: str | None = None) -> str:
        # Positive terms first, as one writes it: "a - b", not "- b + a".
        text = ""
        for k, term in enumerate(_positive_first(self._as_ordered_terms(expr, order=order))):
            if k and term.could_extract_minus_sign():
                text, term = text + " - ", -term
            elif k:
                text += " + "
            term_text = self._print(term)
            text += rf"\left({term_text}\right)" if self._needs_add_brackets(term) else term_text
        return text

    def _print_Pow(self, expr: sp.Pow) -> str:
        # SymPy passes exp= to the base's printer, which symdl's functions' _latex do not take.
        base = expr.base
        if hasattr(base, "_latex") and expr.exp.is_positive:
            return rf"{self._print(base)}^{{{self._print(expr.exp)}}}"
        return super()._print_Pow(expr)

    def _print_KroneckerDelta(self, expr, exp=None) -> str:
        # An Iverson bracket: \delta is taken by the backprop adjoints.
        i, j = (self._print(a) for a in expr.args)
        return rf"[{i} = {j}]"

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        # Pieces after an always-true condition never apply; one left needs no brace.
        pieces = []
        for value, cond in expr.args:
            pieces.append((value, cond))
            if cond == sp.true:
                break
        if len(pieces) == 1:
            return self._print(pieces[0][0])
        return super()._print_Piecewise(sp.Piecewise(*pieces, evaluate=False))

    def _print_Sum(self, expr: sp.Sum) -> str:
        # Σ over named indices; their ranges are stated once, beside the equation.
        indices = []
        for index, lo, hi in expr.limits:
            self.ranges[index] = (lo, hi)
            indices.append(self._print(index))
        body = expr.function
        text = self._print(body)
        if isinstance(body, sp.Add):
            text = rf"\left({text}\right)"
        return rf"\sum_{{{','.join(indices)}}} {text}"


@dataclass
class Row:
    """One displayed equation: ``lhs`` then each form of the right side, chained by ``=``.
    Each form is a list of terms, one line each (a long sum breaks at its top-level ``+``)."""

    lhs: str
    forms: list[list[str]]
    shape: str = ""
    where: str = ""


@dataclass
class Section:
    """A titled list of equations; ``intro`` is LaTeX (names in it are already mapped)."""

    title: str
    rows: list[Row] = field(default_factory=list)
    intro: str = ""


class _Builder:
    """Turns a derivation into sections of rows (the content, independent of the layout)."""

    def __init__(self, der: Derivation):

        self.der = der
        self.symbol_name = symbol_name
        loss = der.steps[-1][0]
        self.loss_symbol = loss if loss is not None else sp.Symbol("L")
        self.loss = latex_name(symbol_name(loss)) if loss is not None else "L"
        self.names: dict[sp.Basic, str] = {}
        self.delta: set[sp.Basic] = set()
        self.recurrences: set[sp.Basic] = set()
        """Adjoint recurrences of backprop through time (``delta_h``): the whole ``∂L/∂H``
        through every later step, not the chain rule of ``H``'s direct readers (``dH``)."""
        if der.is_scalar:
            for node, adj in der.adjoints:
                if isinstance(adj.body, ir.Scan) and adj.body.reverse:
                    # Braced: the recurrence's text reads it at t, {\delta_{h}}_{t}.
                    self.names[adj.symbol] = "{" + latex_name(adj.name) + "}"
                    self.recurrences.add(adj.symbol)
                    self.delta.add(adj.symbol)
                    continue
                self.names[adj.symbol] = self._adjoint_latex(node.name)
                if self.names[adj.symbol].startswith(r"\delta"):
                    self.delta.add(adj.symbol)
        self.printer = SymdlLatexPrinter(self.names)

    def _recurrence_intro(self) -> str:
        names = ", ".join(f"${self.names[a]}$" for a in sorted(self.recurrences, key=str))
        return (f" Backpropagation through time: {names} is the adjoint of a recurrence's "
                "states, run backwards from $t = T$ to $1$; at each $t$ it is the direct part "
                "(the adjoint of the states' other readers at $t$) plus what flows back from "
                "step $t+1$ through the recurrence. The parameters' gradients are sums over "
                "$t$ of what each step contributes.")

    def _adjoint_latex(self, name: str) -> str:
        # The adjoint of a pre-activation Z_l is the textbook's \delta_l.
        match = re.fullmatch(r"Z_?(\d*)", name)
        if match:
            return rf"\delta_{{{match.group(1)}}}" if match.group(1) else r"\delta"
        return self.partial(self.loss, latex_name(name))

    @staticmethod
    def partial(top: str, bottom: str) -> str:
        return rf"\frac{{\partial {top}}}{{\partial {bottom}}}"

    def terms(self, expr: sp.Basic | IndexForm) -> tuple[list[str], str]:
        """The LaTeX of ``expr`` split at its top-level sum, and the ranges of its indices."""
        self.printer.ranges = {}
        if isinstance(expr, IndexForm):
            for index, dim in zip(expr.indices, expr.shape, strict=True):
                self.printer.ranges[index] = (sp.Integer(0), dim - 1)
            expr = expr.expr
        if isinstance(expr, sp.MatAdd | sp.Add):
            args = sorted(expr.args, key=_is_negative) if isinstance(expr, sp.MatAdd) else (
                _positive_first(self.printer._as_ordered_terms(expr)))
            out = []
            for k, t in enumerate(args):
                negative = _is_negative(t) if isinstance(expr, sp.MatAdd) else (
                    t.could_extract_minus_sign())
                text = (self.printer._factor(-t, negated=True) if negative
                        else self.printer._print(t))
                out.append(("- " if negative else ("+ " if k else "")) + text)
        else:
            out = [self.printer._print(expr)]
        return out, self._ranges()

    def _ranges(self) -> str:
        groups: dict[tuple, list[str]] = {}
        for index, (lo, hi) in sorted(self.printer.ranges.items(), key=lambda kv: str(kv[0])):
            groups.setdefault((lo, hi), []).append(self.printer._print(index))
        parts = [rf"{','.join(names)} \in \{{{self.printer._print(lo)}, \dots, "
                 rf"{self.printer._print(hi)}\}}" for (lo, hi), names in groups.items()]
        return r",\ ".join(parts)

    def shape_of(self, expr: sp.Basic | IndexForm) -> str:
        if isinstance(expr, IndexForm):
            return _shape_latex(tuple(expr.shape))
        if isinstance(expr, (sp.MatrixExpr, TensorExpr)) or (
                isinstance(expr, sp.IndexedBase) and expr.shape is not None):
            return _shape_latex(tuple(expr.shape))
        return _shape_latex(())

    def row(self, lhs: str, forms: list[sp.Basic | IndexForm | str], shape: str) -> Row:
        rendered, where = [], []
        for form in forms:
            if isinstance(form, str):
                rendered.append([form])
                continue
            lines, ranges = self.terms(form)
            rendered.append(lines)
            if ranges:
                where.append(ranges)
        return Row(lhs, rendered, shape, r",\ ".join(where))

    def consumers(self, symbol: sp.Basic) -> list[sp.Basic]:
        out = []
        for step_symbol, expr in self.der.steps:
            if isinstance(step_symbol, sp.Indexed):
                step_symbol = step_symbol.base  # the tensor, not its entry
            if symbol in expr.free_symbols or (
                    isinstance(symbol, (sp.MatrixSymbol, sp.IndexedBase)) and expr.has(symbol)):
                out.append(step_symbol if step_symbol is not None else self.loss_symbol)
        return out

    def chain_rule(self, symbol: sp.Basic) -> str:
        # dL/dN = sum over the steps C that read N of dL/dC dC/dN.
        name = latex_name(self.symbol_name(symbol))
        products = []
        for c in self.consumers(symbol):
            if c == self.loss_symbol:
                return ""
            cname = latex_name(self.symbol_name(c))
            products.append(self.partial(self.loss, cname) + " " + self.partial(cname, name))
        return " + ".join(products)

    def sections(self, hessian_blocks: bool = True) -> list[Section]:
        der = self.der
        out = [self._definition()]
        if not der.is_scalar:
            jac = Section("Jacobians")
            for p in der.wrt:
                value = der.jacobian(p, inline=False)
                pname = latex_name(self.symbol_name(p))
                jac.rows.append(self.row(rf"\frac{{\partial f}}{{\partial {pname}}}", [value],
                                         self.shape_of(value)))
            return out + [jac]
        backprop = Section("Backpropagation", intro="Each adjoint from the adjoints of the "
                           "steps that read it (the chain rule), then in matrix form."
                           + (self._recurrence_intro() if self.recurrences else ""))
        equations = der.equations()
        adjoints = der.adjoints
        adjoint_eqs = equations[:len(adjoints)]
        grad_eqs = equations[len(adjoints):]
        simplified: dict[sp.Basic, sp.Basic] = {}
        for (node, adj), eq in zip(adjoints, adjoint_eqs, strict=True):
            rhs = eq.rhs
            forms: list = []
            lhs = self.names[adj.symbol]
            if lhs.startswith(r"\delta") and adj.symbol not in self.recurrences:
                lhs = f"{lhs} = {self.partial(self.loss, latex_name(node.name))}"
            chain = None if adj.symbol in self.recurrences else self.chain_rule(node.symbol)
            if chain:
                forms.append(chain)
            forms.append(rhs)
            textbook = self._substituted(rhs, simplified)
            if textbook is not None:
                forms.append(textbook)
            if adj.symbol not in self.delta and not isinstance(rhs, IndexForm):
                simplified[adj.symbol] = textbook if textbook is not None else rhs
            backprop.rows.append(self.row(lhs, forms, self.shape_of(rhs)))
        if backprop.rows:
            out.append(backprop)
        grads = Section("Gradients")
        for p, eq in zip(der.wrt, grad_eqs, strict=True):
            forms = []
            chain = self.chain_rule(p)
            if chain:
                forms.append(chain)
            forms.append(eq.rhs)
            textbook = self._substituted(eq.rhs, simplified)
            if textbook is not None:
                forms.append(textbook)
            lhs = rf"\nabla_{{{latex_name(self.symbol_name(p))}}} {self.loss}"
            grads.rows.append(self.row(lhs, forms, self.shape_of(eq.rhs)))
        out.append(grads)
        if hessian_blocks and der.hessian_blocks:
            out.append(self._hessians())
        return out

    def _substituted(self, rhs, simplified: dict) -> sp.Basic | None:
        # The textbook writes the non-delta adjoints out: (\delta_2 W_2^T) \odot (...).
        if isinstance(rhs, IndexForm) or not simplified:
            return None
        used = {s: v for s, v in simplified.items() if rhs.has(s)}
        return rhs.xreplace(used) if used else None

    def _definition(self) -> Section:
        der = self.der
        section = Section("Definition")
        leaves = sorted(der.leaves.values(), key=lambda leaf: leaf.name)
        params = {self.symbol_name(p) for p in der.wrt}
        symbols = []
        for leaf in leaves:
            role = "parameter" if leaf.name in params else "input"
            shape = tuple(leaf.shape)
            space = rf"\mathbb{{R}}^{{{_shape_latex(shape)}}}" if shape else r"\mathbb{R}"
            symbols.append((role, rf"{latex_name(leaf.name)} \in {space}"))
        section.intro = "; ".join(
            f"{role}s: " + ", ".join(f"${s}$" for r, s in symbols if r == role)
            for role in ("input", "parameter") if any(r == role for r, _ in symbols))
        for symbol, expr in der.steps:
            if isinstance(symbol, sp.Indexed):  # a tensor step in index notation: Q_{b h s e}
                section.rows.append(self.row(self.printer._print(symbol), [expr],
                                             _shape_latex(tuple(symbol.base.shape))))
                continue
            lhs = self.loss if symbol is None else latex_name(self.symbol_name(symbol))
            section.rows.append(self.row(lhs, [expr], self.shape_of(expr)))
        return section

    def _hessians(self) -> Section:
        der = self.der
        section = Section("Hessian blocks")
        seen = set()
        too_large: list[str] = []
        for (p, q) in der.hessian_blocks:
            if (q, p) in seen:
                continue
            seen.add((p, q))
            pn, qn = (latex_name(self.symbol_name(s)) for s in (p, q))
            if written_out_size(der.hessian_node(p, q), inline=False) > DOCUMENT_TERMS_LIMIT:
                too_large.append(f"${pn}, {qn}$")
                continue
            value = der.hessian(p, q, inline=False)
            lhs = rf"\frac{{\partial^2 {self.loss}}}{{\partial {pn}\, \partial {qn}}}"
            if isinstance(value, IndexForm):
                idx = " ".join(self.printer._print(i) for i in value.indices)
                lhs = rf"\left[{lhs}\right]_{{{idx}}}"
            section.rows.append(self.row(lhs, [value], self.shape_of(value)))
        if too_large:
            section.intro = (
                f"Not written out, being larger than {DOCUMENT_TERMS_LIMIT:,} terms as one "
                "expression (the kernels compute them): the blocks of "
                f"{'; '.join(too_large)}.")
        return section


def _visible_width(tex: str) -> int:
    """A rough count of the characters a formula shows (commands count as one)."""
    tex = re.sub(r"\\(left|right|operatorname|mathrm|mathbf|frac|text)\b", "", tex)
    tex = re.sub(r"\\[A-Za-z]+", "x", tex)
    return len(re.sub(r"[{}_^ ]", "", tex))


def _lines(terms: list[str], width: int) -> list[str]:
    """The terms of a sum joined greedily into lines of about ``width`` characters."""
    lines = [terms[0]]
    for term in terms[1:]:
        if _visible_width(lines[-1]) + _visible_width(term) > width:
            lines.append(term)
        else:
            lines[-1] += " " + term
    return lines


DOCUMENT_TERMS_LIMIT = 1_500
"""A Hessian block larger than this many IR nodes printed is listed, not written out, in a
document: pages of one formula read as nothing (every shipped derivation's blocks but some
of the transformer block's are under 1,100)."""

SHAPE_COLUMN_LIMIT = 30
"""Visible characters of a row's name plus its shape above which the shape leaves the right
column for a line of its own."""


def _aligned_rows(rows: list[Row], fit: float, width: int = 48) -> list[str]:
    """The rows as lines of an alignment; ``fit`` > 0 scales each right side down to that
    fraction of the line width where it is wider (in documents)."""
    lines = []
    for row in rows:
        first = True
        # A long name with a long shape (a Hessian block of two rank-4 tensors) leaves no room
        # for the formula between them: the shape goes on a line of its own below.
        shape_below = bool(row.shape) and (
            _visible_width(row.lhs) + _visible_width(row.shape) > SHAPE_COLUMN_LIMIT)
        for form in row.forms:
            for k, term in enumerate(_lines(form, width)):
                body = rf"\symdlfit{{{fit}}}{{{term}}}" if fit else term
                lead = row.lhs if first else ""
                op = "&= " if k == 0 else r"&\quad "
                shape = rf" && {row.shape}" if first and row.shape and not shape_below else ""
                lines.append(f"{lead} {op}{body}{shape}")
                first = False
        if shape_below:
            lines.append(rf"&\qquad {row.shape}")
        if row.where:
            where = rf"\text{{for }} {row.where}"
            lines.append(rf"&\qquad \symdlfit{{{fit}}}{{{where}}}" if fit else rf"&\qquad {where}")
    return lines


def derivation_latex(der: Derivation) -> str:
    """The derivation as one ``aligned`` environment: forward steps, backprop, gradients and
    the Hessian blocks computed so far, each with its shape in a right-hand column."""
    lines = []
    for section in _Builder(der).sections():
        lines.append(rf"&\text{{{escape_text(section.title)}}} \\")
        lines.extend(line + r" \\" for line in _aligned_rows(section.rows, fit=0))
    body = "\n".join(lines).rstrip("\\ \n")
    return "\\begin{aligned}\n" + body + "\n\\end{aligned}"


def _section_latex(section: Section) -> str:
    parts = [rf"\section*{{{escape_text(section.title)}}}"]
    if section.intro:
        parts.append(section.intro)
    if section.rows:
        # Four-index shapes and bracketed left sides leave less room for the right side.
        wide = any(row.where for row in section.rows)
        fit = 0.5 if wide else 0.62
        # A little air between equations that take several lines.
        gap = " \\\\[4pt]\n" if any(len(r.forms) > 1 or r.where for r in section.rows) else (
            " \\\\\n")
        rows = [" \\\\\n".join(_aligned_rows([row], fit)) for row in section.rows]
        parts.append("\\begin{align*}\n" + gap.join(rows) + "\n\\end{align*}")
    return "\n\n".join(parts)


def document(entries_or_derivation, title: str = "Derivation", check_report=None) -> str:
    """A complete LaTeX document (amsmath) of one or more derivations.

    Args:
        entries_or_derivation: a ``Derivation``, a registry ``Entry``, or a list of either.
        title: the document title (escaped: any text is safe).
        check_report: an object with ``to_latex()`` returning a ``tabular`` (symdl.check's
            report); its table is included as the numerical check.

    Returns:
        The document source.
    """
    items = entries_or_derivation
    if not isinstance(items, list | tuple):
        items = [items]
    body = []
    for item in items:
        der = item.derive() if hasattr(item, "derive") else item
        if hasattr(item, "title") and len(items) > 1:
            body.append(rf"\part*{{{escape_text(item.title)}}}")
        body.extend(_section_latex(s) for s in _Builder(der).sections())
    if check_report is not None:
        body.append("\\section*{Finite-difference check}\n\\begin{center}\n"
                    + check_report.to_latex() + "\n\\end{center}")
    return (PREAMBLE + rf"\title{{{escape_text(title)}}}" + "\n\\date{}\n\\begin{document}\n"
            "\\maketitle\n\n" + "\n\n".join(body) + "\n\\end{document}\n")


INSTALL_HINT = ("install it with: apt-get install texlive-latex-base texlive-latex-recommended "
                "(sudo when not root)")


def compile_pdf(source: str, pdf_path: str | Path, timeout: float = 120,
                files: Sequence[str | Path] = ()) -> Path:
    """Compiles a document with pdflatex in a temporary folder and copies the PDF to
    ``pdf_path``. ``files`` (figures) are copied into that folder first: the document names
    them by their file names alone.

    pdflatex runs without shell escape (``-no-shell-escape``: no ``\\write18`` and no
    ``\\input|"command"``) and in TeX Live's paranoid file mode (``openin_any=p``,
    ``openout_any=p``): it reads and writes no file outside its temporary folder by an absolute
    or parent path (``\\input{/etc/passwd}`` fails), so even a document with raw text in it
    cannot run programs or read the user's files into the PDF.

    Raises:
        LatexError: pdflatex is not installed, or the document does not compile (the message
            holds the log's error lines).
    """
    exe = shutil.which("pdflatex")
    if exe is None:
        raise LatexError(f"pdflatex was not found on PATH; {INSTALL_HINT}")
    pdf_path = Path(pdf_path)
    with tempfile.TemporaryDirectory(prefix="symdl-latex-") as tmp:
        tex = Path(tmp) / "doc.tex"
        tex.write_text(source, encoding="utf-8")
        for extra in files:
            extra = Path(extra)
            if extra.name in ("doc.tex", "doc.pdf", "doc.log", "doc.aux"):
                raise LatexError(f"{extra} has the name of pdflatex's own files; rename it")
            shutil.copyfile(extra, Path(tmp) / extra.name)
        try:
            proc = subprocess.run(
                [exe, "-no-shell-escape", "-interaction=nonstopmode", "-halt-on-error",
                 "doc.tex"], cwd=tmp, env=_restricted_tex_env(tmp),
                capture_output=True, text=True, errors="replace", timeout=timeout,
                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise LatexError(f"pdflatex did not finish within {timeout} s") from exc
        pdf = Path(tmp) / "doc.pdf"
        if proc.returncode != 0 or not pdf.is_file():
            log = Path(tmp) / "doc.log"
            text = log.read_text(errors="replace") if log.is_file() else proc.stdout
            raise LatexError("pdflatex failed:\n" + _log_errors(text))
        pdf_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pdf, pdf_path)
    return pdf_path


def _restricted_tex_env(folder: str) -> dict[str, str]:
    """The environment for pdflatex: kpathsea reads these variables before texmf.cnf, so
    they override a permissive site configuration. TEXMFOUTPUT is the one folder paranoid
    mode lets TeX reach by an absolute path: the temporary folder, not whatever it was."""
    env = dict(os.environ)
    env.update(openin_any="p", openout_any="p", shell_escape="f", TEXMFOUTPUT=folder)
    return env


def _log_errors(log: str, after: int = 4) -> str:
    """The lines of a LaTeX log that start with ``!``, each with a few lines after it."""
    lines = log.splitlines()
    picked = []
    for k, line in enumerate(lines):
        if line.startswith("!"):
            picked.extend(lines[k:k + after + 1])
    return "\n".join(picked) if picked else "\n".join(lines[-20:])
