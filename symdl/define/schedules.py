"""Learning-rate schedules as SymPy expressions of the step t: step decay, exponential decay
and cosine annealing, in the closed forms of ``torch.optim.lr_scheduler`` (StepLR,
ExponentialLR, CosineAnnealingLR), with t counted from 0.

``t`` is a scalar (a ``Symbol`` or a number: the result is the learning rate at that step) or
a column of steps (a ``MatrixSymbol``: the result is the column of learning rates, entry by
entry, for a kernel that fills a whole schedule at once). Every parameter may be a number or
a scalar symbol, so a derivation can differentiate the rate with respect to it.

Examples assume::

    import sympy as sp
    import symdl
    n, d = sp.symbols("n d", integer=True, positive=True)
    X = sp.MatrixSymbol("X", n, d)
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symdl.define.vocabulary import exp, floor
from symdl.errors import DefinitionError

Value = float | int | sp.Expr


def _cos(x: sp.Basic) -> sp.Basic:
    return x.applyfunc(sp.cos) if isinstance(x, MatrixExpr) else sp.cos(x)


def _power(base: Value, exponent: sp.Basic) -> sp.Basic:
    """``base ** exponent`` entry by entry (``exp(log(base) exponent)`` for a matrix)."""
    if isinstance(exponent, MatrixExpr):
        return exp(sp.log(base) * exponent)
    return sp.Integer(1) * base**exponent


def _check(t: sp.Basic, what: str) -> sp.Basic:
    t = sp.sympify(t)
    if isinstance(t, MatrixExpr) and t.shape[1] != 1:
        raise DefinitionError(f"{what}: steps t must be a scalar or a column T x 1, got "
                              f"{t.shape[0]} x {t.shape[1]}")
    return t


def step_decay(t: sp.Basic, lr: Value, gamma: Value, step_size: Value) -> sp.Basic:
    """``lr * gamma ** floor(t / step_size)``: the rate drops by ``gamma`` every
    ``step_size`` steps (``StepLR``).

    Example:
        >>> from symdl.schedules import step_decay
        >>> t = sp.Symbol("t", nonnegative=True)
        >>> rate = step_decay(t, lr=0.1, gamma=0.5, step_size=10)
        >>> [round(float(rate.subs(t, step)), 6) for step in (0, 9, 10, 25)]
        [0.1, 0.1, 0.05, 0.025]
    """
    t = _check(t, "step_decay")
    return lr * _power(gamma, floor(t / step_size))


def exponential_decay(t: sp.Basic, lr: Value, gamma: Value) -> sp.Basic:
    """``lr * gamma ** t`` (``ExponentialLR``).

    Example:
        >>> from symdl.schedules import exponential_decay
        >>> t = sp.Symbol("t", nonnegative=True)
        >>> rate = exponential_decay(t, lr=0.1, gamma=0.9)
        >>> [round(float(rate.subs(t, step)), 6) for step in (0, 1, 2)]
        [0.1, 0.09, 0.081]
    """
    t = _check(t, "exponential_decay")
    return lr * _power(gamma, t)


def cosine_annealing(t: sp.Basic, lr: Value, t_max: Value, lr_min: Value = 0) -> sp.Basic:
    """``lr_min + (lr - lr_min) (1 + cos(pi t / t_max)) / 2``: half a cosine from ``lr`` at
    step 0 down to ``lr_min`` at step ``t_max`` (``CosineAnnealingLR``).

    Example:
        >>> from symdl.schedules import cosine_annealing
        >>> t = sp.Symbol("t", nonnegative=True)
        >>> rate = cosine_annealing(t, lr=0.1, t_max=100)
        >>> [round(float(rate.subs(t, step)), 6) for step in (0, 50, 100)]
        [0.1, 0.05, 0.0]

        A column of steps gives the column of rates (one kernel fills a whole schedule):

        >>> m = sp.Symbol("m", integer=True, positive=True)
        >>> T = sp.MatrixSymbol("T", m, 1)
        >>> rates = cosine_annealing(T, lr=0.1, t_max=100)
        >>> symdl.evaluate(rates, {"T": [[0.0], [50.0], [100.0]]}, {m: 3}).round(6).tolist()
        [[0.1], [0.05], [0.0]]
    """
    t = _check(t, "cosine_annealing")
    wave = _cos(sp.pi / t_max * t)
    if isinstance(t, MatrixExpr):
        ones = sp.OneMatrix(*t.shape)
        return lr_min * ones + (lr - lr_min) / 2 * (ones + wave)
    return lr_min + (lr - lr_min) / 2 * (1 + wave)
