"""Every spelling of a stable primitive is stable: value, gradient, Hessian and HVP at logits
of ±1000, in float64 and float32, through ``symdl.evaluate`` and through kernels.

A user writes ``log(1 + exp(t))`` through ``applyfunc``, a row log-sum-exp as a product with
ones or as ``log(Sum(exp(Z[i, j]), j))``, a softmax by hand, the textbook binary cross-entropy
with ``log σ`` and ``log(1 - σ)``, an entropy ``P ⊙ log P``. symdl rewrites each into its
stable form on the IR (``symdl.ir.rewrites``); these tests check the numbers, not the form.

The reference is independent of symdl: each case's mathematics is written again as a plain
SymPy scalar over the explicit entries, differentiated by SymPy, and evaluated with mpmath at
50 digits. float64 must agree to 1e-10 and float32 to 1e-5, relative to the largest entry of
the reference (or to ``TINY``), entry by entry for values.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp

import symdl

DIGITS = 50
TINY = 1e-30
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}

n, c, d = sp.symbols("n c d", integer=True, positive=True)
i, j, k = sp.symbols("i j k", integer=True)
t = sp.Symbol("t", real=True)
Z = sp.MatrixSymbol("Z", n, c)
Y = sp.MatrixSymbol("Y", n, c)
W = sp.MatrixSymbol("W", n, c)
z = sp.MatrixSymbol("z", n, 1)
y = sp.MatrixSymbol("y", n, 1)
X = sp.MatrixSymbol("X", n, d)
w = sp.MatrixSymbol("w", d, 1)
v = sp.IndexedBase("v", shape=(c,))
u = sp.IndexedBase("u", shape=(c,))
SIZES = {n: 3, c: 3, d: 2}
ONES_N = sp.OneMatrix(n, 1)


def _log(m):
    return m.applyfunc(sp.log)


def _hand_softmax(m):
    e = m.applyfunc(sp.exp)
    return sp.hadamard_product(e, sp.HadamardPower(e * sp.OneMatrix(c, 1) * sp.OneMatrix(1, c), -1))


def _index_softmax(m, row, col):
    return sp.exp(m[row, col]) / sp.Sum(sp.exp(m[row, k]), (k, 0, c - 1))


def _sum_ij(e):
    return sp.Sum(e, (i, 0, n - 1), (j, 0, c - 1))


def _bce_textbook(a):
    ones = sp.OneMatrix(n, 1)
    return -symdl.mean(sp.hadamard_product(y, _log(a))
                       + sp.hadamard_product(ones - y, _log(ones - a)))


# The mathematics of each case, on explicit entries (M: name -> sympy Matrix), for the oracle.

def _softmax_ref(m):
    rows = []
    for r in range(m.rows):
        total = sum(sp.exp(m[r, q]) for q in range(m.cols))
        rows.append([sp.exp(m[r, q]) / total for q in range(m.cols)])
    return sp.Matrix(rows)


def _sum_all(m):
    return sum(m)


def _sig(x):
    return 1 / (1 + sp.exp(-x))


REFERENCES = {
    "softplus": lambda M: _sum_all(M["z"].applyfunc(lambda v: sp.log(1 + sp.exp(v)))),
    "softplus_neg": lambda M: _sum_all(M["z"].applyfunc(lambda v: sp.log(1 + sp.exp(-v)))),
    "sigmoid_weighted": lambda M: _sum_all(M["y"].multiply_elementwise(M["z"].applyfunc(_sig))),
    "log_sigmoid": lambda M: _sum_all(
        M["y"].multiply_elementwise(M["z"].applyfunc(lambda v: sp.log(_sig(v))))),
    # 1 - σ(v) is written σ(-v) here: at 50 digits 1 - σ(1000) would cancel to 0.
    "log_one_minus_sigmoid": lambda M: _sum_all(M["z"].applyfunc(lambda v: sp.log(_sig(-v)))),
    "one_minus_sigmoid": lambda M: _sum_all(
        M["y"].multiply_elementwise(M["z"].applyfunc(lambda v: _sig(-v) ** 2))),
    "bce": lambda M: -sum(
        M["y"][r] * sp.log(_sig(M["z"][r])) + (1 - M["y"][r]) * sp.log(_sig(-M["z"][r]))
        for r in range(M["z"].rows)) / M["z"].rows,
    "row_logsumexp": lambda M: sum(
        sp.log(sum(sp.exp(M["Z"][r, q]) for q in range(M["Z"].cols))) for r in range(M["Z"].rows)),
    "softmax_weighted": lambda M: _sum_all(M["Y"].multiply_elementwise(_softmax_ref(M["Z"]))),
    "log_softmax": lambda M: _sum_all(
        M["Y"].multiply_elementwise(_softmax_ref(M["Z"]).applyfunc(sp.log))),
    "entropy": lambda M: _sum_all(_softmax_ref(M["Z"]).applyfunc(lambda p: p * sp.log(p))),
    "kl": lambda M: _sum_all(_softmax_ref(M["Z"]).multiply_elementwise(
        (_softmax_ref(M["Z"]).multiply_elementwise(_softmax_ref(M["W"]).applyfunc(lambda q: 1 / q)))
        .applyfunc(sp.log))),
    "logistic": lambda M: sum(sp.log(1 + sp.exp(v)) for v in M["X"] * M["w"]),
    "vector_logsumexp": lambda M: sp.log(sum(sp.exp(x) for x in M["v"])),
    "vector_log_softmax": lambda M: sum(
        M["u"][q] * sp.log(sp.exp(M["v"][q]) / sum(sp.exp(x) for x in M["v"]))
        for q in range(len(M["v"]))),
    "vector_softmax_weighted": lambda M: sum(
        M["u"][q] * sp.exp(M["v"][q]) / sum(sp.exp(x) for x in M["v"])
        for q in range(len(M["v"]))),
}

_V_SUM = sp.Sum(sp.exp(v[k]), (k, 0, c - 1))

_P = symdl.softmax(Z)
_Q = symdl.softmax(W)
_P_NAMED = sp.MatrixSymbol("P", n, c)
_A_NAMED = sp.MatrixSymbol("A", n, 1)

# name -> (definition, parameter, reference)
SPELLINGS = {
    "applyfunc log(1 + exp(t))": (
        symdl.total(z.applyfunc(sp.Lambda(t, sp.log(1 + sp.exp(t))))), z, "softplus"),
    "applyfunc log(exp(t) + 1)": (
        symdl.total(z.applyfunc(sp.Lambda(t, sp.log(sp.exp(t) + 1)))), z, "softplus"),
    "applyfunc log(1 + exp(-t))": (
        symdl.total(z.applyfunc(sp.Lambda(t, sp.log(1 + sp.exp(-t))))), z, "softplus_neg"),
    "exp(t)/(1 + exp(t))": (
        symdl.total(sp.hadamard_product(y, z.applyfunc(sp.Lambda(t, sp.exp(t) / (1 + sp.exp(t)))))),
        z, "sigmoid_weighted"),
    "1/(1 + exp(-t))": (
        symdl.total(sp.hadamard_product(y, z.applyfunc(sp.Lambda(t, 1 / (1 + sp.exp(-t)))))),
        z, "sigmoid_weighted"),
    "log(sigmoid(z))": (
        symdl.total(sp.hadamard_product(y, _log(symdl.sigmoid(z)))), z, "log_sigmoid"),
    "log(1 - sigmoid(z))": (
        symdl.total(_log(ONES_N - symdl.sigmoid(z))), z, "log_one_minus_sigmoid"),
    "(1 - sigmoid(z))^2": (
        symdl.total(sp.hadamard_product(y, sp.HadamardPower(ONES_N - symdl.sigmoid(z), 2))),
        z, "one_minus_sigmoid"),
    "textbook BCE": (_bce_textbook(symdl.sigmoid(z)), z, "bce"),
    "textbook BCE, named sigmoid": (
        [(_A_NAMED, symdl.sigmoid(z)), (sp.Symbol("L"), _bce_textbook(_A_NAMED))], z, "bce"),
    "textbook BCE of exp/(1 + exp)": (
        _bce_textbook(z.applyfunc(sp.Lambda(t, sp.exp(t) / (1 + sp.exp(t))))), z, "bce"),
    "row logsumexp, product with ones": (
        symdl.total((Z.applyfunc(sp.exp) * sp.OneMatrix(c, 1)).applyfunc(sp.log)), Z,
        "row_logsumexp"),
    "row logsumexp, index notation": (
        sp.Sum(sp.log(sp.Sum(sp.exp(Z[i, j]), (j, 0, c - 1))), (i, 0, n - 1)), Z,
        "row_logsumexp"),
    "softmax by hand": (
        symdl.total(sp.hadamard_product(Y, _hand_softmax(Z))), Z, "softmax_weighted"),
    "softmax, index notation": (
        _sum_ij(Y[i, j] * _index_softmax(Z, i, j)), Z, "softmax_weighted"),
    "log(softmax)": (symdl.total(sp.hadamard_product(Y, _log(_P))), Z, "log_softmax"),
    "log(softmax by hand)": (
        symdl.total(sp.hadamard_product(Y, _log(_hand_softmax(Z)))), Z, "log_softmax"),
    "log(softmax), index notation": (
        _sum_ij(Y[i, j] * sp.log(_index_softmax(Z, i, j))), Z, "log_softmax"),
    "entropy P log P": (symdl.total(sp.hadamard_product(_P, _log(_P))), Z, "entropy"),
    "entropy of softmax by hand": (
        symdl.total(sp.hadamard_product(_hand_softmax(Z), _log(_hand_softmax(Z)))), Z, "entropy"),
    "entropy, index notation": (
        _sum_ij(_index_softmax(Z, i, j) * sp.log(_index_softmax(Z, i, j))), Z, "entropy"),
    "entropy, named softmax": (
        [(_P_NAMED, _P),
         (sp.Symbol("L"), symdl.total(sp.hadamard_product(_P_NAMED, _log(_P_NAMED))))],
        Z, "entropy"),
    "KL P log(P / Q)": (
        symdl.total(sp.hadamard_product(
            _P, _log(sp.hadamard_product(_P, sp.HadamardPower(_Q, -1))))),
        Z, "kl"),
    "logistic, index notation": (
        sp.Sum(sp.log(1 + sp.exp(sp.Sum(X[i, k] * w[k, 0], (k, 0, d - 1)))), (i, 0, n - 1)),
        w, "logistic"),
    "logsumexp of a vector, index notation": (sp.log(_V_SUM), v, "vector_logsumexp"),
    "softmax of a vector, index notation": (
        sp.Sum(u[j] * sp.exp(v[j]) / _V_SUM, (j, 0, c - 1)), v, "vector_softmax_weighted"),
    "log(softmax) of a vector, index notation": (
        sp.Sum(u[j] * sp.log(sp.exp(v[j]) / _V_SUM), (j, 0, c - 1)), v, "vector_log_softmax"),
}

JITTED = ("applyfunc log(1 + exp(t))", "textbook BCE", "row logsumexp, index notation",
          "entropy, index notation")
"""Cases also run as compiled Numba kernels (the rest run the same kernel source as Python)."""


def _name(symbol) -> str:
    return str(symbol.label if isinstance(symbol, sp.IndexedBase) else symbol.name)


def _shape(symbol):
    return tuple(int(sp.sympify(s).subs(SIZES)) for s in symbol.shape)


def _inputs(der: symdl.Derivation, param, scale: float, dtype, seed: int) -> dict:
    """Logits spanning ±scale (both extremes and a moderate one); probabilities for the rest."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, leaf in der.leaves.items():
        if name.startswith("V_"):  # an HVP direction, given by the test
            continue
        shape = _shape(leaf.symbol) if hasattr(leaf.symbol, "shape") else ()
        if name == _name(param):
            # Both extremes, and one moderate logit: the Hessian's scale is not all underflow.
            a = scale * rng.uniform(-1, 1, shape)
            a.flat[0], a.flat[-1] = scale, -scale
            # (a vector's one softmax lane: two leading logits, else its Hessian underflows)
            a[1] = [0.7, -0.3, 0.1][: shape[1]] if a.ndim == 2 else scale - 0.7
            if name == "w":  # logits X w of about ±scale and 0: X has entries of order one
                a = np.array([[scale], [-scale / 2]])
        elif name == "X":
            a = np.array([[1.0, 0.5], [-1.0, 0.3], [0.0005, 0.001]])
        elif name == "y":
            a = np.array([[1.0], [0.3], [0.0]])
        elif name == "W":
            a = 3 * rng.uniform(-1, 1, shape)
        else:
            a = rng.uniform(0.05, 1.0, shape)
            a /= a.sum(axis=-1, keepdims=True)
        values[name] = a.astype(dtype)
    return values


