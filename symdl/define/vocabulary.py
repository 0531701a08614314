"""A small deep-learning vocabulary that builds plain SymPy expressions.

Everything here returns SymPy objects that combine with ``+``, ``*``, ``.T`` and
``subs`` like any other: elementwise functions are ``ElementwiseApplyFunction`` nodes,
sums over an axis are products with ``OneMatrix``, and a bias row broadcast over the batch is
``OneMatrix(n, 1) * b``. Only three things SymPy cannot express with symbolic shapes get
classes of their own: the sum of all entries (``Total``), and the row-wise ``Softmax`` and
``LogSumExp``, whose stable forms matter.

Examples assume::

    import sympy as sp
    import symdl
    n, d = sp.symbols("n d", integer=True, positive=True)
    X = sp.MatrixSymbol("X", n, d)
"""

from __future__ import annotations

import sympy as sp
from sympy.core.symbol import Str
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symdl.define import reductions
from symdl.define.tensors import (  # noqa: F401 - the tensor vocabulary, exported here too
    avg_pool2d,
    channel_bias,
    conv1d,
    conv2d,
    elementwise,
    embedding,
    flatten,
    is_tensor,
    max_along,
    max_pool2d,
    unflatten,
)
from symdl.errors import DefinitionError, ShapeMismatchError
from symdl.primitives.activations import elu as elu_function
from symdl.primitives.activations import expm1 as expm1_function
from symdl.primitives.activations import gelu as gelu_function
from symdl.primitives.activations import log1p as log1p_function
from symdl.primitives.activations import silu as silu_function
from symdl.primitives.activations import softsign as softsign_function
from symdl.primitives.functions import floor as floor_function
from symdl.primitives.functions import relu as relu_function
from symdl.primitives.functions import sigmoid as sigmoid_function
from symdl.primitives.functions import softplus as softplus_function


def _as_matrix(m: sp.Basic, what: str) -> MatrixExpr:
    if not isinstance(m, MatrixExpr):
        raise DefinitionError(
            f"{what} needs a matrix expression (a MatrixSymbol or an expression of them), got "
            f"{type(m).__name__} {m}"
        )
    return m


def _in_index_notation(m: object, what: str) -> bool:
    """Whether ``m`` is an index-notation expression (``S[b, s, t]``, reduced along an index
    symbol by ``symdl.reductions``) rather than a matrix expression."""
    if isinstance(m, sp.IndexedBase):
        raise DefinitionError(
            f"{what} of the IndexedBase {m}: index it and name the axis by its index, e.g. "
            f"{what}({m}[b, s, t], axis=t)")
    return isinstance(m, sp.Expr) and not isinstance(m, MatrixExpr)


def _elementwise(f: type[sp.Function], m: sp.Basic) -> sp.Basic:
    if isinstance(m, MatrixExpr):
        return m.applyfunc(f)
    if is_tensor(m):  # a tensor of any rank (symdl.define.tensors)
        return elementwise(f, m)
    return f(m)


def sigmoid(m: sp.Basic) -> sp.Basic:
    """Elementwise logistic function ``1 / (1 + exp(-m))``.

    Example:
        >>> symdl.sigmoid(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.sigmoid(X), {"X": [[0.0, 2.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[0.5, 0.8808]]
    """
    return _elementwise(sigmoid_function, m)


def softplus(m: sp.Basic) -> sp.Basic:
    """Elementwise ``log(1 + exp(m))``.

    Example:
        >>> symdl.softplus(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.softplus(X), {"X": [[0.0, 2.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[0.6931, 2.1269]]
    """
    return _elementwise(softplus_function, m)


def relu(m: sp.Basic) -> sp.Basic:
    """Elementwise ``max(m, 0)``; its derivative at 0 is taken as 0.

    Example:
        >>> symdl.relu(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.relu(X), {"X": [[-1.5, 2.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[0.0, 2.0]]
    """
    return _elementwise(relu_function, m)


def tanh(m: sp.Basic) -> sp.Basic:
    """Elementwise hyperbolic tangent.

    Example:
        >>> symdl.tanh(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.tanh(X), {"X": [[0.0, 1.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[0.0, 0.7616]]
    """
    return _elementwise(sp.tanh, m)


def exp(m: sp.Basic) -> sp.Basic:
    """Elementwise exponential.

    Example:
        >>> symdl.exp(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.exp(X), {"X": [[0.0, 1.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[1.0, 2.7183]]
    """
    return _elementwise(sp.exp, m)


def log(m: sp.Basic) -> sp.Basic:
    """Elementwise natural logarithm.

    Example:
        >>> symdl.log(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.log(X), {"X": [[1.0, 2.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[0.0, 0.6931]]
    """
    return _elementwise(sp.log, m)


class Total(sp.Expr):
    """The sum of all entries of a matrix expression, as a scalar."""

    is_commutative = True

    def __new__(cls, m: MatrixExpr):
        m = _as_matrix(sp.sympify(m), "Total")
        return super().__new__(cls, m)

    @property
    def arg(self) -> MatrixExpr:
        return self.args[0]

    def doit(self, **hints) -> sp.Expr:
        m = self.arg.doit(**hints) if hints.get("deep", True) else self.arg
        rows, cols = m.shape
        if isinstance(m, sp.MatrixBase):
            return sp.Add(*m)
        i, j = sp.Dummy("i", integer=True), sp.Dummy("j", integer=True)
        return sp.Sum(m[i, j], (i, 0, rows - 1), (j, 0, cols - 1))

    def _latex(self, printer) -> str:
        return rf"\operatorname{{sum}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        return f"{printer._module_format('numpy.sum')}({printer._print(self.arg)})"



class _RowReduction(MatrixExpr):
    """Base of softmax and log-sum-exp along one axis of a matrix expression."""

    def __new__(cls, m: MatrixExpr, axis: int = 1):
        m = _as_matrix(sp.sympify(m), cls.__name__)
        axis = int(axis)
        if axis not in (0, 1):
            raise DefinitionError(f"{cls.__name__} axis must be 0 or 1, got {axis}")
        return super().__new__(cls, m, sp.Integer(axis))

    @property
    def arg(self) -> MatrixExpr:
        return self.args[0]

    @property
    def axis(self) -> int:
        return int(self.args[1])

    def _lane(self, i: sp.Expr, j: sp.Expr) -> tuple[list[sp.Expr], sp.Expr] | None:
        """The entries of the row (axis 1) or column (axis 0) through (i, j), and its own;
        None while that length is symbolic."""
        m = self.arg
        length = m.shape[self.axis]
        if not length.is_Integer:
            return None
        if self.axis == 1:
            return [m[i, k] for k in range(int(length))], m[i, j]
        return [m[k, j] for k in range(int(length))], m[i, j]


