"""L1 regularisation (lasso): lam ‖W‖₁ = lam Σ |W_ij|, with the subgradient sign(0) = 0.

The L1 penalty of seed article 4.3 adds the absolute values of the weights to the loss and
drives some of them to exactly zero (sparsity, feature selection). |w| has no derivative at
0, where every value in [-1, 1] is a subgradient; symdl states the convention

    d|w|/dw = sign(w),   sign(0) = 0,

(the same as PyTorch's autograd for abs), so the gradient is lam sign(W): a weight that is
exactly zero gets no push. Proximal methods (soft thresholding) handle the kink exactly;
this derivation gives the plain subgradient. The penalty is also differentiated with
respect to its strength lam (‖W‖₁), for tuning it by gradient.
"""

import sympy as sp

import symdl

d, k = sp.symbols("d k", integer=True, positive=True)
W = sp.MatrixSymbol("W", d, k)  # weights
lam = sp.Symbol("lambda", positive=True)  # penalty strength

PENALTY = lam * symdl.total(symdl.absolute(W))


def derivation() -> symdl.Derivation:
    return symdl.derive(PENALTY, wrt=[W, lam])
