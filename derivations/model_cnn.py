"""A convolutional network on 8 x 8 digits: conv 3x3 -> relu -> 2x2 max pool -> dense -> softmax.

The network of the demo (``make demo`` trains it on scikit-learn's digits): a batch of n
grey 8 x 8 images (``N x 8 x 8 x 1``, channels last) goes through four 3 x 3 kernels (valid
convolution: 6 x 6), relu, 2 x 2 max pooling (3 x 3), is flattened to 36 features per image and
classified into ten digits (the demo's network has 16 kernels and padding 1). Backprop reads
as the textbook:

    δ2 = (softmax(Z2) - Y)/n
    dP1 = unflatten(δ2 W2ᵀ)                  dW2 = flatten(P1)ᵀ δ2
    dA1 = maxpoolᵀ(dP1 | A1)                 (to each window's arg max)
    δ1 = dA1 ⊙ relu'(Z1)
    dK1 = X ⋆ δ1,   db1 = Σ_{b,i,j} δ1       (a correlation of the input with δ1)

derived once for every batch size n.
"""

import numpy as np
import sympy as sp

import symdl

n = sp.Symbol("n", integer=True, positive=True)
C = 4  # convolution channels
X = sp.IndexedBase("X", shape=(n, 8, 8, 1))  # images, channels last
Y = sp.MatrixSymbol("Y", n, 10)  # one-hot labels

K1 = sp.IndexedBase("K1", shape=(3, 3, 1, C))  # kh x kw x in x out
b1 = sp.IndexedBase("b1", shape=(C,))
W2, b2 = sp.MatrixSymbol("W2", 9 * C, 10), sp.MatrixSymbol("b2", 1, 10)

Z1 = sp.IndexedBase("Z1", shape=(n, 6, 6, C))
A1 = sp.IndexedBase("A1", shape=(n, 6, 6, C))
P1 = sp.IndexedBase("P1", shape=(n, 3, 3, C))
Z2 = sp.MatrixSymbol("Z2", n, 10)

MODEL = [
    (Z1, symdl.channel_bias(symdl.conv2d(X, K1), b1)),
    (A1, symdl.relu(Z1)),
    (P1, symdl.max_pool2d(A1, 2)),
    (Z2, symdl.flatten(P1) * W2 + symdl.bias(b2, n)),
    (sp.Symbol("L"), symdl.softmax_cross_entropy(Z2, Y)),
]
PARAMETERS = [K1, b1, W2, b2]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Pixels in [0, 1] and weights at the usual initial scale (1/sqrt(fan-in)), so that the
    loss is of order one, as in training (finite differences of a loss of 30 lose digits)."""
    rows = dims["n"]
    return {"X": rng.uniform(0, 1, (rows, 8, 8, 1)), "K1": rng.normal(size=(3, 3, 1, C)) / 3,
            "W2": rng.normal(size=(9 * C, 10)) / np.sqrt(9 * C)}


def derivation() -> symdl.Derivation:
    return symdl.derive(MODEL, wrt=PARAMETERS)


ENTRYWISE_LAMBDIFY = False
"""The test suite does not lambdify this derivation's printed Hessian entry by entry in Python
(nested maxima over pooling windows of rank-4 tensors: minutes); its printed results are
evaluated against finite differences by tests/end_to_end/test_derivations.py instead."""
