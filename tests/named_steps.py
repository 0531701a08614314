"""Random networks of named steps with a PyTorch twin (a helper of test_properties.py).

The shapes a graph network is written in: a square matrix ``M`` built from parameters
(``A + B``, ``A + I``, ``A^T + A``, ``A ⊙ B``, ``A B``, ...), its row or column sums, a
function of them (``rsqrt`` for a degree normalisation), the Hadamard product of ``M`` or
``M^T`` with an outer product of those sums, products with data, and a scalar loss. Every
intermediate may be a named step (and be read again, transposed or not) or be written
inline. Each draw builds the SymPy definition and the same computation in torch, so a
kernel's gradients are checked against autograd, an oracle that shares no code with symdl.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
import torch
from hypothesis import strategies as st

import symdl

N, D = sp.symbols("n d", integer=True, positive=True)
TorchFn = Callable[[dict], torch.Tensor]


@dataclass
class Twin:
    """A SymPy matrix expression and the same value in torch (from a dict of tensors)."""

    sym: sp.MatrixExpr
    fn: TorchFn
    positive: bool = False


@dataclass
class Program:
    """A definition: named steps, parameters, inputs and the torch loss."""

    steps: list[tuple[sp.Basic, sp.Basic]] = field(default_factory=list)
    torch_steps: list[tuple[str, TorchFn]] = field(default_factory=list)
    params: list[sp.MatrixSymbol] = field(default_factory=list)
    inputs: dict[str, tuple[str, tuple]] = field(default_factory=dict)
    """name -> (distribution, symbolic shape)."""
    sizes: dict[sp.Symbol, int] = field(default_factory=dict)

    def leaf(self, name: str, shape: tuple, param: bool, dist: str = "normal") -> Twin:
        symbol = sp.MatrixSymbol(name, *shape)
        if param:
            self.params.append(symbol)
        self.inputs[name] = (dist, shape)
        return Twin(symbol, lambda t, name=name: t[name], positive=dist == "positive")

    def name(self, label: str, value: Twin, shape: tuple) -> Twin:
        """``value`` as a named step: later reads go through the step's symbol."""
        symbol = sp.MatrixSymbol(f"S{len(self.steps)}{label}", *shape)
        key = str(symbol.name)
        self.steps.append((symbol, value.sym))
        self.torch_steps.append((key, value.fn))
        return Twin(symbol, lambda t, key=key: t[key], value.positive)

    def values(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = {}
        for name, (dist, shape) in self.inputs.items():
            size = tuple(int(sp.sympify(s).subs(self.sizes)) for s in shape)
            out[name] = (rng.uniform(0.2, 1.0, size) if dist == "positive"
                         else rng.normal(size=size))
        return out

    def torch_loss(self, values: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        """The loss and the gradient of every parameter by torch autograd, in float64."""
        wrt = {str(p.name) for p in self.params}
        t = {name: torch.tensor(v, dtype=torch.float64, requires_grad=name in wrt)
             for name, v in values.items()}
        for key, fn in self.torch_steps:
            t[key] = fn(t)
        loss = t[self.torch_steps[-1][0]]
        loss.backward()
        return loss.item(), {name: t[name].grad.numpy() for name in wrt}


def _eye(t: dict) -> torch.Tensor:
    return torch.eye(t["A"].shape[0], dtype=torch.float64)


def _ones(t: dict, rows_of: str) -> torch.Tensor:
    return torch.ones((t[rows_of].shape[0], 1), dtype=torch.float64)


@st.composite
def named_step_programs(draw) -> Program:
    """A random degree-weighted graph layer (or two) written with named steps."""
    prog = Program(sizes={N: draw(st.sampled_from([3, 2, 5, 1])),
                          D: draw(st.sampled_from([2, 1, 3]))})
    nn, nd = (N, N), (N, D)
    A = prog.leaf("A", nn, param=True, dist="positive")
    B = prog.leaf("B", nn, param=draw(st.booleans()), dist="positive")
    X = prog.leaf("X", nd, param=draw(st.booleans()))
    G = prog.leaf("G", nd, param=False)
    ident = Twin(sp.Identity(N), _eye, positive=True)

    def add(a: Twin, b: Twin) -> Twin:
        return Twin(a.sym + b.sym, lambda t: a.fn(t) + b.fn(t), a.positive and b.positive)

    def tr(a: Twin) -> Twin:
        return Twin(a.sym.T, lambda t: a.fn(t).T, a.positive)

    def had(a: Twin, b: Twin) -> Twin:
        return Twin(sp.hadamard_product(a.sym, b.sym), lambda t: a.fn(t) * b.fn(t),
                    a.positive and b.positive)

    def mul(a: Twin, b: Twin) -> Twin:
        return Twin(a.sym * b.sym, lambda t: a.fn(t) @ b.fn(t), a.positive and b.positive)

    def maybe_named(label: str, value: Twin, shape: tuple) -> Twin:
        # Named by default (hypothesis's first choice): how the network was written.
        return value if draw(st.booleans()) else prog.name(label, value, shape)

    # The square matrix of the layer.
    # Listed riskiest first: hypothesis tries (and shrinks towards) the first choices.
    kind = draw(st.sampled_from(["A+B", "A+I", "AT+A", "AT+B", "2A+I", "A+BT+I", "A-BT",
                                 "A.B", "AB", "A"]))
    M = {"A": lambda: A, "A+B": lambda: add(A, B), "A+I": lambda: add(A, ident),
         "AT+A": lambda: add(tr(A), A), "AT+B": lambda: add(tr(A), B),
         "A.B": lambda: had(A, B), "AB": lambda: mul(A, B),
         "2A+I": lambda: Twin(2 * A.sym + sp.Identity(N), lambda t: 2 * A.fn(t) + _eye(t),
                              True),
         "A+BT+I": lambda: add(add(A, tr(B)), ident),
         "A-BT": lambda: Twin(A.sym - B.sym.T, lambda t: A.fn(t) - B.fn(t).T, False)}[kind]()
    M = maybe_named("M", M, nn)
    ones = Twin(sp.OneMatrix(N, 1), lambda t: _ones(t, "A"), positive=True)

    # Row or column sums of M, and a function of them.
    def stat() -> Twin:
        source = draw(st.sampled_from(["rows", "cols", "rows_sq"]))
        base = {"rows": lambda: M, "cols": lambda: tr(M), "rows_sq": lambda: had(M, M)}[source]()
        total = mul(base, ones)
        fn = draw(st.sampled_from(["none", "rsqrt", "tanh", "sigmoid"] if total.positive
                                  else ["none", "tanh", "sigmoid"]))
        if fn == "rsqrt":
            total = Twin(symdl.rsqrt(total.sym), lambda t, f=total.fn: f(t) ** -0.5, True)
        elif fn == "tanh":
            total = Twin(symdl.tanh(total.sym), lambda t, f=total.fn: torch.tanh(f(t)), False)
        elif fn == "sigmoid":
            total = Twin(symdl.sigmoid(total.sym), lambda t, f=total.fn: torch.sigmoid(f(t)),
                         True)
        return maybe_named("r", total, (N, 1))

    r = stat()
    outer = draw(st.sampled_from(["r r^T", "r c^T", "r 1^T", "1 r^T"]))
    if outer == "r r^T":
        weight = mul(r, tr(r))
    elif outer == "r c^T":
        weight = mul(r, tr(stat()))
    elif outer == "r 1^T":
        weight = mul(r, tr(ones))
    else:
        weight = mul(ones, tr(r))
    scaled = had(tr(M) if draw(st.booleans()) else M, weight)
    if draw(st.booleans()):
        scaled = add(scaled, ident)
    Ahat = maybe_named("Ahat", scaled, nn)

    # Propagation: one or two layers, with the normalised matrix or its transpose.
    first = tr(Ahat) if draw(st.booleans()) else Ahat
    Z = mul(first, X)
    if draw(st.booleans()):
        Z = Twin(symdl.tanh(Z.sym), lambda t, f=Z.fn: torch.tanh(f(t)))
    second = draw(st.sampled_from(["none", "Ahat H", "Ahat^T H", "M H + Ahat H",
                                   "Ahat^T Ahat H"]))
    if second != "none":
        H = maybe_named("H", Z, nd)
        if second == "Ahat H":
            Z = mul(Ahat, H)
        elif second == "Ahat^T H":
            Z = mul(tr(Ahat), H)
        elif second == "M H + Ahat H":  # a common operand to factor
            Z = add(mul(M, H), mul(Ahat, H))
        else:
            Z = mul(tr(Ahat), mul(Ahat, H))
    Z = maybe_named("Z", Z, nd)
    loss = Twin(symdl.sum(sp.hadamard_product(G.sym, Z.sym)),
                lambda t, f=Z.fn: (t["G"] * f(t)).sum())
    # The normalised matrix read once more: against M, its own transpose, or M^T diag(r) M
    # (a symmetric product, one BLAS triangle when r >= 0).
    extra = draw(st.sampled_from(["none", "Ahat.M", "Ahat.Ahat^T", "Ahat.M^T diag(r) M"]))
    if extra == "Ahat.M":
        other = M
    elif extra == "Ahat.Ahat^T":
        other = tr(Ahat)
    elif extra == "Ahat.M^T diag(r) M":
        other = mul(tr(M), had(mul(r, tr(ones)), M))
    if extra != "none":
        loss = Twin(loss.sym + symdl.sum(sp.hadamard_product(Ahat.sym, other.sym)),
                    lambda t, f=loss.fn, o=other.fn: f(t) + (Ahat.fn(t) * o(t)).sum())
    prog.steps.append((sp.Symbol("L"), loss.sym))
    prog.torch_steps.append(("L", loss.fn))
    used = set().union(*(rhs.free_symbols for _, rhs in prog.steps))
    prog.params = [p for p in prog.params if p in used]
    prog.inputs = {k: v for k, v in prog.inputs.items() if sp.MatrixSymbol(k, *v[1]) in used}
    return prog


def check_program(prog: Program, jit: bool, seed: int = 0) -> None:
    """Compiles ``prog`` and compares the value and every gradient with torch (1e-10)."""
    der = symdl.derive(prog.steps, wrt=prog.params)
    kernel = der.compile(jit=jit)
    values = prog.values(np.random.default_rng(seed))
    out = kernel(**{name: values[name] for name in kernel.inputs})
    value, grads = prog.torch_loss(values)
    definition = "\n".join(f"  {lhs} = {rhs}" for lhs, rhs in prog.steps)
    np.testing.assert_allclose(out.value, value, rtol=1e-10, atol=1e-10,
                               err_msg=f"value of\n{definition}")
    for name, expected in grads.items():
        scale = max(float(np.abs(expected).max()), 1.0)
        np.testing.assert_allclose(out.grad[name], expected, rtol=1e-10, atol=1e-10 * scale,
                                   err_msg=f"gradient of {name} in\n{definition}\n"
                                           f"sizes {prog.sizes}")
