"""Linear regression by the normal equations: w = (X^T X)^{-1} X^T y, or the pseudo-inverse.

Least squares (seed article 2.3 and 4.1) minimises L(w) = ‖X w - y‖² / 2. symdl derives

    gradient  X^T (X w - y),       Hessian  X^T X,

and setting the gradient to zero gives the normal equations X^T X w = X^T y. L is quadratic,
so one Newton step from any w lands on the minimum: w* = w - H^{-1} g. When X^T X is singular
(fewer examples than features, or collinear features) the minimiser is not unique, and the
pseudo-inverse (seed article 1.2) picks the one of least norm, w* = X^+ y = (X^T X)^+ X^T y.

A definition may contain the inverse: symdl reads (X^T X)^{-1} X^T y as one linear solve
(LU factorisation, never the inverse itself; its derivative is -A^{-1} dA A^{-1}), so
``SOLUTION`` below compiles into a kernel (``solution_kernel``). That needs X^T X invertible.
For the pseudo-inverse, ``solve`` takes the derived gradient and Hessian from the kernel and
calls ``np.linalg.lstsq``, whose least-norm solution of H w = -g also covers a singular H:
symdl has no pseudo-inverse primitive. The gradient-descent route to the same w is
linear_regression.
"""

import numpy as np
import sympy as sp

import symdl
from symdl import Kernel

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)  # design matrix, one row per example
y = sp.MatrixSymbol("y", n, 1)  # targets
w = sp.MatrixSymbol("w", d, 1)  # weights

residual = X * w - y
LOSS = symdl.total(sp.HadamardPower(residual, 2)) / 2


SOLUTION = (X.T * X).inv() * X.T * y  # the normal equations' solution, d x 1


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[w], hessian=True)


def solution_kernel() -> Kernel:
    """A kernel computing ``SOLUTION`` (output ``"w"``) from ``X`` and ``y``."""
    return symdl.compile_expressions({"w": SOLUTION}, title="normal equations")


def solve(kernel, X: np.ndarray, y: np.ndarray) -> np.ndarray:  # noqa: N803 - math names
    """The least-norm minimiser of ‖X w - y‖² / 2 from the derived gradient and Hessian.

    Args:
        kernel: ``derivation().compile()`` (it returns the gradient and the Hessian block).
        X: the ``n x d`` design matrix; y: the ``n x 1`` targets (float64).

    Returns:
        ``w`` (``d x 1``) with ``X^T X w = X^T y``; of least norm when ``X^T X`` is singular.
    """
    w0 = np.zeros((X.shape[1], 1), dtype=X.dtype)
    out = kernel(X=X, y=y, w=w0)
    size = X.shape[1]
    hessian = out.hessian["w", "w"].reshape(size, size)
    step, *_ = np.linalg.lstsq(hessian, -out.grad["w"], rcond=None)
    return w0 + step
