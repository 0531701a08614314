"""A pre-norm transformer block: LayerNorm, causal multi-head attention, residual, GELU MLP.

The block of GPT-2 and most transformers since, on a batch of sequences X[b, s, c]:

    R = X + attention(LayerNorm1(X)),    Y = R + MLP(LayerNorm2(R)),

with each sub-layer reading a normalised copy of the residual stream and adding to it
("pre-norm", which keeps the residual path an identity and trains without warm-up). The
LayerNorms standardise each token's features by their own mean and (biased) variance and
apply a learnt scale and shift; the attention is that of layer_attention_multihead (rank-3
per-head weights, a softmax over the key axis with an additive causal mask M, no biases), and
the MLP widens each token to f features through the exact (erf) GELU, as torch.nn.GELU()
does, then projects back, with biases. Every step is written in index notation over the
batch b, the heads h, the query and key positions s and t and the features: no reshapes.

The backward pass (the gradient of Σ G ⊙ Y with the upstream gradient G) follows the
residual stream backwards: dY reaches R directly and through the MLP and LayerNorm2, and
dR reaches X directly and through the attention and LayerNorm1; each LayerNorm's gradient
passes through its row mean and its row variance.
"""

import numpy as np
import sympy as sp

import symdl

B, T, d, H, dk, f = sp.symbols("B T d H d_k f", integer=True, positive=True)
b, h, s, t, e, c, o, j = sp.symbols("b h s t e c o j", integer=True)


def tensor(name: str, *shape: sp.Expr) -> sp.IndexedBase:
    return sp.IndexedBase(name, shape=shape)


X = tensor("X", B, T, d)  # the residual stream: B sequences of T tokens of width d
g1, beta1, g2, beta2 = (tensor(n, d) for n in ("g1", "beta1", "g2", "beta2"))
Wq, Wk, Wv = (tensor(n, d, H, dk) for n in ("Wq", "Wk", "Wv"))
Wo = tensor("Wo", H, dk, d)
W1, b1 = tensor("W1", d, f), tensor("b1", f)
W2, b2 = tensor("W2", f, d), tensor("b2", d)
M = tensor("M", T, T)  # additive causal mask: 0, or -inf for a key after the query
G = tensor("G", B, T, d)  # the upstream gradient dL/dY
eps = sp.Symbol("eps", positive=True)

mu1, var1, mu2, var2 = (tensor(n, B, T) for n in ("mu1", "var1", "mu2", "var2"))
N1, R, N2, Y = (tensor(n, B, T, d) for n in ("N1", "R", "N2", "Y"))
Q, K, V, A = (tensor(n, B, H, T, dk) for n in ("Q", "K", "V", "A"))
S, P = tensor("S", B, H, T, T), tensor("P", B, H, T, T)
Z, U = tensor("Z", B, T, f), tensor("U", B, T, f)

BLOCK = [
    # LayerNorm 1
    (mu1[b, s], symdl.mean(X[b, s, c], axis=c)),
    (var1[b, s], symdl.mean((X[b, s, c] - mu1[b, s]) ** 2, axis=c)),
    (N1[b, s, c], (X[b, s, c] - mu1[b, s]) / sp.sqrt(var1[b, s] + eps) * g1[c] + beta1[c]),
    # causal multi-head self-attention
    (Q[b, h, s, e], sp.Sum(N1[b, s, c] * Wq[c, h, e], (c, 0, d - 1))),
    (K[b, h, s, e], sp.Sum(N1[b, s, c] * Wk[c, h, e], (c, 0, d - 1))),
    (V[b, h, s, e], sp.Sum(N1[b, s, c] * Wv[c, h, e], (c, 0, d - 1))),
    (S[b, h, s, t], sp.Sum(Q[b, h, s, e] * K[b, h, t, e], (e, 0, dk - 1)) / sp.sqrt(dk)),
    (P[b, h, s, t], symdl.softmax(S[b, h, s, t], axis=t, mask=M[s, t])),
    (A[b, h, s, e], sp.Sum(P[b, h, s, t] * V[b, h, t, e], (t, 0, T - 1))),
    # residual
    (R[b, s, o], X[b, s, o] + sp.Sum(A[b, h, s, e] * Wo[h, e, o], (h, 0, H - 1),
                                     (e, 0, dk - 1))),
    # LayerNorm 2
    (mu2[b, s], symdl.mean(R[b, s, c], axis=c)),
    (var2[b, s], symdl.mean((R[b, s, c] - mu2[b, s]) ** 2, axis=c)),
    (N2[b, s, c], (R[b, s, c] - mu2[b, s]) / sp.sqrt(var2[b, s] + eps) * g2[c] + beta2[c]),
    # GELU MLP and residual
    (Z[b, s, j], sp.Sum(N2[b, s, c] * W1[c, j], (c, 0, d - 1)) + b1[j]),
    (U[b, s, j], symdl.gelu(Z[b, s, j], approximate="none")),
    (Y[b, s, o], R[b, s, o] + sp.Sum(U[b, s, j] * W2[j, o], (j, 0, f - 1)) + b2[o]),
    (sp.Symbol("L"), sp.Sum(G[b, s, o] * Y[b, s, o], (b, 0, B - 1), (s, 0, T - 1),
                            (o, 0, d - 1))),
]

CHECK_DIMS = {B: 2, T: 3, d: 3, H: 2, dk: 2, f: 3}
"""Sizes for ``symdl.check`` in the test suite (interpreted kernels are slow at larger ones)."""
PRINTED_HESSIANS = False
"""The test suite checks this block's Hessian by Hessian-vector products (``symdl.check``),
not by printing its 169 blocks one by one."""


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """A causal mask, and eps > 0 (under a square root) as PyTorch's default 1e-5."""
    length = dims["T"]
    return {"M": np.triu(np.full((length, length), -np.inf), k=1), "eps": np.asarray(1e-5)}


def derivation() -> symdl.Derivation:
    return symdl.derive(BLOCK, wrt=[X, g1, beta1, Wq, Wk, Wv, Wo, g2, beta2, W1, b1, W2, b2])
ENTRYWISE_LAMBDIFY = False
"""The test suite does not lambdify this derivation's results entry by entry in Python (minutes
for rank-4 tensors); it evaluates them against finite differences instead."""
