"""The SymPy objects derived results are made of, so that SymPy's own tools accept them.

SymPy's ``ElementwiseApplyFunction`` prints as ``Lambda(_d, sigmoid(_d)).(X*w)`` and
``sympy.lambdify`` turns that into Python that does not parse; NumPy's printer refuses
``HadamardPower``, ``Trace`` and an ``Identity`` of symbolic size. Results use subclasses of
those SymPy classes that print as the mathematics reads (``sigmoid(X*w)``, ``tanh(Z1)``) and
carry ``_numpycode`` hooks, so that ``sympy.lambdify(args, der.gradient(w), "numpy")`` gives
working NumPy code. Being subclasses, they are still what the rest of symdl (and SymPy's
matrix algebra) expects: ``isinstance(e, ElementwiseApplyFunction)`` holds.

Lambdified results take the dimension symbols a formula mentions (``n`` in ``X.T*G/n``, the
size of a ones vector) as arguments like any other symbol.
"""

from __future__ import annotations

import sympy as sp
from sympy.core.cache import cacheit
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix
from sympy.matrices.expressions.matexpr import MatrixExpr

_PLACEHOLDER = "symdlplaceholder"


class ElementwiseFunction(ElementwiseApplyFunction):
    """A scalar function applied entry by entry to a matrix expression: ``sigmoid(X*w)``.

    Args:
        function: a one-argument SymPy function class (``sigmoid``, ``sp.tanh``) or a
            ``Lambda`` of one variable (``Lambda(x, Heaviside(x, 0))``).
        matrix: the matrix expression it is applied to; the result has its shape.

    Unlike ``ElementwiseApplyFunction`` it never evaluates itself on a ``1 x 1`` matrix
    (``Heaviside`` of a symbol not known real raises), prints as the scalar formula with the
    matrix in place of the variable, and lambdifies to NumPy.
    """

    def __new__(cls, function: sp.Basic, matrix: sp.Basic) -> ElementwiseFunction:
        matrix = sp.sympify(matrix)
        if not isinstance(matrix, MatrixExpr):
            raise TypeError(f"ElementwiseFunction needs a matrix expression, got {matrix!r}")
        if not isinstance(function, sp.Lambda):
            x = sp.Dummy("x")
            function = sp.Lambda(x, function(x))
        if len(function.variables) != 1:
            raise TypeError(f"ElementwiseFunction needs a function of one variable: {function}")
        return MatrixExpr.__new__(cls, function, matrix)

    @cacheit
    def doit(self, **hints) -> sp.Basic:
        # Cached: SymPy's printers call doit() through MatMul.could_extract_minus_sign at
        # every level of an expression; uncached, a shared subexpression is evaluated once
        # per path to it, exponential in the depth of an inlined network.
        expr = self.expr.doit(**hints) if hints.get("deep", True) else self.expr
        if isinstance(expr, sp.MatrixBase):
            return expr.applyfunc(self.function)
        return self if expr == self.expr else ElementwiseFunction(self.function, expr)

    def _parts(self) -> tuple[sp.Symbol, sp.Expr, bool]:
        (x,) = self.function.variables
        body = self.function.expr
        bare = isinstance(body, sp.Function) and body.args == (x,)
        return x, body, bare

    def _sympystr(self, printer) -> str:
        x, body, bare = self._parts()
        inner = printer._print(self.expr)
        if not (bare or self.expr.is_symbol):
            inner = f"({inner})"
        # A symbol named by the printed matrix prints as that text wherever the variable was.
        return printer._print(body.xreplace({x: sp.Symbol(inner)}))

    def _pretty(self, printer):
        # sympy.pprint: the formula with the matrix in place of the variable, as in str().
        x, body, bare = self._parts()
        inner = sp.sstr(self.expr)
        if not (bare or self.expr.is_symbol):
            inner = f"({inner})"
        return printer._print(body.xreplace({x: sp.Symbol(inner)}))

    def _latex(self, printer) -> str:
        own = getattr(type(printer), "_print_ElementwiseApplyFunction", None)
        if own is not None and own.__module__.startswith("symdl"):
            return own(printer, self)  # symdl's LaTeX printer has its own notation
        x, body, bare = self._parts()
        inner = printer._print(self.expr)
        if not (bare or self.expr.is_symbol):
            inner = rf"\left({inner}\right)"
        placeholder = sp.Symbol(_PLACEHOLDER)
        return printer._print(body.xreplace({x: placeholder})).replace(_PLACEHOLDER, inner)

    def _numpycode(self, printer) -> str:
        x, body, bare = self._parts()
        arg = printer._print(self.expr)
        if bare:
            return printer._print(body.func(sp.Symbol(_PLACEHOLDER))).replace(
                _PLACEHOLDER, arg)
        # A lambda binds the variable, so the matrix is computed once however often the
        # body uses it.
        variable = sp.Symbol("_symdl_x")
        return f"(lambda {variable}: {printer._print(body.xreplace({x: variable}))})({arg})"


