"""KL divergence between categorical distributions given as logits: KL(softmax(T) ‖ softmax(Z)).

The Kullback-Leibler divergence of seed article 3.4, Σ_j p_j (log p_j - log q_j), between a
target distribution p = softmax(T) and a model's q = softmax(Z), one pair per row, averaged
over the n rows (PyTorch's kl_div with reduction="batchmean"). Both are given as logits and
enter through log_softmax (z - lse(z)), so no probability is ever taken the log of: large
logits neither overflow nor underflow to log 0. The gradients are

    dZ = (softmax(Z) - P) / n,
    dT = P ⊙ (D - (P ⊙ D) 1 1^T) / n,   D = log P - log Q,

the first the cross-entropy's (KL = cross-entropy - entropy of the target, which does not
depend on Z), the second the softmax's backward pass applied to D.
"""

import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
Z = sp.MatrixSymbol("Z", n, k)  # the model's logits (q)
T = sp.MatrixSymbol("T", n, k)  # the target's logits (p)
P = sp.MatrixSymbol("P", n, k)  # softmax(T)
D = sp.MatrixSymbol("D", n, k)  # log p - log q

LOGITS = "Z"
LOSS = [
    (P, symdl.softmax(T)),
    (D, symdl.log_softmax(T) - symdl.log_softmax(Z)),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(P, D)) / n),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[Z, T])
