"""What every step of a kernel plan is (``Step``), and the code lines steps share: the
jit decorator and the call of a serial, parallel or in-place variant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import sympy as sp

from symdl import ir
from symdl.kernels.scalar_code import FASTMATH

if TYPE_CHECKING:
    from symdl.kernels.codegen import Generator
    from symdl.kernels.steps.dense import LoopGroup

Read = tuple[ir.Node, "tuple | None"]
"""A node a step reads and the loop variables it reads it at (None: the whole array)."""


class Step:
    """What every kind of step answers (the planner and the code generator ask only this)."""

    summary: ClassVar[str] = "steps"
    jitted: ClassVar[bool] = True
    """Whether the step runs as jitted loop functions (Numba compiles them on the first call)
    rather than a NumPy/BLAS call from the driver."""
    """What the module's docstring counts it as (plural: "2 BLAS products")."""

    def reads(self) -> list[Read]:
        """The (node, index) pairs the step reads."""
        raise NotImplementedError

    def provides(self) -> set:
        """Keys of what the step computes: node ids, and row-statistics keys."""
        raise NotImplementedError

    def needs(self) -> set:
        """Keys of what the step needs computed before it runs."""
        return {id(op) for op, _ in self.reads()}

    def computed(self) -> list[ir.Node]:
        """The nodes the step writes into arrays the driver allocates (when stored)."""
        return []

    def loop_groups(self) -> list[LoopGroup]:
        """The fused loops the step runs."""
        return []

    def flops(self) -> sp.Expr:
        """The floating-point operations, about, in the dimension symbols."""
        raise NotImplementedError

    def emit(self, gen: Generator, number: int) -> list[str]:
        """The driver's lines for the step (its jitted functions go to ``gen.functions``)."""
        raise NotImplementedError


def jit_decorator(parallel: bool) -> str:
    """The decorator of a generated loop function (serial, or ``parallel=True``)."""
    options = ", parallel=True" if parallel else ""
    return f'@numba.njit(cache=True, error_model="numpy", fastmath={FASTMATH}{options})'


def stats_key(arg: ir.Node, axis: int, kind: str = "exp") -> tuple:
    """The key under which a ``RowStats`` step (``RowMax`` for ``kind="max"``) provides the
    statistics of ``arg``."""
    return ("stats" if kind == "exp" else kind, id(arg), axis)


def dispatch(function: str, args: str, parallel: bool, inplace: bool = False) -> list[str]:
    """Lines that call ``function`` or, when the caller asks for them, its parallel and its
    in-place variants."""
    def choose(prefix: str) -> list[str]:
        if not parallel:
            return [f"{prefix}({args})"]
        return ["if parallel:", f"    {prefix}_parallel({args})", "else:", f"    {prefix}({args})"]

    if not inplace:
        return choose(function)
    return (["if inplace:", *(f"    {line}" for line in choose(f"{function}_inplace")), "else:",
             *(f"    {line}" for line in choose(function))])
