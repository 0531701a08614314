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
from typing import NamedTuple, Protocol

import numpy as np
import sympy as sp

from symdl import ir
from symdl.define.optimizers import STEP  # the 1-based step number, a scalar kernel input
from symdl.define.symbols import fresh_name, symbol_name
from symdl.define.translate import Translator, translate_matrix_or_scalar
from symdl.derivation import Derivation
from symdl.errors import DerivationError, KernelArgumentError
from symdl.ir.keys import Gradient, OutputKey, Update, Value
from symdl.kernels.kernel import Kernel, as_numpy


class Optimizer(Protocol):
    state_names: tuple[str, ...]

    def update(self, param: sp.MatrixSymbol, grad: sp.MatrixExpr,
               state: Mapping[str, sp.MatrixSymbol], t: sp.Symbol
               ) -> tuple[sp.Basic, Mapping[str, sp.Basic]]: ...


class TrainingNames(NamedTuple):
    """The kernel inputs a training step adds to the definition's: the step counter and one
    state array per (state, parameter), named ``t`` and ``m_W1`` unless the definition already
    uses those names (then ``t_1``, ``m_W1_1``: a user's input is never merged with them)."""

    step: str
    states: dict[tuple[str, str], str]


def training_names(der: Derivation, optimizer: Optimizer) -> TrainingNames:
    """The names ``compile_training_step`` gives the step counter and the optimizer states."""
    taken = set(der.leaves) | {symbol_name(p) for p in der.wrt}
    step = fresh_name(str(STEP), taken)
    states = {(s, symbol_name(p)): fresh_name(f"{s}_{symbol_name(p)}", taken)
              for p in der.wrt for s in optimizer.state_names}
    return TrainingNames(step, states)


def _like(p: sp.Basic, name: str) -> sp.Basic:
    if isinstance(p, sp.MatrixSymbol):
        return sp.MatrixSymbol(name, *p.shape)
    return sp.Symbol(name, real=True)


def compile_training_step(der: Derivation, optimizer: Optimizer, jit: bool = True) -> Kernel:
    """One kernel: the loss, the gradient of every parameter of ``der`` and the update.

    Inputs: the definition's inputs, the parameters, one state array per optimizer state and
    parameter (``m_W1``, ``v_W1``), the step ``t`` and any hyperparameter the optimizer left
    symbolic (``training_names`` says how the step and states are named where the definition
    already uses ``t`` or ``m_W1``). Outputs (keys of ``symdl.ir.keys``): ``Value()`` (the
    loss before the update), ``Gradient("W1")`` (the gradient the update used: the same kernel
    can be checked against finite differences of its value), ``Update("W1")`` (spelt
    ``new:W1``) for each parameter and ``Update("m_W1")`` for each state.
    Parameters are ``MatrixSymbol``s of any shape (``1 x 1`` included) or real ``Symbol``s.
    ``jit=False`` runs the generated source as plain Python (see ``Derivation.compile``).
    """
    if not der.is_scalar:
        raise DerivationError("a training step needs a scalar loss; this definition is not scalar")
    params = [p for p in der.wrt if isinstance(p, (sp.MatrixSymbol, sp.Symbol))]
    if len(params) != len(der.wrt):
        raise DerivationError(
            "training steps update MatrixSymbol and Symbol parameters: write IndexedBase "
            "parameters as n x 1 MatrixSymbols")
    names = training_names(der, optimizer)
    step = STEP if names.step == str(STEP) else sp.Symbol(names.step, positive=True)
    outputs: dict[OutputKey, ir.Node] = {Value(): der.output}
    leaves = der.leaves
    for p in params:
        name = symbol_name(p)
        grad = _like(p, f"grad_{name}")  # replaced by the gradient node: never an input
        state = {s: _like(p, names.states[(s, name)]) for s in optimizer.state_names}
        new_param, new_state = optimizer.update(p, grad, state, step)
        translator = Translator(set(der.dims), {grad: der.gradient_node(p)})
        translator.leaves.update(leaves)
        outputs[Gradient(name)] = der.gradient_node(p)
        outputs[Update(name)] = translate_matrix_or_scalar(translator, sp.sympify(new_param))
        for s in optimizer.state_names:
            outputs[Update(names.states[(s, name)])] = translate_matrix_or_scalar(
                translator, sp.sympify(new_state[s]))
        leaves.update(translator.leaves)
    used = {leaf.name for leaf in ir.topological_order(list(outputs.values()))
            if isinstance(leaf, ir.Leaf)}
    kept = {symbol_name(p) for p in params} | set(names.states.values())
    arguments = [leaf for name, leaf in leaves.items() if name in used or name in kept]
    return Kernel(outputs, arguments, f"training step ({type(optimizer).__name__}): "
                  f"{der.title}", jit=jit)


