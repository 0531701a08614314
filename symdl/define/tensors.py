"""Tensors of any rank in definitions: convolutions, pooling, embeddings, reshapes.

A tensor is an ``IndexedBase`` with a shape (``sp.IndexedBase("X", shape=(n, 8, 8, 1))``, an
input, or the target of a named step) or a tensor-valued expression built by the functions
here. Each is a SymPy object (a ``TensorExpr``) with a ``shape``; a model names them as steps::

    X = sp.IndexedBase("X", shape=(n, 8, 8, 1))           # batch x height x width x channels
    K = sp.IndexedBase("K", shape=(3, 3, 1, 8))           # kh x kw x in x out (channels last)
    Z = sp.IndexedBase("Z", shape=(n, 6, 6, 8))
    steps = [(Z, symdl.conv2d(X, K)), (A, symdl.relu(Z)), (P, symdl.max_pool2d(A, 2)), ...]

or entrywise, with free indices: ``(Z[b, i, j, o], <an expression in b, i, j, o>)``. Later
steps read ``Z[b, i, j, o]`` in index notation or pass ``Z`` to these functions;
``flatten`` turns an image into a matrix (``N x H*W*C``) for dense layers.

Each translates into the IR kinds of ``symdl.ir.indexed`` and einsums: a convolution is an
einsum of the kernel with an ``AffineRead`` of the input (windows, strides, dilation, zero
padding; a group's channel is the affine position ``g*Cg + c``), pooling is a maximum or a mean
over such a read, ``flatten`` is a one-to-one ``AffineScatter`` and ``embedding`` a ``Take``.

Layouts: ``"channels_last"`` (the default; ``N x H x W x C`` images, kernels ``kh x kw x
C/groups x O`` as in TensorFlow and JAX's ``HWIO``) and ``"channels_first"`` (``N x C x H x W``
images, kernels ``O x C/groups x kh x kw``, PyTorch's layout). Output sizes follow PyTorch:
``floor((H + 2 p - d (k - 1) - 1) / s) + 1``.
"""

from __future__ import annotations

import sympy as sp
from sympy.core.symbol import Str
from sympy.matrices.expressions.matexpr import MatrixExpr

from symdl.errors import DefinitionError, ShapeMismatchError

LAYOUTS = ("channels_last", "channels_first")


class TensorExpr(sp.Basic):
    """A tensor-valued expression of any rank, with a ``shape``: the base of the classes here.

    It is not a scalar: it does not add or multiply with ``+`` and ``*``; name it as a step
    (``(Y, symdl.conv2d(X, W))`` with ``Y = sp.IndexedBase("Y", shape=...)``) and index the
    step (``Y[b, i, j, c]``), or pass it to the functions of this module.
    """

    is_commutative = False

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        raise NotImplementedError

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return sp.sstr(self)  # through the classes' _sympystr: K ⋆ X

    __repr__ = __str__


# ---------------------------------------------------------------------------------------------
# Operands


def tensor_shape(x: sp.Basic, what: str) -> tuple[sp.Expr, ...]:
    """The shape of a tensor operand: an ``IndexedBase`` with a shape, a ``TensorExpr`` or a
    matrix expression (rank 2)."""
    if isinstance(x, TensorExpr):
        return tuple(x.shape)
    if isinstance(x, sp.IndexedBase):
        if x.shape is None:
            raise DefinitionError(
                f"{what}: the IndexedBase {x} has no shape; create it with one, e.g. "
                f"sp.IndexedBase('{x}', shape=(n, 8, 8, 1))")
        return tuple(sp.sympify(d) for d in x.shape)
    if isinstance(x, MatrixExpr):
        return tuple(x.shape)
    raise DefinitionError(
        f"{what} needs a tensor (an IndexedBase with a shape, a tensor expression such as "
        f"symdl.conv2d(...), or a matrix), got {type(x).__name__} {x}")


def _operand(x: object, what: str) -> sp.Basic:
    x = sp.sympify(x, strict=True) if not isinstance(x, sp.Basic) else x
    tensor_shape(x, what)
    return x


