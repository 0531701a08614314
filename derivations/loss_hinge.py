"""Hinge loss: mean(relu(1 - Y ⊙ Z)) for labels in {-1, 1}, the support vector machine's loss.

The max-margin loss of seed article 4.1: a score z for a label y in {-1, 1} costs nothing
once its margin y z reaches 1, and 1 - y z below. Written with relu, max(0, 1 - y z) needs
no piecewise function; relu'(0) = 0 is the subgradient taken at the kink (a margin of
exactly 1). With the margins' shortfall S = 1 - Y ⊙ Z named, backprop reads

    dS = H(S) / (n k),     dZ = -Y ⊙ dS,

so only the examples inside the margin send a gradient. Each of the k columns is a separate
binary problem (one-vs-rest); PyTorch has no binary hinge loss, so the tests compare with
clamp(1 - y z, min=0).mean() under its autograd.
"""

import numpy as np
import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
Z = sp.MatrixSymbol("Z", n, k)  # scores (logits)
Y = sp.MatrixSymbol("Y", n, k)  # labels in {-1, 1}
S = sp.MatrixSymbol("S", n, k)  # 1 - margin

LOGITS = "Z"
LOSS = [
    (S, sp.OneMatrix(n, k) - sp.hadamard_product(Y, Z)),
    (sp.Symbol("L"), symdl.mean(symdl.relu(S))),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Labels in {-1, 1}."""
    return {"Y": rng.choice([-1.0, 1.0], (dims["n"], dims["k"]))}


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[Z])