def _as_sympy_class(expr: sp.Basic, printer, base: type) -> str:
    """Text printers see the SymPy class a result object extends (``HadamardPower(A, 2)``),
    through the printer's own method for it where it has one."""
    method = getattr(printer, f"_print_{base.__name__}", None)
    if method is not None:
        return method(expr)
    args = ", ".join(printer._print(a) for a in expr.args)
    return f"{base.__name__}({args})"


class Diagonal(DiagMatrix):
    """``diag(v)`` of a vector expression. Its ``doit`` does not ask SymPy's assumption
    system whether ``v`` is diagonal (which prints the expression, for every ``doit`` of
    every enclosing product: minutes on an inlined network), and is cached."""

    @cacheit
    def doit(self, **hints) -> sp.Basic:
        arg = self.args[0].doit(**hints) if hints.get("deep", True) else self.args[0]
        if isinstance(arg, sp.MatrixBase):
            return DiagMatrix(arg).doit(**hints)
        return self if arg == self.args[0] else Diagonal(arg)

    def _eval_transpose(self) -> Diagonal:
        return self

    def _sympystr(self, printer) -> str:
        return _as_sympy_class(self, printer, DiagMatrix)


class ElementwisePower(sp.HadamardPower):
    """``A^⊙p``, the entry-by-entry power (any real exponent), lambdified to NumPy."""

    def _eval_transpose(self) -> ElementwisePower:
        return ElementwisePower(sp.transpose(self.base), self.exp)

    def _sympystr(self, printer) -> str:
        return _as_sympy_class(self, printer, sp.HadamardPower)

    def _numpycode(self, printer) -> str:
        power = printer._module_format("numpy.power")
        exponent = self.exp
        exp_text = printer._print(sp.Float(exponent) if not exponent.is_Integer else exponent)
        return f"{power}({printer._print(self.base)}, {exp_text})"


class IdentityMatrix(sp.Identity):
    """The identity matrix, lambdified to ``numpy.eye`` for a symbolic size too."""

    def _numpycode(self, printer) -> str:
        return f"{printer._module_format('numpy.eye')}({printer._print(self.rows)})"


class MatrixTrace(sp.Trace):
    """The trace (here: the one entry of a ``1 x 1`` matrix as a scalar), lambdified."""

    def _sympystr(self, printer) -> str:
        return _as_sympy_class(self, printer, sp.Trace)

    def _numpycode(self, printer) -> str:
        return f"{printer._module_format('numpy.trace')}({printer._print(self.arg)})"


def numpy_call(printer, name: str, arg: sp.Expr) -> str:
    """NumPy code of a symdl scalar function (``sigmoid``, ``softplus``, ``relu``), stable and
    NaN-propagating like the kernels, for ``sympy.lambdify``'s NumPy printer."""
    def f(name: str) -> str:
        return printer._module_format(f"numpy.{name}")

    x = printer._print(arg)
    if name in printer._settings.get("user_functions", {}):
        return f"{name}({x})"  # lambdify(..., modules=[{name: ...}, ...]) chose its own
    if name == "sigmoid":
        # exp of a non-positive argument only: no overflow at any logit.
        return (f"(lambda _symdl_t: (lambda _symdl_e: {f('where')}(_symdl_t >= 0, 1.0, "
                f"_symdl_e)/(1 + _symdl_e))({f('exp')}(-{f('abs')}(_symdl_t))))({x})")
    if name == "softplus":
        return f"{f('logaddexp')}(0, {x})"
    if name == "relu":
        return f"{f('maximum')}({x}, 0)"  # maximum propagates NaN
    if name == "floor":
        return f"{f('floor')}({x})"
    raise KeyError(name)


def row_reduction_code(printer, kind: str, arg: sp.Basic, axis: int) -> str:
    """NumPy code of ``Softmax``/``LogSumExp`` along ``axis``, shifted by the lane's maximum
    (a finite shift only: a lane of ``-inf`` stays ``-inf``, not NaN)."""
    def f(name: str) -> str:
        return printer._module_format(f"numpy.{name}")

    z = printer._print(arg)
    shift = (f"{f('where')}({f('isfinite')}(_symdl_m), _symdl_m, 0)")
    lane = f"axis={axis}, keepdims=True"
    if kind == "softmax":
        body = (f"(lambda _symdl_e: _symdl_e/{f('sum')}(_symdl_e, {lane}))"
                f"({f('exp')}(_symdl_z - {shift}))")
    else:
        body = (f"{shift} + {f('log')}({f('sum')}({f('exp')}(_symdl_z - {shift}), {lane}))")
    return (f"(lambda _symdl_z: (lambda _symdl_m: {body})({f('amax')}(_symdl_z, {lane})))"
            f"({z})")


