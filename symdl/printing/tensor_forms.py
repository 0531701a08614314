"""Tensor results as the textbook writes them: ``K ⋆ X``, ``∂L/∂K = X ⋆ δ``, ``δ ⋆ᵀ K``.

The IR of a convolution is an einsum of the kernel with an ``AffineRead`` of the input; its
derivatives are an einsum of the adjoint with the same read (``∂L/∂K = X ⋆ δ``) and an
``AffineScatter`` of an einsum of the kernel with the adjoint (``∂L/∂X = δ ⋆ᵀ K``, the
transposed convolution). Pooling is a maximum (or mean) over a read, its derivative a scatter
of the adjoint to the arg max (or spread over the window); ``flatten`` a one-to-one scatter.

``tensor_form`` recognises these patterns and returns SymPy objects that print as such (the
classes of ``symdl.define.tensors`` and the adjoint classes below); None where a node is not one
of them, and the printer then writes index notation. ``matrix_form`` does the same for the
rank-2 nodes among them (``flatten(P)`` in ``flatten(P)^T δ``, an embedding's gradient).
The printer (``symdl.printing.to_sympy.SympyPrinter``) is passed in, not imported.
"""

from __future__ import annotations

import sympy as sp
from sympy.core.symbol import Str

from symdl import ir
from symdl.define import tensor_ir
from symdl.define.tensors import (
    Conv,
    Elementwise,
    Embedding,
    Flatten,
    Pool,
    TensorExpr,
    Unflatten,
    operand_latex,
    operand_text,
    window_latex,
    window_text,
)

# ---------------------------------------------------------------------------------------------
# The adjoints' notation


class Params(sp.Basic):
    """Stride, padding and dilation of a window, carried by the forms below."""

    stride = property(lambda self: tuple(int(v) for v in self.args[0]))
    padding = property(lambda self: tuple(int(v) for v in self.args[1]))
    dilation = property(lambda self: tuple(int(v) for v in self.args[2]))

    @staticmethod
    def of(stride, padding, dilation) -> Params:
        return Params(sp.Tuple(*stride), sp.Tuple(*padding), sp.Tuple(*dilation))


class _Form(TensorExpr):
    """A printed tensor result with an explicit shape (its last argument)."""

    @property
    def shape(self) -> tuple[sp.Expr, ...]:
        return tuple(self.args[-1])


class ConvWeightGrad(_Form):
    """``X ⋆ δ``: the correlation of the input with the adjoint of a convolution's output, the
    derivative with respect to its kernel."""

    def _sympystr(self, p) -> str:
        w = self.args[2]
        star = "⋆" + window_text(w.stride, w.padding, w.dilation)
        return f"{operand_text(p, self.args[0])} {star} {operand_text(p, self.args[1])}"

    def _latex(self, p) -> str:
        w = self.args[2]
        star = r"\star" + window_latex(w.stride, w.padding, w.dilation)
        return f"{operand_latex(p, self.args[0])} {star} {operand_latex(p, self.args[1])}"


class ConvTranspose(_Form):
    """``δ ⋆ᵀ K``: the transposed convolution of the adjoint with the kernel, the derivative
    with respect to a convolution's input (each output entry's adjoint spread back over its
    window, weighted by the kernel)."""

    def _sympystr(self, p) -> str:
        w = self.args[2]
        star = "⋆ᵀ" + window_text(w.stride, w.padding, w.dilation)
        return f"{operand_text(p, self.args[0])} {star} {operand_text(p, self.args[1])}"

    def _latex(self, p) -> str:
        w = self.args[2]
        star = r"\star^{\top}" + window_latex(w.stride, w.padding, w.dilation)
        return f"{operand_latex(p, self.args[0])} {star} {operand_latex(p, self.args[1])}"