class LogSumExp(_RowReduction):
    """``log Σ exp`` along ``axis`` (1: each row), keeping that axis with size 1."""

    @property
    def shape(self) -> tuple[sp.Expr, sp.Expr]:
        rows, cols = self.arg.shape
        return (rows, sp.Integer(1)) if self.axis == 1 else (sp.Integer(1), cols)

    def _entry(self, i, j, **kwargs) -> sp.Expr:
        found = self._lane(i, j)
        if found is None:
            return MatrixElement(self, i, j)
        return sp.log(sp.Add(*[sp.exp(e) for e in found[0]]))

    def _latex(self, printer) -> str:
        return rf"\operatorname{{lse}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        from symdl.primitives.sympy_results import row_reduction_code

        return row_reduction_code(printer, "logsumexp", self.arg, self.axis)


class Softmax(_RowReduction):
    """``exp(m) / Σ exp(m)`` along ``axis`` (1: each row sums to one)."""

    @property
    def shape(self) -> tuple[sp.Expr, sp.Expr]:
        return self.arg.shape

    def _entry(self, i, j, **kwargs) -> sp.Expr:
        found = self._lane(i, j)
        if found is None:
            return MatrixElement(self, i, j)
        lane, own = found
        return sp.exp(own) / sp.Add(*[sp.exp(e) for e in lane])

    def _latex(self, printer) -> str:
        return rf"\operatorname{{softmax}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        from symdl.primitives.sympy_results import row_reduction_code

        return row_reduction_code(printer, "softmax", self.arg, self.axis)


def softmax(m: MatrixExpr, axis: int | sp.Symbol = 1, mask: sp.Basic | None = None) -> Softmax:
    """Softmax of each row (``axis=1``) or each column (``axis=0``), computed stably.

    For a tensor of any rank in index notation, ``axis`` is the index to normalise over:
    ``softmax(S[b, h, s, t], axis=t)``. ``mask`` (same shape or indices as ``m``) is added
    first: 0 where kept, ``-inf`` where masked (a causal mask); masked entries get probability
    0, and a row masked entirely is all zeros.

    Example:
        >>> n, k = sp.symbols("n k", integer=True, positive=True)
        >>> Z = sp.MatrixSymbol("Z", n, k)
        >>> symdl.softmax(Z).shape
        (n, k)
        >>> P = symdl.evaluate(symdl.softmax(Z), {"Z": [[0.0, 0.0], [1000.0, 0.0]]}, {n: 2, k: 2})
        >>> P.round(4).tolist()
        [[0.5, 0.5], [1.0, 0.0]]
    """
    if _in_index_notation(m, "softmax"):
        return reductions.softmax_along(m, axis, mask)
    return Softmax(m if mask is None else m + mask, axis)


def logsumexp(m: MatrixExpr, axis: int | sp.Symbol = 1,
              mask: sp.Basic | None = None) -> LogSumExp:
    """Log-sum-exp of each row (``axis=1``, an ``n x 1`` result) or column, with a max shift.

    In index notation, ``logsumexp(S[b, s, t], axis=t)`` sums over the index ``t``; ``mask``
    as in ``softmax``.

    Example:
        >>> n, k = sp.symbols("n k", integer=True, positive=True)
        >>> Z = sp.MatrixSymbol("Z", n, k)
        >>> symdl.logsumexp(Z).shape
        (n, 1)
        >>> L = symdl.evaluate(symdl.logsumexp(Z), {"Z": [[0.0, 0.0], [1000.0, 0.0]]}, {n: 2, k: 2})
        >>> L.round(4).tolist()
        [[0.6931], [1000.0]]
    """
    if _in_index_notation(m, "logsumexp"):
        return reductions.logsumexp_along(m, axis, mask)
    return LogSumExp(m if mask is None else m + mask, axis)


def log_softmax(m: MatrixExpr, axis: int | sp.Symbol = 1,
                mask: sp.Basic | None = None) -> MatrixExpr:
    """``m - logsumexp(m)`` broadcast along ``axis``: the log-probabilities of a softmax
    (in index notation, ``axis`` is an index symbol; ``mask`` as in ``softmax``).

    Example:
        >>> n, k = sp.symbols("n k", integer=True, positive=True)
        >>> Z = sp.MatrixSymbol("Z", n, k)
        >>> symdl.log_softmax(Z).shape
        (n, k)
        >>> P = symdl.evaluate(symdl.log_softmax(Z), {"Z": [[0.0, 0.0]]}, {n: 1, k: 2})
        >>> P.round(4).tolist()
        [[-0.6931, -0.6931]]
    """
    if _in_index_notation(m, "log_softmax"):
        return reductions.log_softmax_along(m, axis, mask)
    m = _as_matrix(m, "log_softmax")
    if mask is not None:
        m = m + mask
    rows, cols = m.shape
    lse = LogSumExp(m, axis)
    spread = lse * sp.OneMatrix(1, cols) if axis == 1 else sp.OneMatrix(rows, 1) * lse
    return m - spread


def total(m: MatrixExpr) -> Total:
    """The sum of all entries of ``m``.

    Example:
        >>> symdl.total(X)
        Total(X)
        >>> float(symdl.evaluate(symdl.total(X), {"X": [[1.0, 2.0], [3.0, 4.0]]}, {n: 2, d: 2}))
        10.0
    """
    return Total(m)


def sum(m: MatrixExpr, axis: int | None = None) -> sp.Basic:  # noqa: A001 - mirrors NumPy
    """Sum of all entries (``axis=None``, a scalar), of each column (``axis=0``, ``1 x k``)
    or of each row (``axis=1``, ``n x 1``). In index notation, ``sum(x[b, s, d], axis=d)`` is
    ``Sum(x[b, s, d], (d, 0, D - 1))``.

    Example:
        >>> symdl.sum(X, axis=0).shape, symdl.sum(X, axis=1).shape
        ((1, d), (n, 1))
        >>> values, dims = {"X": [[1.0, 2.0], [3.0, 4.0]]}, {n: 2, d: 2}
        >>> symdl.evaluate(symdl.sum(X, axis=0), values, dims).tolist()
        [[4.0, 6.0]]
        >>> float(symdl.evaluate(symdl.sum(X), values, dims))
        10.0
    """
    if axis is not None and _in_index_notation(m, "sum"):
        return reductions.sum_along(m, axis)
    m = _as_matrix(m, "sum")
    rows, cols = m.shape
    if axis is None:
        return Total(m)
    if axis == 0:
        return sp.OneMatrix(1, rows) * m
    if axis == 1:
        return m * sp.OneMatrix(cols, 1)
    raise DefinitionError(f"sum axis must be None, 0 or 1, got {axis}")


