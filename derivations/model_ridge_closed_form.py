"""Ridge regression in closed form: the held-out loss of w(λ) = (X^T X + λI)^{-1} X^T y.

Ridge regression (seed articles 1.2 and 4.1) has the closed-form minimiser

    w(λ) = (X^T X + λ I)^{-1} X^T y,

an inverse the definition writes as is (``.inv()``): symdl reads it as one linear solve and
differentiates through it with d(A^{-1}) = -A^{-1} dA A^{-1}. The loss that tunes λ is on
held-out data (Xv, yv):

    L(λ, X) = ‖Xv w(λ) - yv‖² / (2 m).

Its derivative in λ is the hypergradient, -(A^{-T} Xv^T r / m)^T w with A = X^T X + λI and
r = Xv w - yv; its second derivative (the Hessian, compiled with ``hessian=True``) says
whether the λ found is a minimum. The gradient in X is the sensitivity of the tuned model
to each training entry. Both go through one LU factorisation of A per solve, never an
explicit inverse, and print in LaTeX with A^{-1} (``symdl latex model_ridge_closed_form``).
"""

import sympy as sp

import symdl

n, m, d = sp.symbols("n m d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)  # training inputs
y = sp.MatrixSymbol("y", n, 1)  # training targets
Xv = sp.MatrixSymbol("Xv", m, d)  # held-out inputs
yv = sp.MatrixSymbol("yv", m, 1)  # held-out targets
lam = sp.Symbol("lambda", positive=True)  # the ridge penalty
w = sp.MatrixSymbol("w", d, 1)  # the ridge solution
r = sp.MatrixSymbol("r", m, 1)  # held-out residuals

LOSS = [
    (w, (X.T * X + lam * sp.Identity(d)).inv() * X.T * y),
    (r, Xv * w - yv),
    (sp.Symbol("L"), symdl.total(sp.HadamardPower(r, 2)) / (2 * m)),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[lam, X], hessian=True)