class PoolTranspose(_Form):
    """``maxpoolᵀ(δ)``: a pooling's adjoint sent back to the window, to the first arg max of
    each window of ``X`` (max) or spread evenly over it (avg)."""

    def _window(self) -> str:
        kernel, w = tuple(int(k) for k in self.args[3]), self.args[4]
        return window_text(w.stride if w.stride != kernel else (1,) * len(kernel), w.padding)

    def _sympystr(self, p) -> str:
        kind, delta, x, kernel = self.args[0], self.args[1], self.args[2], self.args[3]
        size = "x".join(map(str, kernel))
        at = f"; argmax {p._print(x)}" if str(kind) == "max" else ""
        return f"{kind}pool{size}ᵀ{self._window()}({p._print(delta)}{at})"

    def _latex(self, p) -> str:
        kind, delta, x, kernel = self.args[0], self.args[1], self.args[2], self.args[3]
        size = r"\times ".join(map(str, kernel))
        extra = self._window()[1:-1].replace(", ", r",\,")
        sub = size + (rf",\,{extra}" if extra else "")
        at = rf" \,\middle|\, {p._print(x)}" if str(kind) == "max" else ""
        return (rf"\operatorname{{{kind}pool}}^{{\top}}_{{{sub}}}"
                rf"\left({p._print(delta)}{at}\right)")


class ScatterAdd(_Form):
    """The rows of ``δ`` added into the rows ``idx`` of a zero table: an embedding's
    derivative with respect to the table."""

    def _sympystr(self, p) -> str:
        return f"scatter_add[{p._print(self.args[1])}]({p._print(self.args[0])})"

    def _latex(self, p) -> str:
        return (rf"\operatorname{{scatter}}_{{{p._print(self.args[1])}}}"
                rf"\left({p._print(self.args[0])}\right)")


class TensorHadamard(_Form):
    """The entrywise product of tensors of one shape: ``dA ⊙ θ(Z)``."""

    def _sympystr(self, p) -> str:
        return " ⊙ ".join(operand_text(p, a) if isinstance(a, _Form) else p._print(a)
                          for a in self.args[0])

    def _latex(self, p) -> str:
        return r" \odot ".join(operand_latex(p, a) if isinstance(a, _Form) else p._print(a)
                               for a in self.args[0])


class AxisSum(_Form):
    """The sum of a tensor over some axes: a convolution's bias derivative ``Σ_{b,i,j} δ``."""

    def _sympystr(self, p) -> str:
        axes = ",".join(map(str, self.args[1]))
        return f"sum[axes {axes}]({p._print(self.args[0])})"

    def _latex(self, p) -> str:
        axes = ",".join(map(str, self.args[1]))
        return rf"\textstyle\sum_{{\text{{axes }}{axes}}} {operand_latex(p, self.args[0])}"


class TensorAdd(_Form):
    """A sum of tensors of one shape; a vector added along one axis (a bias) prints as itself."""

    def _sympystr(self, p) -> str:
        return " + ".join(p._print(a) for a in self.args[0])

    def _latex(self, p) -> str:
        return " + ".join(p._print(a) for a in self.args[0])


# ---------------------------------------------------------------------------------------------
# Recognising the patterns


_COLLECT: list[list[tuple[ir.Node, sp.Basic]]] = []
"""The operands each rule being tried has printed (a stack: rules nest)."""

_TEMPLATES: dict[sp.Basic, tuple[ir.Node, tuple[tuple[ir.Node, sp.Basic], ...]]] = {}
"""Each printed form -> the IR it was printed from and its operands (node, expression): the
form translates back to that IR with the operands' translations in place (``symdl.evaluate``
of a printed gradient), and lambdifies through it."""

_KEYS: list[sp.Basic] = []


def operand(node: ir.Node, printer) -> sp.Basic | None:
    """``node`` as an operand of a tensor form: its name, a matrix, or a form; None when it
    has none."""
    expr = _operand(node, printer)
    if expr is not None and _COLLECT:
        _COLLECT[-1].append((node, expr))
    return expr


def _operand(node: ir.Node, printer) -> sp.Basic | None:
    if id(node) in printer.aliases:
        return printer.aliases[id(node)].symbol
    if isinstance(node, ir.Leaf):
        return node.symbol
    if isinstance(node, ir.Named) and not printer._inlined(node):
        return node.symbol
    if isinstance(node, ir.Named):
        return operand(node.body, printer)
    if node.rank == 2:
        try:
            return printer.matrix(node)
        except Exception:  # noqa: BLE001 - no matrix form: index notation
            return None
    return tensor_form(node, printer)