def mean(m: MatrixExpr, axis: int | None = None) -> sp.Basic:
    """Mean of all entries (``axis=None``), of each column (``axis=0``) or of each row.

    Example:
        >>> values, dims = {"X": [[1.0, 2.0], [3.0, 4.0]]}, {n: 2, d: 2}
        >>> symdl.evaluate(symdl.mean(X, axis=1), values, dims).tolist()
        [[1.5], [3.5]]
        >>> float(symdl.evaluate(symdl.mean(X), values, dims))
        2.5
    """
    if axis is not None and _in_index_notation(m, "mean"):
        return reductions.mean_along(m, axis)
    m = _as_matrix(m, "mean")
    rows, cols = m.shape
    size = rows * cols if axis is None else (rows if axis == 0 else cols)
    return sum(m, axis) / size


def bias(b: MatrixExpr, rows: sp.Expr) -> MatrixExpr:
    """A bias row ``b`` (``1 x k``; a ``k x 1`` column is transposed) repeated over ``rows``
    rows: ``1 b``, shape ``rows x k``.

    Example:
        >>> n, d, k = sp.symbols("n d k", integer=True, positive=True)
        >>> X, W = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("W", d, k)
        >>> b = sp.MatrixSymbol("b", 1, k)
        >>> (X * W + symdl.bias(b, n)).shape
        (n, k)
        >>> symdl.evaluate(symdl.bias(b, n), {"b": [[1.0, 2.0]]}, {n: 3, k: 2}).tolist()
        [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]
    """
    b = _as_matrix(b, "bias")
    if b.shape[0] != 1:
        if b.shape[1] != 1:
            raise ShapeMismatchError(
                f"bias needs a row vector 1 x k or a column k x 1, got {b.shape[0]} x "
                f"{b.shape[1]}", b.shape,
            )
        b = b.T
    return sp.OneMatrix(rows, 1) * b


def softmax_cross_entropy(logits: MatrixExpr, labels: MatrixExpr) -> sp.Expr:
    """Mean over rows of ``-Σ_j Y_ij log softmax(Z)_ij``.

    ``labels`` holds one probability distribution per row (one-hot or smoothed labels). The
    definition uses that each row sums to one, ``-Σ_j Y_ij (Z_ij - lse_i) = lse_i - Σ_j
    Y_ij Z_ij``, which is why its gradient is the textbook ``(softmax(Z) - Y) / n``.

    Example:
        >>> n, k = sp.symbols("n k", integer=True, positive=True)
        >>> Z = sp.MatrixSymbol("Z", n, k)
        >>> Y = sp.MatrixSymbol("Y", n, k)
        >>> loss = symdl.softmax_cross_entropy(Z, Y)
        >>> grad = symdl.derive(loss, wrt=[Z]).gradient(Z)  # (softmax(Z) - Y)/n
        >>> values, dims = {"Z": [[0.0, 0.0]], "Y": [[1.0, 0.0]]}, {n: 1, k: 2}
        >>> round(float(symdl.evaluate(loss, values, dims)), 4)
        0.6931
        >>> symdl.evaluate(grad, values, dims).tolist()
        [[-0.5, 0.5]]
    """
    z = _as_matrix(logits, "softmax_cross_entropy")
    y = _as_matrix(labels, "softmax_cross_entropy")
    if z.shape != y.shape:
        raise ShapeMismatchError(
            f"logits {z.shape[0]} x {z.shape[1]} and labels {y.shape[0]} x {y.shape[1]} must "
            "have the same shape", z.shape, y.shape,
        )
    rows = z.shape[0]
    return (Total(LogSumExp(z, 1)) - Total(sp.hadamard_product(y, z))) / rows


def binary_cross_entropy_with_logits(logits: MatrixExpr, targets: MatrixExpr) -> sp.Expr:
    """Mean of ``softplus(z) - y z``, which is ``-y log σ(z) - (1 - y) log(1 - σ(z))``.

    Example:
        >>> X, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1)
        >>> y = sp.MatrixSymbol("y", n, 1)
        >>> loss = symdl.binary_cross_entropy_with_logits(X * w, y)
        >>> grad = symdl.derive(loss, wrt=[w]).gradient(w)  # X^T (sigmoid(X w) - y)/n
        >>> values, dims = {"X": [[1.0]], "w": [[0.0]], "y": [[1.0]]}, {n: 1, d: 1}
        >>> round(float(symdl.evaluate(loss, values, dims)), 4)
        0.6931
        >>> symdl.evaluate(grad, values, dims).tolist()
        [[-0.5]]
    """
    z = _as_matrix(logits, "binary_cross_entropy_with_logits")
    y = _as_matrix(targets, "binary_cross_entropy_with_logits")
    return mean(softplus(z) - sp.hadamard_product(y, z))


def mse(prediction: MatrixExpr, target: MatrixExpr) -> sp.Expr:
    """Mean squared error over all entries.

    Example:
        >>> X, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1)
        >>> y = sp.MatrixSymbol("y", n, 1)
        >>> loss = symdl.mse(X * w, y)
        >>> grad = symdl.derive(loss, wrt=[w]).gradient(w)  # 2 X^T (X w - y)/n
        >>> values = {"X": [[1.0], [2.0]], "w": [[1.0]], "y": [[0.0], [0.0]]}
        >>> float(symdl.evaluate(loss, values, {n: 2, d: 1}))
        2.5
        >>> symdl.evaluate(grad, values, {n: 2, d: 1}).tolist()
        [[5.0]]
    """
    r = _as_matrix(prediction, "mse") - _as_matrix(target, "mse")
    return mean(sp.HadamardPower(r, 2))


def sqrt(m: sp.Basic) -> sp.Basic:
    """Elementwise square root.

    Example:
        >>> symdl.sqrt(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.sqrt(X), {"X": [[4.0, 2.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[2.0, 1.4142]]
    """
    if isinstance(m, MatrixExpr):
        return m.applyfunc(sp.sqrt)
    return sp.sqrt(m)


def rsqrt(m: sp.Basic) -> sp.Basic:
    """Elementwise reciprocal square root ``m^(-1/2)`` (a Hadamard power for matrices).

    Example:
        >>> symdl.rsqrt(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.rsqrt(X), {"X": [[4.0, 0.25]]}, {n: 1, d: 2}).round(4).tolist()
        [[0.5, 2.0]]
    """
    if isinstance(m, MatrixExpr):
        return sp.HadamardPower(m, sp.Rational(-1, 2))
    return 1 / sp.sqrt(m)


