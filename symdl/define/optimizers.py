"""Optimizer update rules as SymPy expressions: SGD, momentum, Nesterov, RMSprop, Adagrad,
Adam and AdamW.

Each optimizer is a frozen dataclass of hyperparameters (numbers or scalar SymPy symbols) with

* ``state_names``: the per-parameter state arrays it keeps, each shaped like the parameter
  (``("m", "v")`` for Adam); every state starts at zero;
* ``update(param, grad, state, t)``: the new parameter and the new state (a dict by state
  name) as SymPy expressions of the parameter, its gradient, the current state and the
  1-based step number ``t``.

The rules do not know how the gradient was computed: ``grad`` is any expression of the
parameter's shape (a ``MatrixSymbol`` input of an update kernel, or a derived gradient
substituted by ``symdl.training.compile_training_step``). Matrix parameters give matrix
expressions (elementwise square roots and quotients are Hadamard
powers), scalar parameters give scalar expressions. The formulas follow ``torch.optim`` with
its defaults for dampening, centering and initial accumulators (all zero/off), so that one
kernel step equals one ``optimizer.step()``.

``update_kernel_outputs(optimizer, param)`` names the inputs and outputs of a stand-alone
update kernel for ``symdl.compile_expressions``.

Examples assume::

    import sympy as sp
    import symdl
    n, d = sp.symbols("n d", integer=True, positive=True)
    X = sp.MatrixSymbol("X", n, d)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symdl.define.vocabulary import total
from symdl.errors import DefinitionError, ShapeMismatchError

Hyperparameter = float | int | sp.Expr
"""A number, or a scalar SymPy expression (a ``Symbol``: a scalar input of the kernel)."""

Update = tuple[sp.Basic, dict[str, sp.Basic]]
"""What ``update`` returns: the new parameter and the new state by name."""

STEP = sp.Symbol("t", positive=True)
"""The default 1-based step number symbol (the same as ``symdl.training.STEP``)."""


# -- elementwise helpers: one code path for matrix and scalar parameters --------------------


def _sqrt(x: sp.Basic) -> sp.Basic:
    # A Hadamard power, not applyfunc(sqrt): SymPy turns applyfunc on a 1 x 1 matrix into the
    # matrix power x**(1/2), which is not elementwise in general and which symdl refuses.
    return sp.HadamardPower(x, sp.S.Half) if isinstance(x, MatrixExpr) else sp.sqrt(x)


def _square(x: sp.Basic) -> sp.Basic:
    return sp.hadamard_product(x, x) if isinstance(x, MatrixExpr) else x**2


def _plus_constant(x: sp.Basic, c: sp.Expr) -> sp.Basic:
    return x + c * sp.OneMatrix(*x.shape) if isinstance(x, MatrixExpr) else x + c


def _divide(x: sp.Basic, y: sp.Basic) -> sp.Basic:
    """Elementwise ``x / y``."""
    if isinstance(x, MatrixExpr):
        return sp.hadamard_product(x, sp.HadamardPower(y, -1))
    return x / y


def _check_arguments(optimizer: Optimizer, param: sp.Basic, grad: sp.Basic,
                     state: Mapping[str, sp.Basic]) -> None:
    name = type(optimizer).__name__
    if isinstance(param, MatrixExpr) != isinstance(grad, MatrixExpr) or (
            isinstance(param, MatrixExpr) and param.shape != grad.shape):
        p_shape = param.shape if isinstance(param, MatrixExpr) else "scalar"
        g_shape = grad.shape if isinstance(grad, MatrixExpr) else "scalar"
        raise ShapeMismatchError(
            f"{name}.update: the gradient ({g_shape}) must have the parameter's shape "
            f"({p_shape})", p_shape, g_shape)
    missing = [s for s in optimizer.state_names if s not in state]
    if missing:
        raise DefinitionError(
            f"{name}.update needs the state {list(optimizer.state_names)}; missing {missing}. "
            "Pass one array per state name, shaped like the parameter (zeros at step 1)")


def _hyperparameter(value: object, owner: str, field: str, lower: float = 0.0,
                    below: float | None = None) -> None:
    """Rejects matrices and out-of-range numbers; symbols are checked at run time by nobody,
    so their ranges are the caller's responsibility."""
    try:
        # strict: a string is not parsed into a symbol (lr="1e-3" is a mistake, not a name)
        expr = sp.sympify(value, strict=True)
    except sp.SympifyError:
        expr = None
    if isinstance(expr, MatrixExpr) or not isinstance(expr, sp.Expr):
        raise DefinitionError(f"{owner}.{field} must be a number or a scalar SymPy expression, "
                              f"got {type(value).__name__} {value!r}")
    if expr.is_number:
        if not (expr.is_real and expr.is_finite):
            raise DefinitionError(f"{owner}.{field} = {value} must be a finite real number")
        if expr < lower or (below is not None and expr >= below):
            upper = f" and < {below}" if below is not None else ""
            raise DefinitionError(f"{owner}.{field} = {value} is out of range: it must be "
                                  f">= {lower}{upper}")


