"""Embedding layer: A = E[idx], the rows of a table picked by integer ids, from G.

A vocabulary of v tokens, each a row of d numbers; a batch of n token ids ``idx`` (integers in
0 .. v-1, data, not differentiated) picks n rows. The derivative with respect to the table
adds each upstream gradient row into the row of its token (a scatter-add; a token used twice
gets both, one never used gets zero):

    dE = scatter_add[idx](G)

Kernels check that every id is inside the table.
"""

import numpy as np
import sympy as sp

import symdl

n, v, d = sp.symbols("n v d", integer=True, positive=True)
E = sp.MatrixSymbol("E", v, d)  # the embedding table
idx = sp.IndexedBase("idx", shape=(n,))  # token ids
G = sp.MatrixSymbol("G", n, d)  # the upstream gradient dL/dA
A = sp.MatrixSymbol("A", n, d)

LAYER = [
    (A, symdl.embedding(E, idx)),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, A))),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Token ids inside the table (with repeats when n > v)."""
    return {"idx": rng.integers(0, dims["v"], dims["n"])}


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[E])