def _ints(value: object, count: int, what: str, minimum: int) -> sp.Tuple:
    values = list(value) if isinstance(value, (tuple, list, sp.Tuple)) else [value] * count
    if len(values) != count:
        raise DefinitionError(f"{what} needs {count} values (one per spatial axis), got {value}")
    out = []
    for v in values:
        v = sp.sympify(v)
        if not (v.is_Integer and v >= minimum):
            raise DefinitionError(f"{what} must be integers >= {minimum}, got {value}")
        out.append(v)
    return sp.Tuple(*out)


def _layout(layout: object) -> Str:
    name = str(layout)
    if name not in LAYOUTS:
        raise DefinitionError(
            f"layout={layout!r}: use 'channels_last' (N x H x W x C) or 'channels_first' "
            "(N x C x H x W)")
    return Str(name)


def _out_size(size: sp.Expr, kernel: sp.Expr, stride: sp.Expr, padding: sp.Expr,
              dilation: sp.Expr) -> sp.Expr:
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = sp.floor(span / stride) + 1
    if out.is_number and out < 1:
        raise ShapeMismatchError(
            f"a window of {kernel} (dilation {dilation}) does not fit in {size} + 2*{padding}: "
            "the output would be empty", (size,), (kernel,))
    return out


def _spatial_axes(rank: int, layout: str) -> tuple[int, ...]:
    return tuple(range(1, rank - 1)) if layout == "channels_last" else tuple(range(2, rank))


def channel_axis(rank: int, layout: str) -> int:
    """The channel axis of a ``rank`` tensor in ``layout``."""
    return rank - 1 if layout == "channels_last" else 1


# ---------------------------------------------------------------------------------------------
# Convolution


class Conv(TensorExpr):
    """A convolution (cross-correlation, as in deep learning) of ``x`` with the kernel ``w``."""

    def __new__(cls, x, w, stride, padding, dilation, groups, layout):
        return sp.Basic.__new__(cls, x, w, stride, padding, dilation, sp.Integer(groups),
                                _layout(layout))

    x = property(lambda self: self.args[0])
    w = property(lambda self: self.args[1])
    stride = property(lambda self: tuple(int(v) for v in self.args[2]))
    padding = property(lambda self: tuple(int(v) for v in self.args[3]))
    dilation = property(lambda self: tuple(int(v) for v in self.args[4]))
    groups = property(lambda self: int(self.args[5]))
    layout = property(lambda self: str(self.args[6]))

    @property
    def spatial(self) -> int:
        return len(self.args[2])

    def kernel_size(self) -> tuple[sp.Expr, ...]:
        ws = tensor_shape(self.w, "conv")
        return ws[:self.spatial] if self.layout == "channels_last" else ws[2:]

    def out_channels(self) -> sp.Expr:
        ws = tensor_shape(self.w, "conv")
        return ws[-1] if self.layout == "channels_last" else ws[0]

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        xs = tensor_shape(self.x, "conv")
        sizes = [xs[a] for a in _spatial_axes(len(xs), self.layout)]
        out = tuple(_out_size(h, k, s, p, d) for h, k, s, p, d in zip(
            sizes, self.kernel_size(), self.stride, self.padding, self.dilation, strict=True))
        if self.layout == "channels_last":
            return (xs[0], *out, self.out_channels())
        return (xs[0], self.out_channels(), *out)


