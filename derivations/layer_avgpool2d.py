"""3 x 3 average pooling, stride 1, padding 1 (channels first): P = avgpool(X), from G.

Each output is the mean of the 3 x 3 window around its pixel; the zero padding counts in the
mean (PyTorch's default ``count_include_pad=True``), so a corner averages four pixels and five
zeros over nine. The derivative spreads each upstream gradient evenly back over its window:

    dX = avgpoolᵀ(G)      (G[b, c, i, j] / 9 added to each pixel of window (i, j))
"""

import sympy as sp

import symdl

n, c, h, w = sp.symbols("n c h w", integer=True, positive=True)
X = sp.IndexedBase("X", shape=(n, c, h, w))  # channels first (PyTorch's layout)
G = sp.IndexedBase("G", shape=(n, c, h, w))  # the upstream gradient dL/dP
P = sp.IndexedBase("P", shape=(n, c, h, w))
b, q, i, j = sp.symbols("b q i j", integer=True)

LAYER = [
    (P, symdl.avg_pool2d(X, 3, stride=1, padding=1, layout="channels_first")),
    (sp.Symbol("L"), sp.Sum(G[b, q, i, j] * P[b, q, i, j], (b, 0, n - 1), (q, 0, c - 1),
                            (i, 0, h - 1), (j, 0, w - 1))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X])