def tensor_form(node: ir.Node, printer) -> sp.Basic | None:
    """A tensor node as a convolution, pooling, reshape or one of their adjoints; None."""
    if isinstance(node, (ir.Named, ir.Leaf)):
        return operand(node, printer)
    for rule in (_conv_einsum, _pool_einsum, _axis_sum, _hadamard, _scatter, _unflatten,
                 _elementwise, _take, _take_adjoint, _add, _same):
        _COLLECT.append([])
        try:
            form = rule(node, printer)
        except (ValueError, TypeError, IndexError, KeyError):
            form = None
        finally:
            used = _COLLECT.pop()
        if form is not None:
            if rule is not _same and form not in _TEMPLATES:
                _TEMPLATES[form] = (node, tuple(used))
                _KEYS.append(form)
            return form
    return None


def matrix_form(node: ir.Node, printer) -> sp.Basic | None:
    """A rank-2 node that is a flatten of a tensor (``flatten(P)``) or the scatter-add of a
    named step (an embedding's gradient ``scatter_add[idx](dA)``); None otherwise.

    Other rank-2 gathers, scatter-adds and maxima print in index notation (``E[idx[i], j]``,
    ``max_{k=0..T - 1}(X[i, k])``), which reads as well and shows what they compute.
    """
    if node.rank != 2:
        return None
    if isinstance(node, ir.AffineScatter) and _is_flatten(node):
        arg = operand(node.arg, printer)
        return None if arg is None else Flatten(arg)
    if isinstance(node, ir.TakeAdjoint) and _is_name(node.arg, printer):
        form = tensor_form(node, printer)
        return None if form is None else Flatten(form)
    return None


def _is_name(node: ir.Node, printer) -> bool:
    """Whether ``node`` prints as a name: an input, a named step, an alias."""
    return id(node) in printer.aliases or isinstance(node, ir.Leaf) or (
        isinstance(node, ir.Named) and not printer._inlined(node))


def _row_major_coeffs(dims) -> list[sp.Expr]:
    coeffs, stride = [], sp.Integer(1)
    for d in reversed(tuple(dims)):
        coeffs.append(stride)
        stride = stride * d
    return list(reversed(coeffs))


def _is_flatten(node: ir.AffineScatter) -> bool:
    x = node.arg
    if len(node.dims) != 2 or x.rank < 2:
        return False
    first, second = node.index
    want = [0] + _row_major_coeffs(x.shape[1:])
    return (first == ir.AffineMap.axis(0, x.rank) and second.offset == 0
            and all(sp.simplify(a - b) == 0 for a, b in zip(second.coeffs, want, strict=True)))


def _unflatten(node: ir.Node, printer) -> sp.Basic | None:
    if not (isinstance(node, ir.AffineRead) and node.arg.rank == 2 and len(node.dims) >= 3):
        return None
    first, second = node.index
    want = [0] + _row_major_coeffs(node.dims[1:])
    if first != ir.AffineMap.axis(0, len(node.dims)) or second.offset != 0 or any(
            sp.simplify(a - b) != 0 for a, b in zip(second.coeffs, want, strict=True)):
        return None
    arg = operand(node.arg, printer)
    return None if arg is None else Unflatten(arg, sp.Tuple(*node.dims[1:]))


def _window(index: tuple[ir.AffineMap, ...]):
    """The window of a read: for each axis of the tensor read, ``("pass", axis)`` or
    ``("slide", out_axis, stride, kernel_axis, dilation, padding)``; None when it is not a
    window (a grouped channel, a reshape)."""
    axes = []
    for m in index:
        nonzero = [(k, c) for k, c in enumerate(m.coeffs) if c != 0]
        if len(nonzero) == 1 and nonzero[0][1] == 1 and m.offset == 0:
            axes.append(("pass", nonzero[0][0]))
        elif len(nonzero) == 2 and all(c.is_Integer and c > 0 for _, c in nonzero):
            (a, s), (b, d) = nonzero
            if -m.offset < 0 or not sp.sympify(m.offset).is_Integer:
                return None
            axes.append(("slide", a, int(s), b, int(d), int(-m.offset)))
        else:
            return None
    return axes