class _Checked:
    """Validates every hyperparameter on construction (ranges in ``_ranges``)."""

    _ranges: ClassVar[dict[str, tuple[float, float | None]]] = {}

    def __post_init__(self) -> None:
        for f in fields(self):
            lower, below = self._ranges.get(f.name, (0.0, None))
            _hyperparameter(getattr(self, f.name), type(self).__name__, f.name, lower, below)


def _decayed(param: sp.Basic, grad: sp.Basic, weight_decay: Hyperparameter) -> sp.Basic:
    """``grad + weight_decay * param``: L2 regularisation folded into the gradient."""
    return grad if weight_decay == 0 else grad + weight_decay * param


@dataclass(frozen=True)
class SGD(_Checked):
    """Plain gradient descent: ``p - lr (g + wd p)``.

    Example:
        >>> from symdl.optimizers import SGD
        >>> p, g, lr = sp.symbols("p g lr")
        >>> SGD(lr=lr).update(p, g, {})
        (-g*lr + p, {})
    """

    lr: Hyperparameter
    weight_decay: Hyperparameter = 0
    state_names: ClassVar[tuple[str, ...]] = ()

    def update(self, param: sp.Basic, grad: sp.Basic, state: Mapping[str, sp.Basic],
               t: sp.Basic = STEP) -> Update:
        _check_arguments(self, param, grad, state)
        return param - self.lr * _decayed(param, grad, self.weight_decay), {}


@dataclass(frozen=True)
class _WithMomentum(_Checked):
    """The hyperparameters and the state (the velocity ``b``) of the momentum methods."""

    lr: Hyperparameter
    momentum: Hyperparameter = 0.9
    weight_decay: Hyperparameter = 0
    state_names: ClassVar[tuple[str, ...]] = ("b",)
    _ranges: ClassVar[dict[str, tuple[float, float | None]]] = {"momentum": (0.0, 1.0)}


@dataclass(frozen=True)
class Momentum(_WithMomentum):
    """Heavy-ball momentum as ``torch.optim.SGD(momentum=mu)``: ``b = mu b + g``,
    ``p - lr b`` (the buffer ``b`` accumulates gradients; no dampening).

    Example:
        >>> from symdl.optimizers import Momentum
        >>> new_p, new_state = Momentum(lr=0.1, momentum=0.9).update(1.0, 2.0, {"b": 1.0})
        >>> round(float(new_state["b"]), 6), round(float(new_p), 6)  # b = 0.9*1 + 2; p = 1 - 0.1*b
        (2.9, 0.71)
    """

    def update(self, param: sp.Basic, grad: sp.Basic, state: Mapping[str, sp.Basic],
               t: sp.Basic = STEP) -> Update:
        _check_arguments(self, param, grad, state)
        b = self.momentum * state["b"] + _decayed(param, grad, self.weight_decay)
        return param - self.lr * b, {"b": b}


