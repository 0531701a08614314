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

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import sympy as sp

from symdl import ir
from symdl.define.optimizers import STEP  # the 1-based step number, a scalar kernel input
from symdl.define.symbols import fresh_name, symbol_name
from symdl.define.translate import Translator, translate_matrix_or_scalar
from symdl.derivation import Derivation
from symdl.errors import DerivationError, KernelArgumentError, SymdlError
from symdl.ir.keys import Gradient, Named, OutputKey, Update, Value
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


def compile_training_step(der: Derivation, optimizer: Optimizer, jit: bool = True,
                          background: bool = False) -> Kernel:
    """One kernel: the loss, the gradient of every parameter of ``der`` and the update.

    Inputs: the definition's inputs, the parameters, one state array per optimizer state and
    parameter (``m_W1``, ``v_W1``), the step ``t`` and any hyperparameter the optimizer left
    symbolic (``training_names`` says how the step and states are named where the definition
    already uses ``t`` or ``m_W1``). Outputs (keys of ``symdl.ir.keys``): ``Value()`` (the
    loss before the update), ``Gradient("W1")`` (the gradient the update used: the same kernel
    can be checked against finite differences of its value), ``Update("W1")`` (spelt
    ``new:W1``) for each parameter and ``Update("m_W1")`` for each state.
    Parameters are ``MatrixSymbol``s of any shape (``1 x 1`` included) or real ``Symbol``s.
    ``jit=False`` runs the generated source as plain Python (see ``Derivation.compile``);
    ``background=True`` answers first calls with NumPy while Numba compiles (likewise).
    """
    if not der.is_scalar:
        raise DerivationError("a training step needs a scalar loss; this definition is not scalar")
    params = [p for p in der.wrt if isinstance(p, (sp.MatrixSymbol, sp.Symbol))
              or (isinstance(p, sp.IndexedBase) and p.shape is not None)]
    if len(params) != len(der.wrt):
        raise DerivationError(
            "training steps update MatrixSymbol, Symbol and IndexedBase (with a shape) "
            "parameters")
    names = training_names(der, optimizer)
    step = STEP if names.step == str(STEP) else sp.Symbol(names.step, positive=True)
    outputs: dict[OutputKey, ir.Node] = {Value(): der.output}
    leaves = der.leaves
    for p in params:
        name = symbol_name(p)
        if isinstance(p, sp.IndexedBase):
            outputs.update(_tensor_update(der, optimizer, p, names, step, leaves))
            continue
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
                  f"{der.title}", jit=jit, background=background)