def _params(axes) -> Params:
    slides = [a for a in axes if a[0] == "slide"]
    return Params.of([a[2] for a in slides], [a[5] for a in slides], [a[4] for a in slides])


def _conv_einsum(node: ir.Node, printer) -> sp.Basic | None:
    """``K ⋆ X`` (the result has the read's batch axis) or ``X ⋆ δ`` (it has the kernel's)."""
    if not isinstance(node, ir.Einsum) or len(node.operands) < 2 or node.coeff != 1:
        return None
    reads = [k for k, op in enumerate(node.operands) if isinstance(op, ir.AffineRead)
             and any(a[0] == "slide" for a in (_window(op.index) or ()))]
    if len(reads) != 1:
        return None
    r = reads[0]
    read = node.operands[r]
    others = [k for k in range(len(node.operands)) if k != r]
    axes = _window(read.index)
    if axes is None or not any(a[0] == "slide" for a in axes):
        return None
    spec = node.specs[r]
    batch_label = spec[axes[0][1]] if axes[0][0] == "pass" else None
    forward = batch_label is not None and batch_label in node.out
    if len(others) > 1 and (forward or len({node.specs[k] for k in others}) != 1):
        return None
    x = operand(read.arg, printer)
    o = _product([node.operands[k] for k in others], printer)
    if x is None or o is None:
        return None
    params = _params(axes)
    if forward:
        conv = Conv(x, o, sp.Tuple(*params.stride), sp.Tuple(*params.padding),
                    sp.Tuple(*params.dilation), 1, _layout_of(axes))
        return _Shaped(conv, node.shape)
    return ConvWeightGrad(x, o, params, sp.Tuple(*node.shape))


def _layout_of(axes) -> str:
    return "channels_first" if len(axes) > 2 and axes[1][0] == "pass" else "channels_last"


def _Shaped(form: TensorExpr, shape) -> sp.Basic:
    """``form`` when its own shape is the node's (a printed form must keep the shape)."""
    try:
        if tuple(form.shape) == tuple(shape):
            return form
    except (ValueError, TypeError):
        pass
    return None


def _pool_einsum(node: ir.Node, printer) -> sp.Basic | None:
    """A maximum or a mean over the window axes of a read, those axes dropped."""
    if not isinstance(node, ir.Einsum) or len(node.operands) != 1:
        return None
    (op,) = node.operands
    kind, read = "avg", op
    if isinstance(op, ir.Max):
        inner = op.arg
        if isinstance(inner, ir.Max):
            inner = inner.arg
        if isinstance(inner, ir.Map) and isinstance(inner.args[0], ir.AffineRead):
            inner = inner.args[0]  # the padded entries pushed below every value
        kind, read = "max", inner
        if node.coeff != 1:
            return None
    if not isinstance(read, ir.AffineRead) or read.arg.rank != 4:
        return None
    axes = _window(read.index)
    if axes is None:
        return None
    slides = [a for a in axes if a[0] == "slide"]
    if len(slides) != 2:
        return None
    kernel = tuple(int(read.dims[a[3]]) for a in slides)
    if kind == "avg" and node.coeff != sp.Rational(1, kernel[0] * kernel[1]):
        return None
    x = operand(read.arg, printer)
    if x is None:
        return None
    params = _params(axes)
    layout = "channels_first" if axes[1][0] == "pass" else "channels_last"
    pool = Pool(kind, x, sp.Tuple(*kernel), sp.Tuple(*params.stride),
                sp.Tuple(*params.padding), layout)
    return _Shaped(pool, node.shape)


def _axis_sum(node: ir.Node, printer) -> sp.Basic | None:
    if not isinstance(node, ir.Einsum) or len(node.operands) != 1 or node.coeff != 1:
        return None
    (op,), (spec,) = node.operands, node.specs
    if op.rank < 3 or len(set(spec)) != len(spec) or isinstance(op, ir.Max):
        return None
    summed = tuple(k for k, lab in enumerate(spec) if lab not in node.out)
    if not summed or tuple(lab for lab in spec if lab in node.out) != tuple(node.out):
        return None
    x = operand(op, printer)
    return None if x is None else AxisSum(x, sp.Tuple(*summed), sp.Tuple(*node.shape))


