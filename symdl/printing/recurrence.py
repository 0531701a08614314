"""Printed recurrences: an ``ir.Scan`` as a SymPy object that prints as its equations.

A forward scan prints as ``scan(t=1..T: out_t = tanh(X_t*W + h_prev*U + 1*b); h_prev <- ...;
X_t = X[t], h_prev = h0 first)``; the adjoint recurrence of backprop through time runs
``t=T..1`` with its carry ``dh_next`` and output ``dh_t = dh_out + dh_next``; a parameter
gradient is ``Sum_{t=1..T} h_prev.T*(...)``. Each lists what its placeholders read
(``h_prev = H[t-1]``, ``X_t = X[t]``). LaTeX writes the same with ``\\sum_{t=1}^{T}``.
"""

from __future__ import annotations

import sympy as sp


class PrintedScan(sp.Expr):
    """Arguments: mode (``stack``/``sum``/``final``), reverse (0/1), the carry symbols and
    their steps (two tuples), the output, the slot bindings ``Tuple(slot, sequence, lag)``,
    the length and the initial carries (a tuple)."""

    @property
    def _fields(self) -> tuple:
        mode, reverse, carry, step, emit, bindings, length, init = self.args
        return str(mode), bool(reverse), carry, step, emit, bindings, length, init

    def _sympystr(self, p) -> str:
        mode, reverse, carry, step, emit, bindings, length, init = self._fields
        span = f"t={p._print(length)}..1" if reverse else f"t=1..{p._print(length)}"
        reads = [f"{p._print(slot)} = {p._print(seq)}[{'t-1' if lag else 't'}]"
                 for slot, seq, lag in bindings]
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
                 for slot, seq, lag in bindings]
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

    def _latex(self, p) -> str:
        idx = ", ".join(p._print(i) for i in self.args[1:])
        return rf"\left({p._print(self.args[0])}\right)_{{{idx}}}"