def _conv(x, w, spatial: int, stride, padding, dilation, groups, layout) -> Conv:
    what = f"conv{spatial}d"
    x, w = _operand(x, what), _operand(w, what)
    layout = str(_layout(layout))
    xs, ws = tensor_shape(x, what), tensor_shape(w, what)
    if len(xs) != spatial + 2 or len(ws) != spatial + 2:
        raise ShapeMismatchError(
            f"{what} needs an input and a kernel of rank {spatial + 2}, got shapes {xs} and {ws}",
            xs, ws)
    groups = sp.sympify(groups)
    if not (groups.is_Integer and groups >= 1):
        raise DefinitionError(f"{what}: groups must be an integer >= 1, got {groups}")
    channels = xs[-1] if layout == "channels_last" else xs[1]
    per_group = ws[-2] if layout == "channels_last" else ws[1]
    out_channels = ws[-1] if layout == "channels_last" else ws[0]
    if sp.simplify(channels - groups * per_group) != 0:
        weights = ("kh x kw x C/groups x O" if layout == "channels_last"
                   else "O x C/groups x kh x kw")
        raise ShapeMismatchError(
            f"{what}: the input has {channels} channels but the kernel {ws} ({weights}, "
            f"{layout}) reads {per_group} per group x {groups} groups", xs, ws)
    if groups != 1 and (sp.sympify(out_channels) / groups).is_integer is False:
        raise ShapeMismatchError(
            f"{what}: {out_channels} output channels do not split into {groups} groups", ws)
    conv = Conv(x, w, _ints(stride, spatial, f"{what} stride", 1),
                _ints(padding, spatial, f"{what} padding", 0),
                _ints(dilation, spatial, f"{what} dilation", 1), groups, layout)
    conv.shape  # noqa: B018 - raises when the window does not fit
    return conv


def conv1d(x, w, stride=1, padding=0, dilation=1, groups=1, layout="channels_last") -> Conv:
    """A 1-D convolution (cross-correlation) of a batch of sequences ``x`` with kernels ``w``.

    Args:
        x: ``N x L x C`` (``layout="channels_last"``) or ``N x C x L`` (``"channels_first"``).
        w: ``k x C/groups x O`` (channels last) or ``O x C/groups x k`` (channels first,
            PyTorch's ``conv1d`` weight).
        stride, padding, dilation: integers (zero padding).
        groups: channels split into groups convolved apart (``groups = C``: depthwise).

    Example:
        >>> n, L = sp.symbols("n L", integer=True, positive=True)
        >>> X = sp.IndexedBase("X", shape=(n, L, 2))
        >>> W = sp.IndexedBase("W", shape=(3, 2, 4))
        >>> symdl.conv1d(X, W, padding=1).shape
        (n, L, 4)
    """
    return _conv(x, w, 1, stride, padding, dilation, groups, layout)


def conv2d(x, w, stride=1, padding=0, dilation=1, groups=1, layout="channels_last") -> Conv:
    """A 2-D convolution (cross-correlation) of a batch of images ``x`` with kernels ``w``.

    Args:
        x: ``N x H x W x C`` (``layout="channels_last"``) or ``N x C x H x W``
            (``"channels_first"``).
        w: ``kh x kw x C/groups x O`` (channels last, JAX's ``HWIO``) or ``O x C/groups x kh
            x kw`` (channels first, PyTorch's ``conv2d`` weight).
        stride, padding, dilation: an integer or a pair (height, width); zero padding.
        groups: channels split into groups convolved apart (``groups = C``: depthwise).

    The result is ``N x H' x W' x O`` (or ``N x O x H' x W'``) with ``H' = floor((H + 2 p -
    d (kh - 1) - 1) / s) + 1``, as in PyTorch.

    Example:
        >>> n = sp.Symbol("n", integer=True, positive=True)
        >>> X = sp.IndexedBase("X", shape=(n, 8, 8, 1))
        >>> K = sp.IndexedBase("K", shape=(3, 3, 1, 4))
        >>> symdl.conv2d(X, K).shape
        (n, 6, 6, 4)
        >>> symdl.conv2d(X, K, stride=2, padding=1).shape
        (n, 4, 4, 4)
    """
    return _conv(x, w, 2, stride, padding, dilation, groups, layout)


# ---------------------------------------------------------------------------------------------
# Pooling


class Pool(TensorExpr):
    """Max or average pooling of ``x`` over windows."""

    def __new__(cls, kind, x, kernel, stride, padding, layout):
        return sp.Basic.__new__(cls, Str(str(kind)), x, kernel, stride, padding, _layout(layout))

    kind = property(lambda self: str(self.args[0]))
    x = property(lambda self: self.args[1])
    kernel = property(lambda self: tuple(int(v) for v in self.args[2]))
    stride = property(lambda self: tuple(int(v) for v in self.args[3]))
    padding = property(lambda self: tuple(int(v) for v in self.args[4]))
    layout = property(lambda self: str(self.args[5]))

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        xs = list(tensor_shape(self.x, "pooling"))
        for a, k, s, p in zip(_spatial_axes(len(xs), self.layout), self.kernel, self.stride,
                              self.padding, strict=True):
            xs[a] = _out_size(xs[a], k, s, p, 1)
        return tuple(xs)


