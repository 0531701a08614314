"""Two-layer network: dense + tanh, dense + softmax cross-entropy.

The network of every deep-learning course, on a batch of n examples with d features, h hidden
units and k classes. Each named intermediate becomes one backprop step, and the reverse-mode
equations come out in the textbook's matrix form:

    dZ2 = (softmax(Z2) - Y) / n
    dW2 = A1^T dZ2,          db2 = 1^T dZ2
    dA1 = dZ2 W2^T
    dZ1 = dA1 ⊙ (1 - A1 ⊙ A1)
    dW1 = X^T dZ1,           db1 = 1^T dZ1

One derivation serves every batch size and width: n, d, h and k stay symbols.
"""

import sympy as sp

import symdl

n, d, h, k = sp.symbols("n d h k", integer=True, positive=True)

# Data: a batch of inputs and one-hot labels (each row of Y sums to one).
X = sp.MatrixSymbol("X", n, d)
Y = sp.MatrixSymbol("Y", n, k)

# Parameters: a weight matrix and a bias row per layer.
W1, b1 = sp.MatrixSymbol("W1", d, h), sp.MatrixSymbol("b1", 1, h)
W2, b2 = sp.MatrixSymbol("W2", h, k), sp.MatrixSymbol("b2", 1, k)

# Named intermediates.
Z1, A1 = sp.MatrixSymbol("Z1", n, h), sp.MatrixSymbol("A1", n, h)
Z2 = sp.MatrixSymbol("Z2", n, k)
L = sp.Symbol("L")

MODEL = [
    (Z1, X * W1 + symdl.bias(b1, n)),
    (A1, symdl.tanh(Z1)),
    (Z2, A1 * W2 + symdl.bias(b2, n)),
    (L, symdl.softmax_cross_entropy(Z2, Y)),
]
PARAMETERS = [W1, b1, W2, b2]


def derivation() -> symdl.Derivation:
    return symdl.derive(MODEL, wrt=PARAMETERS)