def broadcast(m: MatrixExpr, rows: sp.Expr, cols: sp.Expr) -> MatrixExpr:
    """A row ``1 x cols`` repeated over ``rows`` rows, or a column ``rows x 1`` repeated over
    ``cols`` columns (a product with a ones vector); a matrix of that shape is returned as is.

    Example:
        >>> n, k = sp.symbols("n k", integer=True, positive=True)
        >>> c = sp.MatrixSymbol("c", n, 1)
        >>> symdl.broadcast(c, n, k).shape
        (n, k)
        >>> symdl.evaluate(symdl.broadcast(c, n, k), {"c": [[1.0], [2.0]]}, {n: 2, k: 3}).tolist()
        [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    """
    m = _as_matrix(m, "broadcast")
    r, c = m.shape
    if (r, c) == (rows, cols):
        return m
    if r == 1 and c == cols:
        return sp.OneMatrix(rows, 1) * m
    if c == 1 and r == rows:
        return m * sp.OneMatrix(1, cols)
    raise ShapeMismatchError(
        f"broadcast: a {r} x {c} matrix cannot be repeated to {rows} x {cols}; give a row "
        f"1 x {cols} or a column {rows} x 1", (r, c), (rows, cols),
    )


def variance(m: MatrixExpr, axis: int | None = None) -> sp.Basic:
    """Biased (population) variance: the mean squared deviation from the mean, of all entries
    (``axis=None``), of each column (``axis=0``, ``1 x k``) or of each row (``axis=1``); in
    index notation, along the index ``axis`` (``variance(x[b, s, d], axis=d)``).

    Example:
        >>> values, dims = {"X": [[1.0, 2.0], [3.0, 6.0]]}, {n: 2, d: 2}
        >>> symdl.evaluate(symdl.variance(X, axis=0), values, dims).tolist()
        [[1.0, 4.0]]
    """
    if axis is not None and _in_index_notation(m, "variance"):
        return reductions.variance_along(m, axis)
    m = _as_matrix(m, "variance")
    rows, cols = m.shape
    if axis is None:
        centered = m - mean(m) * sp.OneMatrix(rows, cols)
    elif axis in (0, 1):
        centered = m - broadcast(mean(m, axis), rows, cols)
    else:
        raise DefinitionError(f"variance axis must be None, 0 or 1, got {axis}")
    return mean(sp.HadamardPower(centered, 2), axis)


def leaky_relu(m: sp.Basic, slope: sp.Basic | float = 0.01) -> sp.Basic:
    """Elementwise ``x`` for ``x > 0`` and ``slope x`` otherwise, written ``slope x + (1 -
    slope) relu(x)``: ``slope`` may be a scalar symbol, and the derivative at 0 is ``slope``
    (as PyTorch's).

    Example:
        >>> Y = symdl.leaky_relu(X, slope=0.1)
        >>> symdl.evaluate(Y, {"X": [[-2.0, 3.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[-0.2, 3.0]]
    """
    return slope * m + (1 - slope) * relu(m)


def gelu(m: sp.Basic, approximate: str = "tanh") -> sp.Basic:
    """Elementwise GELU, ``x Φ(x)``, as PyTorch's ``gelu(x, approximate=...)``.

    Args:
        m: a matrix expression or a scalar.
        approximate: ``"tanh"`` (the default, as in symdl before it had the exact form): the
            tanh approximation ``x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (GPT-2,
            BERT), written out. ``"none"``: the exact ``x (1 + erf(x/√2))/2``, one function
            ``gelu(x)`` in formulas (PyTorch's default; symdl keeps ``"tanh"`` as its default
            so that existing definitions keep their results).

    Example:
        >>> symdl.gelu(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.gelu(X), {"X": [[-1.0, 1.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[-0.1588, 0.8412]]
        >>> exact = symdl.gelu(X, approximate="none")
        >>> symdl.evaluate(exact, {"X": [[-1.0, 1.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[-0.1587, 0.8413]]
    """
    if approximate == "none":
        return _elementwise(gelu_function, m)
    if approximate != "tanh":
        raise DefinitionError(
            f"gelu(approximate={approximate!r}): use approximate=\"tanh\" (the tanh form) "
            "or approximate=\"none\" (the exact form with erf)")
    x = sp.Dummy("x")
    body = x / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + GELU_CUBIC * x**3)))
    if isinstance(m, MatrixExpr):
        return m.applyfunc(sp.Lambda(x, body))
    return body.subs(x, m)


GELU_CUBIC = sp.Rational(44715, 1000000)
"""The cubic coefficient 0.044715 of the tanh approximation of GELU."""


def silu(m: sp.Basic) -> sp.Basic:
    """Elementwise SiLU (swish), ``x σ(x)`` (PyTorch's ``silu``); no overflow at any input.

    Example:
        >>> symdl.silu(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.silu(X), {"X": [[-1.0, 1.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[-0.2689, 0.7311]]
    """
    return _elementwise(silu_function, m)


def elu(m: sp.Basic, alpha: sp.Basic | float = 1) -> sp.Basic:
    """Elementwise ELU: ``x`` for ``x > 0``, ``alpha (exp(x) - 1)`` at and below 0 (PyTorch's
    ``elu``). At the kink ``x = 0``, as in PyTorch: ``elu'(0) = alpha`` (the branch ``x <=
    0``) and ``elu''(0) = 0``. ``alpha`` may be a number or a scalar symbol (then it gets a
    derivative too).

    Example:
        >>> symdl.elu(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.elu(X), {"X": [[-1.0, 1.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[-0.6321, 1.0]]
    """
    alpha = sp.sympify(alpha)
    if not isinstance(alpha, sp.Expr) or isinstance(alpha, MatrixExpr) or alpha.is_Matrix:
        raise DefinitionError(f"elu: alpha must be a scalar (a number or a symbol), got {alpha}")
    if alpha.is_number and not alpha.is_extended_real:
        raise DefinitionError(f"elu: alpha must be real, got {alpha}")
    x = sp.Dummy("x")
    if isinstance(m, MatrixExpr):
        return m.applyfunc(sp.Lambda(x, elu_function(x, alpha)))
    return elu_function(m, alpha)