class TrainingStep:
    """A compiled training step and the arrays it updates.

    >>> step = TrainingStep(der, symdl.optimizers.Adam(lr=1e-3), {"W1": W1, "b1": b1})
    >>> loss = step(X=X_batch, Y=Y_batch)      # forward, backward and update; returns the loss
    >>> step.params["W1"]                       # the current parameters

    Parameters and states are copied in; states start at zero and the step counter at 1.
    The precision is ``dtype`` when given, else float32 when every initial parameter is a
    float32 array, else float64; parameters, states, gradients and the loss keep it, and
    float32/float64 data is converted to it. ``jit=False`` runs the step as plain Python
    (the same generated source, not compiled: for tests).
    """

    def __init__(self, der: Derivation, optimizer: Optimizer,
                 params: Mapping[str, np.ndarray], dtype: type | None = None,
                 hyperparameters: Mapping[str, float] | None = None, jit: bool = True):
        _check_step_arguments(der, optimizer, params, hyperparameters)
        self.kernel = compile_training_step(der, optimizer, jit=jit)
        names = [symbol_name(p) for p in der.wrt]
        missing = sorted(set(names) - set(params))
        if missing:
            raise KernelArgumentError(f"initial values missing for parameters {missing}",
                                      missing[0])
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise KernelArgumentError(
                f"{unknown} are not parameters of this derivation (wrt: {names}); derive with "
                "them in wrt=[...] to train them, or pass them as data", unknown[0])
        initial = {n: _initial(n, params[n]) for n in names}
        self.dtype = _step_dtype(dtype, initial)
        """The precision of the parameters, states, gradients and loss."""
        self.names = training_names(der, optimizer)
        """The names of the step counter and the state arrays (see ``training_names``)."""
        shapes = self.kernel.inputs
        current = {n: _buffer(n, initial[n], self.dtype, scalar=shapes[n] == ()) for n in names}
        for (_, n), state in self.names.states.items():
            current[state] = np.zeros_like(current[n])
        self._names = names
        self._scalars = {n for n in current if shapes.get(n) == ()}
        self._current = current
        self._next = {n: np.empty_like(a) for n, a in current.items()}
        self._value = np.empty((1,), dtype=self.dtype)
        self.grad = {n: np.empty_like(current[n]) for n in names}
        """The gradients of the last step, by parameter name (written by the kernel)."""
        self.hyperparameters = dict(hyperparameters or {})
        self.t = 1
        self._validated: tuple | None = None
        self._inputs = self.kernel.input_names
        self._outputs = self.kernel.output_keys
        if self._outputs[0] != Value():
            raise AssertionError("a training-step kernel computes the value first")

    def _buffers(self) -> list[np.ndarray]:
        """The arrays the kernel writes, in the order of its outputs."""
        buffers = []
        for key in self._outputs:
            if isinstance(key, Value):
                buffers.append(self._value)
            elif isinstance(key, Gradient):
                buffers.append(self.grad[key.param])
            elif isinstance(key, Update):
                buffers.append(self._next[key.name])
            else:
                raise AssertionError(f"a training-step kernel has no output {key!r}")
        return buffers

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current parameters (a 0-d array for a scalar parameter)."""
        return {n: self._view(n) for n in self._names}

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The optimizer states by input name (``m_W1``)."""
        return {n: self._view(n) for n in self._current if n not in self._names}

    def _view(self, name: str) -> np.ndarray:
        array = self._current[name]
        return array.reshape(()) if name in self._scalars else array

    def _arguments(self, data: Mapping[str, object]) -> dict[str, object]:
        """Every kernel input: the batch (converted to the step's precision), the parameters
        and states (floats for scalar ones), the hyperparameters and the step counter."""
        own = {**self._current, **self.hyperparameters, self.names.step: None}
        clash = sorted(set(data) & set(own))
        if clash:
            raise KernelArgumentError(
                f"{clash} belong to the training step (parameters, optimizer states, "
                "hyperparameters or the step counter), not to the batch: pass only the data "
                "arrays; set values through step.params / step.hyperparameters", clash[0])
        arrays = {n: _converted(n, a, self.dtype) for n, a in data.items()}
        for n, a in self._current.items():
            arrays[n] = float(a[0]) if n in self._scalars else a
        arrays.update(self.hyperparameters)
        if self.names.step in self._inputs:
            arrays[self.names.step] = float(self.t)
        return arrays

    def __call__(self, /, **data: np.ndarray) -> float:
        """One step on a batch; returns the loss at the parameters before the update.

        The first call with a batch shape validates every argument (``Kernel.run``); later
        calls with data of the same shapes and dtypes go straight to the generated module,
        whose driver still checks every shape and dtype before the compiled code runs.
        """
        signature = tuple((n, getattr(a, "shape", None), getattr(a, "dtype", None))
                          for n, a in data.items())
        arrays = self._arguments(data)
        if signature != self._validated:
            self.kernel.run(arrays, out=dict(zip(self._outputs, self._buffers(), strict=True)))
            self._validated = signature
        else:
            self.kernel.run_unchecked([arrays[n] for n in self._inputs], self._buffers())
        self._current, self._next = self._next, self._current
        self.t += 1
        return float(self._value[0])


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _check_step_arguments(der: object, optimizer: object, params: object,
                          hyperparameters: object) -> None:
    if not isinstance(der, Derivation):
        raise DerivationError(f"a training step needs a Derivation (symdl.derive(loss, "
                              f"wrt=[...])), got {type(der).__name__}")
    if not (hasattr(optimizer, "state_names") and callable(getattr(optimizer, "update", None))):
        raise DerivationError(
            f"the optimizer must have state_names and update(param, grad, state, t) (see "
            f"symdl.optimizers: Adam(lr=1e-3), SGD(lr=0.1), ...), got {type(optimizer).__name__}")
    for what, value in (("params", params), ("hyperparameters", hyperparameters)):
        if value is not None and not isinstance(value, Mapping) or (
                what == "params" and value is None):
            raise KernelArgumentError(
                f"{what} must be a dict by name, e.g. {{'W1': W1}}; got {type(value).__name__}",
                what)


