"""The step of a recurrence: a loop over ``t`` around its step's code, never unrolled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import sympy as sp

from symdl import ir
from symdl.kernels.steps.base import Read, Step

if TYPE_CHECKING:
    from symdl.kernels.codegen import Generator


@dataclass(eq=False)
class ScanStep(Step):
    """A recurrence (``ir.Scan``): a loop over ``t`` in the driver around the code of its step,
    generated once (``Generator.scan_code``), never unrolled. The step reads its sequences at
    ``t`` as views, the carry from a buffer (or the previous stored state), the closure from
    the arrays the plan computed before the loop."""

    node: ir.Scan
    body_flops: sp.Expr = sp.Integer(0)
    """Filled in when the step's code is generated (the step's own plan counts them)."""

    summary: ClassVar[str] = "recurrences"
    jitted: ClassVar[bool] = True

    def reads(self) -> list[Read]:
        return [(child, None) for child in self.node.children()]

    def provides(self) -> set:
        return {id(self.node)}

    def computed(self) -> list[ir.Node]:
        return [self.node]

    def flops(self) -> sp.Expr:
        return self.node.length * self.body_flops

    def emit(self, gen: Generator, number: int) -> list[str]:
        return gen.scan_code(self, number)