def softsign(m: sp.Basic) -> sp.Basic:
    """Elementwise softsign, ``x / (1 + |x|)`` (PyTorch's ``softsign``). Its second derivative
    jumps at 0 (from 2 to -2) and is taken as 0 there, as in PyTorch.

    Example:
        >>> symdl.softsign(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.softsign(X), {"X": [[-1.0, 1.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[-0.5, 0.5]]
    """
    return _elementwise(softsign_function, m)


def log1p(m: sp.Basic) -> sp.Basic:
    """Elementwise ``log(1 + x)``, accurate for small ``x`` (NumPy's and PyTorch's ``log1p``).

    Example:
        >>> symdl.log1p(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.log1p(X), {"X": [[1e-10, 1.0]]}, {n: 1, d: 2}).tolist()
        [[9.999999999500001e-11, 0.6931471805599453]]
    """
    return _elementwise(log1p_function, m)


def expm1(m: sp.Basic) -> sp.Basic:
    """Elementwise ``exp(x) - 1``, accurate for small ``x`` (NumPy's and PyTorch's ``expm1``).

    Example:
        >>> symdl.expm1(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.expm1(X), {"X": [[1e-10, 1.0]]}, {n: 1, d: 2}).tolist()
        [[1.00000000005e-10, 1.71828182845904...]]
    """
    return _elementwise(expm1_function, m)


def floor(m: sp.Basic) -> sp.Basic:
    """Elementwise floor (the largest integer <= x); its derivative is taken as 0.

    Example:
        >>> symdl.floor(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.floor(X), {"X": [[-0.5, 2.7]]}, {n: 1, d: 2}).round(4).tolist()
        [[-1.0, 2.0]]
    """
    return _elementwise(floor_function, m)


def absolute(m: sp.Basic) -> sp.Basic:
    """Elementwise ``|m|``; its derivative at 0 is taken as ``sign(0) = 0`` (a subgradient).

    Example:
        >>> symdl.absolute(X).shape
        (n, d)
        >>> symdl.evaluate(symdl.absolute(X), {"X": [[-1.5, 2.0]]}, {n: 1, d: 2}).round(4).tolist()
        [[1.5, 2.0]]
    """
    return _elementwise(sp.Abs, m)


def huber(m: sp.Basic, delta: sp.Basic | float = 1) -> sp.Basic:
    """Elementwise Huber function: ``x²/2`` for ``|x| <= delta``, ``delta (|x| - delta/2)``
    beyond, written ``(|x| - e)²/2 + delta e`` with the excess ``e = relu(|x| - delta)``, so
    ``delta`` may be a scalar symbol and the derivative is ``clip(x, -delta, delta)``.

    Example:
        >>> H = symdl.huber(X, delta=1)
        >>> symdl.evaluate(H, {"X": [[0.5, -3.0]]}, {n: 1, d: 2}).tolist()
        [[0.125, 2.5]]
    """
    a = absolute(m)
    delta = sp.sympify(delta)
    if isinstance(m, MatrixExpr):
        excess = relu(a - delta * sp.OneMatrix(*m.shape))
        return sp.HadamardPower(a - excess, 2) / 2 + delta * excess
    excess = relu(a - delta)
    return (a - excess) ** 2 / 2 + delta * excess


# ---------------------------------------------------------------------------------------------
# Determinants


class _DetBase(sp.Expr):
    """A scalar function of a square matrix expression, with its ``spd`` declaration."""

    is_commutative = True
    is_real = True
    # Between a product (50) and a power (60): printed in parentheses as the base of a power,
    # (det S)^2, but not as a factor, 2 det S.
    precedence = 55

    def __new__(cls, m: MatrixExpr, spd: bool = False):
        m = _as_matrix(sp.sympify(m), cls.__name__)
        rows, cols = m.shape
        if rows != cols:
            raise ShapeMismatchError(
                f"{cls.__name__.lower()} needs a square matrix, got {m} of shape "
                f"{rows} x {cols}", (rows, cols))
        if isinstance(spd, sp.logic.boolalg.BooleanAtom):  # SymPy rebuilding from args
            spd = bool(spd)
        if not isinstance(spd, bool):
            raise DefinitionError(f"spd= must be True or False, got {spd!r}")
        return super().__new__(cls, m, sp.true if spd else sp.false)

    @property
    def arg(self) -> MatrixExpr:
        return self.args[0]

    @property
    def spd(self) -> bool:
        """Whether the user declared the matrix symmetric positive definite."""
        return bool(self.args[1])

    def _operand_latex(self, printer) -> str:
        text = printer._print(self.arg)
        return text if isinstance(self.arg, sp.MatrixSymbol) else rf"\left({text}\right)"


class LogDet(_DetBase):
    """``log |det A|`` of a square matrix expression (``log det A`` where ``det A > 0``)."""

    def doit(self, **hints) -> sp.Expr:
        return sp.log(sp.Abs(sp.Determinant(self.arg).doit(**hints)))

    def _latex(self, printer) -> str:
        return rf"\log\det {self._operand_latex(printer)}"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        # log(det A * sign(Re det A)): log |det A| for a real A, and analytic near it, so a
        # complex-step derivative of it is right (slogdet's log |det| drops the imaginary
        # part). For the small sizes checks use: det A may overflow where slogdet would not.
        det = f"{printer._module_format('numpy.linalg.det')}({printer._print(self.arg)})"
        return (f"{printer._module_format('numpy.log')}({det} * "
                f"{printer._module_format('numpy.sign')}({det}.real))")


class Det(_DetBase):
    """``det A`` of a square matrix expression."""

    def doit(self, **hints) -> sp.Expr:
        return sp.Determinant(self.arg).doit(**hints)

    def _latex(self, printer) -> str:
        return rf"\det {self._operand_latex(printer)}"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        return f"{printer._module_format('numpy.linalg.det')}({printer._print(self.arg)})"


def logdet(m: MatrixExpr, spd: bool = False) -> LogDet:
    """``log |det m|`` of a square matrix: ``log det m`` wherever ``det m > 0`` (a covariance).

    Its gradient is ``m^{-T}`` (``d log det A = tr(A^{-1} dA)``), computed by a linear solve,
    never an explicit inverse. ``sympy.log(sympy.Determinant(m))`` means the same.

    Args:
        m: a square matrix expression.
        spd: declares ``m`` symmetric positive definite: kernels factor its symmetric part
            ``(m + m^T)/2`` by Cholesky (half the work of LU; at a symmetric ``m`` the
            gradient ``m^{-T}`` is exact for every entry) and raise ``EvaluationError`` when
            it is not positive definite.
            Without it, LU with the sign (``numpy.linalg.slogdet``); a singular ``m`` raises
            ``EvaluationError``.

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> d = sp.Symbol("d", integer=True, positive=True)
        >>> S = sp.MatrixSymbol("S", d, d)
        >>> symdl.derive(symdl.logdet(S, spd=True), wrt=[S]).gradient(S)
        S.T**(-1)
        >>> round(float(symdl.evaluate(symdl.logdet(S), {"S": [[2.0, 0.0], [0.0, 3.0]]},
        ...                            {d: 2})), 6)
        1.791759
    """
    return LogDet(m, spd)