@dataclass(frozen=True)
class Nesterov(_WithMomentum):
    """Nesterov momentum as ``torch.optim.SGD(momentum=mu, nesterov=True)``:
    ``b = mu b + g``, ``p - lr (g + mu b)`` (the look-ahead written on the gradient).

    Example:
        >>> from symdl.optimizers import Nesterov
        >>> new_p, new_state = Nesterov(lr=0.1, momentum=0.9).update(1.0, 2.0, {"b": 1.0})
        >>> round(float(new_p), 6)  # b = 2.9; p = 1 - 0.1*(2 + 0.9*2.9)
        0.539
    """

    def update(self, param: sp.Basic, grad: sp.Basic, state: Mapping[str, sp.Basic],
               t: sp.Basic = STEP) -> Update:
        _check_arguments(self, param, grad, state)
        g = _decayed(param, grad, self.weight_decay)
        b = self.momentum * state["b"] + g
        return param - self.lr * (g + self.momentum * b), {"b": b}


@dataclass(frozen=True)
class RMSprop(_Checked):
    """RMSprop: ``v = alpha v + (1 - alpha) g^2``, ``p - lr g / (sqrt(v) + eps)``.

    Example:
        >>> from symdl.optimizers import RMSprop
        >>> new_p, new_state = RMSprop(lr=0.01).update(1.0, 2.0, {"v": 0.0})
        >>> round(float(new_state["v"]), 6), round(float(new_p), 6)  # v = 0.01*2^2; 2/sqrt(v) = 10
        (0.04, 0.9)
    """

    lr: Hyperparameter
    alpha: Hyperparameter = 0.99
    eps: Hyperparameter = 1e-8
    weight_decay: Hyperparameter = 0
    state_names: ClassVar[tuple[str, ...]] = ("v",)
    _ranges: ClassVar[dict[str, tuple[float, float | None]]] = {"alpha": (0.0, 1.0)}

    def update(self, param: sp.Basic, grad: sp.Basic, state: Mapping[str, sp.Basic],
               t: sp.Basic = STEP) -> Update:
        _check_arguments(self, param, grad, state)
        g = _decayed(param, grad, self.weight_decay)
        v = self.alpha * state["v"] + (1 - self.alpha) * _square(g)
        return param - self.lr * _divide(g, _plus_constant(_sqrt(v), self.eps)), {"v": v}


@dataclass(frozen=True)
class Adagrad(_Checked):
    """Adagrad: ``s = s + g^2``, ``p - lr g / (sqrt(s) + eps)`` (``torch.optim.Adagrad`` with
    no learning-rate decay and a zero initial accumulator).

    Example:
        >>> from symdl.optimizers import Adagrad
        >>> new_p, new_state = Adagrad(lr=0.1).update(1.0, 2.0, {"s": 0.0})
        >>> round(float(new_state["s"]), 6), round(float(new_p), 6)
        (4.0, 0.9)
    """

    lr: Hyperparameter
    eps: Hyperparameter = 1e-10
    weight_decay: Hyperparameter = 0
    state_names: ClassVar[tuple[str, ...]] = ("s",)

    def update(self, param: sp.Basic, grad: sp.Basic, state: Mapping[str, sp.Basic],
               t: sp.Basic = STEP) -> Update:
        _check_arguments(self, param, grad, state)
        g = _decayed(param, grad, self.weight_decay)
        s = state["s"] + _square(g)
        return param - self.lr * _divide(g, _plus_constant(_sqrt(s), self.eps)), {"s": s}


def _adam_step(param: sp.Basic, g: sp.Basic, state: Mapping[str, sp.Basic], t: sp.Basic,
               lr: Hyperparameter, beta1: Hyperparameter, beta2: Hyperparameter,
               eps: Hyperparameter) -> Update:
    m = beta1 * state["m"] + (1 - beta1) * g
    v = beta2 * state["v"] + (1 - beta2) * _square(g)
    # Bias correction: m and v start at zero, so their expectations are scaled by
    # (1 - beta^t); dividing it out makes the first steps full-sized.
    m_hat_scale = lr / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return param - m_hat_scale * _divide(m, _plus_constant(_sqrt(v_hat), eps)), {"m": m, "v": v}


