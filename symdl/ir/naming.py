"""Named intermediates chosen automatically, and the size of an expression written out.

A layer written as one expression (batch norm + ReLU in one line) has no named steps, so its
backprop equations would be one enormous formula each, and writing a gradient out in full
repeats every shared subexpression once per path to it: exponential in the depth of the
definition. Two remedies, both over the IR, which is a DAG of interned nodes:

* ``auto_name`` gives a generated name (``t1``, ``t2``, ... avoiding every name in use) to
  each subexpression that is not small and is used more than once or is a nonlinearity
  (whose value backprop reads again); backprop then has one adjoint per such step, and
  ``Derivation.equations()`` prints short equations.
* ``tree_sizes`` computes, in one pass over the DAG, how many nodes each subexpression has
  when written out as a tree; the printer writes a named intermediate out only while that
  stays under a bound (``INLINE_LIMIT``), and refers to it by name beyond.

Which node kinds are worth a name is one rule per kind, in the table ``WORTH_A_NAME``.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from symdl import ir
from symdl.ir.rules import Rules

SHARED_MIN_SIZE = 8
"""A subexpression used twice or more gets a name when written out it has at least this many
IR nodes (``X*w``, 3 nodes, stays inline: its name would not make anything shorter)."""

INLINE_LIMIT = 400
"""``Derivation.gradient`` writes a named intermediate out (a closed form) while the result
stays under this many IR nodes written out; a larger intermediate is referred to by its
name, defined by ``Derivation.definitions()`` and ``equations()``."""

WRITTEN_OUT_LIMIT = 20_000
"""A printed result larger than this many IR nodes written out (after ``INLINE_LIMIT`` kept
what it could by name) raises ``ClosedFormTooLargeError`` instead of taking minutes and
gigabytes: the Hessian blocks of a transformer block are 40,000 to 750,000 nodes as a tree
(their rank-4 intermediates have no names), every other shipped result under 1,100."""

WORTH_A_NAME: Rules[Callable[[ir.Node, int], bool]] = Rules("automatic naming")
"""node kind -> (node, number of its uses) -> whether a large enough node gets a name."""


@WORTH_A_NAME.register(ir.Leaf, ir.Ones, ir.Zero, ir.Identity, ir.Named)
def _never(node: ir.Node, uses: int) -> bool:
    return False  # a leaf is as short as a name; a named step has one already


@WORTH_A_NAME.register(ir.Einsum, ir.Add, ir.Solve, ir.Det)
def _when_shared(node: ir.Node, uses: int) -> bool:
    return uses >= 2


@WORTH_A_NAME.register(ir.Map, ir.Softmax, ir.LogSumExp)
def _nonlinear(node: ir.Node, uses: int) -> bool:
    return True  # a nonlinearity: backprop reads its value (or argument) again


def tree_sizes(roots: list[ir.Node], opaque: Callable[[ir.Node], bool] = lambda n: False
               ) -> dict[int, int]:
    """The number of nodes of each subexpression written out as a tree, by node id.

    Args:
        roots: the expressions.
        opaque: nodes that count as one (a named intermediate printed by its name).
    """
    sizes: dict[int, int] = {}
    for node in ir.topological_order(roots):
        if opaque(node):
            sizes[id(node)] = 1
        else:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in node.children())
    return sizes


def auto_name(root: ir.Node, taken: set[str],
              symbol_for: Callable[[str, tuple], sp.Basic]
              ) -> tuple[ir.Node, list[ir.Named], dict[int, ir.Node]]:
    """Wraps each shared, non-small subexpression of ``root`` in a ``Named`` node.

    Args:
        root: the definition's output.
        taken: names in use (inputs, parameters, dimensions, steps); a generated name ``tK``
            is skipped when it, or its adjoint's name ``dtK``, is taken.
        symbol_for: the SymPy symbol of a generated name for a node of the given shape.

    Returns:
        The new root (``root`` itself when nothing was named), the new named nodes in the
        order they are computed, and each old node's replacement by id.
    """
    order = ir.topological_order([root])
    uses: dict[int, int] = {}
    for node in order:
        for child in set(map(id, node.children())):
            uses[child] = uses.get(child, 0) + 1
    # Sizes up to the named steps already there: a name is as short as it gets.
    sizes = tree_sizes([root], lambda n: isinstance(n, ir.Named))
    bodies = {id(node.body) for node in order if isinstance(node, ir.Named)}
    chosen = {
        id(node) for node in order
        if node is not root and id(node) not in bodies
        and node.rank in (0, 2) and sizes[id(node)] >= SHARED_MIN_SIZE
        and WORTH_A_NAME(node, uses.get(id(node), 0))
    }
    if not chosen:
        return root, [], {}
    counter = 0

    def fresh() -> str:
        nonlocal counter
        while True:
            counter += 1
            name = f"t{counter}"
            if name not in taken and "d" + name not in taken:
                taken.add(name)
                return name

    new: dict[int, ir.Node] = {}
    named: list[ir.Named] = []
    for node in order:
        children = [new[id(c)] for c in node.children()]
        same = all(a is b for a, b in zip(children, node.children(), strict=True))
        rebuilt = node if same else ir.rebuilt(node, children)
        if id(node) in chosen:
            name = fresh()
            rebuilt = ir.named(name, rebuilt, symbol_for(name, rebuilt.shape))
            named.append(rebuilt)
        new[id(node)] = rebuilt
    return new[id(root)], named, new


def names_too_large(root: ir.Node, limit: int | None = None) -> set[int]:
    """The named nodes under ``root`` (by id) to print by name so that no named
    intermediate written out exceeds ``limit`` IR nodes (``INLINE_LIMIT``), deciding from
    the innermost outwards: one pass over the DAG, never a walk of the tree."""
    limit = INLINE_LIMIT if limit is None else limit
    sizes: dict[int, int] = {}
    by_name: set[int] = set()
    for node in ir.topological_order([root]):
        size = 1 + sum(sizes[id(c)] for c in node.children())
        if isinstance(node, ir.Named) and size > limit and node is not root:
            by_name.add(id(node))
            size = 1
        sizes[id(node)] = size
    return by_name


def written_out_size(root: ir.Node, inline: bool, by_name: set[int] | None = None) -> int:
    """How many IR nodes ``root`` has printed as one expression: named intermediates by name
    (``inline=False``), or written out up to ``INLINE_LIMIT`` (``inline=True``; ``by_name``
    is ``names_too_large(root)`` when the caller has it already)."""
    if by_name is None:
        by_name = names_too_large(root) if inline else set()
    return tree_sizes([root], lambda n: id(n) in by_name
                      or (not inline and isinstance(n, ir.Named)))[id(root)]


@WORTH_A_NAME.register(ir.MatrixFunction)
def _matrix_function_when_shared(node: ir.Node, uses: int) -> bool:
    return uses >= 2  # as a determinant: one call, shorter than its spelling only when shared



# A window or a gather is a view: named when shared, as a product is. A maximum is read again
# by backprop (its arg max), as a nonlinearity is; its one-hot mask is named when shared.
WORTH_A_NAME.register(ir.AffineRead, ir.AffineScatter, ir.Take, ir.TakeAdjoint,
                      ir.ArgMaxMask)(_when_shared)
WORTH_A_NAME.register(ir.Max)(_nonlinear)



@WORTH_A_NAME.register(ir.Scan)
def _scan_named(node: ir.Node, uses: int) -> bool:
    return True  # a recurrence: its stored states are read by the reverse loop
