"""Reductions along an index of a tensor of any rank, in plain SymPy index notation.

A rank-n tensor is an ``IndexedBase`` with a shape; an expression of its entries has free
indices (``S[b, h, s, t]``). A reduction names the index it runs over, as ``Sum`` does::

    symdl.softmax(S[b, h, s, t], axis=t)      # an entry of the softmax over t: index t stays
    symdl.logsumexp(S[b, h, s, t], axis=t)    # log Σ_t exp(...): index t is bound
    symdl.sum(x[b, s, d], axis=d)             # Sum(x[b, s, d], (d, 0, D - 1))

``softmax`` and ``logsumexp`` are expressions of their own (``SoftmaxAlong``,
``LogSumExpAlong``), translated into the IR's stable ``Softmax``/``LogSumExp`` nodes along that
axis: the maximum along the lane is subtracted first, so scores of 1e3 do not overflow, and
entries of ``-inf`` (masks: 0 where kept, ``-inf`` where masked, as PyTorch's float
``attn_mask``) get probability 0 with finite values and gradients wherever the lane has one
finite entry. A lane of only ``-inf`` is all zeros under softmax (``-inf`` under logsumexp).
``sum``, ``mean`` and ``variance`` are plain ``Sum`` expressions.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter

from symdl.errors import DefinitionError


def _check_index(expr: sp.Basic, index: object, what: str) -> sp.Symbol:
    if not isinstance(index, sp.Symbol):
        raise DefinitionError(
            f"{what} of the index-notation expression {expr} needs axis= an index symbol of "
            f"it (for example axis=t in {what}(S[b, s, t], axis=t)), got {index!r}")
    if index not in sp.sympify(expr).free_symbols:
        raise DefinitionError(
            f"{what} along {index}: {index} is not a free index of {expr}; reduce along one "
            "of its indices")
    return index


def index_range(expr: sp.Basic, index: sp.Symbol) -> sp.Expr:
    """The number of values ``index`` takes in ``expr``: from an ``Idx`` range, else from the
    shape of an ``IndexedBase`` it indexes."""
    if isinstance(index, sp.Idx) and index.upper is not None:
        return index.upper - index.lower + 1
    for entry in sp.sympify(expr).atoms(sp.Indexed):
        shape = entry.base.shape
        if shape is None:
            continue
        for k, i in enumerate(entry.indices):
            if i == index:
                return sp.sympify(shape[k])
    raise DefinitionError(
        f"the range of the index {index} in {expr} is unknown: index an IndexedBase that has a "
        "shape with it, or use sp.Idx with a range")


class SoftmaxAlong(sp.Expr):
    """An entry of the softmax of ``expr`` along its index ``index`` (which stays free)."""

    is_commutative = True
    is_real = True

    def __new__(cls, expr: sp.Basic, index: sp.Symbol, length: sp.Expr | None = None):
        # No checks here: SymPy rebuilds the object from its args (lambdify's substitutions,
        # xreplace); the vocabulary's functions check what a user writes.
        expr = sp.sympify(expr)
        length = index_range(expr, index) if length is None else sp.sympify(length)
        return super().__new__(cls, expr, index, length)

    @property
    def expr(self) -> sp.Expr:
        return self.args[0]

    @property
    def index(self) -> sp.Symbol:
        return self.args[1]

    @property
    def length(self) -> sp.Expr:
        """The number of values the index takes (its range is ``0 .. length - 1``)."""
        return self.args[2]

    def _sympystr(self, printer) -> str:
        return f"softmax({printer._print(self.expr)}, axis={printer._print(self.index)})"

    def _latex(self, printer: LatexPrinter) -> str:
        return (rf"\operatorname{{softmax}}_{{{printer._print(self.index)}}}"
                rf"\left({printer._print(self.expr)}\right)")

    def explicit(self) -> sp.Expr:
        """``exp(expr - logsumexp(expr))`` with the lane's index bound in the log-sum-exp."""
        lane = sp.Dummy(str(self.index), integer=True)
        lse = LogSumExpAlong(self.expr.xreplace({self.index: lane}), lane, self.length)
        return sp.exp(self.expr - lse)

    def _xreplace(self, rule):
        # The index is both this entry's position and the lane it normalises over: fixing the
        # position (k -> 0, writing a sum out term by term) must not fix the lane, so the
        # lane is bound first. Renaming the index (k -> m) keeps the softmax.
        new = rule.get(self.index)
        if new is not None and not isinstance(new, sp.Symbol):
            return self.explicit()._xreplace(rule)[0], True
        return super()._xreplace(rule)

    def _eval_subs(self, old, new):
        if old == self.index and not isinstance(new, sp.Symbol):
            return self.explicit().subs(old, new)
        return None

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of an entry
        return printer._print(self.explicit())

    _pythoncode = _numpycode


