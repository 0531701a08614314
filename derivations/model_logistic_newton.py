"""Logistic regression by Newton's method: the Hessian X^T diag(σ(1 - σ)) X / n + lam I.

The Bernoulli likelihood (seed article 3.1) of labels y in {0, 1} with p = σ(X w) gives the
binary cross-entropy mean(softplus(X w) - y ⊙ X w); an L2 penalty (lam / 2) ‖w‖² (seed article
4.3) keeps the optimum finite even when the classes are separable. symdl derives

    g = X^T (σ(X w) - y) / n + lam w,
    H = X^T diag(σ(X w) ⊙ (1 - σ(X w))) X / n + lam I,

and Newton's method (the second-order use of the Hessian, seed article 2.4) steps
w <- w - H^{-1} g. The loss is strictly convex (H is positive definite for lam > 0), and
Newton converges quadratically: a handful of steps reach the optimum to machine precision,
where gradient descent needs thousands (``newton`` below, checked in the tests).

The step is a kernel of its own: the derived g and H are SymPy expressions, and
w - H^{-1} g compiles with them into one kernel (``newton_step_kernel``) in which H^{-1} g
is a linear solve (LU through LAPACK), never an inverse.
"""

import numpy as np
import sympy as sp

import symdl
from symdl import Kernel

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)  # features
y = sp.MatrixSymbol("y", n, 1)  # labels in {0, 1}
w = sp.MatrixSymbol("w", d, 1)  # weights
lam = sp.Symbol("lambda", positive=True)  # L2 strength

z = X * w
LOSS = (symdl.binary_cross_entropy_with_logits(z, y)
        + lam / 2 * symdl.total(sp.HadamardPower(w, 2)))


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """A positive penalty."""
    return {"lambda": np.asarray(rng.uniform(0.05, 1.0))}


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[w], hessian=True)


def newton_step_kernel(der: symdl.Derivation | None = None) -> Kernel:
    """One kernel: the Newton step ``w - H^{-1} g`` (output ``"w_new"``) and ``g`` (``"grad"``)."""
    der = der or derivation()
    g, hessian = der.gradient(w), der.hessian(w)
    return symdl.compile_expressions({"w_new": w - hessian.inv() * g, "grad": g},
                                     title="Newton step for L2-regularised logistic regression")


def newton(kernel, X: np.ndarray, y: np.ndarray, lam: float,  # noqa: N803 - math names
           iterations: int = 10, tol: float = 1e-12) -> list[np.ndarray]:
    """Newton's method from w = 0; returns the iterates, stopping once ‖g‖ <= tol.

    Args:
        kernel: ``newton_step_kernel()``.
        X, y: ``n x d`` features and ``n x 1`` labels in {0, 1} (float64); lam: the penalty.
    """
    iterates = [np.zeros((X.shape[1], 1))]
    for _ in range(iterations):
        out = kernel(X=X, y=y, w=iterates[-1], **{"lambda": lam})
        if np.linalg.norm(out.outputs["grad"]) <= tol:
            break
        iterates.append(out.outputs["w_new"])
    return iterates
