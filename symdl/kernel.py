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
* ``out=`` takes preallocated result arrays by output name (``"grad:w"``), so that a training
  loop allocates no results; temporaries are still allocated.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import sympy as sp

from symdl import ir
from symdl.codegen import Source, generate
from symdl.errors import EvaluationError, KernelArgumentError, PerformanceWarning
from symdl.jit import load, load_interpreted
from symdl.kernel_plan import Contraction, LinearSolve, plan
from symdl.progress import compile_progress

PARALLEL_MIN_ENTRIES = 1 << 15
"""Calls whose largest array has at least this many entries use the parallel loops."""


def _prefer_workqueue_threading() -> None:
    """Numba's parallel loops run on its workqueue threading layer unless the user chose one
    (``NUMBA_THREADING_LAYER``) or a parallel loop already ran: the OpenMP layer's idle
    workers spin after each loop and take the cores from the BLAS products that follow
    (the 2-layer network's step took 3x longer at 2 threads with it). The workqueue layer
    cannot run two parallel regions at once; generated loops hold the GIL (no ``nogil``), so
    two Python threads never do."""
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
    try:
        numba.threading_layer()
    except ValueError:  # no parallel region has run yet: the layer is still to be chosen
        numba.config.THREADING_LAYER = "workqueue"


_prefer_workqueue_threading()
_warned_about_layer = False


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


@dataclass(frozen=True)
class KernelResult:
    """What a kernel computed.

    Attributes:
        value: the definition's value (a float for a scalar loss).
        grad: the gradient of each parameter, by name, shaped like the parameter.
        hessian: Hessian blocks by ``(p, q)`` names; size-1 axes dropped (``d x d`` for a
            ``d x 1`` parameter).
        hvp: Hessian-vector products by parameter name, when compiled with ``hvp=True``.
        outputs: every output array by its internal name (``"grad:w"``).
    """

    value: float | np.ndarray
    grad: dict[str, np.ndarray]
    hessian: dict[tuple[str, str], np.ndarray]
    hvp: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