class TrainingStep:
    """A compiled training step and the arrays it updates.

    >>> step = TrainingStep(der, symdl.optimizers.Adam(lr=1e-3), {"W1": W1, "b1": b1})
    >>> loss = step(X=X_batch, Y=Y_batch)      # forward, backward and update; returns the loss
    >>> step.params["W1"]                       # the current parameters

    Parameters and states are copied in; states start at zero and the step counter at 1.
    The precision is ``dtype`` when given, else float32 when every initial parameter is a
    float32 array, else float64; parameters, states, gradients and the loss keep it, and
    float32/float64 data is converted to it. ``jit=False`` runs the step as plain Python
    (the same generated source, not compiled: for tests). ``background=True`` answers the
    first steps with the NumPy evaluator while Numba compiles the step in a thread (see
    ``Derivation.compile``; ``step.kernel.wait_compiled()`` waits for it).

    The same derivation gives the forward pass: ``output=`` names the model's output, one of
    the definition's named intermediates (its symbol, ``output=Z2``, or its name,
    ``output="Z2"``). Then ``step.predict(X=X_test)`` returns it at the current parameters
    and ``step.evaluate(X=X_test, Y=Y_test)`` returns the loss and it on held-out data,
    without an update (each kernel compiled once, on first use):

    >>> step = TrainingStep(der, Adam(lr=1e-3), {"W1": W1, ...}, output=Z2)  # doctest: +SKIP
    >>> logits = step.predict(X=X_test)                                       # doctest: +SKIP
    >>> step.save("checkpoint.npz")                                          # doctest: +SKIP
    >>> step = TrainingStep.load("checkpoint.npz", der, Adam(lr=1e-3), output=Z2)  # doctest: +SKIP

    ``save``/``load_state``/``load`` write and read the parameters, optimizer states and
    step counter as ``.npz`` (no pickle: loading never runs code).
    """

    def __init__(self, der: Derivation, optimizer: Optimizer,
                 params: Mapping[str, np.ndarray], dtype: type | None = None,
                 hyperparameters: Mapping[str, float] | None = None, jit: bool = True,
                 output: sp.Basic | str | None = None, background: bool = False):
        _check_step_arguments(der, optimizer, params, hyperparameters)
        self._der = der
        self._optimizer_name = type(optimizer).__name__
        self._jit = jit
        self._output = None if output is None else _named_output(der, output)
        self._forward: dict[bool, Kernel] = {}
        self._background = background
        self.kernel = compile_training_step(der, optimizer, jit=jit, background=background)
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
        plan = self.__dict__.get("_buffer_plan")
        if plan is None:  # which dict holds each output's array: worked out once (per call
            plan = []     # it cost more than the rest of the step's Python at batch 1)
            for key in self._outputs:
                if isinstance(key, Value):
                    plan.append((None, None))
                elif isinstance(key, Gradient):
                    plan.append(("grad", key.param))
                elif isinstance(key, Update):
                    plan.append(("_next", key.name))
                else:
                    raise AssertionError(f"a training-step kernel has no output {key!r}")
            self._buffer_plan = plan
        value, grad, new = self._value, self.grad, self._next
        return [value if where is None else (grad[name] if where == "grad" else new[name])
                for where, name in plan]

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

    def _argument_list(self, data: Mapping[str, object]) -> list | None:
        """``_arguments`` in the kernel's order without the dict building, for data of the
        names, shapes and dtypes of a validated call (checked then for clashes); None when an
        input is not found (a hyperparameter removed since: the full path says so)."""
        current, hyper, dtype = self._current, self.hyperparameters, self.dtype
        listed = []
        for name in self._inputs:
            if name in data:
                listed.append(_converted(name, data[name], dtype))
            elif name in current:
                array = current[name]
                listed.append(float(array[0]) if name in self._scalars else array)
            elif name in hyper:
                listed.append(hyper[name])
            elif name == self.names.step:
                listed.append(float(self.t))
            else:
                return None
        return listed

    def kernel_arguments(self, /, **data: np.ndarray) -> tuple[list, list[np.ndarray]]:
        """The kernel's arguments and output buffers for a step on ``data`` (converted and
        checked as a step does), in the order ``self.kernel.run_unchecked`` takes them;
        nothing is stepped. For timing the generated code's parts (as
        ``benchmarks/cnn_step_bench.py`` does); ``step(**data)`` is the way to train."""
        arrays = self._arguments(data)
        return [arrays[n] for n in self._inputs], self._buffers()

    def __call__(self, /, **data: np.ndarray) -> float:
        """One step on a batch; returns the loss at the parameters before the update.

        The first call with a batch shape validates every argument (``Kernel.run``); later
        calls with data of the same shapes and dtypes go straight to the generated module,
        whose driver still checks every shape and dtype before the compiled code runs. Both
        run the steps as one compiled function, compiled once, on the first call.
        """
        signature = tuple((n, getattr(a, "shape", None), getattr(a, "dtype", None))
                          for n, a in data.items())
        if signature == self._validated:
            listed = self._argument_list(data)
            if listed is not None:
                self.kernel.run_unchecked(listed, self._buffers())
                self._current, self._next = self._next, self._current
                self.t += 1
                return float(self._value[0])
        arrays = self._arguments(data)
        if signature != self._validated:
            # The compiled driver from the first call: the plain one first compiled the loops
            # and the compiled one then compiled again (the demo's step: 2.9 s, then 9.5 s).
            # Serial, as run_unchecked below: one variant compiled, the same numbers.
            self.kernel.run(arrays, out=dict(zip(self._outputs, self._buffers(), strict=True)),
                            parallel=False, compiled=True)
            if self.kernel.wait_compiled(0):  # not answered by NumPy while compiling
                self._validated = signature
        else:
            self.kernel.run_unchecked([arrays[n] for n in self._inputs], self._buffers())
        self._current, self._next = self._next, self._current
        self.t += 1
        return float(self._value[0])

    def compile(self, /, **data: np.ndarray) -> None:
        """Compiles the step for batches like ``data`` (the first step would), updating
        nothing: parameters, states and the step counter stay as they are. Call it before a
        timed or progress-barred loop, so that the compile is its own phase; the arrays are
        read, results go to scratch buffers."""
        signature = tuple((n, getattr(a, "shape", None), getattr(a, "dtype", None))
                          for n, a in data.items())
        scratch = [np.empty_like(b) for b in self._buffers()]
        self.kernel.run(self._arguments(data), out=dict(zip(self._outputs, scratch, strict=True)),
                        parallel=False, compiled=True)
        if self.kernel.wait_compiled(0):
            self._validated = signature

    # -- forward pass and held-out evaluation --------------------------------------------

    @property
    def output(self) -> str | None:
        """The name of the named intermediate ``predict`` returns (``output=``), if any."""
        return None if self._output is None else self._output.name

    def forward_kernel(self, loss: bool = False) -> Kernel:
        """The kernel of the forward pass (``output=``), and of the loss with ``loss=True``
        (``evaluate``): compiled on first use, once per step object."""
        if not loss and self._output is None:
            raise DerivationError(
                "predict() needs the model's output: name one of the definition's named "
                f"intermediates ({_named_list(self._der)}) with TrainingStep(..., output=Z2)")
        if loss not in self._forward:
            outputs: dict[OutputKey, ir.Node] = {Value(): self._der.output} if loss else {}
            if self._output is not None:
                outputs[Named(self._output.name)] = self._output
            leaves = [n for n in ir.topological_order(list(outputs.values()))
                      if isinstance(n, ir.Leaf)]
            what = "loss and output" if loss else f"forward pass to {self._output.name}"
            self._forward[loss] = Kernel(outputs, leaves, f"{what}: {self._der.title}",
                                         jit=self._jit, background=self._background)
        return self._forward[loss]

    def _forward_arguments(self, kernel: Kernel, data: Mapping[str, object]
                           ) -> dict[str, object]:
        """The data (in the step's precision) and the parameters and hyperparameters the
        forward kernel reads."""
        own = sorted(set(data) & (set(self._current) | set(self.hyperparameters)))
        if own:
            raise KernelArgumentError(
                f"{own} belong to the training step (parameters, optimizer states or "
                "hyperparameters), not to the data: pass only the data arrays", own[0])
        arrays = {n: _converted(n, a, self.dtype) for n, a in data.items()}
        for n in kernel.input_names:
            if n in self._current:
                arrays[n] = float(self._current[n][0]) if n in self._scalars else self._current[n]
            elif n in self.hyperparameters:
                arrays[n] = self.hyperparameters[n]
        return arrays

    def predict(self, /, **data: np.ndarray) -> np.ndarray:
        """The model's output (``output=``) on ``data`` at the current parameters: the
        forward pass alone (only the data it reads: ``predict(X=X_test)``).

        Raises:
            DerivationError: the step was built without ``output=``.
            KernelArgumentError: missing, unexpected or misshapen data.
        """
        kernel = self.forward_kernel()
        result = kernel.run(self._forward_arguments(kernel, data))
        return result.outputs[Named(self._output.name)]

    def evaluate(self, /, **data: np.ndarray) -> Evaluation:
        """The loss (and the ``output=`` intermediate, when named) on held-out data at the
        current parameters, without an update: ``step.evaluate(X=X_test, Y=Y_test)``."""
        kernel = self.forward_kernel(loss=True)
        result = kernel.run(self._forward_arguments(kernel, data))
        output = None if self._output is None else result.outputs[Named(self._output.name)]
        return Evaluation(float(result.value), output)

    # -- saving and loading the state ---------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Writes the parameters, optimizer states and step counter to ``path`` (``.npz``,
        NumPy arrays and strings only); returns the path.

        The file holds a format name and version, the array names, the optimizer's class
        name and the definition's title: ``load_state`` checks them all.
        """
        path = Path(path)
        names = list(self._current)
        content = {
            "format": np.array(STATE_FORMAT), "version": np.array(STATE_VERSION),
            "names": np.array(names, dtype=str), "t": np.array(self.t, dtype=np.int64),
            "optimizer": np.array(self._optimizer_name), "model": np.array(self._der.title),
        }
        content.update({f"array{k}": self._current[n] for k, n in enumerate(names)})
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as file:  # np.savez would append .npz to a str path
            np.savez(file, **content)
        os.replace(partial, path)  # never a half-written file under the name
        return path

    def load_state(self, path: str | Path, check_model: bool = True) -> None:
        """Replaces the parameters, optimizer states and step counter with those ``save``
        wrote to ``path``. Hyperparameters stay as this step has them.

        Args:
            path: a file written by ``save``.
            check_model: refuse a file saved from another definition (by its title); pass
                False to load the arrays into a changed definition of the same parameters.

        Raises:
            TrainingStateError: the file is no symdl training state, of another version,
                optimizer or model, lacks an array or has one of another shape or dtype.
        """
        state = read_state(path)
        if state.optimizer != self._optimizer_name:
            raise TrainingStateError(
                f"{path} holds the state of a {state.optimizer} optimizer; this step uses "
                f"{self._optimizer_name}: build the step with the same optimizer")
        if check_model and state.model != self._der.title:
            raise TrainingStateError(
                f"{path} was saved from another model ({state.model!r:.120}); this step "
                f"trains {self._der.title!r:.120}. Pass check_model=False to load its arrays "
                "anyway (same names, shapes and dtypes)")
        missing = [n for n in self._current if n not in state.arrays]
        unknown = [n for n in state.arrays if n not in self._current]
        if missing or unknown:
            raise TrainingStateError(
                f"{path} does not fit this step: it lacks {missing} and has {unknown} that "
                f"this step does not (the step holds {list(self._current)})")
        for n, array in state.arrays.items():
            own = self._current[n]
            if array.shape != own.shape or array.dtype != own.dtype:
                raise TrainingStateError(
                    f"{n} in {path} is {array.dtype} of shape {array.shape}; this step holds "
                    f"{own.dtype} of shape {own.shape}", )
        for n, array in state.arrays.items():
            np.copyto(self._current[n], array)
        self.t = state.t

    @classmethod
    def load(cls, path: str | Path, der: Derivation, optimizer: Optimizer,
             hyperparameters: Mapping[str, float] | None = None, jit: bool = True,
             output: sp.Basic | str | None = None, check_model: bool = True) -> TrainingStep:
        """A step built from ``der`` and ``optimizer`` with the state ``save`` wrote to
        ``path`` (parameters, optimizer states, step counter; the precision of the file).
        The other arguments are those of ``TrainingStep``; see ``load_state``."""
        state = read_state(path)
        names = {symbol_name(p) for p in der.wrt} if isinstance(der, Derivation) else set()
        params = {n: a for n, a in state.arrays.items() if n in names}
        if names - set(params):
            raise TrainingStateError(
                f"{path} has no values of the parameters {sorted(names - set(params))} of this "
                f"derivation (it holds {list(state.arrays)}): it is the state of another model")
        dtypes = {a.dtype for a in state.arrays.values()}
        step = cls(der, optimizer, params, dtype=dtypes.pop() if len(dtypes) == 1 else None,
                   hyperparameters=hyperparameters, jit=jit, output=output)
        step.load_state(path, check_model=check_model)
        return step


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

STATE_FORMAT = "symdl.TrainingStep"
STATE_VERSION = 1
"""The version of the ``.npz`` layout ``TrainingStep.save`` writes (``load_state`` reads
only this one)."""


class TrainingStateError(SymdlError, ValueError):
    """A saved training state that cannot be loaded: no symdl state file, another format
    version, optimizer or model, a missing array or one of another shape or dtype."""


class Evaluation(NamedTuple):
    """What ``TrainingStep.evaluate`` returns: the loss, and the ``output=`` intermediate
    (``None`` when the step names none)."""

    loss: float
    output: np.ndarray | None


class SavedState(NamedTuple):
    """A training state as ``read_state`` found it in a file."""

    arrays: dict[str, np.ndarray]
    t: int
    optimizer: str
    model: str


def read_state(path: str | Path) -> SavedState:
    """The state ``TrainingStep.save`` wrote to ``path``, checked for its format, version and
    completeness; never runs code (``np.load(..., allow_pickle=False)``).

    Raises:
        TrainingStateError: an unreadable file, or one that is no symdl training state of
            this version.
    """
    path = Path(path)
    try:
        content = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise TrainingStateError(f"cannot read a training state from {path}: {exc}") from None
    if not hasattr(content, "files"):  # one .npy array, not an .npz archive
        raise TrainingStateError(f"{path} is one array, not a symdl training state "
                                 "(TrainingStep.save writes an .npz archive)")
    try:
        with content:
            return _state_from(path, content)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        # TrainingStateError is a ValueError: the messages above pass through unchanged.
        if isinstance(exc, TrainingStateError):
            raise
        raise TrainingStateError(f"cannot read a training state from {path}: {exc}") from None


def _state_from(path: Path, content) -> SavedState:
    files = set(content.files)
    header = {"format", "version", "names", "t", "optimizer", "model"}
    if "format" not in files or str(content["format"]) != STATE_FORMAT:
        raise TrainingStateError(f"{path} is no symdl training state (TrainingStep.save "
                                 "writes one)")
    if not header <= files:
        raise TrainingStateError(f"{path} lacks {sorted(header - files)}: a damaged file")
    version = content["version"]
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != STATE_VERSION:
        raise TrainingStateError(f"{path} has format version {version}; this symdl reads "
                                 f"version {STATE_VERSION}")
    names = content["names"]
    if names.dtype.kind != "U" or names.ndim != 1:
        raise TrainingStateError(f"{path}: its names are not a list of strings")
    arrays = {}
    for k, name in enumerate(names.tolist()):
        key = f"array{k}"
        if key not in files:
            raise TrainingStateError(f"{path} lacks the array of {name!r} ({key})")
        array = content[key]
        if array.dtype not in _FLOATS:
            raise TrainingStateError(f"{name} in {path} has dtype {array.dtype}; states are "
                                     "float32 or float64")
        arrays[name] = array
    t = content["t"]
    if t.shape != () or t.dtype.kind not in "iu" or int(t) < 1:
        raise TrainingStateError(f"{path}: the step counter t = {t} is no positive integer")
    return SavedState(arrays, int(t), str(content["optimizer"]), str(content["model"]))


def _named_list(der: Derivation) -> list[str]:
    return [n.name for n in ir.topological_order([der.output]) if isinstance(n, ir.Named)]


def _named_output(der: Derivation, output: object) -> ir.Named:
    """The named intermediate ``output`` names (its symbol or its name)."""
    if isinstance(output, str):
        name = output
    elif isinstance(output, sp.Basic):
        name = symbol_name(output)
    else:
        raise DerivationError(f"output= takes a named intermediate's symbol or name (Z2 or "
                              f"'Z2'), got {type(output).__name__}")
    for node in ir.topological_order([der.output]):
        if isinstance(node, ir.Named) and node.name == name:
            return node
    raise DerivationError(
        f"output={name!r} names no intermediate of this definition; its named intermediates "
        f"are {_named_list(der)} (name a step of the definition, e.g. (Z2, A1 * W2))")


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


def _tensor_update(der: Derivation, optimizer: Optimizer, p: sp.IndexedBase,
                   names: TrainingNames, step: sp.Basic,
                   leaves: dict[str, ir.Leaf]) -> dict[OutputKey, ir.Node]:
    """The update of a tensor parameter (a convolution kernel ``K[u, v, c, o]``): the
    optimizer's matrix rule applied to the parameter, its gradient and its states seen as
    ``1 x size`` rows (one-to-one reshapes, ``symdl.ir.indexed``), the results read back in
    the parameter's shape. Adds the state arrays to ``leaves``."""
    from symdl.ir.indexed import AffineMap

    name = symbol_name(p)
    shape = tuple(sp.sympify(d) for d in p.shape)
    size = sp.Mul(*shape)
    coeffs, stride = [], sp.Integer(1)
    for d in reversed(shape):
        coeffs.append(stride)
        stride = stride * d
    position = AffineMap.of(list(reversed(coeffs)))
    row = AffineMap.of([0] * len(shape))

    def flat(node: ir.Node) -> ir.Node:
        return ir.affine_scatter(node, (1, size), (row, position))

    def back(node: ir.Node) -> ir.Node:
        return ir.affine_read(node, shape, (row, position))

    leaf = leaves.get(name) or ir.leaf(name, shape, p)
    grad_node = der.gradient_node(p)
    proxy = {"param": sp.MatrixSymbol(name, 1, size),
             "grad": sp.MatrixSymbol(f"grad_{name}", 1, size)}
    named = {proxy["param"]: flat(leaf), proxy["grad"]: flat(grad_node)}
    state_proxies, state_leaves = {}, {}
    for s in optimizer.state_names:
        state_name = names.states[(s, name)]
        state_leaves[s] = ir.leaf(state_name, shape, sp.IndexedBase(state_name, shape=shape))
        state_proxies[s] = sp.MatrixSymbol(state_name, 1, size)
        named[state_proxies[s]] = flat(state_leaves[s])
    new_param, new_state = optimizer.update(proxy["param"], proxy["grad"], state_proxies, step)
    translator = Translator(set(der.dims), named)
    translator.leaves.update(leaves)
    outputs: dict[OutputKey, ir.Node] = {
        Gradient(name): grad_node,
        Update(name): back(translate_matrix_or_scalar(translator, sp.sympify(new_param)))}
    for s in optimizer.state_names:
        outputs[Update(names.states[(s, name)])] = back(
            translate_matrix_or_scalar(translator, sp.sympify(new_state[s])))
    leaves.update(translator.leaves)
    for state_leaf in state_leaves.values():
        leaves[state_leaf.name] = state_leaf
    leaves.setdefault(name, leaf)
    return outputs
