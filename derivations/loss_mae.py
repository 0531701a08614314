"""Mean absolute error: L = mean(|P - T|), with the subgradient sign(0) = 0 at a tie.

The absolute error weighs every residual linearly, so one outlier moves the fit less than
under the squared error (seed article 4.1 on choosing a loss). |r| has no derivative at
r = 0; symdl takes d|r|/dr = sign(r) with sign(0) = 0, the subgradient PyTorch's l1_loss
uses too. With the residual R = P - T named, backprop reads

    dR = sign(R) / (n k),     dP = dR,     dT = -dR.

The second derivative is zero wherever it exists (symdl drops the Dirac delta at 0).
"""

import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
P = sp.MatrixSymbol("P", n, k)  # predictions
T = sp.MatrixSymbol("T", n, k)  # targets
R = sp.MatrixSymbol("R", n, k)  # residuals

LOSS = [
    (R, P - T),
    (sp.Symbol("L"), symdl.mean(symdl.absolute(R))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[P, T])
