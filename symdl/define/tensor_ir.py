"""Tensor definitions -> IR: the vocabulary of ``symdl.define.tensors`` and rank-n steps.

A convolution becomes an einsum of the kernel with an ``AffineRead`` of the input, pooling a
maximum or a mean over such a read, ``flatten`` a one-to-one ``AffineScatter`` and its inverse
a read, ``embedding`` a ``Take``. Functions here take the ``Translator`` of
``symdl.define.translate`` as an argument (that module calls them), so the two do not import
each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symdl import ir
from symdl.define.recurrence import Recurrence
from symdl.define.tensors import (
    ChannelBias,
    Conv,
    Elementwise,
    Embedding,
    Flatten,
    MaxAlong,
    Pool,
    TensorExpr,
    Unflatten,
    channel_axis,
    tensor_shape,
)
from symdl.errors import DefinitionError, ShapeMismatchError, UnsupportedError
from symdl.ir import AffineMap
from symdl.ir.rewrites import stabilize_one
from symdl.primitives.functions import lower_kinks
from symdl.primitives.registry import check_supported

if TYPE_CHECKING:
    from symdl.define.translate import Translator

PAD_LOW = sp.Float(float(np.finfo(np.float64).min))
"""What a padded entry of a max-pooling window reads: the lowest finite double, below every
finite value a window holds (PyTorch pads with -inf; symdl's constants are finite). A float32
kernel rounds it to -inf, as PyTorch's padding. It is selected, never multiplied (0 * -inf)."""


FORM_HOOKS: list = []
"""Functions ``(translator, e) -> node or None`` that translate SymPy forms a later stage
prints (``symdl.printing.tensor_forms``: ``X ⋆ δ`` back into the IR it was printed from)."""


def tensor(translator: Translator, e: sp.Basic) -> ir.Node:
    """The IR node of a tensor operand (an ``IndexedBase``, a ``TensorExpr``, a matrix)."""
    if isinstance(e, TensorExpr):
        for hook in FORM_HOOKS:
            node = hook(translator, e)
            if node is not None:
                return node
    if isinstance(e, sp.IndexedBase):
        shape = tensor_shape(e, "a tensor")
        return translator.leaf(e, str(e.label), shape)
    if isinstance(e, MatrixExpr):
        return translator.matrix(e)
    if isinstance(e, Conv):
        return _conv(translator, e)
    if isinstance(e, Pool):
        return _pool(translator, e)
    if isinstance(e, Elementwise):
        fn = e.function
        check_supported(fn.expr)
        fn = sp.Lambda(fn.variables, lower_kinks(fn.expr, translator._is_constant))
        return translator._applyfunc(fn, tensor(translator, e.arg))
    if isinstance(e, ChannelBias):
        return _channel_bias(translator, e)
    if isinstance(e, Embedding):
        table = tensor(translator, e.table)
        return ir.take(table, tensor(translator, e.indices))
    if isinstance(e, Unflatten):
        m = tensor(translator, e.arg)
        dims = tuple(e.shape)
        return ir.affine_read(m, dims, (AffineMap.axis(0, len(dims)),
                                        _row_major(dims[1:], 1)))
    if isinstance(e, MaxAlong):
        return ir.max_along(tensor(translator, e.arg), e.axis)
    raise UnsupportedError(f"{type(e).__name__} ({e}) is not a tensor symdl can translate")


def flatten(translator: Translator, e: Flatten) -> ir.Node:
    """``Flatten``: the one-to-one scatter ``(b, s1, ..., sk) -> (b, row-major position)``."""
    x = tensor(translator, e.arg)
    rank = x.rank
    return ir.affine_scatter(x, tuple(e.shape), (AffineMap.axis(0, rank),
                                                 _row_major(x.shape[1:], 1)))


def _row_major(dims, first: int) -> AffineMap:
    """The row-major position of the axes ``first ..`` over ``dims`` (a reshape's map)."""
    coeffs, stride = [], sp.Integer(1)
    for d in reversed(tuple(dims)):
        coeffs.append(stride)
        stride = stride * d
    return AffineMap.of([0] * first + list(reversed(coeffs)))


def _conv(translator: Translator, e: Conv) -> ir.Node:
    x, w = tensor(translator, e.x), tensor(translator, e.w)
    last = e.layout == "channels_last"
    s = e.spatial
    batch, channels = x.shape[0], x.shape[-1] if last else x.shape[1]
    out = e.shape
    out_spatial = out[1:1 + s] if last else out[2:]
    kernel = e.kernel_size()
    groups = e.groups
    per_group = channels / groups
    o_total = e.out_channels()
    o_per = o_total / groups
    # The read's axes: (b, i_1..i_s, [g], c, k_1..k_s).
    g_axes = 1 if groups > 1 else 0
    rank = 1 + s + g_axes + 1 + s
    b_ax, i_ax = 0, list(range(1, 1 + s))
    g_ax = 1 + s if groups > 1 else None
    c_ax = 1 + s + g_axes
    k_ax = list(range(c_ax + 1, c_ax + 1 + s))
    dims = [batch, *out_spatial] + ([sp.Integer(groups)] if groups > 1 else []) + [
        per_group, *kernel]
    spatial_maps = []
    for d in range(s):
        coeffs = [0] * rank
        coeffs[i_ax[d]] = e.stride[d]
        coeffs[k_ax[d]] = e.dilation[d]
        spatial_maps.append(AffineMap.of(coeffs, -e.padding[d]))
    ccoeffs = [0] * rank
    ccoeffs[c_ax] = 1
    if g_ax is not None:
        ccoeffs[g_ax] = per_group
    channel_map = AffineMap.of(ccoeffs)
    index = ((AffineMap.axis(b_ax, rank), *spatial_maps, channel_map) if last
             else (AffineMap.axis(b_ax, rank), channel_map, *spatial_maps))
    read = ir.affine_read(x, tuple(dims), index)
    # Labels: read axes 0..rank-1, output channel (per group) q = rank.
    q = rank
    read_spec = tuple(range(rank))
    if groups == 1:
        w_spec = (*k_ax, c_ax, q) if last else (q, c_ax, *k_ax)
        out_spec = (b_ax, *i_ax, q) if last else (b_ax, q, *i_ax)
        return ir.einsum([w, read], [w_spec, read_spec], out_spec)
    # Groups: the kernel read as (.., g, q) with its channel o = g*Og + q (one to one), the
    # result scattered back the same way.
    wr = s + 2 + 1  # k.., c, g, q  or  g, q, c, k..
    if last:
        w_dims = (*kernel, per_group, sp.Integer(groups), o_per)
        o_map = AffineMap.of([0] * (s + 1) + [o_per, 1])
        w_index = (*[AffineMap.axis(a, wr) for a in range(s)], AffineMap.axis(s, wr), o_map)
        w_spec = (*k_ax, c_ax, g_ax, q)
    else:
        w_dims = (sp.Integer(groups), o_per, per_group, *kernel)
        o_map = AffineMap.of([o_per, 1] + [0] * (s + 1))
        w_index = (o_map, *[AffineMap.axis(a, wr) for a in range(2, wr)])
        w_spec = (g_ax, q, c_ax, *k_ax)
    wg = ir.affine_read(w, w_dims, w_index)
    out_spec = (b_ax, *i_ax, g_ax, q) if last else (b_ax, g_ax, q, *i_ax)
    y = ir.einsum([wg, read], [w_spec, read_spec], out_spec)
    yr = y.rank
    if last:
        scatter = (*[AffineMap.axis(a, yr) for a in range(1 + s)],
                   AffineMap.of([0] * (1 + s) + [o_per, 1]))
    else:
        scatter = (AffineMap.axis(0, yr), AffineMap.of([0, o_per, 1] + [0] * s),
                   *[AffineMap.axis(a, yr) for a in range(3, yr)])
    return ir.affine_scatter(y, tuple(out), scatter)


def _pool(translator: Translator, e: Pool) -> ir.Node:
    x = tensor(translator, e.x)
    last = e.layout == "channels_last"
    out = tuple(e.shape)
    spatial = (1, 2) if last else (2, 3)
    rank = 4 + 2
    # The read's axes: the output's four, then the two window offsets.
    index = []
    for a in range(4):
        if a in spatial:
            d = spatial.index(a)
            coeffs = [0] * rank
            coeffs[a] = e.stride[d]
            coeffs[4 + d] = 1
            index.append(AffineMap.of(coeffs, -e.padding[d]))
        else:
            index.append(AffineMap.axis(a, rank))
    dims = (*out, *[sp.Integer(k) for k in e.kernel])
    read = ir.affine_read(x, dims, tuple(index))
    if e.kind == "avg":
        size = e.kernel[0] * e.kernel[1]
        return ir.einsum([read], [tuple(range(rank))], tuple(range(4)), sp.Rational(1, size))
    if any(e.padding):
        # Padded entries read 0; pushed below every value so that they never win the max
        # (and the derivative, through the entries read, is unchanged).
        inside = ir.affine_read(ir.ones(x.shape), dims, tuple(index))
        u, v = sp.Dummy("u"), sp.Dummy("v")
        # A select, not u + PAD_LOW * (1 - v): SymPy would expand that into a cancellation,
        # and the lowest double times 0 is -inf * 0 = NaN once rounded to float32. Its
        # derivative in u is 1 inside, 0 on the padding (the mask is constant).
        padded = sp.Piecewise((u, v > sp.Rational(1, 2)), (PAD_LOW, True))
        read = ir.map_(sp.Lambda((u, v), padded), read, inside)
    pooled = ir.max_along(ir.max_along(read, 5), 4)
    return ir.einsum([pooled], [tuple(range(rank))], tuple(range(4)))


def _channel_bias(translator: Translator, e: ChannelBias) -> ir.Node:
    x = tensor(translator, e.arg)
    b = tensor(translator, e.bias)
    axis = channel_axis(x.rank, e.layout)
    labels = tuple(range(x.rank))
    if b.rank == 2:  # a 1 x C or C x 1 matrix
        spec = (x.rank, axis) if b.shape[0] == 1 else (axis, x.rank)
        b = ir.einsum([b], [spec], (axis,))
    sizes = dict(zip(labels, x.shape, strict=True))
    return ir.add(x, ir.broadcast(b, (axis,), labels, sizes))


def translate_step(translator: Translator, target: sp.Basic,
                   definition: sp.Basic) -> ir.Node | None:
    """The IR of one step ``(target, definition)`` whose target is a tensor: an
    ``IndexedBase`` with a shape (``definition`` a tensor or matrix of that shape) or an
    ``Indexed`` entry with free indices (``definition`` an expression in them); None for
    any other target (a matrix or scalar step)."""
    if isinstance(target, sp.Indexed):
        return stabilize_one(_entrywise(translator, target, definition))
    if isinstance(definition, Recurrence):
        return None  # a scan's sequence of states: translated as a recurrence
    if isinstance(target, sp.IndexedBase):
        shape = tensor_shape(target, "a step")
        if isinstance(definition, MatrixExpr):
            node = translator.matrix(definition)
        elif isinstance(definition, (TensorExpr, sp.IndexedBase)):
            node = tensor(translator, definition)
        else:
            raise DefinitionError(
                f"the step {target} (shape {shape}) is defined by the scalar {definition}: "
                f"give a tensor (symdl.conv2d(...), ...) or define it entrywise, "
                f"({target}[b, i, ...], <expression in b, i, ...>)")
        _same_shape(target, shape, tuple(node.shape))
        return stabilize_one(node)
    if isinstance(definition, TensorExpr):
        raise DefinitionError(
            f"{target} names a tensor of shape {definition.shape}: use an IndexedBase with "
            f"that shape, sp.IndexedBase('{target}', shape={tuple(definition.shape)})")
    return None


def _same_shape(target: sp.Basic, declared: tuple, got: tuple) -> None:
    if len(declared) != len(got) or any(sp.simplify(a - b) != 0 for a, b in zip(
            declared, got, strict=False)):
        raise ShapeMismatchError(
            f"the step {target} is declared with shape {declared} but its definition has "
            f"shape {got}", declared, got)


def _entrywise(translator: Translator, target: sp.Indexed, definition: sp.Basic) -> ir.Node:
    base = target.base
    shape = tensor_shape(base, "a step")
    indices = tuple(target.indices)
    if len(indices) != len(shape):
        raise ShapeMismatchError(
            f"the step {target} has {len(indices)} indices but {base} has shape {shape}",
            shape, indices)
    if not all(isinstance(i, sp.Symbol) for i in indices) or len(set(indices)) != len(indices):
        raise DefinitionError(
            f"the step {target} must be indexed by distinct index symbols (one per axis), "
            f"e.g. {base}[b, i, j, c]")
    for i, d in zip(indices, shape, strict=True):
        translator.index_dims[i] = d
    translator.preferred_order = indices  # terms built in the step's axis order
    try:
        node, free = translator.indexed(definition)
    finally:
        translator.preferred_order = ()
    extra = [i for i in free if i not in indices]
    if extra:
        raise DefinitionError(
            f"the definition of {target} has the free indices {extra} that the step does not "
            "have: sum over them (Sum) or add them to the step's indices")
    labels = {i: k for k, i in enumerate(indices)}
    for i, d in zip(free, node.shape, strict=True):
        if sp.simplify(d - shape[labels[i]]) != 0:
            raise ShapeMismatchError(
                f"the index {i} runs over {d} in the definition of {target} but over "
                f"{shape[labels[i]]} in {base}", (d,), (shape[labels[i]],))
    sizes = dict(enumerate(shape))
    return ir.broadcast(node, tuple(labels[i] for i in free), tuple(range(len(indices))),
                        sizes)


def step_symbol(target: sp.Basic | None) -> sp.Basic | None:
    """The symbol a step names: the ``IndexedBase`` of an entrywise target ``Y[b, i]``."""
    return target.base if isinstance(target, sp.Indexed) else target
