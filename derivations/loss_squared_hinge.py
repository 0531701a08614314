"""Squared hinge loss: mean(relu(1 - Y ⊙ Z)²) for labels in {-1, 1}.

The hinge loss of seed article 4.1, squared: still zero once the margin y z reaches 1, but
differentiable everywhere (the L2-SVM), so its gradient fades to zero at the margin instead
of jumping. With the shortfall S = 1 - Y ⊙ Z and its positive part M = relu(S) named,

    dM = 2 M / (n k),     dS = dM ⊙ H(S),     dZ = -Y ⊙ dS,

and the Hessian in Z is 2 H(S) / (n k) on the diagonal (Y² = 1).
"""

import numpy as np
import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
Z = sp.MatrixSymbol("Z", n, k)  # scores (logits)
Y = sp.MatrixSymbol("Y", n, k)  # labels in {-1, 1}
S = sp.MatrixSymbol("S", n, k)  # 1 - margin
M = sp.MatrixSymbol("M", n, k)  # the hinge, relu(S)

LOGITS = "Z"
LOSS = [
    (S, sp.OneMatrix(n, k) - sp.hadamard_product(Y, Z)),
    (M, symdl.relu(S)),
    (sp.Symbol("L"), symdl.mean(sp.HadamardPower(M, 2))),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Labels in {-1, 1}."""
    return {"Y": rng.choice([-1.0, 1.0], (dims["n"], dims["k"]))}


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[Z])
