"""Multi-head causal self-attention in tensor notation: batch x heads x sequence x features.

A batch of sequences X[b, s, c] (B sequences of T tokens of width d) is projected to the
queries, keys and values of H heads at once, each weight a rank-3 tensor, so no reshape
splits or merges the heads: Q[b, h, s, e] = Σ_c X[b, s, c] Wq[c, h, e] (and K, V alike). Each
head's scores are the scaled dot products of its queries with its keys, S[b, h, s, t] =
Σ_e Q[b, h, s, e] K[b, h, t, e] / sqrt(d_k), normalised by a softmax over the key axis t
after adding the mask M[s, t] (0 where query s may see key t, -inf where it may not: the
causal mask has -inf above the diagonal). The heads' outputs are merged by the output
projection, a sum over the head and its features: Y[b, s, o] = Σ_{h,e} A[b, h, s, e]
Wo[h, e, o]. This is torch.nn.MultiheadAttention without biases, its in_proj_weight's three
blocks reshaped to Wq, Wk, Wv (d x H x d_k, transposed) and out_proj.weight to Wo.

The softmax along t is computed stably (the maximum over t is subtracted first, ignoring
masked entries), so scores of 1e3 give no NaN, and masked entries get probability 0 and
gradient 0. The backward pass (the gradient of Σ G ⊙ Y with the upstream gradient G) is the
transformer's, per head: dA = Σ_o dY Wo, dV = P^T dA, dP = dA V^T, the softmax's
dS = P ⊙ (dP - Σ_t P ⊙ dP), dQ = dS K / sqrt(d_k), dK = dS^T Q / sqrt(d_k), and the weight
gradients are sums over the batch and the sequence.
"""

import numpy as np
import sympy as sp

import symdl

B, T, d, H, dk = sp.symbols("B T d H d_k", integer=True, positive=True)
b, h, s, t, e, c, o = sp.symbols("b h s t e c o", integer=True)

X = sp.IndexedBase("X", shape=(B, T, d))  # B sequences of T tokens of width d
Wq = sp.IndexedBase("Wq", shape=(d, H, dk))  # one d x d_k projection per head
Wk = sp.IndexedBase("Wk", shape=(d, H, dk))
Wv = sp.IndexedBase("Wv", shape=(d, H, dk))
Wo = sp.IndexedBase("Wo", shape=(H, dk, d))  # merges the heads back to width d
M = sp.IndexedBase("M", shape=(T, T))  # additive mask: 0 or -inf (causal: -inf for t > s)
G = sp.IndexedBase("G", shape=(B, T, d))  # the upstream gradient dL/dY

Q = sp.IndexedBase("Q", shape=(B, H, T, dk))
K = sp.IndexedBase("K", shape=(B, H, T, dk))
V = sp.IndexedBase("V", shape=(B, H, T, dk))
S = sp.IndexedBase("S", shape=(B, H, T, T))  # scaled scores of query s against key t
P = sp.IndexedBase("P", shape=(B, H, T, T))  # attention weights: sum to one over t
A = sp.IndexedBase("A", shape=(B, H, T, dk))  # each head's output
Y = sp.IndexedBase("Y", shape=(B, T, d))

LAYER = [
    (Q[b, h, s, e], sp.Sum(X[b, s, c] * Wq[c, h, e], (c, 0, d - 1))),
    (K[b, h, s, e], sp.Sum(X[b, s, c] * Wk[c, h, e], (c, 0, d - 1))),
    (V[b, h, s, e], sp.Sum(X[b, s, c] * Wv[c, h, e], (c, 0, d - 1))),
    (S[b, h, s, t], sp.Sum(Q[b, h, s, e] * K[b, h, t, e], (e, 0, dk - 1)) / sp.sqrt(dk)),
    (P[b, h, s, t], symdl.softmax(S[b, h, s, t], axis=t, mask=M[s, t])),
    (A[b, h, s, e], sp.Sum(P[b, h, s, t] * V[b, h, t, e], (t, 0, T - 1))),
    (Y[b, s, o], sp.Sum(A[b, h, s, e] * Wo[h, e, o], (h, 0, H - 1), (e, 0, dk - 1))),
    (sp.Symbol("L"), sp.Sum(G[b, s, o] * Y[b, s, o], (b, 0, B - 1), (s, 0, T - 1),
                            (o, 0, d - 1))),
]


def causal_mask(length: int) -> np.ndarray:
    """0 on and below the diagonal, -inf above: query s sees the keys t <= s."""
    return np.triu(np.full((length, length), -np.inf), k=1)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """The mask is causal (a value of -inf, not a random number)."""
    return {"M": causal_mask(dims["T"])}


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X, Wq, Wk, Wv, Wo])


CHECK_DIMS = {B: 2, T: 3, d: 3, H: 2, dk: 2}
"""Sizes for ``symdl.check`` in the test suite (interpreted kernels are slow at larger ones)."""
ENTRYWISE_LAMBDIFY = False
"""The test suite does not lambdify this derivation's results entry by entry in Python (minutes
for rank-4 tensors); it evaluates them against finite differences instead."""
