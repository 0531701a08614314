"""Compiled kernels: ``Derivation.compile()`` returns a ``Kernel``; calling it validates the
arrays and runs the generated code.

Conventions, checked before any jitted code runs:

* arrays are passed by the names of the definition's symbols: ``k(X=X, w=w, y=y)``;
* every array is float64, or every array is float32 (results then are float32); other
  dtypes raise ``KernelArgumentError``;
* each array has exactly the shape of its symbol, with every dimension consistent across
  arrays (a ``d x 1`` column is a 2-D array of shape ``(d, 1)``); no dimension may be 0;
* non-contiguous arrays (slices, transposes, Fortran order) are copied to C order first;
* NaN and inf propagate to the results as IEEE arithmetic does;
* whole-array sums accumulate in float64; matrix products and partial sums in the dtype of the
  inputs, as BLAS does;
* ``out=`` takes preallocated result arrays by output key (``symdl.ir.keys``: ``Gradient("w")``)
  or its spelling (``"grad:w"``, see ``symdl.ir.keys.resolve``), so that a training loop
  allocates no results; temporaries are still allocated.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import sympy as sp

from symdl import ir
from symdl.errors import EvaluationError, KernelArgumentError, PerformanceWarning
from symdl.ir import rewrites
from symdl.ir.assumptions import declared_checks, violation
from symdl.ir.evaluate import evaluate as evaluate_nodes
from symdl.ir.keys import (
    HVP,
    Gradient,
    HessianBlock,
    OutputKey,
    OutputKeyError,
    Outputs,
    Value,
    as_key,
    resolve,
)
from symdl.kernels.background import BackgroundCompiles, private_copies
from symdl.kernels.codegen import Source, generate, index_bounds
from symdl.kernels.compilable import check_compilable
from symdl.kernels.jit import load, load_interpreted, record_compiled
from symdl.kernels.plan import plan
from symdl.kernels.progress import compile_progress
from symdl.kernels.scratch import ScratchPool

PARALLEL_MIN_ENTRIES = 1 << 23
"""Calls whose largest loop runs over at least this many entries (8.4 million) use the
parallel loops. Below, a fork and join per loop costs more than the second thread gains:
measured on 2 cores with OpenBLAS at 2 threads, the value and 8 gradients of a ReLU MLP
256-512-512-512-10 took, serial / parallel loops, 9.2 / 10.8 ms at batch 256 (loops of 131,072
entries), 36 / 44 ms at batch 1024 and 143 / 186 ms at batch 4096 (2 million entries); softmax
cross-entropy over 4096 x 1000 (4 million) 5.1 / 5.8 ms; a logistic-regression gradient over
100,000 x 100 (10 million) 6.2 / 4.4 ms. ``parallel=True`` asks for them at any size."""


def loop_sizes(steps) -> list[sp.Expr]:
    """How many entries the jitted steps of a plan loop over, in the dimension symbols: each
    fused loop nest's iteration space and every array a jitted step reads or writes (a row
    stream loops over rows but reads whole rows of its matrix). Arrays only BLAS products
    read are not counted: those products thread by themselves."""
    sizes = []
    for step in steps:
        if not step.jitted:
            continue
        sizes += [sp.Mul(*group.dims) for group in step.loop_groups()]
        nodes = [*step.computed(), *(op for op, _ in step.reads())]
        sizes += [sp.Mul(*node.shape) for node in nodes if getattr(node, "shape", None)]
    return sizes


def _prefer_workqueue_threading() -> None:
    """Numba's parallel loops run on its workqueue threading layer unless the user chose one
    (``NUMBA_THREADING_LAYER``) or a parallel loop already ran: the OpenMP layer's idle
    workers spin after each loop and take the cores from the BLAS products that follow
    (the 2-layer network's step took 3x longer at 2 threads with it). The workqueue layer
    cannot run two parallel regions at once (it aborts the process), and Numba releases the GIL
    while a parallel loop runs, so parallel kernel calls take ``_PARALLEL_LOCK`` (see
    ``_run``)."""
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
    try:
        numba.threading_layer()
    except ValueError:  # no parallel region has run yet: the layer is still to be chosen
        numba.config.THREADING_LAYER = "workqueue"


_prefer_workqueue_threading()
_warned_about_layer = False

_PARALLEL_LOCK = threading.Lock()
"""Held while a kernel runs its parallel loops: one process runs one parallel kernel at a time
(two Python threads in parallel regions at once abort the workqueue layer). Serial calls run
without it, concurrently."""


def _run(function, *args, parallel: bool, **options) -> None:
    """Runs ``function`` (a generated driver); its parallel variant under the process's
    parallel lock, the serial one without. A thread that finds the lock taken waits rather
    than running the serial variant: the running call already uses every core, and a call's
    result (its summation order) then depends on its arguments, never on what another thread
    happens to do."""
    if not parallel:
        function(*args, parallel=False, **options)
        return
    with _PARALLEL_LOCK:
        function(*args, parallel=True, **options)


def _warn_if_spinning_threads() -> None:
    """Warns once per process when parallel loops run on the OpenMP layer the user did not
    ask for (something started Numba's threads before symdl was imported)."""
    global _warned_about_layer
    if _warned_about_layer or os.environ.get("NUMBA_THREADING_LAYER"):
        return
    try:
        layer = numba.threading_layer()
    except ValueError:  # not started yet: the first parallel call starts symdl's choice
        return
    _warned_about_layer = True
    if layer == "omp":
        warnings.warn(
            "Numba's parallel loops run on the OpenMP threading layer, because Numba's "
            "threads started before symdl was imported (numba.get_num_threads() or a "
            "parallel=True function does that); its idle workers spin and take the cores from "
            "the BLAS products between loops, which can make kernels several times slower. "
            "Import symdl first, or set NUMBA_THREADING_LAYER=workqueue, or pass "
            "parallel=False.", PerformanceWarning, stacklevel=3)

_SUPPORTED_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
_ABSENT = object()
"""The default of ``Kernel.__call__``'s options: tells "not given" from any value."""


@dataclass(frozen=True)
class KernelResult:
    """What a kernel computed.

    Attributes:
        value: the definition's value (a float for a scalar loss).
        grad: the gradient of each parameter, by name, shaped like the parameter.
        hessian: Hessian blocks by ``(p, q)`` names; size-1 axes dropped (``d x d`` for a
            ``d x 1`` parameter).
        hvp: Hessian-vector products by parameter name, when compiled with ``hvp=True``.
        outputs: every output array by its key (``symdl.ir.keys``), also read by the key's
            spelling (``outputs["grad:w"]``, ``outputs["W"]``).
    """

    value: float | np.ndarray
    grad: dict[str, np.ndarray]
    hessian: dict[tuple[str, str], np.ndarray]
    hvp: dict[str, np.ndarray]
    outputs: Outputs


class Kernel:
    """Numba kernels for a derivation's outputs. Call it with arrays by name."""

    def __init__(self, outputs: Mapping[OutputKey | str, ir.Node], leaves: list[ir.Leaf],
                 title: str, jit: bool = True, hvp_inputs: Mapping[str, str] | None = None,
                 background: bool = False):
        """``outputs`` by key (``symdl.ir.keys``) or spelling (``symdl.ir.keys.parse``).
        ``jit=False`` runs the same generated source as plain Python (no Numba compile).
        ``hvp_inputs`` names the direction input of each parameter's Hessian-vector product.
        ``background=True`` compiles in a thread while NumPy answers the first calls (results
        equal to rounding, not bit for bit: see ``symdl.kernels.background``)."""
        keys = [as_key(name) for name in outputs]
        if len(set(keys)) != len(keys):
            raise OutputKeyError(f"two outputs have one key: {[str(k) for k in keys]}")
        check_compilable(list(outputs.values()))
        exact = rewrites.exact(list(outputs.values()))  # same values, without cancellation
        # The plan and the generated code name outputs by their spellings (distinct for
        # distinct keys): text for comments, never parsed back.
        self._keys: dict[str, OutputKey] = {str(k): k for k in keys}
        outputs = dict(zip(self._keys, exact, strict=True))
        self.hvp_inputs: dict[str, str] = dict(hvp_inputs or {})
        """The input holding the HVP direction of each parameter (``{"w": "v_w"}``)."""
        self._outputs = outputs
        self.jit = jit
        self._plan = plan(outputs)
        bounds = index_bounds(outputs.values())
        self._index_bounds = {leaf.name: bounds[id(leaf)] for leaf in leaves
                              if id(leaf) in bounds}
        """Integer index arrays by name -> the row counts their values index."""
        self._source: Source = generate(self._plan, leaves, title)
        self._leaves = {leaf.name: leaf for leaf in leaves}
        self._module = load(self._source.text) if jit else load_interpreted(self._source.text)
        self._title = title
        self._variants_called: set[tuple] = set()
        if not isinstance(background, (bool, np.bool_)):
            raise KernelArgumentError(f"background= must be True or False, got {background!r}",
                                      "background")
        self._background = (BackgroundCompiles(title, sum(s.jitted for s in self._plan.steps))
                            if background and jit else None)
        # Per-call work hoisted out of calls with the argument layout of an earlier call
        # (``_layout``): the dimension sizes, the dtype and the result shapes it found.
        self._layouts: dict[tuple, tuple] = {}
        self._ranks = [self._leaves[name].rank for name in self._source.inputs]
        self._checked = [name for name in self._source.inputs
                         if declared_checks(self._leaves[name].symbol)]
        self._result_keys = [self._keys[name] for name in self._source.outputs]
        self._result_roots = [self._plan.roots[name] for name in self._source.outputs]
        self._scratch_pool = ScratchPool()
        """The driver's temporaries kept between calls, by layout (``symdl.kernels.scratch``)."""
        self._loop_sizes = tuple(dict.fromkeys(loop_sizes(self._plan.steps)))
        """What decides serial or parallel loops: a call whose largest loop is small runs its
        loops serially, however large the arrays its BLAS products read (a network's weights
        at batch 1 would otherwise start a parallel region for every batch-sized loop)."""
        self._loop_size_functions: list | None = None  # made on the first call
        self._overlaps_checked: list[tuple[str, weakref.ref]] = []
        """The arrays (by name, weakly) of the last call whose out buffers passed
        ``_check_overlaps``: a training loop passes the same ones every call."""

    @property
    def scratch_pool(self) -> ScratchPool:
        """The temporaries kept between calls, by layout (see ``release_scratch``)."""
        return self._scratch_pool

    def release_scratch(self) -> None:
        """Frees the temporaries kept between calls (the next call allocates them again).

        A kernel keeps the temporaries of its last few argument layouts (dimension sizes and
        dtype), up to ``symdl.kernels.scratch.SCRATCH_KEEP_BYTES``, so that calls in a loop
        do not allocate and page-fault them each time."""
        self._scratch_pool.clear()

    @property
    def background(self) -> bool:
        """Whether first calls are answered by NumPy while Numba compiles in a thread."""
        return self._background is not None

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Blocks until every compile started in the background has finished (at once
        without ``background=True``); False when ``timeout`` seconds passed first."""
        return True if self._background is None else self._background.wait(timeout)

    def _first_call(self, variant: tuple):
        """Around a call: the first call of each variant (dtype, parallel, in place or
        compiled) is where Numba compiles, reported when slow (``symdl.progress``)."""
        if not self.jit or variant in self._variants_called:
            return contextlib.nullcontext()
        self._variants_called.add(variant)
        loops = sum(step.jitted for step in self._plan.steps)
        return compile_progress(self._title, loops)

    @property
    def source(self) -> str:
        """The generated Python source (readable; needs only NumPy and Numba)."""
        return self._source.text

    @property
    def inputs(self) -> dict[str, tuple]:
        """The arrays the kernel takes, by name, with their symbolic shapes."""
        return {name: self._leaves[name].shape for name in self._source.inputs}

    @property
    def input_symbols(self) -> dict[str, sp.Basic]:
        """The SymPy symbol of each input, by name (its declared assumptions are checked)."""
        return {name: self._leaves[name].symbol for name in self._source.inputs}

    @property
    def title(self) -> str:
        """What the kernel computes, in words (the first line of its docstring)."""
        return self._title

    @property
    def leaves(self) -> list[ir.Leaf]:
        """The IR leaves of the inputs, in the order the generated code takes them."""
        return list(self._leaves.values())

    @property
    def output_keys(self) -> list[OutputKey]:
        """The outputs in the order of the generated module's ``kernel`` arguments, by key
        (``Value()``, ``Gradient("w")``, ...; each equals its spelling, ``"grad:w"``)."""
        return [self._keys[name] for name in self._source.outputs]

    @property
    def output_names(self) -> list[OutputKey]:
        """The same as ``output_keys`` (keys compare equal to their spellings)."""
        return self.output_keys

    @property
    def output_nodes(self) -> dict[OutputKey, ir.Node]:
        """The IR each output computes (after the exact rewrites), by key."""
        return {self._keys[name]: node for name, node in self._outputs.items()}

    @property
    def in_place(self) -> list[OutputKey]:
        """The outputs named like an input that may be written into that input's array (an
        update ``out={"W": W}``; see ``Source.in_place``)."""
        return [self._keys[name] for name in self._source.in_place]

    @property
    def module(self):
        """The loaded generated module (its ``kernel`` function and the jitted loops)."""
        return self._module

    @property
    def input_names(self) -> list[str]:
        """The inputs in the order of the generated module's ``kernel`` arguments."""
        return list(self._source.inputs)

    def run_unchecked(self, inputs: list, outputs: list[np.ndarray],
                      parallel: bool = False) -> None:
        """Calls the generated module directly: inputs in ``input_names`` order (contiguous
        arrays of one dtype, Python floats for scalars), outputs in ``output_names`` order.

        For callers that validated the same shapes once with ``__call__`` (a training loop):
        the generated driver still checks every shape and dtype, so a wrong array raises
        ``ValueError`` instead of reading out of bounds, but names, layouts and overlaps are
        not checked. The steps run as one compiled function (compiled on the first call).
        """
        if parallel:
            _warn_if_spinning_threads()
        with self._first_call((outputs[0].dtype if outputs else None, parallel, True)):
            _run(self._module.kernel, *inputs, *outputs, parallel=parallel, compiled=True,
                 scratch=self._scratch_pool)
        record_compiled()

    def export(self, path: str | Path) -> Path:
        """Writes the kernels as one standalone module (NumPy and Numba only, no symdl
        import) and returns its path.

        Call the module's ``compute(*, X=..., w=..., out=None, parallel=False,
        compiled=False)``: every input by keyword, named after its symbol (an ASCII
        identifier: ``lambda`` -> ``lambda_``, ``a,b`` -> ``a_b``, ``α`` -> ``alpha``;
        ``help(module.compute)`` lists each keyword with its symbol, symbolic shape and
        dtype). It checks the arguments as this kernel does and raises the module's own
        ``KernelArgumentError`` (a ``ValueError``), then returns the outputs in a dict by
        spelling (``"value"`` as a float, ``"grad:w"``, ...).

        The module also keeps the low-level ``kernel(a0, a1, ..., out0, out1, ...,
        parallel=False, compiled=False, inplace=False)`` that symdl itself calls: arrays by
        position in the order its docstring lists, preallocated outputs, shapes and dtypes
        checked but not which array is which.

        >>> k.export("logreg_kernels.py")  # doctest: +SKIP
        >>> import logreg_kernels  # doctest: +SKIP
        >>> logreg_kernels.compute(X=X, w=w, y=y)["grad:w"]  # doctest: +SKIP
        """
        path = Path(path)
        path.write_text(self._source.text, encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        from symdl.printing.html import kernel_html

        return kernel_html(self._title, self.inputs,
                           {name: self._plan.roots[name].shape for name in self.output_names},
                           [type(step).__name__ for step in self._plan.steps], self.hvp_inputs)

    def _dims_and_arrays(self, arrays: Mapping[str, object]):
        expected = set(self._source.inputs)
        missing = sorted(expected - set(arrays))
        if missing:
            shapes = ", ".join(f"{m} {self._leaves[m].shape}" for m in missing)
            raise KernelArgumentError(f"missing arguments: {shapes}", missing[0])
        unexpected = sorted(set(arrays) - expected)
        if unexpected:
            raise KernelArgumentError(
                f"unexpected arguments {unexpected}; this kernel takes {sorted(expected)}",
                unexpected[0],
            )
        dtype = None
        dims: dict[sp.Symbol, int] = {}
        where: dict[sp.Symbol, str] = {}
        prepared: dict[str, object] = {}
        for name in self._source.inputs:
            leaf = self._leaves[name]
            value = arrays[name]
            _refuse_masked(name, value, "input")
            if leaf.rank == 0:
                prepared[name] = _scalar(name, value)
                continue
            array = _as_array(name, value)
            if name in self._index_bounds:
                array = _index_array(name, array)
            elif array.dtype not in _SUPPORTED_DTYPES:
                raise KernelArgumentError(
                    f"{name} has dtype {array.dtype}; kernels take float64 or float32 arrays: "
                    f"convert it with {name}.astype(np.float64)", name, "float64", array.dtype,
                )
            if name in self._index_bounds:
                pass  # integers, whatever the precision of the other arrays
            elif dtype is None:
                dtype = array.dtype
            elif array.dtype != dtype:
                raise KernelArgumentError(
                    f"{name} is {array.dtype} but other arguments are {dtype}: pass every array "
                    "in one precision", name, dtype, array.dtype,
                )
            if array.ndim != leaf.rank:
                raise KernelArgumentError(
                    f"{name} must have {leaf.rank} axes, shape {_fmt(leaf.shape)}; got shape "
                    f"{array.shape}" + (" (reshape a vector to a column with .reshape(-1, 1))"
                                        if array.ndim == 1 and leaf.rank == 2 else ""),
                    name, leaf.shape, array.shape,
                )
            for axis, (dim, size) in enumerate(zip(leaf.shape, array.shape, strict=True)):
                if size == 0:
                    raise KernelArgumentError(
                        f"{name} has an empty axis {axis} (shape {array.shape}); every "
                        "dimension must be at least 1", name, leaf.shape, array.shape,
                    )
                if isinstance(dim, sp.Symbol):
                    if dim in dims and dims[dim] != size:
                        raise KernelArgumentError(
                            f"{name} has {dim} = {size} (axis {axis} of shape {array.shape}) but "
                            f"{where[dim]} has {dim} = {dims[dim]}; expected {name} of shape "
                            f"{_fmt(leaf.shape)}", name, leaf.shape, array.shape,
                        )
                    dims.setdefault(dim, size)
                    where.setdefault(dim, f"{name} {array.shape}")
            prepared[name] = np.ascontiguousarray(array)
        for name in self._source.inputs:
            message = violation(self._leaves[name].symbol, prepared[name])
            if message is not None:
                raise KernelArgumentError(message, name)
        for name in self._source.inputs:
            leaf = self._leaves[name]
            if leaf.rank == 0:
                continue
            expected_shape = _concrete(leaf.shape, dims)
            if prepared[name].shape != expected_shape:
                raise KernelArgumentError(
                    f"{name} must have shape {_fmt(leaf.shape)} = {expected_shape}, got "
                    f"{prepared[name].shape}", name, expected_shape, prepared[name].shape,
                )
        for name, bounds in self._index_bounds.items():
            _check_positions(name, prepared[name], min(_concrete(tuple(bounds), dims)))
        return dims, prepared, dtype or np.dtype(np.float64)

    def __call__(self, /, *positional: object, out: object = _ABSENT,
                 parallel: object = _ABSENT, **arrays: object) -> KernelResult:
        """Runs the kernels: ``k(X=X, w=w)``, every input by keyword.

        Args:
            out: preallocated result arrays by output key or spelling (see ``run``).
            parallel: use the parallel loops; by default, when there are several threads and
                a loop runs over ``PARALLEL_MIN_ENTRIES`` entries or more.
            **arrays: every input by name. A keyword that names an input of this kernel is
                always that input, whatever its name (``self``, ``out``, ``parallel``): a
                kernel with an input named ``out`` or ``parallel`` takes those options
                through ``run``.

        Raises:
            KernelArgumentError: a missing, unexpected, mistyped or misshapen argument.
        """
        if positional:
            by_name = ", ".join(f"{name}=..." for name in self._source.inputs)
            raise KernelArgumentError(
                f"kernels take their inputs by name: k({by_name}), or as one dict with "
                "k.run({...})")
        options = {"out": out, "parallel": parallel}
        for key, value in options.items():
            if value is not _ABSENT and key in self._source.inputs:
                if key == "out" and isinstance(value, Mapping) or (
                        key == "parallel" and isinstance(value, bool)):
                    raise KernelArgumentError(
                        f"this kernel has an input named {key!r}, so k({key}=...) passes that "
                        f"input; give the {key}= option through k.run({{...inputs...}}, "
                        f"{key}=...)", key)
                arrays[key] = value
                options[key] = _ABSENT
        return self.run(arrays, out=None if options["out"] is _ABSENT else options["out"],
                        parallel=None if options["parallel"] is _ABSENT
                        else options["parallel"])

    def run(self, arrays: Mapping[str, object], /, *, out: object = None,
            parallel: bool | None = None, compiled: bool = False) -> KernelResult:
        """Runs the kernels on inputs given as one mapping: ``k.run({"X": X, "w": w})``.

        The same as calling the kernel, for any input names (a mapping's keys never clash
        with the options).

        Args:
            arrays: every input by name.
            out: preallocated result arrays, by output key (``Gradient("w")``, see
                ``output_keys``), by its spelling (``"grad:w"``, ``"hessian:w,w"``,
                ``"value"``) or by the plain spelling where that names one output
                (``"hessian:a,b,c"``; see ``symdl.ir.keys.resolve``).
            parallel: use the parallel loops; by default, when there are several threads and
                a loop runs over ``PARALLEL_MIN_ENTRIES`` entries or more.
            compiled: run the steps as one compiled function (no Python between them: for
                small arrays called often, as ``run_unchecked`` does); compiled on first use,
                with the loops it calls, in one go.

        Raises:
            KernelArgumentError: a missing, unexpected, mistyped or misshapen argument.
        """
        if not isinstance(arrays, Mapping):
            raise KernelArgumentError(
                f"run() takes the inputs as one dict by name, e.g. k.run({{'X': X, 'w': w}}); "
                f"got {type(arrays).__name__}")
        arrays = dict(arrays)
        out = _output_arrays(out)
        if parallel is not None and not isinstance(parallel, (bool, np.bool_)):
            raise KernelArgumentError(
                f"parallel= must be True, False or None (automatic), got {parallel!r}",
                "parallel")
        layout = self._layout(arrays)
        known = self._layouts.get(layout) if layout is not None else None
        if known is not None:
            dims, dtype, shapes, entries = known
            prepared = {name: arrays[name] if rank else float(arrays[name])
                        for name, rank in zip(self._source.inputs, self._ranks, strict=True)}
            for name in self._checked:  # values, not layout: checked on every call
                message = violation(self._leaves[name].symbol, prepared[name])
                if message is not None:
                    raise KernelArgumentError(message, name)
            for name, bounds in self._index_bounds.items():  # index values, every call too
                _check_positions(name, prepared[name], min(_concrete(tuple(bounds), dims)))
        else:
            dims, prepared, dtype = self._dims_and_arrays(arrays)
            shapes = [_concrete(self._plan.roots[name].shape, dims) or (1,)
                      for name in self._source.outputs]
            entries = self._largest_loop(dims)
            if layout is not None and len(self._layouts) < 64:
                self._layouts[layout] = (dims, dtype, shapes, entries)
        out = self._by_spelling(out) if out else {}
        buffers = []
        for name, shape in zip(self._source.outputs, shapes, strict=True):
            given = out.get(name)
            if given is None:
                buffers.append(np.empty(shape, dtype=dtype))
                continue
            if given.shape != shape or given.dtype != dtype or not given.flags.c_contiguous:
                raise KernelArgumentError(
                    f"out[{name!r}] must be a C-contiguous {dtype} array of shape {shape}, got "
                    f"{given.dtype} {given.shape}", name, shape, given.shape,
                )
            buffers.append(given)
        self._check_overlaps(prepared, out)
        if parallel is None:
            # The size first: asking Numba for its threads costs ~15 us a call.
            parallel = entries >= PARALLEL_MIN_ENTRIES and numba.get_num_threads() > 1
        args = [prepared[name] for name in self._source.inputs]
        if parallel:
            _warn_if_spinning_threads()
        # Every output that may update its input in place does: the loops that read and write
        # through one array (the vectorised form).
        inplace = bool(self._source.in_place) and all(
            name in out and _same_array(out[name], prepared[name])
            for name in self._source.in_place)
        variant = (buffers[0].dtype if buffers else None, parallel, inplace, bool(compiled))
        if self._background is not None and not self._background.ready(
                variant, self._compile_call(args, buffers, parallel, inplace, bool(compiled))):
            if self._evaluate(prepared, dims, buffers):
                return _result(self._result_keys, buffers, self._result_roots)
            self._background.wait()  # the evaluator cannot compute it: the jitted code will
        try:
            with self._first_call(variant):
                _run(self._module.kernel, *args, *buffers, parallel=parallel, inplace=inplace,
                     compiled=bool(compiled), scratch=self._scratch_pool)
        except np.linalg.LinAlgError as exc:
            if type(exc).__name__ == "MatrixFunctionAssumptionError":  # says what and why
                raise EvaluationError(str(exc)) from exc
            raise EvaluationError(
                f"a linear solve or a determinant in this kernel failed ({exc}): its matrix is "
                "singular (or, declared positive definite, is not) at "
                "these inputs; regularise it (add a multiple of the identity) or use a "
                "least-squares solution") from exc
        finally:
            record_compiled()  # digests of the Numba cache files a first call wrote
        return _result(self._result_keys, buffers, self._result_roots)

    def _largest_loop(self, dims: Mapping[sp.Symbol, int]) -> int:
        """The entries of the largest jitted loop at these dimension sizes (0: none)."""
        if self._loop_size_functions is None:
            self._loop_size_functions = [_size_function(size) for size in self._loop_sizes]
        return max((size(dims) for size in self._loop_size_functions), default=0)

    def _layout(self, arrays: Mapping[str, object]) -> tuple | None:
        """What ``_dims_and_arrays`` decides from (which inputs, their shapes and dtypes)
        when every array is a plain C-contiguous ndarray and every scalar a Python float or
        int, else None (such a call is checked in full)."""
        if len(arrays) != len(self._ranks):
            return None
        key = []
        try:
            for name, rank in zip(self._source.inputs, self._ranks, strict=True):
                value = arrays[name]
                kind = type(value)
                if rank == 0:
                    if kind is not float and kind is not int:
                        return None
                    key.append(None)
                elif kind is np.ndarray and value.flags.c_contiguous:
                    key.append((value.shape, value.dtype))
                else:
                    return None
        except KeyError:
            return None
        return tuple(key)

    def _compile_call(self, args: list, buffers: list[np.ndarray], parallel: bool,
                      inplace: bool, compiled: bool):
        """A call of the jitted kernel on private copies of this call's arrays (copied now:
        the caller may change its arrays while the thread compiles)."""
        copies, out = private_copies(args, buffers)

        def compile_call() -> None:
            try:
                _run(self._module.kernel, *copies, *out, parallel=parallel, inplace=inplace,
                     compiled=compiled)
            finally:
                record_compiled()
        return compile_call

    def _evaluate(self, prepared: Mapping[str, object], dims: Mapping[sp.Symbol, int],
                  buffers: list[np.ndarray]) -> bool:
        """The outputs by the NumPy evaluator, into ``buffers`` (while Numba compiles); False
        where the evaluator cannot compute them (the call then waits for the compile)."""
        nodes = [self._outputs[name] for name in self._source.outputs]
        try:
            results = evaluate_nodes(nodes, prepared, dims)
        except (np.linalg.LinAlgError, EvaluationError):
            return False  # the jitted kernel raises its own error for these inputs
        except Exception:  # noqa: BLE001 - a node kind the evaluator lacks: not the user's
            return False
        for buffer, result in zip(buffers, results, strict=True):
            buffer[...] = np.reshape(result, buffer.shape)
        return True

    def _by_spelling(self, out: Mapping[object, np.ndarray]) -> dict[str, np.ndarray]:
        """``out=`` by the spelling of the output each entry names (``resolve``)."""
        keys = list(self._keys.values())
        arrays: dict[str, np.ndarray] = {}
        for name, array in out.items():
            try:
                key = resolve(name, keys)
            except OutputKeyError as exc:
                raise KernelArgumentError(f"out=: {exc}", str(name)) from None
            if key is None:
                raise KernelArgumentError(
                    f"out= names {str(name)!r}, which this kernel does not compute; it computes "
                    f"{[str(k) for k in keys]} (keys from symdl.ir.keys, or these spellings)",
                    str(name))
            if str(key) in arrays:
                raise KernelArgumentError(
                    f"out= gives output {str(key)!r} twice (as {name!r} and another spelling)",
                    str(key))
            arrays[str(key)] = array
        return arrays

    def _check_overlaps(self, prepared: dict[str, object], out: Mapping[str, np.ndarray]) -> None:
        """Result buffers may not be masked, overlap each other, nor overlap an input unless
        they are that very input array (same start, shape and strides) and the plan proves it
        is read entry by entry before the same entry is written (an in-place update).

        Overlap is decided exactly (``np.shares_memory``), not from the arrays' bounds: a view
        one entry over an input overlaps it, and would read entries the loop already wrote.
        The same array objects under the same names as the last call that passed pass again
        without the pairwise tests (~30 us for a network's 9 outputs and 14 inputs): by now
        every one is C-contiguous with its expected shape, so its memory is what it was.
        """
        names = list(out)
        for name in names:
            _refuse_masked(f"out[{name!r}]", out[name], "out buffer")
        if not names:
            return
        arrays = [*out.items(),
                  *((arg, a) for arg, a in prepared.items() if isinstance(a, np.ndarray))]
        last = self._overlaps_checked
        if len(last) == len(arrays) and all(
                name == seen and ref() is array
                for (name, array), (seen, ref) in zip(arrays, last, strict=True)):
            return
        for i, name in enumerate(names):
            for other in names[i + 1:]:
                if np.shares_memory(out[name], out[other]):
                    raise KernelArgumentError(
                        f"out[{name!r}] and out[{other!r}] share memory; give each output its "
                        "own array", name)
            for arg, array in prepared.items():
                if not isinstance(array, np.ndarray) or not np.shares_memory(out[name], array):
                    continue
                if not _same_array(out[name], array):
                    raise KernelArgumentError(
                        f"out[{name!r}] overlaps input {arg!r} without being the same array (a "
                        "shifted or reshaped view of it): the kernel would read entries it has "
                        f"already written; pass {arg!r} itself (an in-place update) or a "
                        "separate out array", name)
                if not self._plan.in_place_safe(name, self._leaves[arg]):
                    raise KernelArgumentError(
                        f"out[{name!r}] shares memory with input {arg!r}, which this kernel "
                        f"still reads after it writes {name!r}; pass a separate out array "
                        "(swap the two arrays between calls to avoid allocating)", name)
        self._overlaps_checked = [(name, weakref.ref(array)) for name, array in arrays]


def _refuse_masked(name: str, value: object, role: str) -> None:
    """Kernels read and write an array's memory only: a mask would be silently ignored (an
    input's masked entries used as numbers, an out buffer's mask hiding results)."""
    if not isinstance(value, np.ma.MaskedArray):
        return
    fix = (f"pass np.ma.filled({name}, fill_value) with the value masked entries should "
           f"take, or {name}.data if the mask does not matter" if role == "input" else
           "pass a plain array (np.empty) and mask the result afterwards")
    raise KernelArgumentError(
        f"{name} is a masked array; kernels ignore masks, so an {role} may not be one: {fix}",
        name, "numpy.ndarray", type(value).__name__)


def _same_array(a: np.ndarray, b: object) -> bool:
    """Whether ``a`` and ``b`` are one block of memory: same start, shape and strides."""
    return (isinstance(b, np.ndarray) and a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


@functools.lru_cache(maxsize=4096)
def _size_function(dim: sp.Expr):
    """A fast evaluator of one symbolic dimension (SymPy's subs costs ~0.1 ms a call)."""
    dim = sp.sympify(dim)
    if dim.is_Integer:
        value = int(dim)
        return lambda dims: value
    if dim.is_Symbol:
        return lambda dims: dims[dim]
    symbols = sorted(dim.free_symbols, key=str)
    fn = sp.lambdify(symbols, dim, modules="math")
    return lambda dims: int(fn(*(dims[s] for s in symbols)))


def _concrete(shape: tuple, dims: Mapping[sp.Symbol, int]) -> tuple[int, ...]:
    return tuple(_size_function(d)(dims) for d in shape)


def _is_torch_tensor(value: object) -> bool:
    # By the class's module: torch is never imported here (a tensor exists only where the
    # caller imported torch).
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def as_numpy(name: str, value: object) -> object:
    """A PyTorch tensor as a NumPy array (detached from autograd, copied to the CPU when it
    lives elsewhere; a CPU tensor shares its memory); anything else unchanged."""
    if not _is_torch_tensor(value):
        return value
    try:
        return value.detach().cpu().numpy()
    except (TypeError, RuntimeError) as exc:
        raise KernelArgumentError(
            f"{name} is a torch tensor of dtype {value.dtype} that NumPy cannot hold ({exc}); "
            f"convert it with {name}.double() (or .float())", name) from exc


def _output_arrays(out: object) -> dict[object, np.ndarray]:
    """``out=`` as a dict of writeable NumPy arrays by output name (``None`` entries dropped:
    those results are allocated)."""
    if out is None:
        return {}
    if not isinstance(out, Mapping):
        raise KernelArgumentError(
            f"out= takes a dict of result arrays by output key, e.g. out={{'grad:w': buf}} "
            f"(keys in kernel.output_keys); got a {type(out).__name__}", "out")
    arrays: dict[object, np.ndarray] = {}
    for name, given in out.items():
        if not isinstance(name, (str, OutputKey)):
            raise KernelArgumentError(
                f"out= keys are output names: keys (symdl.ir.keys.Gradient('w')) or their "
                f"spellings (strings such as 'grad:w'), got {name!r}", "out")
        name = str(name) if isinstance(name, OutputKey) else name
        if given is None:
            continue
        if _is_torch_tensor(given):
            if given.requires_grad or given.device.type != "cpu":
                why = "requires grad" if given.requires_grad else f"is on {given.device}"
                raise KernelArgumentError(
                    f"out[{name!r}] is a torch tensor that {why}: symdl writes results into "
                    "CPU memory outside autograd; pass a NumPy array or a CPU tensor without "
                    "requires_grad", name)
            given = given.numpy()  # shares the tensor's memory: results land in the tensor
        if not isinstance(given, np.ndarray):
            raise KernelArgumentError(
                f"out[{name!r}] must be a NumPy array, got {type(given).__name__}; allocate "
                "it once with np.empty(shape) (kernel outputs of a first call give the "
                "shapes)", name)
        if not given.flags.writeable:
            raise KernelArgumentError(
                f"out[{name!r}] is read-only; pass a writeable array (np.empty_like(a) or "
                "a.copy())", name)
        arrays[name] = given
    return arrays


def _as_array(name: str, value: object) -> np.ndarray:
    value = as_numpy(name, value)
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise KernelArgumentError(
            f"{name} cannot be read as an array ({exc}); pass a float64 NumPy array of one "
            "rectangular shape", name) from exc


def _scalar(name: str, value: object) -> float:
    array = np.asarray(as_numpy(name, value))
    if array.shape != () or array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise KernelArgumentError(
            f"{name} is a scalar parameter: pass a real number, got {type(value).__name__} "
            f"{array.dtype} of shape {array.shape}", name, (), array.shape,
        )
    return float(array)


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _result(keys: list[OutputKey], buffers: list[np.ndarray],
            roots: list[ir.Node]) -> KernelResult:
    outputs = Outputs()
    for key, buf, root in zip(keys, buffers, roots, strict=True):
        outputs[key] = buf.reshape(()) if root.rank == 0 else buf
    grad, hessian, hvp = {}, {}, {}
    value: float | np.ndarray = np.nan
    for key, array in outputs.items():
        entry = float(array) if array.ndim == 0 else array
        if isinstance(key, Value):
            value = entry
        elif isinstance(key, Gradient):
            grad[key.param] = entry
        elif isinstance(key, HessianBlock):
            hessian[(key.p, key.q)] = entry
        elif isinstance(key, HVP):
            hvp[key.param] = entry
    return KernelResult(value, grad, hessian, hvp, outputs)


# -- integer index arrays ---------------------------------------------------------------------


def _index_array(name: str, array: np.ndarray) -> np.ndarray:
    """An index array as int32 or int64 (other integer dtypes widened to int64). Float arrays
    are refused, even holding whole numbers: a position computed in floating point (2.9999...)
    would be truncated silently, and a kernel's rows must never depend on a rounding."""
    if array.dtype.kind not in "iu":
        raise KernelArgumentError(
            f"{name} holds row positions (the indices of a gather or embedding) and must be an "
            f"integer array (int32 or int64), got {array.dtype}: pass {name}.astype(np.int64) "
            "once its values are whole numbers", name, "int64", array.dtype)
    if array.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        return array.astype(np.int64)
    return array


def _check_positions(name: str, array: np.ndarray, rows: int) -> None:
    """Every value of index array ``name`` in ``0 .. rows - 1``, checked once per call before
    any loop runs (the loops read and write at these positions without bounds checks)."""
    bad = (array < 0) | (array >= rows)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise KernelArgumentError(
            f"{name}[{', '.join(map(str, where))}] = {int(array[where])} is outside 0 .. "
            f"{rows - 1}: the table it indexes has {rows} rows", name, rows, int(array[where]))
