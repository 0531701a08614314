"""The points a check runs at: dimensions bound to small odd sizes, entries drawn to keep
products and nonlinearities away from saturation, kinks and singular matrices."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixExpr

from symdl.define.positions import index_arrays
from symdl.define.tensors import MaxAlong, Pool
from symdl.derivation import Derivation
from symdl.errors import EvaluationError
from symdl.ir.assumptions import conform, declared_checks
from symdl.kernels.kernel import Kernel
from symdl.primitives.registry import NON_SMOOTH_FUNCTIONS
from symdl.verify import reference
from symdl.verify.report import CheckArgumentError

DRAWS = 3
"""Drawn test points tried before giving up on one where the kernel evaluates (a singular
matrix to solve, a non-finite value)."""
KINK_MARGIN = 0.05
"""Entries of inputs to a non-smooth function closer than this to a kink are pushed away."""
SIZES = (3, 5, 7, 9, 11, 13)
"""The small odd distinct sizes dimensions are bound to."""


def _walk_functions(expr: sp.Basic):
    """Every scalar function body applied in ``expr`` (elementwise maps included)."""
    for sub in sp.preorder_traversal(expr):
        if isinstance(sub, ElementwiseApplyFunction):
            t = sp.Dummy("t")
            yield sub.function(t), sub.expr
        elif isinstance(sub, (sp.Function, sp.Pow, sp.Abs, sp.Max, sp.Min, sp.HadamardPower)):
            yield sub, None


def _needs_positive(body: sp.Basic) -> bool:
    # Only a log or fractional power of a variable argument that no function maps first: the
    # constant 1/sqrt(2) of an erf GELU, or log(sigmoid(t)), made the inputs positive, so X w
    # was large and the functions after it saturated (no digits left for finite differences,
    # a Hessian that vanishes).
    for sub in sp.preorder_traversal(body):
        if isinstance(sub, sp.log):
            argument = sub.args[0]
        elif isinstance(sub, (sp.Pow, sp.HadamardPower)) and not sp.sympify(sub.exp).is_integer:
            argument = sp.sympify(sub.base)
        else:
            continue
        if argument.free_symbols and not argument.atoms(sp.Function, ElementwiseApplyFunction):
            return True
    return False


def has_kink(body: sp.Basic) -> bool:
    return bool(reference.uses_function(body, NON_SMOOTH_FUNCTIONS))


def _takes_a_maximum(expr: sp.Basic) -> bool:
    """Whether ``expr`` pools or reduces by a maximum (a kink where two entries tie)."""
    return any(isinstance(sub, MaxAlong) or (isinstance(sub, Pool) and sub.kind == "max")
               for sub in sp.preorder_traversal(expr))


def _leaf_names(expr: sp.Basic) -> set[str]:
    names = {str(m.name) for m in expr.atoms(sp.MatrixSymbol)}
    names |= {str(s) for s in expr.free_symbols if isinstance(s, sp.Symbol)}
    return names


def restrictions(der: Derivation) -> tuple[set[str], bool]:
    """Names that must be positive (under log, sqrt, fractional powers, declared positive)
    and whether the definition has kinks."""
    positive: set[str] = set()
    kink = False
    for _, expr in der.source_steps:
        kink = kink or _takes_a_maximum(expr)
        for body, argument in _walk_functions(expr):
            kink = kink or has_kink(body)
            if argument is not None and _needs_positive(body):
                if not any(isinstance(s, (sp.Function, ElementwiseApplyFunction))
                           for s in sp.preorder_traversal(argument)):
                    positive |= _leaf_names(argument)
            elif argument is None and _needs_positive(body):
                inner = body.args[0] if isinstance(body, sp.log) else body.args[0]
                if not inner.atoms(sp.Function):
                    positive |= _leaf_names(inner)
        positive |= {str(s) for s in expr.free_symbols
                     if isinstance(s, sp.Symbol) and s.is_positive and not s.is_integer}
    return positive, kink


def draw_inputs(der: Derivation, kernel: Kernel, seed: int = 0,
                sample_inputs: Callable | None = None,
                dims: Mapping[sp.Symbol, int] | None = None,
                positive: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Seeded inputs for every kernel argument, and the dimension sizes (see module doc)."""
    rng = np.random.default_rng(seed)
    symbols = sorted(der.dims, key=str)
    sizes = list(SIZES[:max(len(symbols), 3)])
    rng.shuffle(sizes)
    bound = _sizes_by_need(der, symbols, sizes)
    bound.update(dims or {})
    must_be_positive, kink = restrictions(der)
    must_be_positive |= set(positive)
    declared = {str(s): s for _, expr in der.source_steps for s in expr.free_symbols
                if declared_checks(s)}
    fans = _fan_in(der, bound)
    values: dict = {}
    for name, shape in kernel.inputs.items():
        concrete = tuple(int(sp.sympify(d).subs(bound)) for d in shape)
        if name in must_be_positive:
            a = rng.uniform(0.5, 2.0, size=concrete)
        else:
            # Scaled like a Glorot initialisation, so that products stay of order one and the
            # sigmoids and tanhs after them are not saturated (where a finite difference of
            # the saturated value loses every digit, and a Hessian vanishes).
            a = rng.standard_normal(size=concrete) * fans.get(name, 1) ** -0.25
            if kink:
                a = np.where(np.abs(a) < KINK_MARGIN, a + np.where(a < 0, -1, 1) * KINK_MARGIN,
                             a)
        values[name] = float(a) if concrete == () else a
        if name in declared:  # kernels refuse values that break a declared assumption
            values[name] = conform(declared[name], values[name])
    _draw_index_arrays(der, values, bound, rng)
    if sample_inputs is not None:
        by_name = {**{str(s): v for s, v in bound.items()}, **bound}
        try:
            sampled = dict(sample_inputs(rng, by_name))
        except Exception as exc:  # noqa: BLE001 - the user's function: any error is theirs
            raise CheckArgumentError(f"sample_inputs(rng, dims) raised {type(exc).__name__}: "
                                     f"{exc}") from exc
        for name, given in sampled.items():
            if name not in values:
                continue
            try:
                given = np.asarray(given)
                if not np.issubdtype(given.dtype, np.integer):  # integer ids stay integers
                    given = given.astype(np.float64)
                values[name] = float(given) if np.ndim(values[name]) == 0 else given.reshape(
                    np.shape(values[name]))
            except (TypeError, ValueError) as exc:
                raise CheckArgumentError(
                    f"sample_inputs gave {name} that is not a float array of shape "
                    f"{np.shape(values[name])} ({exc})") from exc
    return values, bound


