"""Plain-text printing of derivations for the terminal: ``tanh(Z1)``, ``A ⊙ B``, ``diag(s)``.

SymPy's own ``str`` prints an elementwise function as ``Lambda(_d, tanh(_d)).(Z1)`` and a ones
vector as ``1``; this printer overrides just those forms.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.printing.str import StrPrinter

from symdl.primitives.sympy_results import entrywise_body
from symdl.printing.to_sympy import IndexForm


class PlainPrinter(StrPrinter):
    """``StrPrinter`` with deep-learning notation."""

    def _print_ElementwiseApplyFunction(self, expr: ElementwiseApplyFunction) -> str:
        # Write f(M) as the scalar body with the matrix in place of the variable.
        x, body, plain_call = entrywise_body(expr.function)
        inner = self._print(expr.expr)
        bare = expr.expr.is_symbol or plain_call
        placeholder = sp.Symbol(inner if bare else f"({inner})")
        return self._print(body.xreplace({x: placeholder}))

    def _print_HadamardProduct(self, expr: sp.HadamardProduct) -> str:
        return " ⊙ ".join(self.parenthesize(a, 60) for a in expr.args)

    def _print_HadamardPower(self, expr: sp.HadamardPower) -> str:
        return f"{self.parenthesize(expr.base, 70)}^⊙{self._print(expr.exp)}"

    def _print_DiagMatrix(self, expr) -> str:
        return f"diag({self._print(expr.args[0])})"

    def _print_MatAdd(self, expr: sp.MatAdd) -> str:
        # Positive terms first: "softmax(Z) - Y", not "-Y + softmax(Z)".
        terms = sorted(expr.args, key=lambda t: _is_negative(t))
        text = self._print(terms[0])
        for t in terms[1:]:
            if _is_negative(t):
                text += " - " + self.parenthesize(-t, 45)
            else:
                text += " + " + self._print(t)
        return text

    def _print_MatMul(self, expr: sp.MatMul) -> str:
        # A rational coefficient 1/m prints as a division at the end: "(P - Y)/n".
        coeff, factors = expr.as_coeff_mmul()
        coeff = sp.Mul(coeff, *[f for f in factors.args if not isinstance(f, sp.MatrixExpr)])
        mats = [f for f in factors.args if isinstance(f, sp.MatrixExpr)]
        num, den = sp.fraction(coeff)
        body = "*".join(self.parenthesize(m, 50) for m in mats)
        if len(mats) > 1 and den != 1:
            body = f"({body})"
        sign = "-" if num.could_extract_minus_sign() else ""
        num = -num if sign else num
        text = body if num == 1 else f"{self.parenthesize(num, 50)}*{body}"
        if den != 1:
            text = f"{text}/{self.parenthesize(den, 50)}"
        return sign + text

    def _print_OneMatrix(self, expr: sp.OneMatrix) -> str:
        rows, cols = expr.shape
        if cols == 1:
            return f"1_{self._print(rows)}"
        if rows == 1:
            return f"1_{self._print(cols)}^T"
        return "1"

    def _print_Transpose(self, expr: sp.Transpose) -> str:
        return f"{self.parenthesize(expr.arg, 70)}^T"

    def _print_Softmax(self, expr) -> str:
        axis = "" if expr.axis == 1 else ", axis=0"
        return f"softmax({self._print(expr.arg)}{axis})"

    def _print_LogSumExp(self, expr) -> str:
        axis = "" if expr.axis == 1 else ", axis=0"
        return f"logsumexp({self._print(expr.arg)}{axis})"

    def _print_Total(self, expr) -> str:
        return f"sum({self._print(expr.arg)})"

    def _print_LogDet(self, expr) -> str:
        return f"logdet({self._print(expr.arg)})"

    def _print_Det(self, expr) -> str:
        return f"det({self._print(expr.arg)})"


def _is_negative(term: sp.Basic) -> bool:
    coeff = term.as_coeff_mmul()[0] if isinstance(term, sp.MatMul) else 1
    return bool(sp.sympify(coeff).could_extract_minus_sign())


def plain(expr: sp.Basic | IndexForm) -> str:
    """A one-line readable text form of a SymPy result or an ``IndexForm``."""
    printer = PlainPrinter()
    if isinstance(expr, IndexForm):
        idx = ", ".join(printer.doprint(i) for i in expr.indices)
        return f"[{idx}] ↦ {printer.doprint(expr.expr)}"
    return printer.doprint(expr)
