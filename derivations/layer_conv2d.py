"""2-D convolution layer: A = K ⋆ X + b (channels last), backpropagated from G.

The layer of every image network. A batch of n images of h x w pixels with c channels
(``N x H x W x C``, channels last) is correlated with o kernels of 3 x 3 x c (``kh x kw x C
x O``, JAX's ``HWIO``), zero-padded by one pixel so that the image keeps its size, and a bias
per output channel is added:

    A[b, i, j, q] = Σ_{u, v, c} K[u, v, c, q] X[b, i + u - 1, j + v - 1, c] + bias[q]

Its backward pass (the gradient of sum(G ⊙ A)) is the convolution's three textbook lines:

    dK = X ⋆ G,       dX = G ⋆ᵀ K,       dbias = Σ_{b, i, j} G

derived once for every batch size and channel count (and for every image size: h and w may be
symbols too; they are 5 x 5 here so that the interpreted check stays quick).
"""

import sympy as sp

import symdl

n, c, o = sp.symbols("n c o", integer=True, positive=True)
h = w = 5
X = sp.IndexedBase("X", shape=(n, h, w, c))  # a batch of images, channels last
K = sp.IndexedBase("K", shape=(3, 3, c, o))  # 3 x 3 kernels, in x out channels
bias = sp.IndexedBase("bias", shape=(o,))
G = sp.IndexedBase("G", shape=(n, h, w, o))  # the upstream gradient dL/dA
A = sp.IndexedBase("A", shape=(n, h, w, o))
b, i, j, q = sp.symbols("b i j q", integer=True)

CHECK_DIMS = {n: 2}
"""Sizes for the test suite's finite differences (one entry of X at a time: 150, not 375)."""

LAYER = [
    (A, symdl.channel_bias(symdl.conv2d(X, K, padding=1), bias)),
    (sp.Symbol("L"), sp.Sum(G[b, i, j, q] * A[b, i, j, q], (b, 0, n - 1), (i, 0, h - 1),
                            (j, 0, w - 1), (q, 0, o - 1))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X, K, bias])