def det(m: MatrixExpr, spd: bool = False) -> Det:
    """``det m`` of a square matrix; ``sympy.det(m)`` (a ``Determinant``) means the same.

    Its gradient is ``det(m) m^{-T}``, computed by a linear solve. Kernels compute it from
    ``log |det m|`` and the sign of an LU factorisation (Cholesky when ``spd``), so a large
    matrix neither overflows nor underflows in the factorisation.

    Args:
        m: a square matrix expression.
        spd: declares ``m`` symmetric positive definite (Cholesky in kernels).

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> d = sp.Symbol("d", integer=True, positive=True)
        >>> A = sp.MatrixSymbol("A", d, d)
        >>> round(float(symdl.evaluate(symdl.det(A), {"A": [[1.0, 2.0], [3.0, 4.0]]},
        ...                            {d: 2})), 12)
        -2.0
    """
    return Det(m, spd)


def trace(m: MatrixExpr) -> sp.Expr:
    """The trace ``Σ_i m[i, i]`` of a square matrix (``sympy.Trace``); its gradient is ``I``.

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> d = sp.Symbol("d", integer=True, positive=True)
        >>> A = sp.MatrixSymbol("A", d, d)
        >>> float(symdl.evaluate(symdl.trace(A), {"A": [[1.0, 2.0], [3.0, 4.0]]}, {d: 2}))
        5.0
    """
    m = _as_matrix(sp.sympify(m), "trace")
    if m.shape[0] != m.shape[1]:
        raise ShapeMismatchError(
            f"trace needs a square matrix, got {m} of shape {m.shape[0]} x {m.shape[1]}",
            tuple(m.shape))
    return sp.Trace(m)


class PseudoInverse(MatrixExpr):
    """The Moore-Penrose pseudo-inverse of a full-rank matrix expression: ``(A^T A)^{-1} A^T``
    (full column rank, ``rows="columns"``) or ``A^T (A A^T)^{-1}`` (full row rank)."""

    def __new__(cls, m: MatrixExpr, full_rank: str):
        m = _as_matrix(sp.sympify(m), "pinv")
        if isinstance(full_rank, sp.Symbol):  # SymPy rebuilding from args
            full_rank = full_rank.name
        if full_rank not in ("columns", "rows"):
            raise DefinitionError(
                f"pinv(m, full_rank=...) takes 'columns' (a tall m whose columns are linearly "
                f"independent) or 'rows' (a wide m, independent rows), got {full_rank!r}")
        return super().__new__(cls, m, sp.Symbol(full_rank))

    @property
    def arg(self) -> MatrixExpr:
        return self.args[0]

    @property
    def full_rank(self) -> str:
        return str(self.args[1])

    @property
    def shape(self) -> tuple[sp.Expr, sp.Expr]:
        rows, cols = self.arg.shape
        return (cols, rows)

    def gram(self) -> MatrixExpr:
        """The Gram matrix that is inverted: ``A^T A`` or ``A A^T``."""
        m = self.arg
        return m.T * m if self.full_rank == "columns" else m * m.T

    def doit(self, **hints) -> MatrixExpr:
        # Kept whole (as SymPy keeps Inverse): products call doit() on their factors, and the
        # translator reads the full-rank declaration from this node (a checked Cholesky).
        m = self.arg.doit(**hints) if hints.get("deep", True) else self.arg
        return PseudoInverse(m, self.full_rank)

    def explicit(self) -> MatrixExpr:
        """``(A^T A)^{-1} A^T`` or ``A^T (A A^T)^{-1}``."""
        m = self.arg
        if self.full_rank == "columns":
            return sp.Inverse(self.gram()) * m.T
        return m.T * sp.Inverse(self.gram())

    def _entry(self, i, j, **kwargs) -> sp.Expr:
        return MatrixElement(self, i, j)

    def _latex(self, printer) -> str:
        base = printer._print(self.arg)
        if not isinstance(self.arg, sp.MatrixSymbol):
            base = rf"\left({base}\right)"
        return rf"{base}^{{+}}"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        return f"{printer._module_format('numpy.linalg.pinv')}({printer._print(self.arg)})"


def pinv(m: MatrixExpr, full_rank: str = "columns") -> PseudoInverse:
    """The pseudo-inverse ``m^+`` of a matrix of full rank.

    Assumption (stated, and checked at run time): ``m`` has full rank. With
    ``full_rank="columns"`` (a tall ``n x d`` matrix, ``n >= d``, independent columns) it is
    ``(m^T m)^{-1} m^T``; with ``full_rank="rows"`` (a wide one, independent rows) it is
    ``m^T (m m^T)^{-1}``. Kernels and evaluation solve with the Gram matrix by Cholesky, never
    forming an inverse, and raise ``EvaluationError`` where the Gram matrix is numerically
    singular (rank-deficient ``m``). Derivatives, Hessians and LaTeX (``m^{+}``) follow from
    the derivative of the inverse. SymPy's ``MatrixSymbol`` has no ``.pinv()``: use this.

    Args:
        m: a matrix expression.
        full_rank: ``"columns"`` (default) or ``"rows"``.

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> n, d = sp.symbols("n d", integer=True, positive=True)
        >>> X = sp.MatrixSymbol("X", n, d)
        >>> P = symdl.pinv(X)
        >>> P.shape
        (d, n)
        >>> symdl.evaluate(P, {"X": [[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]}, {n: 3, d: 2}).tolist()
        [[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]]
    """
    return PseudoInverse(m, full_rank)


# ---------------------------------------------------------------------------------------------
# Norms, singular values and eigenvalues


_NORM_ORDERS = {"fro": ("fro", "F"), "nuc": ("nuclear", "*"), "2": ("norm2", "2")}
"""``norm(m, ord)`` -> (the IR's matrix function, the LaTeX subscript)."""