def _pool(kind: str, x, kernel, stride, padding, layout) -> Pool:
    what = f"{kind}_pool2d"
    x = _operand(x, what)
    xs = tensor_shape(x, what)
    if len(xs) != 4:
        raise ShapeMismatchError(f"{what} needs a rank-4 image batch, got shape {xs}", xs)
    kernel = _ints(kernel, 2, f"{what} kernel", 1)
    stride = kernel if stride is None else _ints(stride, 2, f"{what} stride", 1)
    padding = _ints(padding, 2, f"{what} padding", 0)
    for k, p in zip(kernel, padding, strict=True):
        if 2 * p > k:
            raise DefinitionError(
                f"{what}: padding {p} is more than half the window {k} (as PyTorch requires)")
    pool = Pool(kind, x, kernel, stride, padding, layout)
    pool.shape  # noqa: B018 - raises when the window does not fit
    return pool


def max_pool2d(x, kernel, stride=None, padding=0, layout="channels_last") -> Pool:
    """The maximum over each ``kernel`` window (stride defaults to the window, as in PyTorch).

    Its derivative goes to the first arg max of each window in row-major order (PyTorch's
    convention on ties; as relu's derivative at 0 is 0): ties share no gradient. Padding
    entries never win (they are ``-inf``, as in PyTorch).

    Example:
        >>> n = sp.Symbol("n", integer=True, positive=True)
        >>> A = sp.IndexedBase("A", shape=(n, 6, 6, 4))
        >>> symdl.max_pool2d(A, 2).shape
        (n, 3, 3, 4)
    """
    return _pool("max", x, kernel, stride, padding, layout)


def avg_pool2d(x, kernel, stride=None, padding=0, layout="channels_last") -> Pool:
    """The mean over each ``kernel`` window; padding counts as zeros in the mean (PyTorch's
    default ``count_include_pad=True``).

    Example:
        >>> n = sp.Symbol("n", integer=True, positive=True)
        >>> A = sp.IndexedBase("A", shape=(n, 6, 6, 4))
        >>> symdl.avg_pool2d(A, 3, stride=1, padding=1).shape
        (n, 6, 6, 4)
    """
    return _pool("avg", x, kernel, stride, padding, layout)


# ---------------------------------------------------------------------------------------------
# Embedding, reshapes, elementwise functions, bias, maxima


class Embedding(TensorExpr):
    """Rows of ``table`` picked by an integer index array ``indices``: ``table[indices]``."""

    table = property(lambda self: self.args[0])
    indices = property(lambda self: self.args[1])

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        return (*tensor_shape(self.indices, "embedding"),
                *tensor_shape(self.table, "embedding")[1:])


def embedding(table, indices) -> TensorExpr | MatrixExpr:
    """The rows of ``table`` (``V x D``, a ``MatrixSymbol`` or ``IndexedBase``) picked by
    ``indices``, an ``IndexedBase`` of integers in ``0 .. V-1`` (any shape ``S``): the result
    is ``S x D``, a matrix (``flatten`` of it) when ``indices`` is a vector. Its derivative
    with respect to the table adds the rows of the adjoint at ``indices`` (a scatter-add);
    ``indices`` is data (no derivative). Kernels check that every index is in range.

    Example:
        >>> n, V, D = sp.symbols("n V D", integer=True, positive=True)
        >>> E, idx = sp.MatrixSymbol("E", V, D), sp.IndexedBase("idx", shape=(n,))
        >>> symdl.embedding(E, idx).shape
        (n, D)
    """
    table = _operand(table, "embedding")
    if not isinstance(indices, sp.IndexedBase) or indices.shape is None:
        raise DefinitionError(
            "embedding(table, indices): indices must be an IndexedBase of integers with a "
            f"shape, e.g. sp.IndexedBase('idx', shape=(n,)); got {indices!r}")
    if len(tensor_shape(table, "embedding")) < 2:
        raise ShapeMismatchError(
            f"embedding: the table needs rows and columns, got shape {tensor_shape(table, '')}")
    gathered = Embedding(table, indices)
    return Flatten(gathered) if gathered.rank == 2 else gathered


