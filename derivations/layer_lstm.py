"""LSTM layer over a sequence of any length (Hochreiter and Schmidhuber 1997, as
torch.nn.LSTM computes it): two states, the output h and the cell c (both n x k).

    i_t = σ(x_t W_i + h_{t-1} U_i + b_i)     input gate
    f_t = σ(x_t W_f + h_{t-1} U_f + b_f)     forget gate
    g_t = tanh(x_t W_g + h_{t-1} U_g + b_g)  candidate cell
    o_t = σ(x_t W_o + h_{t-1} U_o + b_o)     output gate
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)

T is a symbol: one derivation serves every length, kernels loop over t. The backward pass of
sum(G ⊙ H) is backpropagation through time with two adjoints carried from t = T down to 1,
δh_t and δc_t (the cell's adjoint passes through the forget gate: δc_{t-1} = f_t ⊙ δc_t +
...), reading the stored h and c. torch.nn.LSTM's weights are the transposes, stacked in the
order i, f, g, o (bias_hh = 0 here).
"""

import sympy as sp

import symdl

T, n, d, k = sp.symbols("T n d k", integer=True, positive=True)
X = sp.IndexedBase("X", shape=(T, n, d))
Wi, Wf, Wg, Wo = (sp.MatrixSymbol(f"W_{g}", d, k) for g in "ifgo")
Ui, Uf, Ug, Uo = (sp.MatrixSymbol(f"U_{g}", k, k) for g in "ifgo")
bi, bf, bg, bo = (sp.MatrixSymbol(f"b_{g}", 1, k) for g in "ifgo")
h0 = sp.MatrixSymbol("h0", n, k)
c0 = sp.MatrixSymbol("c0", n, k)
G = sp.IndexedBase("G", shape=(T, n, k))  # the upstream gradient dL/dH
H = sp.IndexedBase("H", shape=(T, n, k))  # the outputs h_1..h_T
t, i, j = sp.symbols("t i j", integer=True)


def step(state, x):
    """One LSTM step: the new (h, c) from the previous ones and the input."""
    h, c = state
    gate_i = symdl.sigmoid(x * Wi + h * Ui + symdl.bias(bi, n))
    gate_f = symdl.sigmoid(x * Wf + h * Uf + symdl.bias(bf, n))
    gate_g = symdl.tanh(x * Wg + h * Ug + symdl.bias(bg, n))
    gate_o = symdl.sigmoid(x * Wo + h * Uo + symdl.bias(bo, n))
    c_new = sp.hadamard_product(gate_f, c) + sp.hadamard_product(gate_i, gate_g)
    return sp.hadamard_product(gate_o, symdl.tanh(c_new)), c_new


LAYER = [
    (H, symdl.scan(step, (h0, c0), X, T, name=("h", "c"))),
    (sp.Symbol("L"), sp.Sum(G[t, i, j] * H[t, i, j], (t, 0, T - 1), (i, 0, n - 1),
                            (j, 0, k - 1))),
]


CHECK_DIMS = {T: 2, n: 2, d: 2, k: 2}
"""Sizes for ``symdl.check`` in the test suite: two steps (the second reads the first's state)
keep the interpreted kernel and the entry-by-entry SymPy reference quick."""
PRINTED_HESSIANS = False
"""The test suite checks the Hessian through Hessian-vector products (``symdl.check``), not by
printing its 225 blocks one by one."""
ENTRYWISE_LAMBDIFY = False
"""The test suite does not lambdify this derivation's 225 Hessian blocks entry by entry in
Python; its printed gradients are evaluated by ``symdl.check``'s SymPy reference."""


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[Wi, Wf, Wg, Wo, Ui, Uf, Ug, Uo, bi, bf, bg, bo, h0, c0, X])
