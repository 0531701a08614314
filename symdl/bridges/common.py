"""What both bridges need from a derivation: its kernel, its parameters and result shapes.

Framework-free: the PyTorch and JAX modules turn their tensors into the NumPy arrays and the
concrete shapes this module works with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from symdl.bridges import BridgeError
from symdl.define.symbols import symbol_name
from symdl.derivation import Derivation
from symdl.errors import KernelArgumentError
from symdl.ir.keys import HVP, Gradient, Value
from symdl.kernels.kernel import Kernel


@dataclass(frozen=True)
class Bridge:
    """A derivation's value-and-gradient kernel, described for a framework.

    Attributes:
        kernel: the compiled kernel (value and the gradient of every parameter, one pass).
        names: every input of the kernel, in the order the framework function passes them.
        parameters: the inputs that have a gradient (the derivation's ``wrt``).
        shapes: the symbolic shape of each input (``()`` for a scalar).
    """

    kernel: Kernel
    names: tuple[str, ...]
    parameters: frozenset[str]
    shapes: Mapping[str, tuple]
    derivation: Derivation
    _hvp_kernel: list[Kernel] = field(default_factory=list, repr=False)

    def ordered(self, arguments: Mapping[str, object]) -> list[object]:
        """The arguments in ``names`` order; a missing or unknown name is a typed error."""
        missing = [n for n in self.names if n not in arguments]
        unknown = sorted(set(arguments) - set(self.names))
        if missing or unknown:
            raise KernelArgumentError(
                (f"missing arguments {missing}" if missing else f"unexpected arguments {unknown}")
                + f"; this function takes {', '.join(f'{n}=...' for n in self.names)} (by name)",
                (missing or unknown)[0])
        return [arguments[n] for n in self.names]

    def dims(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[sp.Symbol, int]:
        """The size of each dimension symbol from the inputs' concrete shapes.

        Raises:
            KernelArgumentError: an input of the wrong rank or a dimension that disagrees
                between two inputs (checked here because a framework traces shapes before
                the kernel sees any array).
        """
        dims: dict[sp.Symbol, int] = {}
        where: dict[sp.Symbol, str] = {}
        for name in self.names:
            symbolic, concrete = self.shapes[name], tuple(shapes[name])
            if len(symbolic) != len(concrete):
                raise KernelArgumentError(
                    f"{name} must have {len(symbolic)} axes, shape {symbolic}; got shape "
                    f"{concrete}", name, symbolic, concrete)
            for dim, size in zip(symbolic, concrete, strict=True):
                dim = sp.sympify(dim)
                if isinstance(dim, sp.Symbol):
                    where.setdefault(dim, name)
                    if dims.setdefault(dim, size) != size:
                        raise KernelArgumentError(
                            f"{name} has {dim} = {size} (shape {concrete}) but {where[dim]} "
                            f"has {dim} = {dims[dim]}", name, symbolic, concrete)
                elif int(dim) != size:
                    raise KernelArgumentError(
                        f"{name} must have shape {symbolic}, got {concrete}", name, symbolic,
                        concrete)
        return dims

    def run(self, arrays: Mapping[str, object]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The value (a 0-d array for a scalar loss) and each parameter's gradient."""
        result = self.kernel.run(arrays)
        value = np.asarray(result.outputs["value"])
        dtype = value.dtype
        grads = {p: np.asarray(g, dtype=dtype).reshape(np.shape(arrays[p]))
                 for p, g in result.grad.items()}
        return value, grads


    def hvp(self, arrays: Mapping[str, object], directions: Mapping[str, np.ndarray]
            ) -> dict[str, np.ndarray]:
        """``Σ_q H[p, q] v_q`` for every parameter ``p``, at the inputs ``arrays`` along
        ``directions`` (one per parameter, shaped like it), by the Hessian-vector-product
        kernel (compiled on first use: only second-order callers pay for it)."""
        if not self._hvp_kernel:
            self._hvp_kernel.append(self.derivation.compile(
                hvp=True, outputs=[HVP(p) for p in sorted(self.parameters)]))
        kernel = self._hvp_kernel[0]
        inputs = dict(arrays)
        inputs.update({kernel.hvp_inputs[p]: v for p, v in directions.items()})
        # The HVP may read fewer inputs than the loss (y drops out of a GLM's Hessian).
        result = kernel.run({name: inputs[name] for name in kernel.input_names})
        dtype = np.asarray(next(iter(directions.values()))).dtype
        return {p: np.asarray(h, dtype=dtype).reshape(np.shape(arrays[p]))
                for p, h in result.hvp.items()}


def bridge(der: object, *, framework: str) -> Bridge:
    """Compiles the value-and-gradient kernel of a scalar derivation for a framework.

    Raises:
        BridgeError: ``der`` is not a ``symdl.Derivation``, or its definition is not a
            scalar (a framework's backward pass needs a loss's gradient).
    """
    if not isinstance(der, Derivation):
        raise BridgeError(
            f"symdl.bridges.{framework}.function takes a symdl.Derivation (from "
            f"symdl.derive(loss, wrt=[...])), got {type(der).__name__}")
    if not der.is_scalar:
        raise BridgeError(
            f"symdl.bridges.{framework}.function needs a scalar definition (a loss): its "
            f"backward pass is the derived gradient, and this definition has shape "
            f"{der.output.shape}; reduce it to a scalar (symdl.mean, symdl.total)")
    # Only what a first-order backward pass reads: not the Hessian blocks the derivation
    # may also hold (hessian=True), which would cost compile time and work at every call.
    kernel = der.compile(outputs=[Value()] + [Gradient(symbol_name(p)) for p in der.wrt])
    names = tuple(kernel.input_names)
    shapes = {name: tuple(shape) for name, shape in kernel.inputs.items()}
    parameters = frozenset(key.param for key in kernel.output_keys if isinstance(key, Gradient))
    return Bridge(kernel, names, parameters, shapes, der)


def concrete(shape: tuple, dims: Mapping[sp.Symbol, int]) -> tuple[int, ...]:
    """A symbolic shape with its dimension symbols bound."""
    return tuple(int(sp.sympify(d).xreplace(dict(dims))) for d in shape)


class BridgeFunction:
    """What both frameworks' function objects share: the kernel, the names they take and
    the parameters that get gradients (``framework`` names the bridge in ``repr``).

    Attributes:
        kernel: the compiled ``symdl.Kernel`` that computes the value and the gradients.
        input_names: the names the function takes.
        parameters: the inputs that have a gradient (the derivation's ``wrt``).
    """

    framework = ""

    def __init__(self, bridge_: Bridge):
        self._bridge = bridge_
        self.kernel = bridge_.kernel
        self.input_names: tuple[str, ...] = bridge_.names
        self.parameters: frozenset[str] = bridge_.parameters

    def __repr__(self) -> str:
        return (f"symdl.bridges.{self.framework}.function({', '.join(self.input_names)}; "
                f"gradients for {', '.join(sorted(self.parameters))})")
