"""Multivariate Gaussian negative log-likelihood with a full covariance: logdet and inverse.

Data rows x_i in R^d, modelled as x_i ~ N(mu, S) with a mean row mu and a full covariance S
(seed article 3.1; the Gaussian's normaliser is where the determinant enters). The average
negative log-likelihood is

    L(mu, S) = ( log det S + tr(S^{-1} R^T R) / n + d log 2π ) / 2,   R = X - 1 mu,

and its gradients, in matrix form,

    dmu = -(1^T R) S^{-1} / n,
    dS  = ( S^{-T} - S^{-T} R^T R S^{-T} / n ) / 2,

vanish at the maximum-likelihood estimate: mu = the mean row, S = R^T R / n (the sample
covariance). ``d log det S = tr(S^{-1} dS)`` gives the first term of dS; the derivative of
the inverse, -S^{-1} dS S^{-1}, the second. S is declared symmetric positive definite
(``symdl.logdet(S, spd=True)``), so the kernel takes log det S from a Cholesky factor; the
trace term is one linear solve S^{-1} (R^T R), never an explicit inverse.
"""

import numpy as np
import sympy as sp

import symdl

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)  # data, one row per example
mu = sp.MatrixSymbol("mu", 1, d)  # mean (a row)
S = sp.MatrixSymbol("S", d, d)  # covariance, symmetric positive definite
R = sp.MatrixSymbol("R", n, d)  # residuals

LOSS = [
    (R, X - sp.OneMatrix(n, 1) * mu),
    (sp.Symbol("L"), (symdl.logdet(S, spd=True) + symdl.trace(S.inv() * R.T * R) / n
                      + d * sp.log(2 * sp.pi)) / 2),
]


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """A well-conditioned symmetric positive definite covariance."""
    a = rng.normal(size=(dims["d"], dims["d"]))
    return {"S": a @ a.T / dims["d"] + np.eye(dims["d"])}


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[mu, S])