class Norm(sp.Expr):
    """A matrix norm: Frobenius (``ord="fro"``), nuclear (``"nuc"``, the sum of the singular
    values) or spectral (``2``, the largest singular value)."""

    is_commutative = True
    is_real = True
    is_nonnegative = True

    def __new__(cls, m: MatrixExpr, ord: str | int | sp.Basic = "fro"):  # noqa: A002 - NumPy's
        m = _as_matrix(sp.sympify(m), "norm")
        key = str(ord.name) if isinstance(ord, (sp.Symbol, Str)) else str(ord)
        if key not in _NORM_ORDERS:
            raise DefinitionError(
                f"norm(m, ord=...) takes 'fro' (Frobenius), 'nuc' (nuclear: the sum of the "
                f"singular values) or 2 (the largest singular value), got {ord!r}")
        # A Str, not a Symbol: the order is no variable (substitutions leave it alone).
        return super().__new__(cls, m, Str(key))

    @property
    def arg(self) -> MatrixExpr:
        return self.args[0]

    @property
    def ord(self) -> str:  # noqa: A003 - NumPy's name
        return str(self.args[1].name)

    @property
    def part(self) -> str:
        """The IR's ``MatrixFunction`` kind: ``fro``, ``nuclear`` or ``norm2``."""
        return _NORM_ORDERS[self.ord][0]

    def doit(self, **hints) -> sp.Expr:
        m = self.arg.doit(**hints) if hints.get("deep", True) else self.arg
        return Norm(m, self.ord)

    def _latex(self, printer) -> str:
        return rf"\left\|{printer._print(self.arg)}\right\|_{{{_NORM_ORDERS[self.ord][1]}}}"

    def _sympystr(self, printer) -> str:
        order = {"fro": "", "nuc": ", 'nuc'", "2": ", 2"}[self.ord]
        return f"norm({printer._print(self.arg)}{order})"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        order = "2" if self.ord == "2" else repr(self.ord)
        return (f"{printer._module_format('numpy.linalg.norm')}("
                f"{printer._print(self.arg)}, {order})")


_SPECTRUM_KINDS = {
    # kind: (text, LaTeX of the operand #, NumPy of the operand #)
    "svdvals": ("svdvals", r"\sigma\left(#\right)",
                "numpy.linalg.svd(#, compute_uv=False).reshape(-1, 1)"),
    "eigvalsh": ("eigvalsh", r"\lambda\left(#\right)",
                 "numpy.linalg.eigvalsh((# + (#).T) / 2).reshape(-1, 1)"),
    "polar": ("svd_polar", r"U_{#} V_{#}^{T}",
              "(lambda u, s, vt: u @ vt)(*numpy.linalg.svd(#, full_matrices=False))"),
    "top": ("svd_top", r"u_{1}\left(#\right) v_{1}\left(#\right)^{T}",
            "(lambda u, s, vt: numpy.outer(u[:, 0], vt[0]))"
            "(*numpy.linalg.svd(#, full_matrices=False))"),
    "svd_u": ("svd_u", r"U_{#}", "numpy.linalg.svd(#, full_matrices=False)[0]"),
    "svd_v": ("svd_v", r"V_{#}", "numpy.linalg.svd(#, full_matrices=False)[2].T"),
    "eigvecsh": ("eigvecsh", r"V_{#}", "numpy.linalg.eigh((# + (#).T) / 2)[1]"),
    "eigh_gaps": ("eigh_gaps", r"F_{#}",
                  "(lambda g: numpy.where(g == 0, 0.0, 1.0 / numpy.where(g == 0, 1.0, g)))"
                  "((lambda w: w[None, :] - w[:, None])"
                  "(numpy.linalg.eigvalsh((# + (#).T) / 2)))"),
    "cholesky": ("cholesky", r"\operatorname{chol}\left(#\right)",
                 "numpy.linalg.cholesky((# + (#).T) / 2)"),
    "tril_half": ("tril_half", r"\Phi\left(#\right)",
                  "(lambda x: x * (numpy.tril(numpy.ones(x.shape)) - 0.5 * numpy.eye(len(x))))"
                  "(#)"),
}


class Spectrum(MatrixExpr):
    """Singular values (``kind="svdvals"``), eigenvalues of a symmetric matrix
    (``"eigvalsh"``), both as a column, or a factor of the SVD or eigendecomposition that
    their derivatives are written in (``"polar"``: ``U V^T``, ``"top"``: ``u_1 v_1^T``,
    ``"svd_u"``, ``"svd_v"``, ``"eigh_gaps"``, ``"tril_half"``); ``"eigvecsh"``: the
    eigenvectors of a symmetric matrix, as columns; ``"cholesky"``: the Cholesky factor."""

    def __new__(cls, m: MatrixExpr, kind: str | sp.Symbol):
        m = _as_matrix(sp.sympify(m), "a spectrum")
        kind = str(kind.name) if isinstance(kind, (sp.Symbol, Str)) else kind
        if kind not in _SPECTRUM_KINDS:
            raise DefinitionError(f"unknown spectrum kind {kind!r}: one of "
                                  f"{list(_SPECTRUM_KINDS)}")
        rows, cols = m.shape
        if kind in ("eigvalsh", "eigvecsh", "eigh_gaps", "cholesky", "tril_half") and rows != cols:
            raise ShapeMismatchError(
                f"eigenvalues need a square (symmetric) matrix, got {m} of shape {rows} x "
                f"{cols}", (rows, cols))
        if kind in ("svdvals", "svd_u", "svd_v") and (rows - cols).is_negative:
            raise ShapeMismatchError(
                f"svdvals(m) of a wide matrix ({rows} x {cols}) has {rows} singular values, "
                f"not {cols}: take svdvals(m.T)", (rows, cols))
        return super().__new__(cls, m, Str(kind))

    @property
    def arg(self) -> MatrixExpr:
        return self.args[0]

    @property
    def part(self) -> str:
        return str(self.args[1].name)

    @property
    def shape(self) -> tuple[sp.Expr, sp.Expr]:
        rows, cols = self.arg.shape
        return {"svdvals": (cols, sp.Integer(1)), "eigvalsh": (rows, sp.Integer(1)),
                "polar": (rows, cols), "top": (rows, cols), "svd_u": (rows, cols),
                "svd_v": (cols, cols), "eigvecsh": (rows, rows),
                "eigh_gaps": (rows, rows), "cholesky": (rows, rows),
                "tril_half": (rows, rows)}[self.part]

    def doit(self, **hints) -> MatrixExpr:
        m = self.arg.doit(**hints) if hints.get("deep", True) else self.arg
        return Spectrum(m, self.part)

    def _entry(self, i, j, **kwargs) -> sp.Expr:
        return MatrixElement(self, i, j)

    def _latex(self, printer) -> str:
        return _SPECTRUM_KINDS[self.part][1].replace("#", printer._print(self.arg))

    def _sympystr(self, printer) -> str:
        return f"{_SPECTRUM_KINDS[self.part][0]}({printer._print(self.arg)})"

    def _numpycode(self, printer) -> str:  # sympy.lambdify(..., "numpy") of a result
        code = _SPECTRUM_KINDS[self.part][2].replace("#", printer._print(self.arg))
        return code.replace("numpy.", printer._module_format("numpy") + ".")


