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

The solve H^{-1} g runs in NumPy (``np.linalg.solve``) on the Hessian the generated kernel
returns: symdl's IR has no linear-solve primitive yet, so the step itself is not a kernel.
"""

import numpy as np
import sympy as sp

import symdl

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


def newton(kernel, X: np.ndarray, y: np.ndarray, lam: float,  # noqa: N803 - math names
           iterations: int = 10, tol: float = 1e-12) -> list[np.ndarray]:
    """Newton's method from w = 0; returns the iterates, stopping once ‖g‖ <= tol.

    Args:
        kernel: ``derivation().compile()``.
        X, y: ``n x d`` features and ``n x 1`` labels in {0, 1} (float64); lam: the penalty.
    """
    size = X.shape[1]
    iterates = [np.zeros((size, 1))]
    for _ in range(iterations):
        out = kernel(X=X, y=y, w=iterates[-1], **{"lambda": lam})
        if np.linalg.norm(out.grad["w"]) <= tol:
            break
        hessian = out.hessian["w", "w"].reshape(size, size)
        iterates.append(iterates[-1] - np.linalg.solve(hessian, out.grad["w"]))
    return iterates
