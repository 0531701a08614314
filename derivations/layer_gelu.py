"""GELU layer in its tanh form: A = X/2 ⊙ (1 + tanh(sqrt(2/pi) (X + 0.044715 X^3))).

GELU weighs each input by the probability that a standard normal variable is below it,
x Φ(x); the tanh form approximates Φ and is what GPT-2 and BERT use (PyTorch's
gelu(approximate="tanh")). Written with two named intermediates, the inner argument U and
its tanh T, the backward pass (the gradient of sum(G ⊙ A) with the upstream gradient G; chain
rule, seed article 2.2) reads step by step: dT = dA ⊙ X/2, dU = dT ⊙ (1 - T ⊙ T) and
dX = dA ⊙ (1 + T)/2 + sqrt(2/pi) dU ⊙ (1 + 3 · 0.044715 X ⊙ X).
"""

import sympy as sp

import symdl
from symdl.vocabulary import GELU_CUBIC  # 0.044715

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
G = sp.MatrixSymbol("G", n, d)  # the upstream gradient dL/dA
U, T, A = (sp.MatrixSymbol(name, n, d) for name in ("U", "T", "A"))

LAYER = [
    (U, sp.sqrt(2 / sp.pi) * (X + GELU_CUBIC * sp.HadamardPower(X, 3))),
    (T, symdl.tanh(U)),
    (A, sp.hadamard_product(X, sp.OneMatrix(n, d) + T) / 2),
    (sp.Symbol("L"), symdl.total(sp.hadamard_product(G, A))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[X])
