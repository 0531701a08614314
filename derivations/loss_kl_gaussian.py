"""KL divergence between diagonal Gaussians from means and log-variances: the VAE term.

A variational autoencoder (seed article 3.1 and 3.4) encodes each example as a Gaussian
q = N(mu, diag(exp(s))) and keeps it close to a prior p = N(m, diag(exp(t))) with the KL
divergence, which for diagonal Gaussians has a closed form per coordinate:

    KL(q ‖ p) = (t - s + (exp(s) + (mu - m)²) exp(-t) - 1) / 2.

Log-variances keep the variances positive without constraints. Summed over the latent
coordinates and averaged over the n examples of a batch, the gradients are

    dmu = (mu - m) ⊙ exp(-t) / n,     ds = (exp(s - t) - 1) / (2 n),

and the usual VAE term against the standard normal prior is m = 0, t = 0:
-(1/2) Σ (1 + s - mu² - exp(s)) per example (the tests check both).
"""

import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
mu = sp.MatrixSymbol("mu", n, k)  # means of q (the encoder's output)
s = sp.MatrixSymbol("s", n, k)  # log-variances of q
m = sp.MatrixSymbol("m", n, k)  # means of the prior p
t = sp.MatrixSymbol("t", n, k)  # log-variances of the prior p
Q = sp.MatrixSymbol("Q", n, k)  # KL per coordinate

LOSS = [
    (Q, (t - s + sp.hadamard_product(symdl.exp(s) + sp.HadamardPower(mu - m, 2), symdl.exp(-t))
         - sp.OneMatrix(n, k)) / 2),
    (sp.Symbol("L"), symdl.total(Q) / n),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[mu, s, m, t])