def _hadamard(node: ir.Node, printer) -> sp.Basic | None:
    if not isinstance(node, ir.Einsum) or node.rank < 3 or node.coeff != 1:
        return None
    if len(node.operands) < 2 or any(tuple(s) != tuple(node.out) for s in node.specs):
        return None
    parts = [operand(op, printer) for op in node.operands]
    if any(p is None for p in parts):
        return None
    return TensorHadamard(sp.Tuple(*parts), sp.Tuple(*node.shape))


def _elementwise(node: ir.Node, printer) -> sp.Basic | None:
    if not isinstance(node, ir.Map) or len(node.args) != 1 or node.rank < 3:
        return None
    x = operand(node.args[0], printer)
    return None if x is None else Elementwise(node.fn, x)


def _scatter(node: ir.Node, printer) -> sp.Basic | None:
    """``δ ⋆ᵀ K`` (a transposed convolution) or a pooling's adjoint."""
    if not isinstance(node, ir.AffineScatter) or not isinstance(node.arg, ir.Einsum):
        return None
    axes = _window(node.index)
    if axes is None or not any(a[0] == "slide" for a in axes):
        return None
    inner = node.arg
    shape = sp.Tuple(*node.shape)
    masks = [op for op in inner.operands if isinstance(op, ir.ArgMaxMask)]
    rest = [op for op in inner.operands
            if not isinstance(op, (ir.ArgMaxMask, ir.Ones))]
    slides = [a for a in axes if a[0] == "slide"]
    kernel = sp.Tuple(*[inner.shape[a[3]] for a in slides])
    if masks and len(rest) == 1:
        read = masks[0].arg
        while isinstance(read, (ir.Max, ir.Map)):
            read = read.arg if isinstance(read, ir.Max) else read.args[0]
        if not isinstance(read, ir.AffineRead):
            return None
        delta, x = operand(rest[0], printer), operand(read.arg, printer)
        if delta is None or x is None:
            return None
        return PoolTranspose(Str("max"), delta, x, kernel, _params(axes), shape)
    if not masks and len(rest) == 1 and len(inner.operands) == 2 and inner.coeff == sp.Rational(
            1, sp.Mul(*kernel)):
        delta = operand(rest[0], printer)
        return None if delta is None else PoolTranspose(Str("avg"), delta, sp.Integer(0),
                                                        kernel, _params(axes), shape)
    if len(inner.operands) >= 2 and not masks and inner.coeff == 1:
        # The kernel is the operand that has every window axis; the others (the adjoint and
        # the factors fused into it) have one spec.
        window_labels = {inner.out[a[3]] for a in slides}
        kern = [k for k, s in enumerate(inner.specs) if window_labels <= set(s)]
        if len(kern) != 1:
            return None
        rest = [k for k in range(len(inner.operands)) if k != kern[0]]
        if len({inner.specs[k] for k in rest}) != 1:
            return None
        w = operand(inner.operands[kern[0]], printer)
        delta = _product([inner.operands[k] for k in rest], printer)
        if w is None or delta is None:
            return None
        return ConvTranspose(delta, w, _params(axes), shape)
    return None


def _take(node: ir.Node, printer) -> sp.Basic | None:
    if not isinstance(node, ir.Take):
        return None
    table, idx = operand(node.table, printer), operand(node.indices, printer)
    if table is None or idx is None:
        return None
    return Embedding(table, idx)


def _take_adjoint(node: ir.Node, printer) -> sp.Basic | None:
    if not isinstance(node, ir.TakeAdjoint):
        return None
    delta, idx = operand(node.arg, printer), operand(node.indices, printer)
    if delta is None or idx is None:
        return None
    return ScatterAdd(delta, idx, sp.Tuple(*node.shape))


def _add(node: ir.Node, printer) -> sp.Basic | None:
    if not isinstance(node, ir.Add) or node.rank < 3:
        return None
    parts = []
    for term in node.terms:
        if isinstance(term, ir.Einsum) and len(term.operands) == 2 and term.coeff == 1 and \
                isinstance(term.operands[1], ir.Ones) and term.operands[0].rank == 1:
            term = term.operands[0]  # a bias along one axis
        part = operand(term, printer)
        if part is None:
            return None
        parts.append(part)
    return TensorAdd(sp.Tuple(*parts), sp.Tuple(*node.shape))