_ORACLES: dict = {}


def _oracle(reference: str, param_name: str, names: tuple[str, ...]):
    """mpmath functions of the explicit entries: value, gradient and Hessian (SymPy diff)."""
    key = (reference, param_name, names)
    if key not in _ORACLES:
        symbols = {}
        matrices = {}
        for name in names:
            symbol = {"Z": Z, "Y": Y, "W": W, "z": z, "y": y, "X": X, "w": w, "v": v,
                      "u": u}[name]
            rows, cols = (_shape(symbol) + (1,))[:2]
            entries = sp.Matrix(rows, cols,
                                lambda r, q, name=name: sp.Symbol(f"{name}_{r}_{q}", real=True))
            matrices[name] = entries
            symbols[name] = list(entries)
        value = REFERENCES[reference](matrices)
        flat = [s for name in names for s in symbols[name]]
        param = symbols[param_name]
        grad = [sp.diff(value, p) for p in param]
        hess = [[sp.diff(g, q) for q in param] for g in grad]
        f = sp.lambdify(flat, [value, grad, hess], "mpmath")
        _ORACLES[key] = (f, tuple(names))
    return _ORACLES[key]


def _reference(reference: str, param_name: str, values: dict) -> tuple:
    names = tuple(sorted(values))
    f, names = _oracle(reference, param_name, names)
    with mpmath.workdps(DIGITS):
        args = [mpmath.mpf(float(v)) for name in names for v in np.asarray(values[name]).flat]
        value, grad, hess = f(*args)
        shape = values[param_name].shape
        return (float(value), np.array([float(g) for g in grad]).reshape(shape),
                np.array([[float(h) for h in row] for row in hess]))


