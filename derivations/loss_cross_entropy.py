"""Categorical cross-entropy with logits: the softmax classifier's loss, per row of Z.

The categorical distribution of seed article 3.1 with probabilities softmax(z), and the
cross-entropy of 3.4 between the labels y (one distribution per row: one-hot or smoothed)
and it: -Σ_j y_j log softmax(z)_j. Since log softmax(z)_j = z_j - lse(z) and Σ_j y_j = 1,
this is lse(z) - Σ_j y_j z_j, evaluated with the max-shifted log-sum-exp, so logits of any
size are safe. Averaged over the n rows of a batch its gradient is the textbook

    dZ = (softmax(Z) - Y) / n,

and its Hessian in each row is (diag(p) - p p^T) / n. PyTorch's cross_entropy with
probability targets (mean reduction) is the same function.
"""

import numpy as np
import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
Z = sp.MatrixSymbol("Z", n, k)  # logits
Y = sp.MatrixSymbol("Y", n, k)  # label distributions, each row sums to one

LOGITS = "Z"
LOSS = symdl.softmax_cross_entropy(Z, Y)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Smoothed labels: each row a probability distribution."""
    y = rng.uniform(0.05, 1.0, (dims["n"], dims["k"]))
    return {"Y": y / y.sum(axis=1, keepdims=True)}


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[Z])
