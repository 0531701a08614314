"""Recurrences over a symbolic length: ``symdl.scan``.

``H = symdl.scan(step, h0, X, T)`` stands for the states of ``h_t = step(h_{t-1}, x_t)``,
``t = 1..T``, stacked along a first axis: ``H[t-1] = h_t``, shape ``(T,) + h0.shape``. ``T``
is a SymPy symbol: the derivation is done once for every length and never unrolls. The step
is plain SymPy over two placeholders that symdl passes in: the previous state (a matrix of
``h0``'s shape, named ``<name>_prev``) and the input at ``t`` (a matrix, ``X[t]``, named
``<X>_t``). Name the result as a step of a model to read it in index notation::

    T, n, d, k = sp.symbols("T n d k", integer=True, positive=True)
    X = sp.IndexedBase("X", shape=(T, n, d))
    W, U = sp.MatrixSymbol("W", d, k), sp.MatrixSymbol("U", k, k)
    h0 = sp.MatrixSymbol("h0", n, k)
    H = sp.IndexedBase("H", shape=(T, n, k))
    model = [(H, symdl.scan(lambda h, x: symdl.tanh(x * W + h * U), h0, X, T)), ...]
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symdl.errors import DefinitionError, ShapeMismatchError


class Recurrence(sp.Expr):
    """The stacked states of ``h_t = step(h_{t-1}, x_t)``, ``t = 1..length``; build it with
    ``symdl.scan``. Arguments: the step (a matrix expression over ``carry`` and ``slot``),
    ``carry`` and ``slot`` (the placeholders), ``h0``, the sequence ``xs`` and ``length``."""

    @property
    def step(self) -> MatrixExpr:
        return self.args[0]

    @property
    def carry(self) -> sp.MatrixSymbol:
        return self.args[1]

    @property
    def slot(self) -> sp.MatrixSymbol:
        return self.args[2]

    @property
    def h0(self) -> MatrixExpr:
        return self.args[3]

    @property
    def xs(self) -> sp.IndexedBase:
        return self.args[4]

    @property
    def length(self) -> sp.Expr:
        return self.args[5]

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        return (self.length,) + tuple(self.h0.shape)

    def _sympystr(self, printer) -> str:
        return (f"scan({printer._print(self.carry.name[:-5])}_t = "
                f"{printer._print(self.step)}, t = 1..{printer._print(self.length)}, "
                f"from {printer._print(self.h0)})")

    def _latex(self, printer) -> str:
        name = self.carry.name[:-5]
        body = printer._print(self.step)
        return (rf"\left[{name}_{{t}} = {body}\right]_{{t=1}}^{{{printer._print(self.length)}}}"
                rf",\ {name}_{{0}} = {printer._print(self.h0)}")


def scan(step: Callable[[sp.MatrixSymbol, sp.MatrixSymbol], MatrixExpr], h0: MatrixExpr,
         xs: sp.IndexedBase, length: sp.Expr, name: str = "h") -> Recurrence:
    """The states of the recurrence ``h_t = step(h_{t-1}, x_t)`` for ``t = 1..length``.

    Args:
        step: a function of the previous state (a ``MatrixSymbol`` of ``h0``'s shape) and the
            input at ``t`` (a ``MatrixSymbol``, the slice ``xs[t]``) that returns the new state
            as a matrix expression of ``h0``'s shape; parameters are the symbols it closes
            over.
        h0: the initial state, a matrix (``MatrixSymbol`` or matrix expression).
        xs: the input sequence, an ``IndexedBase`` of shape ``(length, rows, cols)``.
        length: the number of steps, a SymPy symbol (or integer).
        name: the state's name in printed equations (``h_t = ...``).

    Returns:
        A ``Recurrence`` of shape ``(length,) + h0.shape``: name it in a model to index it.

    Raises:
        DefinitionError: a part is of the wrong kind; ``ShapeMismatchError`` when shapes do
            not agree.
    """
    length = sp.sympify(length)
    if not isinstance(h0, MatrixExpr):
        raise DefinitionError(
            f"scan's initial state must be a matrix (a MatrixSymbol such as h0 = "
            f"MatrixSymbol('h0', n, k)), got {h0!r:.80}")
    if not isinstance(xs, sp.IndexedBase) or xs.shape is None or len(xs.shape) != 3:
        raise DefinitionError(
            "scan's input sequence must be an IndexedBase of shape (length, rows, cols), e.g. "
            f"IndexedBase('X', shape=(T, n, d)); got {xs!r:.80}")
    if sp.sympify(xs.shape[0]) != length:
        raise ShapeMismatchError(
            f"the sequence {xs} has {xs.shape[0]} steps but the scan runs {length}",
            tuple(xs.shape), (length,))
    if not isinstance(name, str) or not name.isidentifier():
        raise DefinitionError(f"scan's name must be an identifier such as 'h', got {name!r}")
    carry = sp.MatrixSymbol(f"{name}_prev", *h0.shape)
    slot = sp.MatrixSymbol(f"{xs.label}_t", *xs.shape[1:])
    body = step(carry, slot)
    if not isinstance(body, MatrixExpr):
        raise DefinitionError(
            f"scan's step must return a matrix expression (the new state), got {body!r:.80}")
    if tuple(body.shape) != tuple(h0.shape):
        raise ShapeMismatchError(
            f"scan's step returns shape {tuple(body.shape)} but the state h0 has shape "
            f"{tuple(h0.shape)}; the step must return the new state", tuple(body.shape),
            tuple(h0.shape))
    return Recurrence(body, carry, slot, h0, xs, length)