def _assert_close(what: str, got, expected, dtype, entrywise: bool = False) -> None:
    got = np.asarray(got, dtype=np.float64).reshape(np.shape(expected))
    assert np.all(np.isfinite(got)), f"{what}: not finite: {got}"
    tol = TOLERANCE[dtype]
    if entrywise:
        error = np.abs(got - expected) / np.maximum(np.abs(expected), TINY)
    else:
        error = np.abs(got - expected) / max(float(np.max(np.abs(expected))), TINY)
    assert np.max(error) <= tol, f"{what}: relative error {np.max(error):.3g} > {tol}"


def _check_kernel(der, param, reference, jit: bool, dtype) -> None:
    kernel = der.compile(hvp=True, jit=jit)
    name = _name(param)
    for scale in (1000.0, 30.0):
        values = _inputs(der, param, scale, dtype, seed=7)
        rng = np.random.default_rng(1)
        direction = rng.uniform(-1, 1, values[name].shape).astype(dtype)
        value, grad, hess = _reference(reference, name, values)
        result = kernel(**values, **{f"v_{name}": direction})
        case = f"{reference} {dtype.__name__} scale {scale}"
        _assert_close(f"{case} value", result.value, value, dtype, entrywise=True)
        _assert_close(f"{case} gradient", result.grad[name], grad, dtype)
        _assert_close(f"{case} Hessian", result.hessian[(name, name)], hess, dtype)
        _assert_close(f"{case} HVP", result.hvp[name], hess @ direction.reshape(-1).astype(float),
                      dtype)