def _sizes_by_need(der: Derivation, symbols: list[sp.Symbol],
                   sizes: list[int]) -> dict[sp.Symbol, int]:
    """Sizes for the dimension symbols, drawn (``sizes`` shuffled) but ordered so that every
    inverted product is nonsingular: in ``(A^T A)^{-1}`` with ``A`` ``n x d`` the rank of the
    ``d x d`` Gram matrix is at most ``n``, so ``n`` gets a larger size than ``d``."""
    smaller: dict[sp.Symbol, set[sp.Symbol]] = {s: set() for s in symbols}
    for _, expr in der.source_steps:
        for sub in sp.preorder_traversal(sp.sympify(expr)):
            if not (isinstance(sub, sp.Inverse) and isinstance(sub.arg, sp.MatMul)):
                continue
            outer = sub.arg.shape[0]
            factors = [a for a in sub.arg.args if isinstance(a, MatrixExpr)]
            for left in factors[:-1]:
                inner = left.shape[1]
                if inner in smaller and outer in smaller and inner != outer:
                    smaller[inner].add(outer)
    depth: dict[sp.Symbol, int] = {}

    def level(s: sp.Symbol, seen: frozenset = frozenset()) -> int:
        # The longest chain of dimensions that must be smaller (cycles cannot all be met).
        if s not in depth:
            depth[s] = 1 + max((level(t, seen | {s}) for t in smaller[s] if t not in seen),
                               default=-1)
        return depth[s]

    drawn = {s: sizes[k % len(sizes)] for k, s in enumerate(symbols)}
    if not any(smaller.values()):
        return drawn
    order = sorted(symbols, key=lambda s: (level(s), drawn[s]))
    return dict(zip(order, sorted(drawn.values()), strict=True))


