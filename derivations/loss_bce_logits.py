"""Binary cross-entropy with logits: mean(softplus(Z) - Y ⊙ Z), stable for any logit.

The Bernoulli likelihood of seed article 3.1 and the binary cross-entropy of 3.4: with
p = σ(z), -y log p - (1 - y) log(1 - p) simplifies to softplus(z) - y z, because
log σ(z) = -softplus(-z) and softplus(z) - softplus(-z) = z. Written on the logits, nothing
overflows: softplus is evaluated as max(z, 0) + log1p(exp(-|z|)), and its derivative is
σ(z), so the gradient is the textbook

    dZ = (σ(Z) - Y) / (n k).

Targets Y may be soft (any value in [0, 1]); the loss is then also differentiated with
respect to them (dY = -Z / (n k)). PyTorch's binary_cross_entropy_with_logits with the mean
reduction is the same function.
"""

import numpy as np
import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
Z = sp.MatrixSymbol("Z", n, k)  # logits, one per example and output
Y = sp.MatrixSymbol("Y", n, k)  # targets in [0, 1]

LOGITS = "Z"
LOSS = symdl.binary_cross_entropy_with_logits(Z, Y)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Soft targets in [0, 1]."""
    return {"Y": rng.uniform(0.0, 1.0, (dims["n"], dims["k"]))}


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[Z, Y])
