"""Full-batch training from a loss that gives values, gradients and Hessian-vector products.

The drivers here run on one process (the Dask client's) and see the loss through two calls,
each one pass over the data wherever it lives:

* ``value_and_grad(params) -> (value, {name: gradient})``;
* ``hvp(params, directions) -> {name: H v}`` (Newton-CG only).

``symdl.scale.dask.DaskLoss`` provides both over a Dask cluster; anything with the same two
methods (an in-memory wrapper of a kernel) trains the same way, which is how the results are
compared. Parameters are a dict of NumPy arrays (or floats) by name; each step sends them to
the workers once.

* ``gradient_descent``: any ``symdl.optimizers`` update (SGD, momentum, Adam, ...), applied on
  the driver to the reduced gradient with the optimizer's own SymPy rule (translated once to
  the IR and evaluated with NumPy);
* ``lbfgs``: limited-memory BFGS (the two-loop recursion) with a backtracking Armijo line
  search;
* ``newton_cg``: truncated Newton: conjugate gradients on ``H p = -g`` with one distributed
  HVP per iteration, then a backtracking line search.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import sympy as sp

from symdl.define.optimizers import STEP, update_kernel_outputs
from symdl.define.translate import Translator, translate_matrix_or_scalar
from symdl.errors import DerivationError, KernelArgumentError
from symdl.ir.evaluate import evaluate as evaluate_nodes

Params = dict[str, np.ndarray | float]


class Objective(Protocol):
    def value_and_grad(self, params: Mapping[str, object]) -> tuple[float, Params]: ...


class HessianObjective(Objective, Protocol):
    def hvp(self, params: Mapping[str, object], directions: Mapping[str, object]
            ) -> Params: ...


@dataclass
class TrainResult:
    """The parameters after training and the loss at each step (before its update).

    Attributes:
        params: the final parameters by name.
        losses: the loss at the start of each step.
        grad_norm: the gradient's 2-norm at the final parameters (L-BFGS and Newton-CG) or
            at the start of the last step (gradient descent).
        evaluations: passes over the data (value and gradient, or one HVP each).
    """

    params: Params
    losses: list[float] = field(default_factory=list)
    grad_norm: float = float("nan")
    evaluations: int = 0


def _copy(params: Mapping[str, object]) -> Params:
    if not isinstance(params, Mapping) or not params:
        raise KernelArgumentError(
            f"params must be a non-empty dict of arrays by name, e.g. {{'w': w}}; got "
            f"{type(params).__name__}", "params")
    out: Params = {}
    for k, v in params.items():
        a = np.array(v, dtype=np.float64)
        out[k] = float(a) if a.ndim == 0 else a
    return out


class _Update:
    """An optimizer's update rule for one parameter, translated to the IR once and evaluated
    with NumPy on the driver at each step."""

    def __init__(self, optimizer: object, name: str, value: np.ndarray | float):
        if not (hasattr(optimizer, "state_names") and callable(getattr(optimizer, "update",
                                                                       None))):
            raise DerivationError(
                "the optimizer must have state_names and update(param, grad, state, t) (see "
                f"symdl.optimizers), got {type(optimizer).__name__}")
        shape = np.shape(value)
        if len(shape) == 2:
            symbol = sp.MatrixSymbol(name, *shape)
        elif shape == ():
            symbol = sp.Symbol(name, real=True)
        else:
            raise KernelArgumentError(
                f"{name} has shape {shape}; parameters are matrices (a d x 1 column for a "
                "vector) or scalars", name)
        outputs = update_kernel_outputs(optimizer, symbol, STEP)
        translator = Translator(set())
        self.names = list(outputs)
        self.nodes = [translate_matrix_or_scalar(translator, sp.sympify(e))
                      for e in outputs.values()]
        self.states = [f"{s}_{name}" for s in optimizer.state_names]
        self.grad_name = f"grad_{name}"
        self.inputs = set(translator.leaves)

    def __call__(self, values: dict[str, object]) -> list[np.ndarray]:
        return evaluate_nodes(self.nodes, {k: v for k, v in values.items()
                                           if k in self.inputs}, {})


def gradient_descent(loss: Objective, params: Mapping[str, object], optimizer: object,
                     steps: int, hyperparameters: Mapping[str, float] | None = None,
                     callback: Callable[[int, float, Params], None] | None = None
                     ) -> TrainResult:
    """Full-batch training: ``steps`` updates of ``optimizer`` (``symdl.optimizers.Adam(lr=
    1e-3)``) from the gradient of ``loss`` over all its data.

    Args:
        loss: gives ``value_and_grad(params)`` (a ``DaskLoss``).
        params: the initial parameters by name (copied).
        optimizer: a ``symdl.optimizers`` rule; its states start at zero, the step at 1.
        steps: the number of updates.
        hyperparameters: values of the optimizer's symbolic hyperparameters by name.
        callback: called after each step with the step number, the loss and the parameters.
    """
    if not isinstance(steps, int) or steps < 0:
        raise KernelArgumentError(f"steps must be a non-negative int, got {steps!r}", "steps")
    current = _copy(params)
    updates = {k: _Update(optimizer, k, v) for k, v in current.items()}
    state = {s: np.zeros_like(np.asarray(current[k])) for k, u in updates.items()
             for s in u.states}
    result = TrainResult(current)
    for t in range(1, steps + 1):
        value, grad = loss.value_and_grad(current)
        result.evaluations += 1
        result.losses.append(float(value))
        result.grad_norm = _norm(grad)
        new: Params = {}
        for k, update in updates.items():
            values = {**dict(hyperparameters or {}), **state, k: current[k],
                      update.grad_name: grad[k], str(STEP): float(t)}
            arrays = update(values)
            for name, array in zip(update.names, arrays, strict=True):
                array = np.asarray(array, dtype=np.float64)
                if name == k:
                    new[k] = float(array) if np.ndim(current[k]) == 0 else array.reshape(
                        np.shape(current[k]))
                else:
                    state[name] = array.reshape(np.shape(current[k]))
        current = new
        result.params = current
        if callback is not None:
            callback(t, float(value), current)
    return result


# -- flat vectors: L-BFGS and Newton-CG work on one vector of every parameter ----------------


class _Flat:
    def __init__(self, params: Params):
        self.names = list(params)
        self.shapes = [np.shape(params[k]) for k in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]

    def vector(self, tree: Mapping[str, object]) -> np.ndarray:
        return np.concatenate([np.asarray(tree[k], dtype=np.float64).reshape(-1)
                               for k in self.names])

    def tree(self, vector: np.ndarray) -> Params:
        out: Params = {}
        offset = 0
        for k, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            chunk = vector[offset:offset + size]
            out[k] = float(chunk[0]) if shape == () else chunk.reshape(shape).copy()
            offset += size
        return out


def _norm(grad: Mapping[str, object]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(v))) for v in grad.values())))


def _line_search(loss: Objective, flat: _Flat, x: np.ndarray, f: float, g: np.ndarray,
                 p: np.ndarray, result: TrainResult, c1: float = 1e-4, shrink: float = 0.5,
                 tries: int = 30) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Backtracking from step 1 until the Armijo condition holds; ``None`` if it never
    does (then the direction is not a descent direction at this precision)."""
    slope = float(g @ p)
    alpha = 1.0
    for _ in range(tries):
        x_new = x + alpha * p
        f_new, g_new = loss.value_and_grad(flat.tree(x_new))
        result.evaluations += 1
        if np.isfinite(f_new) and f_new <= f + c1 * alpha * slope:
            return x_new, float(f_new), flat.vector(g_new)
        alpha *= shrink
    return None


