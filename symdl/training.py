"""Fused training steps: the loss, its gradients and an optimizer update in one kernel.

``compile_training_step(der, optimizer)`` writes the optimizer's update rule with the
parameter's gradient *node* in place of a gradient input, so the generated kernel runs the
forward pass, the backward pass and the update of every parameter and optimizer state in one
call, with no Python between them. ``TrainingStep`` owns the arrays: parameters and states
live in two buffer sets that swap after each step (the kernel reads one set and writes the
other: no allocation, and no output overwrites an input the backward pass still reads).

An optimizer is any object with

* ``state_names``: the names of its per-parameter state arrays (``("m", "v")`` for Adam);
* ``update(param, grad, state, t)``: SymPy expressions for the new parameter and the new
  state (a dict by state name), given the parameter, its gradient, the current state (one
  MatrixSymbol per name, shaped like the parameter) and the 1-based step number ``t``.

``symdl.optimizers`` has SGD, momentum, Nesterov, RMSprop, Adagrad, Adam and AdamW.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import sympy as sp

from symdl import ir
from symdl.derivation import Derivation, _symbol_name
from symdl.errors import DerivationError, KernelArgumentError
from symdl.frontend import Translator, translate_matrix_or_scalar
from symdl.kernel import Kernel
from symdl.optimizers import STEP  # the 1-based step number, a scalar kernel input


class Optimizer(Protocol):
    state_names: tuple[str, ...]

    def update(self, param: sp.MatrixSymbol, grad: sp.MatrixExpr,
               state: Mapping[str, sp.MatrixSymbol], t: sp.Symbol
               ) -> tuple[sp.Basic, Mapping[str, sp.Basic]]: ...


def _state_name(state: str, param: str) -> str:
    return f"{state}_{param}"


def compile_training_step(der: Derivation, optimizer: Optimizer) -> Kernel:
    """One kernel: the loss, the gradient of every parameter of ``der`` and the update.

    Inputs: the definition's inputs, the parameters, one state array per optimizer state and
    parameter (``m_W1``, ``v_W1``), the step ``t`` and any hyperparameter the optimizer left
    symbolic. Outputs: ``value`` (the loss before the update), ``grad:W1`` (the gradient the
    update used: the same kernel can be checked against finite differences of its value),
    ``new:W1`` for each parameter and ``new:m_W1`` for each state.
    """
    if not der.is_scalar:
        raise DerivationError("a training step needs a scalar loss; this definition is not scalar")
    params = [p for p in der.wrt if isinstance(p, sp.MatrixSymbol)]
    if len(params) != len(der.wrt):
        raise DerivationError(
            "training steps update matrix parameters: write scalars and IndexedBase parameters "
            "as 1 x 1 or n x 1 MatrixSymbols")
    outputs: dict[str, ir.Node] = {"value": der.output}
    leaves = der.leaves
    for p in params:
        name = _symbol_name(p)
        grad = sp.MatrixSymbol(f"grad_{name}", *p.shape)
        state = {s: sp.MatrixSymbol(_state_name(s, name), *p.shape) for s in optimizer.state_names}
        new_param, new_state = optimizer.update(p, grad, state, STEP)
        translator = Translator(set(der.dims), {grad: der.gradient_node(p)})
        translator.leaves.update(leaves)
        outputs[f"grad:{name}"] = der.gradient_node(p)
        outputs[f"new:{name}"] = translate_matrix_or_scalar(translator, sp.sympify(new_param))
        for s in optimizer.state_names:
            outputs[f"new:{_state_name(s, name)}"] = translate_matrix_or_scalar(
                translator, sp.sympify(new_state[s]))
        leaves.update(translator.leaves)
    used = {leaf.name for leaf in ir.topological_order(list(outputs.values()))
            if isinstance(leaf, ir.Leaf)}
    kept = {_symbol_name(p) for p in params} | {
        _state_name(s, _symbol_name(p)) for p in params for s in optimizer.state_names}
    arguments = [leaf for name, leaf in leaves.items() if name in used or name in kept]
    return Kernel(outputs, arguments, f"training step ({type(optimizer).__name__}): "
                  f"{der.title}")


class TrainingStep:
    """A compiled training step and the arrays it updates.

    >>> step = TrainingStep(der, symdl.optimizers.Adam(lr=1e-3), {"W1": W1, "b1": b1})
    >>> loss = step(X=X_batch, Y=Y_batch)      # forward, backward and update; returns the loss
    >>> step.params["W1"]                       # the current parameters

    Parameters and states are copied in (float64 unless ``dtype`` says otherwise); states
    start at zero and the step counter at 1.
    """

    def __init__(self, der: Derivation, optimizer: Optimizer,
                 params: Mapping[str, np.ndarray], dtype: type = np.float64,
                 hyperparameters: Mapping[str, float] | None = None):
        self.kernel = compile_training_step(der, optimizer)
        names = [_symbol_name(p) for p in der.wrt]
        missing = sorted(set(names) - set(params))
        if missing:
            raise KernelArgumentError(f"initial values missing for parameters {missing}",
                                      missing[0])
        current = {n: np.array(params[n], dtype=dtype, order="C", copy=True) for n in names}
        for n in names:
            for s in optimizer.state_names:
                current[_state_name(s, n)] = np.zeros_like(current[n])
        self._names = names
        self._state_names = optimizer.state_names
        self._current = current
        self._next = {n: np.empty_like(a) for n, a in current.items()}
        self._value = np.empty((1,), dtype=dtype)
        self.grad = {n: np.empty_like(current[n]) for n in names}
        """The gradients of the last step, by parameter name (written by the kernel)."""
        self.hyperparameters = dict(hyperparameters or {})
        self.t = 1
        self._validated: tuple | None = None
        self._inputs = self.kernel.input_names
        self._outputs = self.kernel.output_names
        if self._outputs[0] != "value":
            raise AssertionError("a training-step kernel computes the value first")

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {n: self._current[n] for n in self._names}

    @property
    def state(self) -> dict[str, np.ndarray]:
        return {n: a for n, a in self._current.items() if n not in self._names}

    def __call__(self, **data: np.ndarray) -> float:
        """One step on a batch; returns the loss at the parameters before the update.

        The first call with a batch shape validates every argument (``Kernel.__call__``);
        later calls with data of the same shapes and dtypes go straight to the generated
        module, whose driver still checks every shape and dtype before the compiled code runs.
        """
        signature = tuple((n, getattr(a, "shape", None), getattr(a, "dtype", None))
                          for n, a in data.items())
        if signature != self._validated:
            out = {f"new:{n}": a for n, a in self._next.items()}
            out.update({f"grad:{n}": a for n, a in self.grad.items()})
            out["value"] = self._value
            step = {"t": float(self.t)} if "t" in self._inputs else {}
            self.kernel(out=out, **step, **self.hyperparameters, **self._current, **data)
            self._validated = signature
        else:
            arrays = {n: np.ascontiguousarray(a) for n, a in data.items()}
            arrays.update(self._current)
            arrays.update(self.hyperparameters)
            arrays["t"] = float(self.t)
            buffers = {"new": self._next, "grad": self.grad}
            self.kernel.run_unchecked(
                [arrays[n] for n in self._inputs],
                [self._value] + [buffers[kind][name] for kind, _, name in
                                 (n.partition(":") for n in self._outputs[1:])])
        self._current, self._next = self._next, self._current
        self.t += 1
        return float(self._value[0])
