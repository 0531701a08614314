"""Rule tables: how each kernel interpreter (lowering, loop reads, loop code, ...) dispatches
on the kind of an IR node.

One table per interpreter, one rule per node kind, looked up along the node's class
hierarchy. A node kind the table has no rule for raises ``MissingRuleError`` naming the kind
and the interpreter, never a silent default; ``tests/kernels/test_plan.py`` checks that
every table covers every node class of ``symdl.ir``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from symdl import ir
from symdl.errors import SymdlError


class MissingRuleError(SymdlError, NotImplementedError):
    """An interpreter has no rule for a kind of node (an internal error: please report it)."""


class RuleTable:
    """Rules of one interpreter by node class: ``table(node, *args)`` applies the rule of
    ``node``'s class (or of its nearest base class that has one)."""

    def __init__(self, interpreter: str, rules: Mapping[type | tuple[type, ...], Callable]):
        self.interpreter = interpreter
        self.rules: dict[type, Callable] = {}
        for kinds, rule in rules.items():
            for kind in kinds if isinstance(kinds, tuple) else (kinds,):
                self.rules[kind] = rule

    def rule(self, kind: type) -> Callable:
        """The rule for nodes of class ``kind``."""
        for base in kind.__mro__:
            if base in self.rules:
                return self.rules[base]
        raise MissingRuleError(
            f"symdl's {self.interpreter} has no rule for {kind.__name__} nodes: this kind of "
            "node cannot be compiled yet; please report the definition")

    def __call__(self, node: ir.Node, *args: Any, **kwargs: Any) -> Any:
        return self.rule(type(node))(node, *args, **kwargs)

    def missing(self, kinds: Iterable[type]) -> list[str]:
        """The names of the classes among ``kinds`` that this table has no rule for."""
        return [kind.__name__ for kind in kinds
                if not any(base in self.rules for base in kind.__mro__)]


def node_kinds() -> list[type]:
    """Every class of IR node (the concrete subclasses of ``ir.Node``)."""
    return list(ir.Node.__subclasses__())
