"""Row-chunked evaluation of a derivation's kernels over ``dask.array`` data.

``DaskLoss(der, {"X": X, "y": y})`` takes data arrays (``dask.array`` or NumPy) whose rows are
the batch dimension of ``der`` and evaluates the loss, its gradients, its Hessian blocks and
Hessian-vector products over all rows: each chunk of rows runs the kernel ``der.compile()``
generates on a Dask worker, each chunk's results are scaled by its weight (a mean's
denominator is the global row count: see ``symdl.scale.separable``) and the partial results
are added in a tree reduction. Whether the loss splits over rows is decided from the
derivation (``row_split``); a loss that couples rows raises ``NotRowSeparableError``.

What travels: the definition (SymPy, a few kB) once per worker process, which derives and
compiles it there (the kernel comes from the shared kernel cache, ``SYMDL_CACHE_DIR``); per
evaluation the parameters (and HVP directions) once per worker, and one partial result (a
scalar plus arrays shaped like the parameters) per task of the reduction tree. The data stays
where it is made: a chunk is read or generated on the worker that evaluates it.

With a ``dask.distributed.Client`` active, evaluations run on its cluster; otherwise on Dask's
default scheduler.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import sympy as sp

from symdl.define.symbols import symbol_name
from symdl.derivation import Derivation, derive
from symdl.errors import KernelArgumentError
from symdl.ir.keys import HessianBlock
from symdl.kernels.kernel import Kernel
from symdl.scale.separable import RowSplit, row_split

SPLIT_EVERY = 8
"""How many partial results one task of the reduction tree adds (Dask's own default)."""


@dataclass(frozen=True)
class ChunkedResult:
    """What a chunked evaluation computed, over every row; the accessors of ``KernelResult``.

    Attributes:
        value: the loss.
        grad: the gradient of each parameter by name.
        hessian: the Hessian blocks by ``(p, q)`` names, as the kernel computes them.
        hvp: the Hessian-vector products by parameter name (kernels compiled with
            ``hvp=True``).
    """

    value: float
    grad: dict[str, np.ndarray | float]
    hessian: dict[tuple[str, str], np.ndarray | float] = field(default_factory=dict)
    hvp: dict[str, np.ndarray | float] = field(default_factory=dict)


@dataclass(frozen=True)
class _KernelSpec:
    """What a worker needs to build the driver's kernel: the definition as written, the
    parameters, which outputs, and the digest of the source the driver generated (checked,
    so that a worker never runs a different kernel)."""

    definition: object
    wrt: tuple
    hessian: bool
    hvp: bool
    outputs: tuple[str, ...]
    jit: bool
    digest: str


_KERNELS: dict[str, Kernel] = {}
_KERNELS_LOCK = threading.Lock()


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _worker_kernel(spec: _KernelSpec) -> Kernel:
    """The kernel of ``spec`` in this process: derived and loaded once (the compiled code
    comes from the kernel cache the driver filled)."""
    with _KERNELS_LOCK:
        kernel = _KERNELS.get(spec.digest)
        if kernel is None:
            der = derive(spec.definition, wrt=list(spec.wrt), hessian=spec.hessian)
            kernel = der.compile(hvp=spec.hvp, outputs=list(spec.outputs), jit=spec.jit)
            if _digest(kernel.source) != spec.digest:
                raise RuntimeError(
                    "the worker generated a different kernel from the driver's definition "
                    "(symdl versions differ between driver and workers?)")
            _KERNELS[spec.digest] = kernel
        return kernel


def _as_float64(value: object) -> np.ndarray | float:
    if isinstance(value, np.ndarray):
        return value.astype(np.float64)
    return float(value)


def _chunk_result(spec: _KernelSpec, weight: float, shared: Mapping[str, object],
                  names: tuple[str, ...], parallel: bool, *blocks: np.ndarray) -> dict:
    """Runs the kernel on one chunk of rows; returns its weighted results in float64."""
    kernel = _worker_kernel(spec)
    arrays = dict(shared)
    arrays.update(zip(names, blocks, strict=True))
    dtypes = {b.dtype for b in blocks}
    if len(dtypes) == 1 and dtypes != {np.dtype(np.float64)}:
        # Parameters follow the data's precision: float32 data runs the float32 kernel.
        (dtype,) = dtypes
        arrays.update({k: np.asarray(v, dtype=dtype) if isinstance(v, np.ndarray) else v
                       for k, v in shared.items()})
    r = kernel.run(arrays, parallel=parallel)
    scale = np.float64(weight)
    return {
        "value": _as_float64(r.value) * scale,
        "grad": {k: _as_float64(v) * scale for k, v in r.grad.items()},
        "hessian": {k: _as_float64(v) * scale for k, v in r.hessian.items()},
        "hvp": {k: _as_float64(v) * scale for k, v in r.hvp.items()},
    }


def _add_results(*parts: dict) -> dict:
    """Adds partial results (one task of the reduction tree)."""
    total = parts[0]
    total = {"value": total["value"], **{k: dict(total[k]) for k in ("grad", "hessian", "hvp")}}
    for part in parts[1:]:
        total["value"] = total["value"] + part["value"]
        for kind in ("grad", "hessian", "hvp"):
            for k, v in part[kind].items():
                total[kind][k] = total[kind][k] + v
    return total


def _client():
    """The active ``dask.distributed`` client, or ``None``."""
    try:
        from distributed import get_client
    except ImportError:  # dask without distributed: the local scheduler
        return None
    try:
        return get_client()
    except ValueError:  # no client started
        return None


class DaskLoss:
    """A row-separable loss over chunked data: value, gradients, Hessians and HVPs.

    >>> loss = DaskLoss(der, {"X": X, "y": y})           # X, y: dask arrays chunked by rows
    >>> r = loss(w=w)                                    # r.value, r.grad["w"], r.hessian[...]
    >>> loss.hvp({"w": w}, {"w": v})["w"]                # with DaskLoss(..., hvp=True)

    Args:
        der: the derivation (``symdl.derive``); its loss must be a sum or mean over the rows.
        data: every input that has the batch dimension, by name: ``dask.array`` arrays (or
            NumPy arrays, chunked here by ``chunk_rows``), chunked along the batch axis only.
            Inputs without the batch dimension are passed with the parameters.
        rows: the batch dimension (a symbol or its name); inferred when every data array
            has the same first dimension.
        hvp: compile Hessian-vector products too (``der.compile(hvp=True)``).
        chunk_rows: the chunk size for NumPy data (dask arrays keep their own chunks).
        jit: ``False`` runs the generated source as plain Python (tests).
        parallel: the kernel's parallel loops on each worker (off by default: Dask runs the
            chunks in parallel).

    Raises:
        NotRowSeparableError: the loss couples rows (see ``symdl.scale.separable``).
        KernelArgumentError: missing or misshapen data.
    """

    def __init__(self, der: Derivation, data: Mapping[str, object], *,
                 rows: str | sp.Symbol | None = None, hvp: bool = False,
                 chunk_rows: int = 100_000, jit: bool = True, parallel: bool = False):
        self.split: RowSplit = row_split(der, rows)
        self.kernel = der.compile(hvp=hvp, jit=jit)
        """The in-memory kernel; each worker runs the same one on its chunks."""
        definition = der.source_steps
        if len(definition) == 1 and definition[0][0] is None:
            definition = definition[0][1]
        else:
            definition = list(definition)
        has_hessian = any(isinstance(key, HessianBlock) for key in self.kernel.output_keys)
        self._spec = _KernelSpec(definition, tuple(der.wrt), has_hessian, hvp,
                                 tuple(self.kernel.output_names), jit,
                                 _digest(self.kernel.source))
        self.params = tuple(symbol_name(p) for p in der.wrt)
        self.parallel = parallel
        self.data = self._chunked(data, chunk_rows)
        first = next(iter(self.data.values()))
        axis = self.split.data[next(iter(self.data))]
        self.chunks: tuple[int, ...] = tuple(first.chunks[axis])
        """The row count of each chunk."""
        self.n_rows = int(sum(self.chunks))
        self.weights = [self.split.weight(m, self.n_rows) for m in self.chunks]
        """Each chunk's factor: the weighted sum of the chunks' results is the full one."""
        self._blocks = {name: self._row_blocks(name, array) for name, array in self.data.items()}

    def _chunked(self, data: Mapping[str, object], chunk_rows: int) -> dict[str, da.Array]:
        if not isinstance(data, Mapping):
            raise KernelArgumentError(
                f"data must be a dict of arrays by input name, e.g. {{'X': X, 'y': y}}; got "
                f"{type(data).__name__}", "data")
        wanted = self.split.data
        missing = sorted(set(wanted) - set(data))
        if missing:
            raise KernelArgumentError(
                f"data misses {missing}: every input with the batch dimension "
                f"{self.split.rows} is data ({sorted(wanted)}); pass the others with the "
                "parameters", missing[0])
        extra = sorted(set(data) - set(wanted))
        if extra:
            raise KernelArgumentError(
                f"{extra} are not inputs with the batch dimension {self.split.rows} (data: "
                f"{sorted(wanted)}); pass parameters and other inputs when evaluating",
                extra[0])
        arrays: dict[str, da.Array] = {}
        reference = None
        for name in wanted:
            array = data[name]
            if not isinstance(array, da.Array):
                array = np.asarray(array)
                array = da.from_array(array, chunks={wanted[name]: chunk_rows})
            axis = wanted[name]
            if array.ndim != len(self.kernel.inputs[name]) or array.ndim <= axis:
                raise KernelArgumentError(
                    f"{name} must have shape {self.kernel.inputs[name]}, got {array.shape}",
                    name, self.kernel.inputs[name], array.shape)
            # One chunk along every other axis: a task sees whole rows.
            array = array.rechunk({k: -1 for k in range(array.ndim) if k != axis})
            if reference is None:
                reference = array.chunks[axis]
            elif array.shape[axis] != sum(reference):
                raise KernelArgumentError(
                    f"{name} has {array.shape[axis]} rows but the other data has "
                    f"{sum(reference)}; every data array needs the same rows", name)
            elif array.chunks[axis] != reference:
                array = array.rechunk({axis: reference})
            arrays[name] = array
        return arrays

    def _row_blocks(self, name: str, array: da.Array) -> list:
        blocks = array.to_delayed()
        axis = self.split.data[name]
        return list(np.moveaxis(np.asarray(blocks, dtype=object), axis, 0).reshape(
            len(self.chunks), -1)[:, 0])

    def _inputs(self, params: Mapping[str, object], directions: Mapping[str, object] | None,
                extra: Mapping[str, object]) -> dict[str, object]:
        """Every input that is not data: parameters, HVP directions (zeros when not asked
        for) and the other inputs, checked by name."""
        missing = sorted(set(self.params) - set(params))
        if missing:
            raise KernelArgumentError(f"missing parameters {missing}", missing[0])
        shared = {k: _numeric(k, v) for k, v in params.items()}
        shared.update({k: _numeric(k, v) for k, v in extra.items()})
        hvp_names = self.kernel.hvp_inputs
        if hvp_names:
            given = dict(directions or {})
            unknown = sorted(set(given) - set(hvp_names))
            if unknown:
                raise KernelArgumentError(
                    f"directions for {unknown}, which are not parameters ({list(hvp_names)})",
                    unknown[0])
            for p, name in hvp_names.items():
                value = given.get(p, extra.get(name))  # by parameter, or by input (v_w=...)
                shared[name] = (np.zeros_like(np.asarray(shared[p], dtype=np.float64))
                                if value is None else _numeric(name, value))
        elif directions:
            raise KernelArgumentError(
                "Hessian-vector products need DaskLoss(..., hvp=True)", "directions")
        expected = set(self.kernel.inputs) - set(self.data)
        unknown = sorted(set(shared) - expected)
        if unknown:
            raise KernelArgumentError(
                f"{unknown} are not inputs of this loss (it takes {sorted(expected)} besides "
                "the data)", unknown[0])
        missing = sorted(expected - set(shared))
        if missing:
            raise KernelArgumentError(f"missing inputs {missing}", missing[0])
        return shared

    def graph(self, params: Mapping[str, object], directions: Mapping[str, object] | None = None,
              **inputs: object):
        """The evaluation as one ``dask.delayed`` object (the root of the reduction tree)."""
        shared = self._inputs(params, directions, inputs)
        client = _client()
        # Parameters travel once per worker: scattered to every worker with a cluster, one
        # key of the graph otherwise.
        shared_key = (client.scatter([shared], broadcast=True, hash=False)[0] if client is not None
                      else dask.delayed(shared, pure=True))
        names = tuple(self.data)
        parts = [
            dask.delayed(_chunk_result, pure=True)(
                self._spec, weight, shared_key, names, self.parallel,
                *(self._blocks[name][c] for name in names))
            for c, weight in enumerate(self.weights)
        ]
        while len(parts) > 1:
            parts = [dask.delayed(_add_results, pure=True)(*parts[k:k + SPLIT_EVERY])
                     for k in range(0, len(parts), SPLIT_EVERY)]
        return parts[0]

    def evaluate(self, params: Mapping[str, object],
                 directions: Mapping[str, object] | None = None,
                 **inputs: object) -> ChunkedResult:
        """Every output over all rows, at ``params`` (by name).

        Args:
            params: each parameter's value by name.
            directions: the HVP direction of each parameter by name (zero where omitted;
                needs ``hvp=True``).
            **inputs: the inputs that are neither data nor parameters (scalars such as
                ``eps``, arrays without the batch dimension).
        """
        total = _compute(self.graph(params, directions, **inputs))
        return ChunkedResult(total["value"], total["grad"], total["hessian"], total["hvp"])

    def __call__(self, /, **params: object) -> ChunkedResult:
        """``loss(w=w)``: ``evaluate`` with every non-data input by keyword."""
        names = set(self.params)
        return self.evaluate({k: v for k, v in params.items() if k in names}, None,
                             **{k: v for k, v in params.items() if k not in names})

    def value_and_grad(self, params: Mapping[str, object], **inputs: object
                       ) -> tuple[float, dict[str, np.ndarray | float]]:
        """The loss and its gradients at ``params``: one pass over the data."""
        r = self.evaluate(params, None, **inputs)
        return r.value, r.grad

    def hvp(self, params: Mapping[str, object], directions: Mapping[str, object],
            **inputs: object) -> dict[str, np.ndarray | float]:
        """``sum_q H[p, q] v_q`` for every parameter ``p``: one pass over the data."""
        if not self.kernel.hvp_inputs:
            raise KernelArgumentError(
                "Hessian-vector products need DaskLoss(..., hvp=True)", "directions")
        return self.evaluate(params, directions, **inputs).hvp


def _numeric(name: str, value: object) -> object:
    """A parameter or input as a NumPy array (Python floats for scalars)."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise KernelArgumentError(f"{name} has dtype {array.dtype}; pass real numbers", name)
    if array.ndim == 0:
        return float(array)
    return np.ascontiguousarray(array, dtype=np.float64 if array.dtype.kind in "iu"
                                else array.dtype)


COMPUTE_ATTEMPTS = 3
"""How many times a sum over the chunks is computed when the cluster cancels its result."""


def _compute(graph):
    """``dask.compute`` of the summed chunks, again when the cluster cancelled the result
    (distributed's ``FutureCancelledError``: a worker died while the scheduler was
    releasing the key, "already forgotten"). Every task is pure, so a rerun gives the same
    numbers; any other error is raised at once."""
    for _ in range(COMPUTE_ATTEMPTS - 1):
        try:
            return dask.compute(graph)[0]
        except Exception as exc:  # distributed is optional: its exception is known by name
            if type(exc).__name__ != "FutureCancelledError":
                raise
    return dask.compute(graph)[0]