def _step_dtype(dtype: object, initial: Mapping[str, np.ndarray]) -> np.dtype:
    if dtype is None:
        given = {a.dtype for a in initial.values()}
        return np.dtype(np.float32) if given == {np.dtype(np.float32)} else np.dtype(np.float64)
    try:
        chosen = np.dtype(dtype)
    except TypeError as exc:
        raise KernelArgumentError(f"dtype={dtype!r} is not a NumPy dtype; pass np.float32 or "
                                  "np.float64", "dtype") from exc
    if chosen not in _FLOATS:
        raise KernelArgumentError(f"dtype={chosen} is not supported: training steps run in "
                                  "float32 or float64", "dtype", "float32 or float64", chosen)
    return chosen


def _initial(name: str, value: object) -> np.ndarray:
    value = as_numpy(name, value)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise KernelArgumentError(f"the initial value of {name} cannot be read as an array "
                                  f"({exc}); pass a NumPy array of numbers", name) from exc
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise KernelArgumentError(f"the initial value of {name} has dtype {array.dtype}; pass "
                                  "real numbers (a float32 or float64 array)", name)
    return array


def _buffer(name: str, value: np.ndarray, dtype: np.dtype, scalar: bool) -> np.ndarray:
    """A C-ordered copy of an initial parameter; a scalar parameter lives in a 1-entry array
    (what the kernel writes its new value into)."""
    if scalar and value.size != 1:
        raise KernelArgumentError(f"{name} is a scalar parameter: its initial value must be "
                                  f"one number, got shape {value.shape}", name, (), value.shape)
    array = np.array(value, dtype=dtype, order="C", copy=True)
    return array.reshape(1) if scalar else array


def _converted(name: str, value: object, dtype: np.dtype) -> object:
    """Float32 or float64 data as a C-ordered array in the step's precision; anything else as
    it is (the kernel's checks name what is wrong with it)."""
    value = as_numpy(name, value)
    if isinstance(value, np.ndarray) and value.dtype in _FLOATS:
        return np.ascontiguousarray(value, dtype=dtype)
    return value
