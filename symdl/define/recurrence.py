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

from collections.abc import Callable, Sequence

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symdl.errors import DefinitionError, ShapeMismatchError


class Recurrence(sp.Expr):
    """The stacked states of ``h_t = step(h_{t-1}, x_t)``, ``t = 1..length``; build it with
    ``symdl.scan``. Arguments: the steps (one matrix expression per state, over the
    placeholders), the state placeholders, the input placeholder, the initial states, the
    sequence and the length. Its value is the first state's sequence."""

    @property
    def steps(self) -> tuple[MatrixExpr, ...]:
        return tuple(self.args[0])

    @property
    def carries(self) -> tuple[sp.MatrixSymbol, ...]:
        return tuple(self.args[1])

    @property
    def slot(self) -> sp.MatrixSymbol:
        return self.args[2]

    @property
    def inits(self) -> tuple[MatrixExpr, ...]:
        return tuple(self.args[3])

    @property
    def xs(self) -> sp.IndexedBase:
        return self.args[4]

    @property
    def length(self) -> sp.Expr:
        return self.args[5]

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        return (self.length,) + tuple(self.inits[0].shape)

    def _names(self) -> list[str]:
        return [c.name[:-5] if c.name.endswith("_prev") else c.name for c in self.carries]

    def _sympystr(self, printer) -> str:
        eqs = [f"{name}_t = {printer._print(step)}"
               for name, step in zip(self._names(), self.steps, strict=True)]
        starts = [f"{name}_0 = {printer._print(init)}"
                  for name, init in zip(self._names(), self.inits, strict=True)]
        return (f"scan({'; '.join(eqs)}; t = 1..{printer._print(self.length)}; "
                f"{', '.join(starts)})")

    def _latex(self, printer) -> str:
        eqs = [rf"{name}_{{t}} = {printer._print(step)}"
               for name, step in zip(self._names(), self.steps, strict=True)]
        starts = [rf"{name}_{{0}} = {printer._print(init)}"
                  for name, init in zip(self._names(), self.inits, strict=True)]
        n = printer._print(self.length)
        return (r"\left[" + r",\ ".join(eqs) + rf"\right]_{{t=1}}^{{{n}}},\ "
                + r",\ ".join(starts))


def scan(step: Callable, h0: MatrixExpr | tuple[MatrixExpr, ...], xs: sp.IndexedBase,
         length: sp.Expr, name: str | tuple[str, ...] = "h") -> Recurrence:
    """The states of the recurrence ``h_t = step(h_{t-1}, x_t)`` for ``t = 1..length``.

    Args:
        step: a function of the previous state (a ``MatrixSymbol`` of ``h0``'s shape) and the
            input at ``t`` (a ``MatrixSymbol``, the slice ``xs[t]``) that returns the new state
            as a matrix expression of ``h0``'s shape; parameters are the symbols it closes
            over. With several states (an LSTM's ``(h, c)``), it takes and returns a tuple.
        h0: the initial state, a matrix (``MatrixSymbol`` or matrix expression), or a tuple
            of them (the value is then the first state's sequence).
        xs: the input sequence, an ``IndexedBase`` of shape ``(length, rows, cols)``.
        length: the number of steps, a SymPy symbol (or integer).
        name: the state's name in printed equations (``h_t = ...``); a tuple for several.

    Returns:
        A ``Recurrence`` of shape ``(length,) + h0.shape``: name it in a model to index it.

    Raises:
        DefinitionError: a part is of the wrong kind; ``ShapeMismatchError`` when shapes do
            not agree.

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> T, n, k = sp.symbols("T n k", integer=True, positive=True)
        >>> X = sp.IndexedBase("X", shape=(T, n, k))
        >>> U, h0 = sp.MatrixSymbol("U", k, k), sp.MatrixSymbol("h0", n, k)
        >>> H = symdl.scan(lambda h, x: symdl.tanh(x + h * U), h0, X, T)
        >>> H.shape
        (T, n, k)
    """
    length = sp.sympify(length)
    several = isinstance(h0, (tuple, list))
    inits = tuple(h0) if several else (h0,)
    names = (tuple(name) if isinstance(name, (tuple, list))
             else (name,) if not several else tuple(f"{name}{k}" for k in range(len(inits))))
    if not inits or any(not isinstance(i, MatrixExpr) for i in inits):
        raise DefinitionError(
            f"scan's initial state must be a matrix (a MatrixSymbol such as h0 = "
            f"MatrixSymbol('h0', n, k)) or a tuple of them, got {h0!r:.80}")
    if not isinstance(xs, sp.IndexedBase) or xs.shape is None or len(xs.shape) != 3:
        raise DefinitionError(
            "scan's input sequence must be an IndexedBase of shape (length, rows, cols), e.g. "
            f"IndexedBase('X', shape=(T, n, d)); got {xs!r:.80}")
    if sp.sympify(xs.shape[0]) != length:
        raise ShapeMismatchError(
            f"the sequence {xs} has {xs.shape[0]} steps but the scan runs {length}",
            tuple(xs.shape), (length,))
    if (len(names) != len(inits) or len(set(names)) != len(names)
            or not all(isinstance(n, str) and n.isidentifier() for n in names)):
        raise DefinitionError(
            f"scan's name must be an identifier such as 'h' (a tuple of distinct ones for "
            f"several states), got {name!r}")
    carries = tuple(sp.MatrixSymbol(f"{n}_prev", *i.shape)
                    for n, i in zip(names, inits, strict=True))
    slot = sp.MatrixSymbol(f"{xs.label}_t", *xs.shape[1:])
    body = step(carries if several else carries[0], slot)
    bodies = tuple(body) if several and isinstance(body, (tuple, list)) else (body,)
    if len(bodies) != len(inits):
        raise DefinitionError(
            f"scan's step must return {len(inits)} new states (one per initial state), got "
            f"{body!r:.80}")
    for b, i in zip(bodies, inits, strict=True):
        if not isinstance(b, MatrixExpr):
            raise DefinitionError(
                f"scan's step must return a matrix expression (the new state), got {b!r:.80}")
        if tuple(b.shape) != tuple(i.shape):
            raise ShapeMismatchError(
                f"scan's step returns shape {tuple(b.shape)} but the state has shape "
                f"{tuple(i.shape)}; the step must return the new state", tuple(b.shape),
                tuple(i.shape))
    return Recurrence(sp.Tuple(*bodies), sp.Tuple(*carries), slot, sp.Tuple(*inits), xs,
                      length)