_RESULT_CLASSES: dict[type, type] = {
    sp.HadamardPower: ElementwisePower,
    sp.Identity: IdentityMatrix,
    sp.Trace: MatrixTrace,
    ElementwiseApplyFunction: ElementwiseFunction,
    DiagMatrix: Diagonal,
}


def lambdifiable(expr: sp.Basic) -> sp.Basic:
    """``expr`` with every SymPy object NumPy's printer refuses replaced by its subclass here
    (SymPy's own canonicalisation can create them, e.g. a transpose pushed into a power).

    The walk remembers each subexpression it has seen, so an expression that shares
    subexpressions costs time in its number of distinct nodes, not in its printed size.
    """
    memo: dict[sp.Basic, sp.Basic] = {}
    stack: list[tuple[sp.Basic, bool]] = [(expr, False)]
    while stack:
        node, ready = stack.pop()
        if node in memo:
            continue
        if not ready and node.args and not isinstance(node, sp.Lambda):
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if isinstance(a, sp.Basic))
            continue
        args = node.args
        if not isinstance(node, sp.Lambda) and node.args:
            args = tuple(memo.get(a, a) for a in node.args)
        cls = _RESULT_CLASSES.get(type(node))
        if isinstance(node, sp.MatMul) and _unit_scalars(args):
            # n * (1/n) * A: NumPy's printer writes the scalars of a product whose
            # coefficient is 1 as factors of .dot() (int has no attribute 'dot').
            mats = [a for a in args if isinstance(a, MatrixExpr)]
            memo[node] = mats[0] if len(mats) == 1 else sp.MatMul(*mats)
        elif cls is not None:
            memo[node] = cls(*args)
        elif args != node.args:
            memo[node] = node.func(*args, evaluate=False) if _takes_evaluate(node) else \
                node.func(*args)
        else:
            memo[node] = node
    return memo[expr]


def _unit_scalars(args: tuple) -> bool:
    scalars = [a for a in args if not isinstance(a, MatrixExpr)]
    return bool(scalars) and any(isinstance(a, MatrixExpr) for a in args) and \
        sp.Mul(*scalars) == 1


def _takes_evaluate(node: sp.Basic) -> bool:
    return isinstance(node, (sp.Add, sp.Mul, sp.Pow, sp.MatAdd, sp.MatMul))


def entrywise_body(fn: sp.Basic) -> tuple[sp.Symbol, sp.Expr, bool]:
    """The variable and scalar body of the function an ``ElementwiseApplyFunction`` applies
    (a ``Lambda``, or a function class such as ``sympy.tanh``), and whether the body is that
    function called on the variable alone (then ``f(M)`` needs no parentheses around ``M``)."""
    if isinstance(fn, sp.Lambda):
        (x,) = fn.variables
        body = fn.expr
    else:
        x = sp.Dummy("x")
        body = fn(x)
    return x, body, isinstance(body, sp.Function) and body.args == (x,)


class ArrayEntry(sp.Indexed):
    """An entry ``X[b, t + k - 1]`` of an array in a printed result: 0 at a position outside
    the array (zero padding, as symdl reads definitions), and a function of the array ``X``
    and the index symbols only.

    SymPy's ``Indexed`` counts itself among its ``free_symbols``, also inside a ``Sum`` over
    its indices (``Sum(G[q, i], (q, 0, n - 1))`` would have ``G[q, i]`` as a free symbol); the
    arguments a user lambdifies with are the arrays and free indices, so it is left out here.
    """

    @property
    def free_symbols(self) -> set[sp.Basic]:
        return set(self.base.free_symbols).union(*[sp.sympify(i).free_symbols
                                                    for i in self.indices])

    def _numpycode(self, printer) -> str:
        position = ", ".join(printer._print(i) for i in self.indices)
        return (f"{printer._module_format('symdl.primitives.sympy_results.padded_read')}"
                f"({printer._print(self.base.label)}, ({position},))")


def padded_read(array, position: tuple) -> float:
    """``array[position]``, or 0 where the position is outside the array (no wrap-around of
    negative positions as NumPy's indexing does)."""
    import numpy as np

    a = np.asarray(array)
    at = tuple(int(p) for p in position)
    if any(p < 0 or p >= s for p, s in zip(at, a.shape, strict=False)):
        return 0.0
    return a[at]
