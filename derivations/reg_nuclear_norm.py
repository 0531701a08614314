"""Nuclear-norm regularisation (low rank): lam ‖W‖_* = lam Σ_i σ_i(W).

The nuclear norm, the sum of the singular values, is to rank what the L1 norm is to the number
of nonzero entries (seed article, the SVD chapter): its penalty pushes singular values to
exactly zero, so a matrix of weights or of completed ratings (model_matrix_factorization)
comes out of low rank without choosing the rank in advance. With the thin SVD W = U Σ V^T,

    d‖W‖_* = tr(U^T dW V),    so    dW = lam U V^T,    dlam = ‖W‖_*,

a matrix of the same shape as W whose singular values are all 1. The formula assumes every
singular value nonzero (W of full rank): at a zero one the norm has a kink, like |x| at 0,
and only a subgradient. symdl checks this where the gradient is computed and raises
EvaluationError naming the smallest singular value and the tolerance. Optimisers that reach
the kink on purpose take a proximal step instead (singular value soft-thresholding:
σ_i <- max(σ_i - eta lam, 0)). Hessians through singular values are not supported, so this
derivation has gradients only.
"""

import sympy as sp

import symdl

d, k = sp.symbols("d k", integer=True, positive=True)
W = sp.MatrixSymbol("W", d, k)  # weights
lam = sp.Symbol("lambda", positive=True)  # penalty strength

PENALTY = lam * symdl.norm(W, "nuc")


def derivation() -> symdl.Derivation:
    return symdl.derive(PENALTY, wrt=[W, lam])
