"""A small deep-learning vocabulary that builds plain SymPy expressions.

Everything here returns SymPy objects that combine with ``+``, ``*``, ``.T`` and
``subs`` like any other: elementwise functions are ``ElementwiseApplyFunction`` nodes,
sums over an axis are products with ``OneMatrix``, and a bias row broadcast over the batch is
``OneMatrix(n, 1) * b``. Only three things SymPy cannot express with symbolic shapes get
classes of their own: the sum of all entries (``Total``), and the row-wise ``Softmax`` and
``LogSumExp``, whose stable forms matter.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

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


def _elementwise(f: type[sp.Function], m: sp.Basic) -> sp.Basic:
    if isinstance(m, MatrixExpr):
        return m.applyfunc(f)
    return f(m)


def sigmoid(m: sp.Basic) -> sp.Basic:
    """Elementwise logistic function ``1 / (1 + exp(-m))``."""
    return _elementwise(sigmoid_function, m)


def softplus(m: sp.Basic) -> sp.Basic:
    """Elementwise ``log(1 + exp(m))``."""
    return _elementwise(softplus_function, m)


def relu(m: sp.Basic) -> sp.Basic:
    """Elementwise ``max(m, 0)``; its derivative at 0 is taken as 0."""
    return _elementwise(relu_function, m)


def tanh(m: sp.Basic) -> sp.Basic:
    """Elementwise hyperbolic tangent."""
    return _elementwise(sp.tanh, m)


def exp(m: sp.Basic) -> sp.Basic:
    """Elementwise exponential."""
    return _elementwise(sp.exp, m)


def log(m: sp.Basic) -> sp.Basic:
    """Elementwise natural logarithm."""
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


def softmax(m: MatrixExpr, axis: int = 1) -> Softmax:
    """Softmax of each row (``axis=1``) or each column (``axis=0``), computed stably."""
    return Softmax(m, axis)


def logsumexp(m: MatrixExpr, axis: int = 1) -> LogSumExp:
    """Log-sum-exp of each row (``axis=1``, an ``n x 1`` result) or column, with a max shift."""
    return LogSumExp(m, axis)


def log_softmax(m: MatrixExpr, axis: int = 1) -> MatrixExpr:
    """``m - logsumexp(m)`` broadcast along ``axis``: the log-probabilities of a softmax."""
    m = _as_matrix(m, "log_softmax")
    rows, cols = m.shape
    lse = LogSumExp(m, axis)
    spread = lse * sp.OneMatrix(1, cols) if axis == 1 else sp.OneMatrix(rows, 1) * lse
    return m - spread


def total(m: MatrixExpr) -> Total:
    """The sum of all entries of ``m``."""
    return Total(m)


def sum(m: MatrixExpr, axis: int | None = None) -> sp.Basic:  # noqa: A001 - mirrors NumPy
    """Sum of all entries (``axis=None``, a scalar), of each column (``axis=0``, ``1 x k``)
    or of each row (``axis=1``, ``n x 1``)."""
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
    """Mean of all entries (``axis=None``), of each column (``axis=0``) or of each row."""
    m = _as_matrix(m, "mean")
    rows, cols = m.shape
    size = rows * cols if axis is None else (rows if axis == 0 else cols)
    return sum(m, axis) / size


def bias(b: MatrixExpr, rows: sp.Expr) -> MatrixExpr:
    """A bias row ``b`` (``1 x k``; a ``k x 1`` column is transposed) repeated over ``rows``
    rows: ``1 b``, shape ``rows x k``."""
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
    """Mean of ``softplus(z) - y z``, which is ``-y log σ(z) - (1 - y) log(1 - σ(z))``."""
    z = _as_matrix(logits, "binary_cross_entropy_with_logits")
    y = _as_matrix(targets, "binary_cross_entropy_with_logits")
    return mean(softplus(z) - sp.hadamard_product(y, z))


def mse(prediction: MatrixExpr, target: MatrixExpr) -> sp.Expr:
    """Mean squared error over all entries."""
    r = _as_matrix(prediction, "mse") - _as_matrix(target, "mse")
    return mean(sp.HadamardPower(r, 2))


def sqrt(m: sp.Basic) -> sp.Basic:
    """Elementwise square root."""
    if isinstance(m, MatrixExpr):
        return m.applyfunc(sp.sqrt)
    return sp.sqrt(m)


def rsqrt(m: sp.Basic) -> sp.Basic:
    """Elementwise reciprocal square root ``m^(-1/2)`` (a Hadamard power for matrices)."""
    if isinstance(m, MatrixExpr):
        return sp.HadamardPower(m, sp.Rational(-1, 2))
    return 1 / sp.sqrt(m)


def broadcast(m: MatrixExpr, rows: sp.Expr, cols: sp.Expr) -> MatrixExpr:
    """A row ``1 x cols`` repeated over ``rows`` rows, or a column ``rows x 1`` repeated over
    ``cols`` columns (a product with a ones vector); a matrix of that shape is returned as is."""
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
    (``axis=None``), of each column (``axis=0``, ``1 x k``) or of each row (``axis=1``)."""
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
    (as PyTorch's)."""
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
    """Elementwise SiLU (swish), ``x σ(x)`` (PyTorch's ``silu``); no overflow at any input."""
    return _elementwise(silu_function, m)


def elu(m: sp.Basic, alpha: sp.Basic | float = 1) -> sp.Basic:
    """Elementwise ELU: ``x`` for ``x > 0``, ``alpha (exp(x) - 1)`` at and below 0 (PyTorch's
    ``elu``). At the kink ``x = 0``, as in PyTorch: ``elu'(0) = alpha`` (the branch ``x <=
    0``) and ``elu''(0) = 0``. ``alpha`` may be a number or a scalar symbol (then it gets a
    derivative too)."""
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
    jumps at 0 (from 2 to -2) and is taken as 0 there, as in PyTorch."""
    return _elementwise(softsign_function, m)


def log1p(m: sp.Basic) -> sp.Basic:
    """Elementwise ``log(1 + x)``, accurate for small ``x`` (NumPy's and PyTorch's ``log1p``)."""
    return _elementwise(log1p_function, m)


def expm1(m: sp.Basic) -> sp.Basic:
    """Elementwise ``exp(x) - 1``, accurate for small ``x`` (NumPy's and PyTorch's ``expm1``)."""
    return _elementwise(expm1_function, m)


def floor(m: sp.Basic) -> sp.Basic:
    """Elementwise floor (the largest integer <= x); its derivative is taken as 0."""
    return _elementwise(floor_function, m)


def absolute(m: sp.Basic) -> sp.Basic:
    """Elementwise ``|m|``; its derivative at 0 is taken as ``sign(0) = 0`` (a subgradient)."""
    return _elementwise(sp.Abs, m)


def huber(m: sp.Basic, delta: sp.Basic | float = 1) -> sp.Basic:
    """Elementwise Huber function: ``x²/2`` for ``|x| <= delta``, ``delta (|x| - delta/2)``
    beyond, written ``(|x| - e)²/2 + delta e`` with the excess ``e = relu(|x| - delta)``, so
    ``delta`` may be a scalar symbol and the derivative is ``clip(x, -delta, delta)``."""
    a = absolute(m)
    delta = sp.sympify(delta)
    if isinstance(m, MatrixExpr):
        excess = relu(a - delta * sp.OneMatrix(*m.shape))
        return sp.HadamardPower(a - excess, 2) / 2 + delta * excess
    excess = relu(a - delta)
    return (a - excess) ** 2 / 2 + delta * excess
