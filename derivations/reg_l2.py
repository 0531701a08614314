"""L2 regularisation (ridge, weight decay): (lam / 2) ‖W‖² = (lam / 2) Σ W_ij².

The L2 penalty of seed article 4.3 keeps weights small. Its gradient lam W is why it is also
called weight decay: a gradient step w <- w - eta (g + lam w) first shrinks every weight by
the factor 1 - eta lam. (With plain SGD the two are the same; with Adam they differ, which is
what AdamW's decoupled decay is about.) The Hessian is lam I, which is what makes a ridge
problem well conditioned, and model_map_gaussian_prior shows the penalty is a Gaussian prior
N(0, 1/lam) on each weight.
"""

import sympy as sp

import symdl

d, k = sp.symbols("d k", integer=True, positive=True)
W = sp.MatrixSymbol("W", d, k)  # weights
lam = sp.Symbol("lambda", positive=True)  # decay strength

PENALTY = lam / 2 * symdl.total(sp.HadamardPower(W, 2))


def derivation() -> symdl.Derivation:
    return symdl.derive(PENALTY, wrt=[W, lam], hessian=True)
