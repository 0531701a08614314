"""Entropy of categorical distributions given as logits: mean over rows of lse(z) - Σ p z.

The entropy of seed article 3.4 for p = softmax(z): since log p_j = z_j - lse(z),
-Σ_j p_j log p_j = lse(z) - Σ_j p_j z_j. Written on the logits it is stable for logits of
any size (max-shifted log-sum-exp and softmax; no log of an underflowed probability), and
its gradient, through the softmax, is

    dZ = -P ⊙ (Z - (P ⊙ Z) 1 1^T) / n,   P = softmax(Z),

minus the row's distribution times the logits centred at their mean under it: entropy is
maximal where all logits of a row are equal, and there the gradient vanishes. This is the
entropy bonus of policy-gradient methods; torch.distributions.Categorical(logits=z).entropy()
is the same function.
"""

import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
Z = sp.MatrixSymbol("Z", n, k)  # logits, one distribution per row

LOGITS = "Z"
LOSS = (symdl.total(symdl.logsumexp(Z))
        - symdl.total(sp.hadamard_product(symdl.softmax(Z), Z))) / n


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[Z])