class Flatten(MatrixExpr):
    """A tensor ``N x S1 x ... x Sk`` as the matrix ``N x (S1 ... Sk)``, row-major (PyTorch's
    ``x.reshape(N, -1)``): channels last, a row lists pixel by pixel the channels of each."""

    def __new__(cls, x):
        x = _operand(x, "flatten")
        if len(tensor_shape(x, "flatten")) < 2:
            raise ShapeMismatchError(
                f"flatten needs a batch axis and at least one more, got {tensor_shape(x, '')}")
        return MatrixExpr.__new__(cls, x)

    @property
    def arg(self) -> sp.Basic:
        return self.args[0]

    @property
    def shape(self) -> tuple[sp.Expr, sp.Expr]:
        xs = tensor_shape(self.arg, "flatten")
        return (xs[0], sp.Mul(*xs[1:]))

    def _entry(self, i, j, **kwargs):
        from sympy.matrices.expressions.matexpr import MatrixElement

        return MatrixElement(self, i, j)


def flatten(x) -> Flatten:
    """``x`` (``N x ...``) as an ``N x (product of the other axes)`` matrix, row-major.

    Example:
        >>> n = sp.Symbol("n", integer=True, positive=True)
        >>> P = sp.IndexedBase("P", shape=(n, 3, 3, 4))
        >>> symdl.flatten(P).shape
        (n, 36)
    """
    return Flatten(x)


class Unflatten(TensorExpr):
    """The rows of a matrix ``N x (S1 ... Sk)`` as a tensor ``N x S1 x ... x Sk``."""

    arg = property(lambda self: self.args[0])

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        return (tensor_shape(self.arg, "unflatten")[0], *self.args[1])


def unflatten(m, shape) -> Unflatten:
    """The inverse of ``flatten``: each row of ``m`` read as a tensor of ``shape`` (row-major).

    Example:
        >>> n = sp.Symbol("n", integer=True, positive=True)
        >>> M = sp.MatrixSymbol("M", n, 36)
        >>> symdl.unflatten(M, (3, 3, 4)).shape
        (n, 3, 3, 4)
    """
    m = _operand(m, "unflatten")
    ms = tensor_shape(m, "unflatten")
    shape = sp.Tuple(*[sp.sympify(s) for s in shape])
    if len(ms) != 2 or sp.simplify(ms[1] - sp.Mul(*shape)) != 0:
        raise ShapeMismatchError(
            f"unflatten: a {ms} matrix does not hold rows of shape {tuple(shape)}", ms,
            tuple(shape))
    return Unflatten(m, shape)


class Elementwise(TensorExpr):
    """A scalar function applied to every entry of a tensor: ``relu(Z)``."""

    function = property(lambda self: self.args[0])
    arg = property(lambda self: self.args[1])

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        return tensor_shape(self.arg, "an elementwise function")


def elementwise(function, x) -> Elementwise:
    """``function`` (a one-argument SymPy function class or ``Lambda``) entry by entry."""
    x = _operand(x, "an elementwise function")
    if not isinstance(function, sp.Lambda):
        v = sp.Dummy("x")
        function = sp.Lambda(v, function(v))
    return Elementwise(function, x)


def is_tensor(x: object) -> bool:
    """Whether the vocabulary's elementwise functions should treat ``x`` as a tensor."""
    return isinstance(x, TensorExpr) or (isinstance(x, sp.IndexedBase) and x.shape is not None)


class ChannelBias(TensorExpr):
    """A bias vector added along the channel axis of a tensor."""

    arg = property(lambda self: self.args[0])
    bias = property(lambda self: self.args[1])
    layout = property(lambda self: str(self.args[2]))

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        return tensor_shape(self.arg, "channel_bias")


