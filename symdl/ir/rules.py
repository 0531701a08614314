"""One rule per node kind per interpreter: the tables every pass over the IR dispatches through.

An interpreter of the IR (reverse and forward differentiation, NumPy evaluation, IR-to-SymPy,
...) is a ``Rules`` table from node class to a function, filled with a decorator next to each
rule::

    EVALUATE = Rules("NumPy evaluation")

    @EVALUATE.register(ir.Add)
    def _add(node, ...): ...

    EVALUATE(node, ...)          # calls the rule of type(node)

or, for tables of one-liners, ``Rules("loop cost", {ir.Leaf: ..., (ir.Map, ir.Add): ...})``.

A node kind with no rule raises ``MissingRuleError`` naming the kind and the interpreter,
never a bare ``KeyError`` or a silent skip. Adding a node kind is then one rule in each table,
and ``tests/ir/test_rule_tables.py`` finds every table and every node class by introspection and
fails until each table covers each kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from symdl.errors import MissingRuleError

F = TypeVar("F", bound=Callable[..., Any])


class Rules(Generic[F]):
    """A table from node class to the rule an interpreter applies to nodes of that class.

    Args:
        interpreter: what the table does, in words (``"reverse-mode differentiation"``); the
            error for a missing rule names it.
        rules: rules given at once, ``{kind or tuple of kinds: rule}``, for tables whose rules
            are one-liners written side by side (the same as registering each).
    """

    def __init__(self, interpreter: str,
                 rules: Mapping[type | tuple[type, ...], F] | None = None):
        self.interpreter = interpreter
        self._rules: dict[type, F] = {}
        for kinds, rule in (rules or {}).items():
            self.register(*(kinds if isinstance(kinds, tuple) else (kinds,)))(rule)

    def register(self, *kinds: type) -> Callable[[F], F]:
        """A decorator that makes the function the rule of each of ``kinds``.

        Raises:
            ValueError: a kind already has a rule in this table (two rules for one kind would
                make the second silently win).
        """
        def decorate(rule: F) -> F:
            for kind in kinds:
                if kind in self._rules:
                    raise ValueError(
                        f"{self.interpreter} already has a rule for {kind.__name__} "
                        f"({self._rules[kind].__name__}); one rule per node kind")
                self._rules[kind] = rule
            return rule

        return decorate

    def rule(self, node: object) -> F:
        """The rule for ``node``, by its exact class: a new kind, even one derived from a
        kind with rules, gets its own rule in every table rather than a parent's by accident.

        Raises:
            MissingRuleError: the table has no rule for the node's class.
        """
        found = self._rules.get(type(node))
        if found is None:
            raise MissingRuleError(type(node).__name__, self.interpreter)
        return found

    def __call__(self, node: object, *args: Any, **kwargs: Any) -> Any:
        """Applies the rule for ``node`` to ``node`` and the other arguments."""
        return self.rule(node)(node, *args, **kwargs)

    @property
    def kinds(self) -> frozenset[type]:
        """The node classes that have a rule here."""
        return frozenset(self._rules)

    def __repr__(self) -> str:
        names = ", ".join(sorted(k.__name__ for k in self._rules))
        return f"Rules({self.interpreter!r}: {names})"