@dataclass(frozen=True)
class _WithMoments(_Checked):
    """The hyperparameters and the state (first and second moments ``m``, ``v``) of Adam and
    AdamW."""

    lr: Hyperparameter = 1e-3
    beta1: Hyperparameter = 0.9
    beta2: Hyperparameter = 0.999
    eps: Hyperparameter = 1e-8
    weight_decay: Hyperparameter = 0
    state_names: ClassVar[tuple[str, ...]] = ("m", "v")
    _ranges: ClassVar[dict[str, tuple[float, float | None]]] = {
        "beta1": (0.0, 1.0), "beta2": (0.0, 1.0)}


@dataclass(frozen=True)
class Adam(_WithMoments):
    """Adam with bias correction: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p - lr m̂ / (sqrt(v̂) + eps)`` with ``m̂ = m / (1 - b1^t)``, ``v̂ = v / (1 - b2^t)``.
    ``weight_decay`` adds ``wd p`` to the gradient (L2, as ``torch.optim.Adam``).

    Example:
        >>> from symdl.optimizers import Adam
        >>> new_p, new_state = Adam(lr=0.1).update(1.0, 2.0, {"m": 0.0, "v": 0.0}, t=1)
        >>> round(float(new_p), 6)  # the first bias-corrected step is lr, whatever the gradient
        0.9
        >>> sorted(new_state)
        ['m', 'v']
        >>> d, k = sp.symbols("d k", integer=True, positive=True)
        >>> W, G = sp.MatrixSymbol("W", d, k), sp.MatrixSymbol("G", d, k)
        >>> state = {"m": sp.MatrixSymbol("m", d, k), "v": sp.MatrixSymbol("v", d, k)}
        >>> Adam(lr=sp.Symbol("lr")).update(W, G, state)[0].shape
        (d, k)
    """


    def update(self, param: sp.Basic, grad: sp.Basic, state: Mapping[str, sp.Basic],
               t: sp.Basic = STEP) -> Update:
        _check_arguments(self, param, grad, state)
        g = _decayed(param, grad, self.weight_decay)
        return _adam_step(param, g, state, t, self.lr, self.beta1, self.beta2, self.eps)


@dataclass(frozen=True)
class AdamW(_WithMoments):
    """Adam with decoupled weight decay (``torch.optim.AdamW``): the parameter first shrinks
    to ``(1 - lr wd) p``, then takes the Adam step of the undecayed gradient.

    Example:
        >>> from symdl.optimizers import AdamW
        >>> optimizer = AdamW(lr=0.1, weight_decay=0.1)
        >>> new_p, _ = optimizer.update(1.0, 2.0, {"m": 0.0, "v": 0.0}, t=1)
        >>> round(float(new_p), 6)  # shrunk to (1 - 0.1*0.1)*1 = 0.99, then the Adam step of 0.1
        0.89
    """

    weight_decay: Hyperparameter = 1e-2  # AdamW's default, as torch.optim.AdamW

    def update(self, param: sp.Basic, grad: sp.Basic, state: Mapping[str, sp.Basic],
               t: sp.Basic = STEP) -> Update:
        _check_arguments(self, param, grad, state)
        shrunk = (1 - self.lr * self.weight_decay) * param
        return _adam_step(shrunk, grad, state, t, self.lr, self.beta1, self.beta2, self.eps)


Optimizer = SGD | Momentum | Nesterov | RMSprop | Adagrad | Adam | AdamW

OPTIMIZERS: dict[str, type] = {
    cls.__name__: cls for cls in (SGD, Momentum, Nesterov, RMSprop, Adagrad, Adam, AdamW)}
"""Every optimizer here, by class name."""


