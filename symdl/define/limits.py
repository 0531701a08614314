"""Size limits on definitions, checked before any work so that a huge expression fails fast.

symdl itself walks expressions without recursion and in time linear in their size: a chain
of thousands of named steps, or a sum of thousands of terms, derives, prints and compiles
(generated functions are split to a bounded size). What stays bounded is one step written as
a single SymPy expression:

* its depth, because SymPy's own functions (``free_symbols``, ``atoms``, ``subs``, printing)
  recurse through an expression, a few Python frames per level: a single expression nested
  a few hundred levels deep exhausts Python's recursion limit inside SymPy;
* its number of distinct subexpressions, so that a runaway generated expression (an
  unrolled matrix, a product expanded by hand) fails in milliseconds rather than after
  minutes in SymPy.

Both limits apply to each step, not to the whole definition: named steps are the way to
write something long (each step refers to the earlier ones by their symbols). The checks
themselves run without recursion.
"""

from __future__ import annotations

import sympy as sp

from symdl.errors import DefinitionError

MAX_DEPTH = 80
"""Deepest nesting of one definition step (``f(g(h(...)))`` counts one level per call).
SymPy recurses about five frames per level when it prints, so 80 levels leave room under
Python's default recursion limit of 1000 for the caller's own frames."""

MAX_NODES = 100_000
"""Most distinct subexpressions in one definition step (a sum of 5,000 terms of a few
symbols each has about 30,000). Every stage of symdl is linear in this number; SymPy's own
construction and printing of such a step take the most time (seconds per 10,000 terms)."""

_SPLIT_ADVICE = (
    "Split it into named steps: pass derive() a list of (symbol, expression) pairs, each step "
    "using the symbols of earlier steps (for example a chain Z1 = f(X), Z2 = g(Z1), ..., or "
    "partial sums S1 = terms 1-1000, S2 = S1 + terms 1001-2000, ...); a definition may have "
    "thousands of steps"
)


class DefinitionTooLargeError(DefinitionError):
    """One step of a definition exceeds ``MAX_DEPTH`` or ``MAX_NODES``."""


def count_subexpressions(expr: sp.Basic, limit: int | None = None) -> int:
    """The number of distinct subexpressions of ``expr``, counted without recursion.

    Args:
        expr: a SymPy expression.
        limit: stop counting once the count exceeds this (the result is then ``limit + 1``).
    """
    if not isinstance(expr, sp.Basic):
        return 0
    seen: set[int] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if limit is not None and len(seen) > limit:
            return limit + 1
        stack.extend(a for a in node.args if id(a) not in seen)
    return len(seen)


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
                    f"{what} is nested more than {MAX_DEPTH} levels deep in one expression; "
                    f"SymPy recurses through a single expression, so symdl limits its depth "
                    f"(symdl.define.limits.MAX_DEPTH) to fail fast instead of running out of "
                    f"recursion. {_SPLIT_ADVICE}"
                )
            depth[key] = level
            continue
        stack.append((node, True))
        stack.extend((a, False) for a in node.args if id(a) not in depth)
        # More pending references than the limit (a sum of too many terms, seen at once):
        # stop before walking them all, so that a huge expression fails in milliseconds.
        if len(stack) > MAX_NODES or len(depth) + len(stack) > 2 * MAX_NODES:
            break
    if len(depth) > MAX_NODES or stack:
        raise DefinitionTooLargeError(
            f"{what} has more than {MAX_NODES:,} distinct subexpressions in one expression; "
            "symdl limits the size of one step (symdl.define.limits.MAX_NODES) so that it fails "
            f"fast instead of taking minutes in SymPy. {_SPLIT_ADVICE}, or use matrix operations "
            "instead of writing out entries"
        )
    return len(depth), max(depth.values(), default=0)
