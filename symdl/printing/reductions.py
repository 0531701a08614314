"""Reductions over an index in printed results: the maximum and the first arg max.

``MaxOver(X[b, m], (m, 0, M - 1))`` is ``max_{0 <= m <= M-1} X[b, m]`` (a max pooling window);
``ArgMaxOver(X[b, m], (m, 0, M - 1))`` is the first ``m`` where that maximum is reached (the
derivative of a maximum goes there, as in PyTorch's max pooling). Both bind their index
like ``Sum`` and print in text and LaTeX as the mathematics reads.
"""

from __future__ import annotations

from sympy.concrete.expr_with_limits import ExprWithLimits


class _OverIndex(ExprWithLimits):
    """A reduction of ``function`` over the indices of its limits ``(m, lower, upper)``.

    SymPy merges a reduction of a reduction of the same kind into one with several limits
    (``max_a max_b f`` is ``max_{a, b} f``, a pooling window): every limit is printed and
    evaluated."""

    _word = ""
    _latex_word = ""

    def _bounds(self, printer) -> str:
        return ", ".join(f"{printer._print(index)}={printer._print(lower)}..{printer._print(upper)}"
                         for index, lower, upper in self.limits)

    def _sympystr(self, printer) -> str:
        return f"{self._word}_{{{self._bounds(printer)}}}({printer._print(self.function)})"

    def _latex(self, printer) -> str:
        below = [f"{printer._print(lower)} \\le {printer._print(index)} \\le "
                 f"{printer._print(upper)}" for index, lower, upper in self.limits]
        if len(below) > 1:
            below = ["\\substack{" + " \\\\ ".join(below) + "}"]
        return (f"\\{self._latex_word}_{{{below[0]}}} \\left({printer._print(self.function)}"
                "\\right)")

    def _ranges(self, printer) -> list[tuple[str, str]]:
        return [(printer._print(index),
                 f"range({printer._print(lower)}, {printer._print(upper)} + 1)")
                for index, lower, upper in self.limits]


class MaxOver(_OverIndex):
    """The largest value of ``function`` over its index."""

    _word = "max"
    _latex_word = "max"
    reduction = "max"  # translated back by symdl.define.translate (printed results evaluate)

    def _numpycode(self, printer) -> str:
        code = printer._print(self.function)
        for index, values in reversed(self._ranges(printer)):  # the first limit outermost
            code = (f"{printer._module_format('symdl.printing.reductions.max_over')}"
                    f"(lambda {index}: {code}, {values})")
        return code


class ArgMaxOver(_OverIndex):
    """The first index (the smallest, on ties) where ``function`` is largest."""

    _word = "argmax"
    _latex_word = "operatorname*{arg\\,max}"
    is_integer = True
    reduction = "argmax"  # [u = argmax ...] translates back to the arg max mask

    def _numpycode(self, printer) -> str:
        if len(self.limits) != 1:
            raise ValueError(f"{self}: an arg max is over one index")
        (index, values), = self._ranges(printer)
        return (f"{printer._module_format('symdl.printing.reductions.first_argmax')}"
                f"(lambda {index}: {printer._print(self.function)}, {values})")


def max_over(function, values: range) -> float:
    """The largest ``function(m)`` for ``m`` in ``values`` (lambdified ``MaxOver``)."""
    return max(function(m) for m in values)


def first_argmax(function, values: range) -> int:
    """The first ``m`` in ``values`` where ``function(m)`` is largest (lambdified
    ``ArgMaxOver``): Python's ``max`` keeps the first of equal largest values."""
    return max(values, key=function)
