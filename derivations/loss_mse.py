"""Mean squared error: L = mean((P - T)^2) over every entry of a batch of predictions.

The regression loss of seed article 4.1, MSE = Σ (y_pred - y_true)² / n, here over an n x k
batch of predictions P and targets T (several outputs per example; PyTorch's mse_loss with
its default mean reduction). With the residual R = P - T named, backprop is one line:

    dR = 2 R / (n k),     dP = dR,     dT = -dR,

and the Hessian with respect to P is 2 I / (n k): a constant, which is why least squares has
closed-form solutions (see model_normal_equations).
"""

import sympy as sp

import symdl

n, k = sp.symbols("n k", integer=True, positive=True)
P = sp.MatrixSymbol("P", n, k)  # predictions
T = sp.MatrixSymbol("T", n, k)  # targets
R = sp.MatrixSymbol("R", n, k)  # residuals

LOSS = [
    (R, P - T),
    (sp.Symbol("L"), symdl.mean(sp.HadamardPower(R, 2))),
]


def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[P, T])
