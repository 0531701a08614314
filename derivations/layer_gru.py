"""GRU layer over a sequence of any length (Cho et al. 2014, as torch.nn.GRU computes it).

Each step gates how much of the previous state h (n x k) to keep:

    r_t = σ(x_t W_r + h_{t-1} U_r + b_r)                 reset gate
    z_t = σ(x_t W_z + h_{t-1} U_z + b_z)                 update gate
    m_t = tanh(x_t W_m + b_m + r_t ⊙ (h_{t-1} U_m + c_m))  candidate state
    h_t = (1 - z_t) ⊙ m_t + z_t ⊙ h_{t-1}

T is a symbol: one derivation serves every length, kernels loop over t. The backward pass of
sum(G ⊙ H) is backpropagation through time: the adjoint δ_t of h_t runs from t = T down to 1,
reading the stored states h_{t-1} and h_t; the gates are computed again from them in the
reverse loop (nothing but the states is stored). torch.nn.GRU's weights are the transposes,
stacked in the order r, z, n (weight_ih = [W_r; W_z; W_m]^T, bias_hh's last block is c_m).
"""

import sympy as sp

import symdl

T, n, d, k = sp.symbols("T n d k", integer=True, positive=True)
X = sp.IndexedBase("X", shape=(T, n, d))
Wr, Wz, Wm = (sp.MatrixSymbol(f"W_{g}", d, k) for g in "rzm")
Ur, Uz, Um = (sp.MatrixSymbol(f"U_{g}", k, k) for g in "rzm")
br, bz, bm, cm = (sp.MatrixSymbol(name, 1, k) for name in ("b_r", "b_z", "b_m", "c_m"))
h0 = sp.MatrixSymbol("h0", n, k)
G = sp.IndexedBase("G", shape=(T, n, k))  # the upstream gradient dL/dH
H = sp.IndexedBase("H", shape=(T, n, k))
t, i, j = sp.symbols("t i j", integer=True)


def step(h, x):
    """One GRU step: the new state from the previous one and the input."""
    r = symdl.sigmoid(x * Wr + h * Ur + symdl.bias(br, n))
    z = symdl.sigmoid(x * Wz + h * Uz + symdl.bias(bz, n))
    m = symdl.tanh(x * Wm + symdl.bias(bm, n) + sp.hadamard_product(r, h * Um + symdl.bias(cm, n)))
    return sp.hadamard_product(sp.OneMatrix(n, k) - z, m) + sp.hadamard_product(z, h)


LAYER = [
    (H, symdl.scan(step, h0, X, T)),
    (sp.Symbol("L"), sp.Sum(G[t, i, j] * H[t, i, j], (t, 0, T - 1), (i, 0, n - 1),
                            (j, 0, k - 1))),
]


CHECK_DIMS = {T: 2, n: 2, d: 2, k: 2}
"""Sizes for ``symdl.check`` in the test suite: two steps (the second reads the first's state)
keep the interpreted kernel and the entry-by-entry SymPy reference quick."""
PRINTED_HESSIANS = False
"""The test suite checks the Hessian through Hessian-vector products (``symdl.check``), not by
printing its 144 blocks one by one."""
ENTRYWISE_LAMBDIFY = False
"""The test suite does not lambdify this derivation's 144 Hessian blocks entry by entry in
Python; its printed gradients are evaluated by ``symdl.check``'s SymPy reference."""


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[Wr, Wz, Wm, Ur, Uz, Um, br, bz, bm, cm, h0, X])