def norm(m: MatrixExpr, ord: str | int = "fro") -> Norm:  # noqa: A002 - NumPy's name
    """A matrix norm, differentiable: Frobenius, nuclear or spectral (``numpy.linalg.norm``).

    * ``ord="fro"`` (default): ``sqrt(Σ m_ij²)``; gradient ``m / ||m||_F``, Hessians too. At
      ``m = 0`` the gradient is taken as 0 (a subgradient, as PyTorch).
    * ``ord="nuc"``: the sum of the singular values; gradient ``U V^T`` (thin SVD). It assumes
      every singular value nonzero (full rank), checked where the gradient is computed:
      ``EvaluationError`` naming the smallest and the tolerance.
    * ``ord=2``: the largest singular value; gradient ``u_1 v_1^T``, assuming it simple
      (``sigma_1 > sigma_2``), checked the same way.

    Nuclear and 2-norms have gradients only: a Hessian or Hessian-vector product through them
    raises ``UnsupportedError``.

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> d = sp.Symbol("d", integer=True, positive=True)
        >>> A = sp.MatrixSymbol("A", d, d)
        >>> symdl.derive(symdl.norm(A), wrt=[A]).gradient(A)
        Piecewise((1/norm(A), norm(A) > 0), (0, True))*A
        >>> float(symdl.evaluate(symdl.norm(A, "nuc"), {"A": [[3.0, 0.0], [0.0, -4.0]]}, {d: 2}))
        7.0
    """
    return Norm(m, ord)


def svdvals(m: MatrixExpr) -> Spectrum:
    """The singular values of a tall or square matrix ``m`` (rows >= columns), largest first,
    as a column; ``svdvals(m.T)`` for a wide one.

    The gradient of ``sigma_i`` is ``u_i v_i^T``: it assumes the singular values distinct
    and nonzero, which is checked where a derivative is computed (``EvaluationError`` naming
    the two closest values, their gap and the tolerance ``GAP_TOLERANCE`` relative to the
    largest). Gradients only: Hessians through them raise ``UnsupportedError``.

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> n, d = sp.symbols("n d", integer=True, positive=True)
        >>> X = sp.MatrixSymbol("X", n, d)
        >>> symdl.evaluate(symdl.svdvals(X), {"X": [[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]]},
        ...                {n: 3, d: 2}).tolist()
        [[4.0], [3.0]]
    """
    return Spectrum(m, "svdvals")


def eigvalsh(m: MatrixExpr) -> Spectrum:
    """The eigenvalues of a symmetric matrix, ascending, as a column (``numpy.linalg.eigvalsh``).

    It is the eigenvalues of the symmetric part ``(m + m^T)/2``, so it is defined (and its
    derivative exact) for every square ``m``: ``d lambda_i = v_i^T dm v_i``, gradient
    ``v_i v_i^T``. That assumes the eigenvalues distinct, checked where a derivative is
    computed (``EvaluationError`` naming the two closest eigenvalues, their gap and the
    tolerance relative to the largest magnitude). Hessians too (through the derivative of
    the eigenvectors, ``eigh``).

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> d = sp.Symbol("d", integer=True, positive=True)
        >>> S = sp.MatrixSymbol("S", d, d)
        >>> symdl.evaluate(symdl.eigvalsh(S), {"S": [[2.0, 1.0], [1.0, 2.0]]}, {d: 2}).tolist()
        [[1.0], [3.0]]
    """
    return Spectrum(m, "eigvalsh")


def eigh(m: MatrixExpr) -> tuple[Spectrum, Spectrum]:
    """The eigenvalues (ascending, a column) and eigenvectors (the columns of a matrix) of a
    symmetric matrix, as ``numpy.linalg.eigh``: ``m = V diag(lambda) V^T``.

    Both are those of the symmetric part ``(m + m^T)/2``, so they are defined, and their
    derivatives exact, for every square ``m``. ``d lambda_i = v_i^T dm v_i`` and
    ``dV = V (F ∘ (V^T dm_sym V))`` with ``F[i, j] = 1/(lambda_j - lambda_i)`` off the
    diagonal: both assume the eigenvalues distinct, checked where a derivative is computed
    (``EvaluationError`` naming the two closest, their gap and the tolerance relative to the
    largest magnitude). Each eigenvector's sign is LAPACK's: a definition that should not
    depend on it uses functions invariant to it (``v v^T``, squares of projections).
    Gradients and Hessians of the eigenvalues; gradients of the eigenvectors (a Hessian
    through them raises ``UnsupportedError``).

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> d = sp.Symbol("d", integer=True, positive=True)
        >>> S = sp.MatrixSymbol("S", d, d)
        >>> values, vectors = symdl.eigh(S)
        >>> v = symdl.evaluate(vectors, {"S": [[2.0, 0.0], [0.0, 1.0]]}, {d: 2})
        >>> abs(v).tolist()
        [[0.0, 1.0], [1.0, 0.0]]
    """
    return Spectrum(m, "eigvalsh"), Spectrum(m, "eigvecsh")


def cholesky(m: MatrixExpr) -> Spectrum:
    """The Cholesky factor ``L`` of a symmetric positive definite matrix: lower triangular with
    a positive diagonal, ``m = L L^T`` (``numpy.linalg.cholesky``).

    It is the factor of the symmetric part ``(m + m^T)/2``, so its derivative is exact for
    every square ``m``: ``dL = L Φ(L^{-1} dS L^{-T})``, ``dS = (dm + dm^T)/2``, where ``Φ``
    keeps the lower triangle and halves the diagonal; the gradient is
    ``sym(L^{-T} Φ(L^T L̄) L^{-1})``, by triangular-free linear solves (never an inverse).
    ``Φ`` is a node of its own (``tril_half``), not a product with a dense mask. Gradients,
    Hessians and Hessian-vector products; a matrix that is not positive definite raises
    ``EvaluationError``.

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> d = sp.Symbol("d", integer=True, positive=True)
        >>> S = sp.MatrixSymbol("S", d, d)
        >>> symdl.evaluate(symdl.cholesky(S), {"S": [[4.0, 2.0], [2.0, 5.0]]}, {d: 2}).tolist()
        [[2.0, 0.0], [1.0, 2.0]]
    """
    return Spectrum(m, "cholesky")
