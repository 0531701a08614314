"""IR-to-IR rewrites of a node's shape."""

from __future__ import annotations

from symdl.ir import nodes as ir


def squeeze(node: ir.Node) -> ir.Node:
    """Drops the size-1 axes of a node (a ``d x 1 x d x 1`` Hessian becomes ``d x d``)."""
    keep = tuple(a for a, d in enumerate(node.shape) if d != 1)
    if len(keep) == node.rank:
        return node
    if isinstance(node, ir.Add):
        return ir.add(*[squeeze(t) for t in node.terms])
    return ir.einsum([node], [tuple(range(node.rank))], keep)