def _start(loss: Objective, params: Mapping[str, object]):
    """The state a second-order method starts from: the parameters (copied), their flat
    layout, the flat vector, the loss, its flat gradient and the result that records them."""
    current = _copy(params)
    flat = _Flat(current)
    f, grad = loss.value_and_grad(current)
    g = flat.vector(grad)
    return current, flat, flat.vector(current), f, g, TrainResult(current, [float(f)],
                                                                  float(np.linalg.norm(g)), 1)


def lbfgs(loss: Objective, params: Mapping[str, object], steps: int = 100,
          memory: int = 10, tol: float = 1e-8) -> TrainResult:
    """Limited-memory BFGS: the two-loop recursion over the last ``memory`` steps, with a
    backtracking Armijo line search. Stops after ``steps`` iterations or when the gradient's
    norm is at most ``tol``.
    """
    current, flat, x, f, g, result = _start(loss, params)
    history: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(steps):
        if np.linalg.norm(g) <= tol:
            break
        q = g.copy()
        alphas = []
        for s, y, rho in reversed(history):
            a = rho * float(s @ q)
            alphas.append(a)
            q -= a * y
        if history:
            s, y, _ = history[-1]
            q *= float(s @ y) / float(y @ y)
        else:
            q /= max(1.0, float(np.linalg.norm(g)))  # a first step of length at most 1
        for (s, y, rho), a in zip(history, reversed(alphas), strict=True):
            b = rho * float(y @ q)
            q += (a - b) * s
        found = _line_search(loss, flat, x, f, g, -q, result)
        if found is None:
            break
        x_new, f, g_new = found
        s, y = x_new - x, g_new - g
        if float(s @ y) > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)):
            history.append((s, y, 1.0 / float(s @ y)))
            history = history[-memory:]
        x, g = x_new, g_new
        result.losses.append(f)
    result.params = flat.tree(x)
    result.grad_norm = float(np.linalg.norm(g))
    return result


def newton_cg(loss: HessianObjective, params: Mapping[str, object], steps: int = 20,
              cg_steps: int = 50, tol: float = 1e-8) -> TrainResult:
    """Truncated Newton: each step solves ``H p = -g`` by conjugate gradients (one Hessian-
    vector product, one pass over the data, per iteration; stopped at a relative residual of
    ``min(0.5, sqrt(|g|)) |g|`` or at negative curvature), then backtracks along ``p``.
    """
    current, flat, x, f, g, result = _start(loss, params)
    for _ in range(steps):
        gnorm = float(np.linalg.norm(g))
        if gnorm <= tol:
            break
        at = flat.tree(x)
        p = np.zeros_like(x)
        r = -g
        d = r.copy()
        forcing = min(0.5, np.sqrt(gnorm)) * gnorm
        for _ in range(cg_steps):
            hd = flat.vector(loss.hvp(at, flat.tree(d)))
            result.evaluations += 1
            curvature = float(d @ hd)
            if curvature <= 0:
                if not p.any():
                    p = -g  # no positive curvature seen: a gradient step
                break
            a = float(r @ r) / curvature
            p += a * d
            r_new = r - a * hd
            if np.linalg.norm(r_new) <= forcing:
                break
            d = r_new + (float(r_new @ r_new) / float(r @ r)) * d
            r = r_new
        found = _line_search(loss, flat, x, f, g, p, result)
        if found is None:
            break
        x, f, g = found
        result.losses.append(f)
    result.params = flat.tree(x)
    result.grad_norm = float(np.linalg.norm(g))
    return result


