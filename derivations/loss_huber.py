"""Huber loss: quadratic for residuals up to delta, linear beyond; delta is a symbol.

huber(r) = r²/2 for |r| <= delta and delta (|r| - delta/2) beyond: the squared error's
smooth minimum with the absolute error's robustness to outliers (seed article 4.1). It needs
no piecewise function: with the excess E = relu(|r| - delta) over the threshold and
min(|r|, delta) = |r| - E,

    huber(r) = (|r| - E)² / 2 + delta E

(symdl.huber(R, delta) builds the same expression in one call; here the steps are named).
Its derivative is clip(r, -delta, delta), since the two branches agree in value and slope at
|r| = delta (relu'(0) = 0 and sign(0) = 0 are the conventions at
the kinks, where either one-sided derivative is a valid choice). Named steps give

    dE = (delta - (A - E)) / (n k),   dA = (A - E) / (n k) + dE ⊙ H(A - delta),
    dR = dA ⊙ sign(R),

with A = |R|. delta stays a scalar input: one derivation serves every threshold, and the loss
is also differentiated with respect to delta (mean(relu(|R| - delta))). PyTorch's huber_loss
(mean reduction) is the same function.
"""

import numpy as np
import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
P = sp.MatrixSymbol("P", n, k)  # predictions
T = sp.MatrixSymbol("T", n, k)  # targets
delta = sp.Symbol("delta", positive=True)  # the threshold (PyTorch's default is 1)
R = sp.MatrixSymbol("R", n, k)  # residuals
A = sp.MatrixSymbol("A", n, k)  # their absolute values
E = sp.MatrixSymbol("E", n, k)  # the excess over delta

LOSS = [
    (R, P - T),
    (A, symdl.absolute(R)),
    (E, symdl.relu(A - delta * sp.OneMatrix(n, k))),
    (sp.Symbol("L"), symdl.mean(sp.HadamardPower(A - E, 2) / 2 + delta * E)),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """delta must be positive."""
    return {"delta": np.asarray(rng.uniform(0.3, 1.5))}


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[P, T, delta])
