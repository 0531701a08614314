"""1-D convolution layer: Y = W ⋆ X (channels first, padding 1), backpropagated from G.

A convolution slides a kernel along a sequence: for a batch of n sequences of length t with c
channels (PyTorch's ``N x C x L`` layout) and o kernels of width 3,

    Y[b, q, i] = Σ_{c, k} W[q, c, k] X[b, c, i + k - 1]

(entries outside the sequence read as zero: padding 1 keeps the length). As every layer
here, its backward pass is the gradient of sum(G ⊙ Y) for an upstream gradient G. Both
derivatives are again windowed sums, derived once for every n, c, o and t:

    dW = X ⋆ G         (the correlation of the input with the upstream gradient)
    dX = G ⋆ᵀ W        (the transposed convolution: each output's gradient spread back
                        over the window it read)

The loss reads the step Y in index notation, as any other tensor.
"""

import sympy as sp

import symdl

n, c, o, t = sp.symbols("n c o t", integer=True, positive=True)
X = sp.IndexedBase("X", shape=(n, c, t))  # a batch of sequences, channels first
W = sp.IndexedBase("W", shape=(o, c, 3))  # PyTorch's conv1d weight layout
G = sp.IndexedBase("G", shape=(n, o, t))  # the upstream gradient dL/dY
Y = sp.IndexedBase("Y", shape=(n, o, t))
b, q, i = sp.symbols("b q i", integer=True)

LAYER = [
    (Y, symdl.conv1d(X, W, padding=1, layout="channels_first")),
    (sp.Symbol("L"), sp.Sum(G[b, q, i] * Y[b, q, i], (b, 0, n - 1), (q, 0, o - 1),
                            (i, 0, t - 1))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X, W])
