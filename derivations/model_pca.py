"""PCA as a reconstruction loss: ‖X - X W W^T‖² / n, minimised by the top eigenvectors.

Principal component analysis (seed article 1.3: eigenvalues and eigenvectors) projects
centred data X (n x d) onto k directions, the columns of W (d x k), and reconstructs
X W W^T. The mean squared reconstruction error

    L(W) = ‖X - X W W^T‖² / n,

with C = X^T X / n, E = X W W^T - X, has the gradient

    dW = 2 (X^T E W + E^T X W) / n.

At W = the eigenvectors of C for its k largest eigenvalues (orthonormal columns) the
gradient vanishes and the loss is the sum of the d - k discarded eigenvalues of C:
``eigen_solution`` computes that point with numpy.linalg.eigh, and the tests check both
facts (Eckart-Young). Gradient descent on L from a random W finds the same subspace (W up to
a rotation), which is how PCA runs on data too large for an eigendecomposition.
"""

import numpy as np
import sympy as sp

import symdl

n, d, k = sp.symbols("n d k", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)  # centred data, one row per example
W = sp.MatrixSymbol("W", d, k)  # projection directions
E = sp.MatrixSymbol("E", n, d)  # reconstruction errors

LOSS = [
    (E, X * W * W.T - X),
    (sp.Symbol("L"), symdl.total(sp.HadamardPower(E, 2)) / n),
]


def eigen_solution(X: np.ndarray, k: int) -> tuple[np.ndarray, float]:  # noqa: N803
    """The top-k eigenvectors of X^T X / n (as W) and the loss there, the sum of the
    discarded eigenvalues."""
    eigenvalues, vectors = np.linalg.eigh(X.T @ X / X.shape[0])  # ascending
    return vectors[:, ::-1][:, :k], float(eigenvalues[: X.shape[1] - k].sum())


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[W], hessian=True)