def _same(node: ir.Node, printer) -> sp.Basic | None:
    """An einsum that is its one operand itself (the adjoint of a step read entry by entry)."""
    if not isinstance(node, ir.Einsum) or len(node.operands) != 1 or node.coeff != 1:
        return None
    if tuple(node.specs[0]) != tuple(node.out) or len(set(node.out)) != len(node.out):
        return None
    return operand(node.operands[0], printer)


# ---------------------------------------------------------------------------------------------
# Printed forms back to IR (symdl.evaluate of a result) and to NumPy (sympy.lambdify)


def _substitute(root: ir.Node, mapping: dict[int, ir.Node]) -> ir.Node:
    memo: dict[int, ir.Node] = {}

    def walk(node: ir.Node) -> ir.Node:
        if id(node) in mapping:
            return mapping[id(node)]
        if id(node) not in memo:
            children = node.children()
            new = [walk(c) for c in children]
            same = all(a is b for a, b in zip(new, children, strict=True))
            memo[id(node)] = node if same else ir.rebuilt(node, new)
        return memo[id(node)]

    return walk(root)


def translate_form(translator, e: sp.Basic) -> ir.Node | None:
    """The IR of a printed form (with its operands translated by ``translator``); None when
    ``e`` was not printed here."""
    found = _TEMPLATES.get(e)
    if found is None:
        return None
    from symdl.define.tensor_ir import tensor

    template, used = found
    return _substitute(template, {id(node): tensor(translator, expr) for node, expr in used})


def evaluate_form(key: int, *arrays, **sizes: int):
    """NumPy value of the printed form number ``key`` at its operands' arrays and the sizes
    of the dimensions only its shape names (the rows of a scatter-add), for lambdify."""
    import numpy as np

    from symdl.ir.evaluate import evaluate

    template, used = _TEMPLATES[_KEYS[key]]
    mapping, values = {}, {}
    dims = {s: int(sizes[s.name]) for s in _shape_symbols(template) if s.name in sizes}
    for k, ((node, _), array) in enumerate(zip(used, arrays, strict=True)):
        name = f"_symdl_operand{k}"
        mapping[id(node)] = ir.leaf(name, node.shape, sp.Symbol(name))
        values[name] = np.asarray(array, dtype=float)
        for dim, size in zip(node.shape, np.shape(array), strict=False):
            if isinstance(dim, sp.Symbol):
                dims[dim] = size
    (result,) = evaluate([_substitute(template, mapping)], values, dims)
    return result


def _shape_symbols(node: ir.Node) -> list[sp.Symbol]:
    """The dimension symbols of the shapes under ``node``, by name."""
    symbols: set[sp.Symbol] = set()
    for sub in ir.topological_order([node]):
        for d in sub.shape:
            symbols |= {s for s in sp.sympify(d).free_symbols if isinstance(s, sp.Symbol)}
    return sorted(symbols, key=str)


def _numpycode(self, printer) -> str:
    if self not in _TEMPLATES:
        raise TypeError(f"{type(self).__name__} was not printed from a derivation")
    template, used = _TEMPLATES[self]
    args = ", ".join([str(_KEYS.index(self))] + [printer._print(e) for _, e in used]
                     + [f"{s.name}={printer._print(s)}" for s in _shape_symbols(template)])
    return f"{printer._module_format('symdl.printing.tensor_forms.evaluate_form')}({args})"


for _cls in (_Form, Conv, Pool, Elementwise, Embedding, Unflatten):
    _cls._numpycode = _numpycode

tensor_ir.FORM_HOOKS.append(translate_form)


def _product(factors: list[ir.Node], printer) -> sp.Basic | None:
    """One operand, or the entrywise product of operands of one shape (fused by einsum)."""
    parts = [operand(f, printer) for f in factors]
    if any(p is None for p in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    return TensorHadamard(sp.Tuple(*parts), sp.Tuple(*factors[0].shape))
