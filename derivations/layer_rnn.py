"""Elman RNN layer over a sequence of any length: h_t = tanh(x_t W + h_{t-1} U + b).

A recurrent layer applies one step to each element of a sequence X (T steps of n x d
inputs), carrying a state h (n x k) from step to step (the network as a graph of section 5 of
the seed article, with the same parameters at every step). T is a symbol: the derivation is
done once, for every length, and never unrolled; kernels loop over t.

Its backward pass (the gradient of sum(G ⊙ H) with the upstream gradient G) is
backpropagation through time, a recurrence of its own, run from t = T down to 1:
δ_t = G_t + (δ_{t+1} ⊙ (1 - h_{t+1}⊙h_{t+1})) U^T, and the parameter gradients are sums over
t: dW = Σ_t x_t^T (δ_t ⊙ (1 - h_t⊙h_t)), dU = Σ_t h_{t-1}^T (δ_t ⊙ (1 - h_t⊙h_t)).
tanh' is written on the output, so the reverse loop reads the stored states, not x_t W + ...
again. torch.nn.RNN computes the same with weight_ih = W^T, weight_hh = U^T, bias_ih = b
(bias_hh = 0).
"""

import sympy as sp

import symdl

T, n, d, k = sp.symbols("T n d k", integer=True, positive=True)
X = sp.IndexedBase("X", shape=(T, n, d))  # the input sequence: X[t] is n x d
W = sp.MatrixSymbol("W", d, k)  # input to hidden
U = sp.MatrixSymbol("U", k, k)  # hidden to hidden
b = sp.MatrixSymbol("b", 1, k)
h0 = sp.MatrixSymbol("h0", n, k)  # the initial state
G = sp.IndexedBase("G", shape=(T, n, k))  # the upstream gradient dL/dH
H = sp.IndexedBase("H", shape=(T, n, k))  # the states h_1..h_T
t, i, j = sp.symbols("t i j", integer=True)


def step(h, x):
    """One step of the recurrence: the new state from the previous one and the input."""
    return symdl.tanh(x * W + h * U + symdl.bias(b, n))


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
printing its 25 blocks one by one."""


def derivation() -> symdl.Derivation:
    return symdl.derive(LAYER, wrt=[W, U, b, h0, X])
