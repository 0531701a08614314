"""The scalar functions of modern activations: ``silu`` (swish), exact ``gelu``, ``elu``,
``softsign``, and ``log1p``/``expm1`` (SymPy's ``sympy.codegen.cfunctions``, printed in
LaTeX as ``\\log(1 + x)`` and ``e^x - 1``).

Each is a ``RegisteredFunction``: its derivative, value and LaTeX come from its entry in
``symdl.primitives.registry.PRIMITIVES``; the class only names it for SymPy.
"""

from __future__ import annotations

import math

import sympy as sp
from sympy.codegen import cfunctions

from symdl.primitives.functions import RegisteredFunction, minimum


class silu(RegisteredFunction):  # noqa: N801 - SymPy function classes are lower case
    """``x σ(x)`` (swish; PyTorch's ``silu``)."""

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        return sp.Integer(0) if x.is_zero else None


class gelu(RegisteredFunction):  # noqa: N801
    """Exact GELU, ``x Φ(x) = x (1 + erf(x/√2))/2`` (PyTorch's ``gelu(approximate="none")``;
    ``symdl.gelu`` writes the tanh approximation unless asked for this one). Its value is
    computed as ``x erfc(-x/√2)/2``: accurate in the tail ``x < -5`` too."""

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        return sp.Integer(0) if x.is_zero else None

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        if "gelu" in printer._settings.get("user_functions", {}):
            return super()._numpycode(printer)
        # NumPy has no erf or erfc: math.erfc, vectorised (erfc keeps the tail accurate).
        erfc = (f"{printer._module_format('numpy.vectorize')}("
                f"{printer._module_format('math.erfc')}, otypes=[float])")
        x = printer._print(self.args[0])
        return f"(0.5*({x})*{erfc}(-{math.sqrt(0.5)!r}*({x})))"


class softsign(RegisteredFunction):  # noqa: N801
    """``x / (1 + |x|)``."""

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        return sp.Integer(0) if x.is_zero else None


class elu(RegisteredFunction):  # noqa: N801
    """``elu(x, alpha)``: ``x`` for ``x > 0``, ``alpha (exp(x) - 1)`` at and below 0. At the
    kink ``x = 0``, as PyTorch: ``elu'(0) = alpha`` (the branch ``x <= 0``), ``elu''(0) = 0``."""

    nargs = 2

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        if argindex == 2:  # alpha may be a parameter (a symbol)
            x = self.args[0]
            return sp.Piecewise((sp.Integer(0), x > 0),
                                (expm1(minimum(sp.Integer(0), x)), True))
        return super().fdiff(argindex)


class log1p(cfunctions.log1p):  # noqa: N801
    """``log(1 + x)``, accurate for small ``x``."""

    registry_entry = None  # set by the registry
    _latex = RegisteredFunction._latex
    entry = RegisteredFunction.__dict__["entry"]  # the classmethod itself, not bound


class expm1(cfunctions.expm1):  # noqa: N801
    """``exp(x) - 1``, accurate for small ``x``."""

    registry_entry = None  # set by the registry
    _latex = RegisteredFunction._latex
    entry = RegisteredFunction.__dict__["entry"]  # the classmethod itself, not bound
