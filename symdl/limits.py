"""Size limits on definitions, checked before any work so that a huge expression fails fast.

Translation, differentiation and printing walk expressions recursively; an expression much
deeper than any network layer stack written by hand would exhaust Python's recursion limit
after minutes of work, and a very wide one would take minutes to differentiate and print.
The limits are far above the shipped derivations (their deepest step is about 20 levels and
a few hundred distinct subexpressions) and are checked without recursion.
"""

from __future__ import annotations

import sympy as sp

from symdl.errors import DefinitionError

MAX_DEPTH = 80
"""Deepest nesting of one definition step (``f(g(h(...)))`` counts one level per call)."""

MAX_NODES = 20_000
"""Most distinct subexpressions in one definition step."""


class DefinitionTooLargeError(DefinitionError):
    """A definition exceeds ``MAX_DEPTH`` or ``MAX_NODES``."""


def check_size(expr: sp.Basic, what: str = "the definition") -> tuple[int, int]:
    """Counts the distinct subexpressions of ``expr`` and its depth, without recursion.

    Args:
        expr: a SymPy expression (scalar or matrix).
        what: how the error message refers to ``expr``.

    Returns:
        ``(nodes, depth)``.

    Raises:
        DefinitionTooLargeError: ``expr`` is deeper than ``MAX_DEPTH`` or has more than
            ``MAX_NODES`` distinct subexpressions.
    """
    if not isinstance(expr, sp.Basic):
        return 0, 0
    depth: dict[int, int] = {}
    stack: list[tuple[sp.Basic, bool]] = [(expr, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in depth:
            continue
        if children_done:
            level = 1 + max((depth[id(a)] for a in node.args), default=0)
            if level > MAX_DEPTH:
                raise DefinitionTooLargeError(
                    f"{what} is nested more than {MAX_DEPTH} levels deep; symdl limits the depth "
                    "of one expression (symdl.limits.MAX_DEPTH) so that it fails fast instead of "
                    "running out of recursion. Split it into named steps: pass a list of "
                    "(symbol, expression) pairs, each step using the previous symbols"
                )
            depth[key] = level
            continue
        stack.append((node, True))
        stack.extend((a, False) for a in node.args if id(a) not in depth)
        if len(depth) + len(stack) > 2 * MAX_NODES:
            break
    if len(depth) > MAX_NODES or stack:
        raise DefinitionTooLargeError(
            f"{what} has more than {MAX_NODES} distinct subexpressions; symdl limits the size of "
            "one expression (symdl.limits.MAX_NODES) so that it fails fast instead of taking "
            "minutes. Split it into named steps (a list of (symbol, expression) pairs) or use "
            "matrix operations instead of writing out entries"
        )
    return len(depth), max(depth.values(), default=0)