def _derive(case: str):
    definition, param, reference = SPELLINGS[case]
    return symdl.derive(definition, wrt=[param], hessian=True), param, reference


@pytest.mark.parametrize("case", list(SPELLINGS))
def test_spelling_stable_in_evaluate(case):
    """``symdl.evaluate`` of the printed value, gradient, Hessian and HVP, float64."""
    der, param, reference = _derive(case)
    name = _name(param)
    V = sp.MatrixSymbol(f"V_{name}", *param.shape) if len(param.shape) == 2 else None
    for scale in (1000.0, 30.0):
        values = _inputs(der, param, scale, np.float64, seed=7)
        direction = np.random.default_rng(1).uniform(-1, 1, values[name].shape)
        value, grad, hess = _reference(reference, name, values)
        sizes = dict(SIZES)
        evaluated = der.evaluate(values, sizes)
        _assert_close(f"{case} value", evaluated["value"], value, np.float64, entrywise=True)
        if V is None:  # a vector (IndexedBase): its log-sum-exp does not print as SymPy yet
            _assert_close(f"{case} gradient", evaluated[f"grad:{name}"], grad, np.float64)
            _assert_close(f"{case} Hessian", evaluated[f"hessian:{name},{name}"], hess,
                          np.float64)
            continue
        _assert_close(f"{case} gradient", symdl.evaluate(der.gradient(param), values, sizes),
                      grad, np.float64)
        _assert_close(f"{case} Hessian", symdl.evaluate(der.hessian(param), values, sizes),
                      hess, np.float64)
        hvp = symdl.evaluate(der.hvp(param, V), {**values, V.name: direction}, sizes)
        _assert_close(f"{case} HVP", hvp, hess @ direction.reshape(-1), np.float64)


@pytest.mark.parametrize("case", list(SPELLINGS))
def test_spelling_stable_in_kernel_source(case):
    """The generated kernel, run as Python (``jit=False``): every output, float64 (float32
    arithmetic is Numba's: see the compiled tests)."""
    der, param, reference = _derive(case)
    _check_kernel(der, param, reference, jit=False, dtype=np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", JITTED)
def test_spelling_stable_in_compiled_kernel(case, dtype):
    der, param, reference = _derive(case)
    _check_kernel(der, param, reference, jit=True, dtype=dtype)


@pytest.mark.parametrize("case", list(SPELLINGS))
def test_rewrites_are_idempotent(case):
    """The stage maps a stable graph to itself (the same interned objects): running it after
    translation and again after differentiation changes nothing that was already stable."""
    from symdl.ir import rewrites

    der, param, _ = _derive(case)
    roots = [der.output, der.gradient_node(param), der.hessian_node(param)]
    assert rewrites.stabilize(roots) == roots
    again = rewrites.exact(roots)
    assert rewrites.exact(again) == again