class LogSumExpAlong(sp.Expr):
    """``log Σ_index exp(expr)``: ``index`` is bound (summed over), the others stay free."""

    is_commutative = True
    is_real = True

    def __new__(cls, expr: sp.Basic, index: sp.Symbol, length: sp.Expr | None = None):
        # No checks here: SymPy rebuilds the object from its args (lambdify's substitutions,
        # xreplace); the vocabulary's functions check what a user writes.
        expr = sp.sympify(expr)
        length = index_range(expr, index) if length is None else sp.sympify(length)
        return super().__new__(cls, expr, index, length)

    @property
    def expr(self) -> sp.Expr:
        return self.args[0]

    @property
    def index(self) -> sp.Symbol:
        return self.args[1]

    @property
    def length(self) -> sp.Expr:
        """The number of values the index takes (its range is ``0 .. length - 1``)."""
        return self.args[2]

    @property
    def free_symbols(self) -> set[sp.Basic]:
        return (self.expr.free_symbols - {self.index}) | self.length.free_symbols

    def _xreplace(self, rule):
        # The index is bound (summed over): a replacement of it does not reach inside.
        if self.index in rule:
            rule = {k: v for k, v in rule.items() if k != self.index}
        return super()._xreplace(rule)

    def _eval_subs(self, old, new):
        return self if old == self.index else None

    def _sympystr(self, printer) -> str:
        return f"logsumexp({printer._print(self.expr)}, axis={printer._print(self.index)})"

    def _latex(self, printer: LatexPrinter) -> str:
        return (rf"\operatorname{{lse}}_{{{printer._print(self.index)}}}"
                rf"\left({printer._print(self.expr)}\right)")

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of an entry
        # The lane's values in a list, shifted by their finite maximum (stable, and a lane
        # of only -inf is -inf): an entry at a time, for checks at small sizes.
        length = printer._print(self.length)
        np_ = {name: printer._module_format(f"numpy.{name}")
               for name in ("array", "amax", "where", "exp", "log", "sum", "inf")}
        lane = f"{np_['array']}([{printer._print(self.expr)} for {printer._print(self.index)} " \
               f"in range({length})])"
        # The shift is the largest finite real part (complex steps keep theirs): stable, and
        # a lane of only -inf gives log 0 = -inf.
        peak = (f"{np_['amax']}(_v.real, where=_v.real > -{np_['inf']}, "
                f"initial=-{np_['inf']})")
        return (f"(lambda _v: (lambda _m: _m + {np_['log']}({np_['sum']}({np_['exp']}(_v - _m))))"
                f"({np_['where']}({peak} > -{np_['inf']}, {peak}, 0.0)))({lane})")

    _pythoncode = _numpycode


def _masked(expr: sp.Basic, mask: sp.Basic | None) -> sp.Basic:
    # An additive mask: 0 where kept, -inf where masked (PyTorch's float attn_mask).
    return expr if mask is None else expr + mask


def softmax_along(expr: sp.Basic, index: sp.Symbol, mask: sp.Basic | None = None) -> sp.Expr:
    """``softmax`` of an index-notation expression along ``index``."""
    expr = _masked(expr, mask)
    return SoftmaxAlong(expr, _check_index(expr, index, "softmax"))


def logsumexp_along(expr: sp.Basic, index: sp.Symbol, mask: sp.Basic | None = None) -> sp.Expr:
    """``log Σ_index exp(expr)``, stably."""
    expr = _masked(expr, mask)
    return LogSumExpAlong(expr, _check_index(expr, index, "logsumexp"))


def log_softmax_along(expr: sp.Basic, index: sp.Symbol,
                      mask: sp.Basic | None = None) -> sp.Expr:
    """``expr - logsumexp(expr)`` along ``index``."""
    expr = _masked(expr, mask)
    return expr - LogSumExpAlong(expr, _check_index(expr, index, "log_softmax"))


def sum_along(expr: sp.Basic, index: sp.Symbol) -> sp.Expr:
    """``Σ_index expr`` as a SymPy ``Sum`` (from 0 to the index's range minus one)."""
    index = _check_index(expr, index, "sum")
    return sp.Sum(expr, (index, 0, index_range(expr, index) - 1))


def mean_along(expr: sp.Basic, index: sp.Symbol) -> sp.Expr:
    """``Σ_index expr / N`` with ``N`` the range of ``index``."""
    index = _check_index(expr, index, "mean")
    return sum_along(expr, index) / index_range(expr, index)


def variance_along(expr: sp.Basic, index: sp.Symbol) -> sp.Expr:
    """The biased (population) variance along ``index``: the mean of squared deviations from
    the mean along it (as ``torch.var(..., unbiased=False)``)."""
    index = _check_index(expr, index, "variance")
    other = sp.Dummy(str(index), integer=True)
    centred = expr - mean_along(expr.xreplace({index: other}), other)
    return mean_along(centred**2, index)