class PrintedScan(sp.Expr):
    """A derived recurrence, printed (``symdl.printing.to_sympy``) and read back
    (``symdl.define.translate``). Arguments: mode (``stack``/``sum``/``final``), reverse
    (0/1), the carry symbols and their steps (two tuples), the output, the slot bindings
    ``Tuple(slot, sequence, lag, first value)``, the length and the initial carries."""

    @property
    def _fields(self) -> tuple:
        mode, reverse, carry, step, emit, bindings, length, init = self.args
        return str(mode), bool(reverse), carry, step, emit, bindings, length, init

    @property
    def free_symbols(self) -> set[sp.Basic]:
        # The carries and the slots are bound by the scan (as a Sum binds its index): the
        # printed recurrence reads its sequences, initial values, parameters and length.
        mode, reverse, carry, step, emit, bindings, length, init = self._fields
        bound = set(carry) | {slot for slot, _, _, _ in bindings}
        parts = [*step, emit, length, *init, *(b for _, seq, _, first in bindings
                                              for b in (seq, first))]
        inner = set().union(*(sp.sympify(part).free_symbols for part in parts))
        # A slot of rank > 2 is read in index notation (an Indexed of its label): by name.
        names = {str(getattr(b, "label", b)) for b in bound}
        return {s for s in inner
                if str(s.base.label if isinstance(s, sp.Indexed) else s) not in names}

    def _numpycode(self, p) -> str:
        # A call of ``run_printed_scan`` with the step as a lambda over the carries and the
        # slots: what ``sympy.lambdify`` prints for a derived recurrence.
        mode, reverse, carry, step, emit, bindings, length, init = self._fields
        params = ", ".join(p._print(c) for c in [*carry, *(b[0] for b in bindings)])
        body = ", ".join(p._print(part) for part in [*step, emit])
        reads = ", ".join(f"({p._print(seq)}, {int(lag)}, {p._print(first)})"
                          for _, seq, lag, first in bindings)
        final = list(carry).index(emit) if mode == "final" else -1
        run = p._module_format("symdl.define.recurrence.run_printed_scan")
        return (f"{run}({mode!r}, {reverse}, {final}, (lambda {params}: ({body},)), "
                f"({''.join(p._print(i) + ', ' for i in init)}), ({reads}{',' if reads else ''}), "
                f"{p._print(length)})")

    def _sympystr(self, p) -> str:
        mode, reverse, carry, step, emit, bindings, length, init = self._fields
        span = f"t={p._print(length)}..1" if reverse else f"t=1..{p._print(length)}"
        reads = [f"{p._print(slot)} = {p._print(seq)}[{'t-1' if lag else 't'}]"
                 for slot, seq, lag, _ in bindings]
        parts = []
        if mode == "sum":
            parts.append(f"Sum_{{t=1..{p._print(length)}}} {p._print(emit)}")
        elif mode == "stack":
            parts.append(f"{span}: out_t = {p._print(emit)}")
        else:
            parts.append(f"{span}: final {p._print(emit)}")
        for c, s, i in zip(carry, step, init, strict=True):
            parts.append(f"{p._print(c)} <- {p._print(s)}")
            reads.append(f"{p._print(c)} = {p._print(i)} first")
        return f"scan({'; '.join(parts)}; {', '.join(reads)})"

    def _latex(self, p) -> str:
        mode, reverse, carry, step, emit, bindings, length, init = self._fields
        n = p._print(length)
        reads = [rf"{p._print(slot)} = {p._print(seq)}_{{{'t-1' if lag else 't'}}}"
                 for slot, seq, lag, _ in bindings]
        for c, s, i in zip(carry, step, init, strict=True):
            reads.append(rf"{p._print(c)} \leftarrow {p._print(s)}"
                         rf"\ \text{{from}}\ {p._print(i)}")
        where = r",\ ".join(reads)
        order = rf"t={n},\dots,1" if reverse else rf"t=1,\dots,{n}"
        if mode == "sum":
            return rf"\sum_{{t=1}}^{{{n}}} {p._print(emit)}\ \left[{where}\right]"
        if mode == "final":
            return rf"{p._print(emit)}\big|_{{t=1}}\ \left[{order}:\ {where}\right]"
        return rf"\left[{p._print(emit)}\right]_{{{order}}}\ \left[{where}\right]"


