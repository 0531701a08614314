"""Stage 2, the IR: tensors in index notation with symbolic shapes, and the passes over it.

``nodes`` defines the node kinds and their constructors (re-exported here, so that
``from symdl import ir; ir.einsum(...)`` reads as the algebra it builds); ``rewrites`` makes
every spelling stable, ``naming`` chooses named intermediates, ``evaluate`` is the NumPy
interpreter every derived formula is checked against, ``assumptions`` checks the declared
assumptions of inputs, ``rules`` is the table (one rule per node kind) through which every
interpreter of the IR dispatches.
"""

from symdl.ir.nodes import (
    Add,
    Det,
    Einsum,
    Identity,
    Labels,
    Leaf,
    LogSumExp,
    Map,
    Named,
    Node,
    Ones,
    Shape,
    Softmax,
    Solve,
    Zero,
    _canonical_labels,
    _intern,
    _label_dims,
    add,
    broadcast,
    canonical_lambda,
    count_nodes,
    det,
    einsum,
    hadamard,
    identity,
    is_scalar_constant,
    is_zero,
    leaf,
    logsumexp,
    map_,
    named,
    ones,
    rebuilt,
    scalar,
    scale,
    softmax,
    solve,
    topological_order,
    zero,
)

__all__ = [
    "Add",
    "Det",
    "Einsum",
    "Identity",
    "Labels",
    "Leaf",
    "LogSumExp",
    "Map",
    "Named",
    "Node",
    "Ones",
    "Shape",
    "Softmax",
    "Solve",
    "Zero",
    "_canonical_labels",
    "_intern",
    "_label_dims",
    "add",
    "broadcast",
    "canonical_lambda",
    "count_nodes",
    "det",
    "einsum",
    "hadamard",
    "identity",
    "is_scalar_constant",
    "is_zero",
    "leaf",
    "logsumexp",
    "map_",
    "named",
    "ones",
    "rebuilt",
    "scalar",
    "scale",
    "softmax",
    "solve",
    "topological_order",
    "zero",
]

# Recurrences (``Scan``): kept apart so that other node kinds merge without conflicts.
from symdl.ir.nodes import Scan, closure_of, scan, substitute  # noqa: E402

__all__ += ["Scan", "closure_of", "scan", "substitute"]