def update_kernel_outputs(optimizer: Optimizer, param: sp.MatrixSymbol | sp.Symbol,
                          t: sp.Basic = STEP) -> dict[str, sp.Basic]:
    """The outputs of a stand-alone update kernel for ``symdl.compile_expressions``.

    The kernel's inputs are ``param``, its gradient ``grad_<name>``, one state array
    ``<state>_<name>`` per state (shaped like the parameter), ``t`` and every symbolic
    hyperparameter; its outputs are the new parameter under the parameter's name and the new
    state under the state's name (``{"w": ..., "m_w": ..., "v_w": ...}``).

    Example:
        >>> from symdl.optimizers import Adam, update_kernel_outputs
        >>> d = sp.Symbol("d", integer=True, positive=True)
        >>> w = sp.MatrixSymbol("w", d, 1)
        >>> outputs = update_kernel_outputs(Adam(lr=1e-3), w)
        >>> list(outputs)
        ['w', 'm_w', 'v_w']
    """
    if isinstance(param, sp.MatrixSymbol):
        name = str(param.name)
        grad = sp.MatrixSymbol(f"grad_{name}", *param.shape)
        state = {s: sp.MatrixSymbol(f"{s}_{name}", *param.shape) for s in optimizer.state_names}
    elif isinstance(param, sp.Symbol):
        name = str(param)
        grad = sp.Symbol(f"grad_{name}", real=True)
        state = {s: sp.Symbol(f"{s}_{name}", real=True) for s in optimizer.state_names}
    else:
        raise DefinitionError(f"an update kernel's parameter must be a MatrixSymbol or a Symbol, "
                              f"got {type(param).__name__} {param}")
    new_param, new_state = optimizer.update(param, grad, state, t)
    outputs = {name: new_param}
    outputs.update({f"{s}_{name}": new_state[s] for s in optimizer.state_names})
    return outputs


def update_step_definition(optimizer: Optimizer, param: sp.MatrixSymbol, t: sp.Basic = STEP
                           ) -> tuple[list[tuple[sp.Basic, sp.Basic]], list[sp.MatrixSymbol]]:
    """One update as named steps, ending in a scalar that backpropagates through it.

    The steps define the new state (``m_W_new``, ...) and the new parameter (``W_new``, with
    the new states referred to by name), then ``L = sum(G_W ⊙ W_new) + sum(G_m_W ⊙ m_W_new)
    + ...`` with an upstream gradient per output. The gradients of ``L`` are the backward
    pass of the optimizer step, what hypergradient methods and unrolled meta-learning
    differentiate (with respect to a symbolic ``lr``: the hypergradient).

    Returns:
        The steps for ``symdl.derive`` and the arrays a step reads: the parameter, its
        gradient ``grad_W`` and one state per name (``m_W``).

    Example:
        >>> from symdl.optimizers import Momentum, update_step_definition
        >>> d = sp.Symbol("d", integer=True, positive=True)
        >>> W = sp.MatrixSymbol("W", d, 1)
        >>> steps, arrays = update_step_definition(Momentum(lr=sp.Symbol("lr")), W)
        >>> [str(name) for name, _ in steps]
        ['b_W_new', 'W_new', 'L']
        >>> [str(a) for a in arrays]
        ['W', 'grad_W', 'b_W']
    """
    if not isinstance(param, sp.MatrixSymbol):
        raise DefinitionError(f"update_step_definition needs a MatrixSymbol parameter, got "
                              f"{type(param).__name__} {param}")
    name = str(param.name)
    shape = param.shape
    grad = sp.MatrixSymbol(f"grad_{name}", *shape)
    state = {s: sp.MatrixSymbol(f"{s}_{name}", *shape) for s in optimizer.state_names}
    new_param, new_state = optimizer.update(param, grad, state, t)
    steps: list[tuple[sp.Basic, sp.Basic]] = []
    named = {}
    for s in optimizer.state_names:
        symbol = sp.MatrixSymbol(f"{s}_{name}_new", *shape)
        steps.append((symbol, new_state[s].xreplace(named)))
        named[new_state[s]] = symbol
    new_symbol = sp.MatrixSymbol(f"{name}_new", *shape)
    steps.append((new_symbol, new_param.xreplace(named)))
    outputs = [new_symbol] + [named[new_state[s]] for s in optimizer.state_names]
    objective = sp.Add(*[
        total(sp.hadamard_product(sp.MatrixSymbol(f"G_{str(o.name)[:-4]}", *shape), o))
        for o in outputs])
    steps.append((sp.Symbol("L"), objective))
    return steps, [param, grad, *state.values()]