class ScanEntry(sp.Expr):
    """An entry of a stacked ``PrintedScan``: arguments the scan, then the indices."""

    def _sympystr(self, p) -> str:
        return f"({p._print(self.args[0])})[{', '.join(p._print(i) for i in self.args[1:])}]"

    def _numpycode(self, p) -> str:
        idx = ", ".join(p._print(i) for i in self.args[1:])
        return f"({p._print(self.args[0])})[{idx}]"

    def _latex(self, p) -> str:
        idx = ", ".join(p._print(i) for i in self.args[1:])
        return rf"\left({p._print(self.args[0])}\right)_{{{idx}}}"


class IndexedPart(sp.Expr):
    """A part of a printed recurrence in index notation: arguments the entry expression,
    its index symbols and the shape; it prints as the expression."""

    @property
    def free_symbols(self) -> set[sp.Basic]:
        # Its indices are bound: they run over the shape.
        expr, indices, shape = self.args
        return (expr.free_symbols - set(indices)) | shape.free_symbols

    def _sympystr(self, p) -> str:
        return p._print(self.args[0])

    def _numpycode(self, p) -> str:
        # The whole array, entry by entry (its parts are small: a step's operands).
        expr, indices, shape = self.args
        loops = "".join(f" for {p._print(i)} in range({p._print(n)})"
                        for i, n in zip(indices, shape, strict=True))
        inner = p._print(expr)
        for i, n in zip(reversed(indices[1:]), reversed(shape[1:]), strict=True):
            inner = f"[{inner} for {p._print(i)} in range({p._print(n)})]"
        first = f"{p._print(indices[0])} in range({p._print(shape[0])})"
        array = p._module_format("numpy.array")
        return f"{array}([{inner} for {first}], dtype=float)" if loops else p._print(expr)

    def _latex(self, p) -> str:
        return p._print(self.args[0])


def run_printed_scan(mode: str, reverse: bool, final: int, body: Callable,
                     inits: Sequence, reads: Sequence, length: int) -> np.ndarray:
    """The value of a printed recurrence (``PrintedScan``) from NumPy values: what the code
    ``sympy.lambdify`` prints for one calls. A loop over ``t`` around ``body`` (the step
    and the output as functions of the carries and the slots), as the scan's definition
    says: slot ``k`` reads ``reads[k] = (sequence, lag, first)`` at ``t - lag`` (``first``
    before the start), the carries start at ``inits``.

    Args:
        mode: ``"stack"`` (the outputs along a first axis), ``"sum"`` (their sum) or
            ``"final"`` (carry number ``final`` after the last step).
        reverse: whether ``t`` runs from ``length`` down to 1.
        final: the carry a ``"final"`` scan returns.
        body: the new carries and the output, from the carries and the slots.
        inits: the carries' initial values.
        reads: per slot, its sequence, lag (0 or 1) and value before the first step.
        length: the number of steps.
    """
    carries = [np.asarray(i, dtype=float) for i in inits]
    outputs = []
    steps = range(int(length) - 1, -1, -1) if reverse else range(int(length))
    for t in steps:
        slots = [np.asarray(seq)[t - lag] if t - lag >= 0 else np.asarray(first, dtype=float)
                 for seq, lag, first in reads]
        *new, out = body(*carries, *slots)
        outputs.append(np.asarray(out, dtype=float))
        carries = [np.broadcast_to(np.asarray(c, dtype=float), np.shape(old))
                   if np.ndim(c) == 0 else np.asarray(c, dtype=float)
                   for c, old in zip(new, carries, strict=True)]
    if mode == "final":
        return carries[final]
    if mode == "sum":
        return np.sum(outputs, axis=0)
    if reverse:
        outputs.reverse()
    return np.stack(outputs)