def channel_bias(x, b, layout="channels_last") -> ChannelBias:
    """``x`` plus ``b[c]`` at every entry of channel ``c``: the bias of a convolution.

    Args:
        x: a tensor with a channel axis (last, or second with ``layout="channels_first"``).
        b: ``C`` biases: an ``IndexedBase`` of shape ``(C,)`` or a ``1 x C`` / ``C x 1``
            ``MatrixSymbol``.

    Example:
        >>> n = sp.Symbol("n", integer=True, positive=True)
        >>> Z = sp.IndexedBase("Z", shape=(n, 6, 6, 4))
        >>> b = sp.IndexedBase("b", shape=(4,))
        >>> symdl.channel_bias(Z, b).shape
        (n, 6, 6, 4)
    """
    x = _operand(x, "channel_bias")
    layout = _layout(layout)
    xs = tensor_shape(x, "channel_bias")
    bs = tensor_shape(_operand(b, "channel_bias"), "channel_bias")
    channels = xs[channel_axis(len(xs), str(layout))]
    if [d for d in bs if d != 1] != [channels] and tuple(bs) != (channels,):
        raise ShapeMismatchError(
            f"channel_bias: {len(xs)}-D tensor with {channels} channels ({layout}) and a bias "
            f"of shape {bs}: the bias needs {channels} entries", xs, bs)
    return ChannelBias(x, b, layout)


class MaxAlong(TensorExpr):
    """The maximum along one axis, kept with size 1."""

    arg = property(lambda self: self.args[0])
    axis = property(lambda self: int(self.args[1]))

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        xs = list(tensor_shape(self.arg, "max_along"))
        xs[self.axis] = sp.Integer(1)
        return tuple(xs)


def max_along(x, axis: int) -> MaxAlong | Flatten:
    """The largest entry along ``axis``, kept as an axis of size 1 (as ``logsumexp``). Its
    derivative goes to the first largest entry (as ``max_pool2d``'s and PyTorch's ``amax``'s
    subgradient on ties); a matrix gives a matrix.

    Example:
        >>> n, k = sp.symbols("n k", integer=True, positive=True)
        >>> Z = sp.MatrixSymbol("Z", n, k)
        >>> symdl.max_along(Z, 1).shape
        (n, 1)
    """
    x = _operand(x, "max_along")
    rank = len(tensor_shape(x, "max_along"))
    if not -rank <= int(axis) < rank:
        raise ShapeMismatchError(f"max_along axis {axis} of a tensor of rank {rank}")
    result = MaxAlong(x, sp.Integer(int(axis) % rank))
    return Flatten(result) if rank == 2 else result


# ---------------------------------------------------------------------------------------------
# Notation: text (``K ⋆ X``) and LaTeX (``K \star X``); printers call these methods.


def operand_text(printer, x: sp.Basic) -> str:
    """``x`` as an operand: bare when it is a name, in parentheses otherwise."""
    text = printer._print(x)
    bare = isinstance(x, (sp.IndexedBase, sp.MatrixSymbol, sp.Symbol, Flatten, Pool,
                          Embedding, Unflatten))
    return text if bare else f"({text})"


def operand_latex(printer, x: sp.Basic) -> str:
    text = printer._print(x)
    bare = isinstance(x, (sp.IndexedBase, sp.MatrixSymbol, sp.Symbol, Flatten, Pool,
                          Embedding, Unflatten))
    return text if bare else rf"\left({text}\right)"


def window_text(stride, padding, dilation=None, groups=1) -> str:
    """``[s=2, p=1]`` for the window parameters that differ from 1 and 0 ('' when none)."""
    parts = []
    for key, values, plain in (("s", stride, 1), ("p", padding, 0), ("d", dilation, 1)):
        if values is None or all(v == plain for v in values):
            continue
        same = len(set(values)) == 1
        parts.append(f"{key}={values[0] if same else ','.join(map(str, values))}")
    if groups != 1:
        parts.append(f"g={groups}")
    return "[" + ", ".join(parts) + "]" if parts else ""


def window_latex(stride, padding, dilation=None, groups=1) -> str:
    text = window_text(stride, padding, dilation, groups)
    return "" if not text else "_{" + text[1:-1].replace(", ", r",\,") + "}"