class Kernel:
    """Numba kernels for a derivation's outputs. Call it with arrays by name."""

    def __init__(self, outputs: dict[str, ir.Node], leaves: list[ir.Leaf], title: str,
                 jit: bool = True):
        """``jit=False`` runs the same generated source as plain Python (no Numba compile)."""
        self._outputs = outputs
        self.jit = jit
        self._plan = plan(outputs)
        self._source: Source = generate(self._plan, leaves, title)
        self._leaves = {leaf.name: leaf for leaf in leaves}
        self._module = load(self._source.text) if jit else load_interpreted(self._source.text)
        self._title = title
        self._variants_called: set[tuple] = set()

    def _first_call(self, variant: tuple):
        """Around a call: the first call of each variant (dtype, parallel, in place or
        compiled) is where Numba compiles, reported when slow (``symdl.progress``)."""
        if not self.jit or variant in self._variants_called:
            return contextlib.nullcontext()
        self._variants_called.add(variant)
        loops = sum(not isinstance(s, (Contraction, LinearSolve)) for s in self._plan.steps)
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
    def output_names(self) -> list[str]:
        return list(self._source.outputs)

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
            self._module.kernel(*inputs, *outputs, parallel=parallel, compiled=True)

    def export(self, path: str | Path) -> Path:
        """Writes the kernels as one standalone module (no symdl import) and returns its path.

        The module's ``kernel(a0, a1, ..., out0, out1, ..., parallel=False, compiled=False,
        inplace=False)`` takes the arrays in the order its docstring lists and fills the
        preallocated outputs. ``inplace=True`` is for calls whose outputs named like inputs
        (``Source.in_place``) all are those input arrays; it is not checked there.
        """
        path = Path(path)
        path.write_text(self._source.text, encoding="utf-8")
        return path

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
            if leaf.rank == 0:
                prepared[name] = _scalar(name, value)
                continue
            array = _as_array(name, value)
            if array.dtype not in _SUPPORTED_DTYPES:
                raise KernelArgumentError(
                    f"{name} has dtype {array.dtype}; kernels take float64 or float32 arrays: "
                    f"convert it with {name}.astype(np.float64)", name, "float64", array.dtype,
                )
            if dtype is None:
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
            leaf = self._leaves[name]
            if leaf.rank == 0:
                continue
            expected_shape = _concrete(leaf.shape, dims)
            if prepared[name].shape != expected_shape:
                raise KernelArgumentError(
                    f"{name} must have shape {_fmt(leaf.shape)} = {expected_shape}, got "
                    f"{prepared[name].shape}", name, expected_shape, prepared[name].shape,
                )
        return dims, prepared, dtype or np.dtype(np.float64)

    def __call__(self, out: Mapping[str, np.ndarray] | None = None,
                 parallel: bool | None = None, **arrays) -> KernelResult:
        """Runs the kernels.

        Args:
            out: preallocated result arrays by output name (see ``output_names``).
            parallel: use the parallel loops; by default, when there are several threads and
                the arrays are large.
            **arrays: every input by name.

        Raises:
            KernelArgumentError: a missing, unexpected, mistyped or misshapen argument.
        """
        dims, prepared, dtype = self._dims_and_arrays(arrays)
        out = dict(out or {})
        unknown = sorted(set(out) - set(self._source.outputs))
        if unknown:
            raise KernelArgumentError(
                f"out= names {unknown} that this kernel does not compute; it computes "
                f"{self._source.outputs}", unknown[0],
            )
        buffers = []
        for name in self._source.outputs:
            node = self._plan.roots[name]
            shape = _concrete(node.shape, dims) or (1,)
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
            largest = max((a.size for a in prepared.values() if isinstance(a, np.ndarray)),
                          default=0)
            parallel = numba.get_num_threads() > 1 and largest >= PARALLEL_MIN_ENTRIES
        args = [prepared[name] for name in self._source.inputs]
        if parallel:
            _warn_if_spinning_threads()
        # Every output that may update its input in place does: the loops that read and write
        # through one array (the vectorised form).
        inplace = bool(self._source.in_place) and all(
            name in out and _same_array(out[name], prepared[name])
            for name in self._source.in_place)
        try:
            with self._first_call((buffers[0].dtype if buffers else None, parallel, inplace)):
                self._module.kernel(*args, *buffers, parallel=parallel, inplace=inplace)
        except np.linalg.LinAlgError as exc:
            raise EvaluationError(
                f"a linear solve in this kernel failed ({exc}): its matrix is singular at "
                "these inputs; regularise it (add a multiple of the identity) or use a "
                "least-squares solution") from exc
        return _result(self._source.outputs, buffers, self._plan.roots)


    def _check_overlaps(self, prepared: dict[str, object], out: Mapping[str, np.ndarray]) -> None:
        """Result buffers may not overlap each other, nor an input unless the plan proves that
        input is read entry by entry before the same entry is written (an in-place update)."""
        names = list(out)
        for i, name in enumerate(names):
            for other in names[i + 1:]:
                if np.may_share_memory(out[name], out[other]):
                    raise KernelArgumentError(
                        f"out[{name!r}] and out[{other!r}] share memory; give each output its "
                        "own array", name)
            for arg, array in prepared.items():
                if (isinstance(array, np.ndarray) and np.may_share_memory(out[name], array)
                        and not self._plan.in_place_safe(name, self._leaves[arg])):
                    raise KernelArgumentError(
                        f"out[{name!r}] shares memory with input {arg!r}, which this kernel "
                        f"still reads after it writes {name!r}; pass a separate out array "
                        "(swap the two arrays between calls to avoid allocating)", name)


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


def _as_array(name: str, value: object) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise KernelArgumentError(
            f"{name} cannot be read as an array ({exc}); pass a float64 NumPy array of one "
            "rectangular shape", name) from exc


def _scalar(name: str, value: object) -> float:
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise KernelArgumentError(
            f"{name} is a scalar parameter: pass a real number, got {type(value).__name__} "
            f"{array.dtype} of shape {array.shape}", name, (), array.shape,
        )
    return float(array)


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _result(names: list[str], buffers: list[np.ndarray], roots) -> KernelResult:
    outputs = {}
    for name, buf in zip(names, buffers, strict=True):
        outputs[name] = buf.reshape(()) if roots[name].rank == 0 else buf
    grad, hessian, hvp = {}, {}, {}
    value: float | np.ndarray = np.nan
    for name, array in outputs.items():
        kind, _, rest = name.partition(":")
        if kind == "value":
            value = float(array) if array.ndim == 0 else array
        elif kind == "grad":
            grad[rest] = float(array) if array.ndim == 0 else array
        elif kind == "hessian":
            p, q = rest.split(",")
            hessian[(p, q)] = float(array) if array.ndim == 0 else array
        elif kind == "hvp":
            hvp[rest] = float(array) if array.ndim == 0 else array
    return KernelResult(value, grad, hessian, hvp, outputs)