def _fan_in(der: Derivation, bound: Mapping[sp.Symbol, int]) -> dict[str, int]:
    """For each input, the product of the sizes it is contracted over in a matrix product or
    an index sum (the largest over its uses): its entries are drawn with standard deviation
    ``fan ** -0.25``, so a product of two drawn factors has entries of variance about 1."""
    fans: dict[str, int] = {}

    def size(dim) -> int:
        try:
            return max(int(sp.sympify(dim).subs(bound)), 1)
        except (TypeError, ValueError):
            return 1

    def note(name: str, fan: int) -> None:
        fans[name] = max(fans.get(name, 1), fan)

    for _, expr in der.source_steps:
        for sub in sp.preorder_traversal(sp.sympify(expr)):
            if isinstance(sub, sp.MatMul):
                factors = [a for a in sub.args if isinstance(a, MatrixExpr)]
                for k, factor in enumerate(factors):
                    leaf = factor.arg if isinstance(factor, sp.Transpose) else factor
                    if not isinstance(leaf, sp.MatrixSymbol):
                        continue
                    fan = (size(factor.shape[0]) if k > 0 else 1) * (
                        size(factor.shape[1]) if k < len(factors) - 1 else 1)
                    note(str(leaf.name), fan)
            elif isinstance(sub, sp.Sum):
                ranges = {var: size(hi - lo + 1) for var, lo, hi in sub.limits}
                for indexed in sub.function.atoms(sp.Indexed):
                    fan = math.prod(r for var, r in ranges.items()
                                    if var in indexed.indices
                                    or sp.Symbol(str(var)) in indexed.indices)
                    note(str(indexed.base.label), fan)
    return fans


def draw_evaluable(der: Derivation, kernel: Kernel, seed: int, sample_inputs, dims,
                    positive) -> tuple[dict, dict, str]:
    """``draw_inputs``, drawn again (other seeds, so other sizes and entries) while the kernel
    cannot evaluate the point: a singular matrix to solve, a non-finite value. The note says
    what was redrawn; after ``DRAWS`` tries the last point is checked as it is."""
    problems = []
    for attempt in range(DRAWS):
        values, bound = draw_inputs(der, kernel, seed + 7919 * attempt, sample_inputs, dims,
                                    positive)
        try:
            outputs = kernel.run(values).outputs
        except EvaluationError as exc:
            problems.append(f"seed {seed + 7919 * attempt}: {exc}")
            continue
        bad = sorted(str(k) for k, v in outputs.items() if not np.all(np.isfinite(v)))
        if not bad:
            break
        problems.append(f"seed {seed + 7919 * attempt}: {', '.join(bad)} not finite")
    else:
        return values, bound, ("no drawn test point was evaluable (" + "; ".join(problems)
                               + "); the last one is checked")
    note = ("test points redrawn (" + "; ".join(problems) + ")") if problems else ""
    return values, bound, note


def _draw_index_arrays(der: Derivation, values: dict, bound: Mapping[sp.Symbol, int],
                       rng: np.random.Generator) -> None:
    """Integer index arrays (``idx`` in ``W[idx[b], j]``) drawn as row numbers of their table,
    repeats included (so that scatter-adds add), never outside it."""
    for name, rows in index_arrays([der.output]).items():
        if name in values:
            count = int(sp.sympify(rows).subs(bound))
            values[name] = rng.integers(0, count, size=np.shape(values[name]), dtype=np.int64)