def elementwise_text(printer, function: sp.Lambda, x: sp.Basic, latex: bool) -> str:
    """``f(X)``: the scalar body of ``function`` with ``x`` in place of its variable."""
    (v,) = function.variables
    inner = printer._print(x)
    plain_call = isinstance(function.expr, sp.Function) and function.expr.args == (v,)
    if not plain_call and not isinstance(x, (sp.IndexedBase, sp.MatrixSymbol)):
        inner = rf"\left({inner}\right)" if latex else f"({inner})"
    placeholder = sp.Dummy("f")
    names = getattr(printer, "names", None)
    if latex and names is not None:
        names[placeholder] = inner
        try:
            return printer._print(function.expr.xreplace({v: placeholder}))
        finally:
            names.pop(placeholder, None)
    return printer._print(function.expr.xreplace({v: sp.Symbol(inner)}))


def _conv_str(self: Conv, printer) -> str:
    star = "⋆" + window_text(self.stride, self.padding, self.dilation, self.groups)
    return f"{operand_text(printer, self.w)} {star} {operand_text(printer, self.x)}"


def _conv_latex(self: Conv, printer) -> str:
    star = r"\star" + window_latex(self.stride, self.padding, self.dilation, self.groups)
    return f"{operand_latex(printer, self.w)} {star} {operand_latex(printer, self.x)}"


def _pool_str(self: Pool, printer) -> str:
    size = "x".join(map(str, self.kernel))
    extra = window_text(self.stride if self.stride != self.kernel else (1, 1), self.padding)
    return f"{self.kind}pool{size}{extra}({printer._print(self.x)})"


def _pool_latex(self: Pool, printer) -> str:
    size = r"\times ".join(map(str, self.kernel))
    extra = window_text(self.stride if self.stride != self.kernel else (1, 1), self.padding)
    extra = extra[1:-1].replace(", ", r",\,")
    sub = size + (rf",\,{extra}" if extra else "")
    return (rf"\operatorname{{{self.kind}pool}}_{{{sub}}}\left({printer._print(self.x)}"
            r"\right)")


Conv._sympystr, Conv._latex = _conv_str, _conv_latex
Pool._sympystr, Pool._latex = _pool_str, _pool_latex
Embedding._sympystr = lambda self, p: f"{operand_text(p, self.table)}[{p._print(self.indices)}]"
Embedding._latex = lambda self, p: (f"{operand_latex(p, self.table)}"
                                    rf"\left[{p._print(self.indices)}\right]")
Flatten._sympystr = lambda self, p: (p._print(self.arg) if len(tensor_shape(self.arg, "")) == 2
                                     else f"flatten({p._print(self.arg)})")
Flatten._latex = lambda self, p: (p._print(self.arg) if len(tensor_shape(self.arg, "")) == 2
                                  else rf"\operatorname{{flatten}}\left({p._print(self.arg)}"
                                  r"\right)")
Unflatten._sympystr = lambda self, p: f"unflatten({p._print(self.arg)})"
Unflatten._latex = lambda self, p: rf"\operatorname{{unflatten}}\left({p._print(self.arg)}\right)"
Elementwise._sympystr = lambda self, p: elementwise_text(p, self.function, self.arg, False)
Elementwise._latex = lambda self, p: elementwise_text(p, self.function, self.arg, True)
ChannelBias._sympystr = lambda self, p: f"{p._print(self.arg)} + {p._print(self.bias)}"
ChannelBias._latex = lambda self, p: f"{p._print(self.arg)} + {p._print(self.bias)}"
MaxAlong._sympystr = lambda self, p: f"max[axis {self.axis}]({p._print(self.arg)})"
MaxAlong._latex = lambda self, p: (rf"\max_{{\text{{axis }}{self.axis}}}\left("
                                   rf"{p._print(self.arg)}\right)")


def _flatten_numpy(self: Flatten, printer) -> str:
    x = printer._print(self.arg)
    return f"{printer._module_format('numpy.reshape')}({x}, ({x}).shape[:1] + (-1,))"


Flatten._numpycode = _flatten_numpy
