"""Definitions for the printing-cost measurement (issue 15, item 17): a batch-norm + ReLU layer
written as ONE expression, and a 3-step GRU written as named steps."""

from __future__ import annotations

import sympy as sp

import symdl

n, d, h = sp.symbols("n d h", integer=True, positive=True)


def bn_relu_one_liner() -> tuple[sp.Basic, list]:
    """L = sum(G ⊙ relu(gamma ⊙ (Z - mean(Z)) / sqrt(var(Z) + eps) + beta)), Z = X W, in one
    expression (no named steps)."""
    X = sp.MatrixSymbol("X", n, d)
    W = sp.MatrixSymbol("W", d, h)
    gamma, beta = sp.MatrixSymbol("gamma", 1, h), sp.MatrixSymbol("beta", 1, h)
    G = sp.MatrixSymbol("G", n, h)
    eps = sp.Symbol("eps", positive=True)
    Z = X * W
    centered = Z - symdl.broadcast(symdl.mean(Z, axis=0), n, h)
    var = symdl.mean(sp.HadamardPower(centered, 2), axis=0)
    r = symdl.rsqrt(var + eps * sp.OneMatrix(1, h))
    A = symdl.relu(sp.hadamard_product(centered, symdl.broadcast(r, n, h), symdl.bias(gamma, n))
                   + symdl.bias(beta, n))
    return symdl.total(sp.hadamard_product(G, A)), [X, W, gamma, beta]


def gru_named_steps(steps: int = 3) -> tuple[list, list]:
    """A GRU unrolled over ``steps`` inputs (batch n, input d, hidden h), each gate a named
    step; the loss is sum(G ⊙ H_T)."""
    Wz, Wr, Wh = (sp.MatrixSymbol(f"W{g}", d, h) for g in "zrh")
    Uz, Ur, Uh = (sp.MatrixSymbol(f"U{g}", h, h) for g in "zrh")
    bz, br, bh = (sp.MatrixSymbol(f"b{g}", 1, h) for g in "zrh")
    G = sp.MatrixSymbol("G", n, h)
    H = sp.MatrixSymbol("H0", n, h)
    model = []
    for t in range(1, steps + 1):
        x = sp.MatrixSymbol(f"X{t}", n, d)
        Zt, Rt = sp.MatrixSymbol(f"Z{t}", n, h), sp.MatrixSymbol(f"R{t}", n, h)
        Ct, Ht = sp.MatrixSymbol(f"C{t}", n, h), sp.MatrixSymbol(f"H{t}", n, h)
        model += [
            (Zt, symdl.sigmoid(x * Wz + H * Uz + symdl.bias(bz, n))),
            (Rt, symdl.sigmoid(x * Wr + H * Ur + symdl.bias(br, n))),
            (Ct, symdl.tanh(x * Wh + sp.hadamard_product(Rt, H) * Uh + symdl.bias(bh, n))),
            (Ht, sp.hadamard_product(sp.OneMatrix(n, h) - Zt, H) + sp.hadamard_product(Zt, Ct)),
        ]
        H = Ht
    model.append((sp.Symbol("L"), symdl.total(sp.hadamard_product(G, H))))
    return model, [Wz, Wr, Wh, Uz, Ur, Uh, bz, br, bh]
