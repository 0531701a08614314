"""Bayesian view of L2 regularisation: the MAP objective with a Gaussian prior on the weights.

Bayes' theorem (seed article 3.2) gives the posterior p(w | X, y) ∝ p(y | X, w) p(w). With
Gaussian noise, y ~ N(X w, sigma² I), and a Gaussian prior w ~ N(0, tau² I) (seed article 3.1:
"L2 regularization can be interpreted as placing a Gaussian prior on weights"), the negative
log-posterior is, up to the evidence,

    ‖X w - y‖² / (2 sigma²) + ‖w‖² / (2 tau²) + n log sigma + d log tau + (n + d) log(2π) / 2:

the negative log-likelihood plus an L2 penalty of strength 1 / tau². Its maximiser, the MAP
estimate, is ridge regression with lam = sigma² / tau²: w = (X^T X + lam I)^{-1} X^T y. symdl
derives the gradient X^T (X w - y) / sigma² + w / tau² and the Hessian X^T X / sigma² + I / tau²
(positive definite for any data, so the MAP estimate is unique); one Newton step
w - H^{-1} g from any point reaches it. The constant
terms keep the objective equal to -log N(y | X w, sigma²) - log N(w | 0, tau²) exactly, which the
tests compare with torch.distributions.
"""

import numpy as np
import sympy as sp

import symdl

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)  # features
y = sp.MatrixSymbol("y", n, 1)  # targets
w = sp.MatrixSymbol("w", d, 1)  # weights
sigma = sp.Symbol("sigma", positive=True)  # noise standard deviation
tau = sp.Symbol("tau", positive=True)  # prior standard deviation

residual = X * w - y
NEGATIVE_LOG_LIKELIHOOD = (symdl.total(sp.HadamardPower(residual, 2)) / (2 * sigma**2)
                           + n * sp.log(sigma) + n * sp.log(2 * sp.pi) / 2)
NEGATIVE_LOG_PRIOR = (symdl.total(sp.HadamardPower(w, 2)) / (2 * tau**2)
                      + d * sp.log(tau) + d * sp.log(2 * sp.pi) / 2)
OBJECTIVE = NEGATIVE_LOG_LIKELIHOOD + NEGATIVE_LOG_PRIOR


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Positive standard deviations."""
    return {"sigma": np.asarray(rng.uniform(0.3, 2.0)), "tau": np.asarray(rng.uniform(0.3, 2.0))}


def derivation() -> symdl.Derivation:
    return symdl.derive(OBJECTIVE, wrt=[w, sigma, tau], hessian=True)
