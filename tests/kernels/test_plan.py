"""Unit tests of the kernel planner (``symdl.kernels.plan``): the steps, loop groups, fused
members, reads and stored values of small hand-built IR graphs, asserted on the plan itself
(not on generated source), and the rule tables of the kernel interpreters.

Expected structures come from the algebra of each graph (which products are BLAS, which
values a later step reads), never from the planner's own output.
"""

from __future__ import annotations

import pytest
import sympy as sp

from symdl import ir
from symdl.errors import MissingRuleError
from symdl.ir.rules import Rules
from symdl.kernels import codegen, loops
from symdl.kernels import plan as kernel_plan
from symdl.kernels.plan import (
    Contraction,
    LinearSolve,
    LoopGroup,
    RowStats,
    RowStream,
    plan,
    split_long_groups,
)
from symdl.kernels.steps import stats_key

n, d, h = sp.symbols("n d h", integer=True, positive=True)
x0, x1 = sp.symbols("x0 x1", real=True)


def leaf(name: str, *dims) -> ir.Leaf:
    symbol = sp.MatrixSymbol(name, *dims) if len(dims) == 2 else sp.Symbol(name)
    return ir.leaf(name, dims, symbol)


X, W, Y = leaf("X", n, d), leaf("W", d, h), leaf("Y", n, d)
A, B = leaf("A", n, n), leaf("B", n, n)
v, c, r = leaf("v", d, 1), leaf("c", n, 1), leaf("r", n, 1)


def matmul(a: ir.Node, b: ir.Node) -> ir.Node:
    return ir.einsum([a, b], [(0, 1), (1, 2)], (0, 2))


def transpose_times(a: ir.Node, b: ir.Node) -> ir.Node:
    """``a^T b``."""
    return ir.einsum([a, b], [(1, 0), (1, 2)], (0, 2))


def tanh(node: ir.Node) -> ir.Node:
    return ir.map_(sp.Lambda((x0,), sp.tanh(x0)), node)


def exp(node: ir.Node) -> ir.Node:
    return ir.map_(sp.Lambda((x0,), sp.exp(x0)), node)


def total(node: ir.Node) -> ir.Node:
    return ir.einsum([node], [tuple(range(node.rank))], ())


def kinds(p) -> list[str]:
    return [type(step).__name__ for step in p.steps]


def groups(p) -> list[LoopGroup]:
    return [g for step in p.steps for g in step.loop_groups()]


# -- the rule tables --------------------------------------------------------------------
# Every table, the kernel ones included, covers every node kind: tests/ir/test_rule_tables.py.

TABLES = [*kernel_plan.TABLES, *loops.TABLES, *codegen.TABLES]


def test_the_kernel_tables_are_rule_tables_of_the_ir() -> None:
    assert TABLES and all(isinstance(table, Rules) for table in TABLES)


def test_a_missing_rule_names_the_node_kind_and_the_interpreter() -> None:
    class Gather:  # a node kind that no table knows yet
        pass

    with pytest.raises(MissingRuleError, match=r"loop cost.*Gather"):
        loops.loop_cost(Gather())
    table = Rules("test interpreter", {ir.Leaf: lambda node: "leaf"})
    assert table(X) == "leaf"
    with pytest.raises(MissingRuleError, match=r"test interpreter has no rule .* Map"):
        table(tanh(X))


# -- one step of each kind ----------------------------------------------------------------

def test_a_matrix_product_is_one_blas_contraction() -> None:
    product = matmul(X, W)
    p = plan({"out": product})
    assert kinds(p) == ["Contraction"]
    (step,) = p.steps
    assert step.node is product and step.symmetric is None
    assert step.reads() == [(X, None), (W, None)]
    assert step.computed() == [product]
    assert p.materialized == {id(product)}
    assert sp.expand(step.flops() - 2 * n * d * h) == 0


def test_elementwise_nodes_fuse_into_one_loop_that_stores_only_the_output() -> None:
    inner = tanh(X)
    product = ir.hadamard(inner, Y)
    out = ir.add(product, X)
    p = plan({"out": out})
    assert kinds(p) == ["LoopGroup"]
    (group,) = p.steps
    assert group.members == [inner, product, out]
    assert group.dims == (n, d)
    assert all(group.indices[id(m)] == (0, 1) for m in group.members)
    assert group.reductions == set()
    assert group.stores == {id(out)}  # tanh(X) and the product are loop temporaries
    assert p.materialized == {id(out)}
    assert group.reads_of(product) == [(inner, (0, 1)), (Y, (0, 1))]


def test_a_sum_is_a_reduction_of_its_loop() -> None:
    values = exp(X)
    value = total(values)
    p = plan({"value": value})
    (group,) = p.steps
    assert group.members == [values, value]
    assert group.reductions == {id(value)}
    assert group.indices[id(value)] == ()  # a scalar: summed over both loop variables
    assert group.stores == {id(value)}


def test_softmax_reads_the_row_statistics_computed_before_its_loop() -> None:
    z = matmul(X, W)
    probabilities = ir.softmax(z, 1)
    p = plan({"p": probabilities})
    assert kinds(p) == ["Contraction", "RowStats", "LoopGroup"]
    _, stats, group = p.steps
    assert stats.arg is z and stats.axis == 1
    assert stats.reads() == [(z, None)]
    assert stats_key(z, 1) in group.needs() and stats.provides() == {stats_key(z, 1)}
    assert group.members == [probabilities]
    assert id(z) in p.materialized  # read by the statistics pass and the loop


def test_a_solve_is_a_linear_solve_step_reading_both_operands() -> None:
    solved = ir.solve(ir.add(A, B), c)
    p = plan({"x": solved})
    assert kinds(p) == ["LoopGroup", "LinearSolve"]
    group, step = p.steps
    assert isinstance(step, LinearSolve) and step.node is solved
    assert [node for node, _ in step.reads()] == [solved.a, solved.b]
    assert group.members == [solved.a] and id(solved.a) in group.stores


def test_a_triple_product_runs_matrix_times_vector_first() -> None:
    # X^T (s ⊙ (X v)): the n x d x d product X^T diag(s) X is never formed.
    xv = ir.einsum([X, v], [(0, 1), (1, 2)], (0, 2))
    weighted = ir.hadamard(tanh(xv), r)
    gradient = transpose_times(X, weighted)
    p = plan({"g": gradient})
    assert kinds(p) == ["RowStream"]
    (stream,) = p.steps
    assert stream.first.node.operands[0] is X and stream.matrix is X
    assert stream.vector is v
    assert stream.residual is weighted
    assert isinstance(stream.first, Contraction) and isinstance(stream.second, Contraction)
    assert stream.group.members[-1] is weighted
    assert stream.loop_groups() == [stream.group]
    assert [type(s).__name__ for s in stream.parts()] == ["Contraction", "LoopGroup",
                                                          "Contraction"]


def test_a_weighted_gram_matrix_reads_the_weight_and_the_matrix_only() -> None:
    weight = exp(c)  # computed (as σ(1 - σ) in a Newton step)
    scaled = ir.einsum([weight, X], [(0, 2), (0, 1)], (0, 1))  # weight ⊙ X, never stored
    gram = transpose_times(X, scaled)
    p = plan({"H": gram})
    assert kinds(p) == ["LoopGroup", "Contraction"]
    group, step = p.steps
    assert group.members == [weight] and group.stores == {id(weight)}
    assert step.symmetric is not None and step.symmetric.weight is weight
    assert step.symmetric.base is X and step.symmetric.rows_first
    assert step.reads() == [(weight, None), (X, None)]
    assert not any(kernel_plan.computes(g, scaled) for g in groups(p))
    assert id(scaled) not in p.materialized


def test_a_cheap_function_of_inputs_is_recomputed_in_each_loop_and_stored_once() -> None:
    s = ir.add(A, B)  # cheap: recomputed where read at its own index
    first = tanh(s)
    second = exp(ir.einsum([s], [(0, 1)], (1, 0)))  # reads s transposed: a stored array
    p = plan({"first": first, "second": second})
    loops_ = groups(p)
    computing = [g for g in loops_ if kernel_plan.computes(g, s)]
    assert computing, "s is computed in a loop"
    storing = [g for g in loops_ if id(s) in g.stores]
    assert storing == [computing[0]]  # one array, written by the first loop only
    assert id(s) in p.materialized


# -- passes over the steps -----------------------------------------------------------------

def test_a_long_loop_is_split_and_values_read_across_parts_are_stored() -> None:
    terms = [tanh(ir.scale(X, k + 1)) for k in range(6)]
    out = ir.add(*terms)
    p = plan({"out": out})
    (group,) = p.steps
    budget = sum(loops.loop_cost(m) for m in group.members) // 2
    materialized = set(p.materialized)
    parts = split_long_groups(p.steps, materialized, budget=budget)
    assert len(parts) >= 2 and all(isinstance(part, LoopGroup) for part in parts)
    assert [m for part in parts for m in part.members] == group.members
    assert all(sum(map(loops.loop_cost, part.members)) <= budget for part in parts)
    across = {id(op) for k, part in enumerate(parts) for m in part.members
              for op, _ in part.reads_of(m)
              if any(op is e for earlier in parts[:k] for e in earlier.members)}
    assert across and across <= materialized


def test_an_update_may_be_written_into_its_input_unless_another_step_reads_it() -> None:
    p_leaf, g_leaf = leaf("p", n, 1), leaf("g", n, 1)
    update = ir.add(p_leaf, ir.scale(g_leaf, sp.Rational(-1, 10)))
    assert plan({"p": update}).in_place_safe("p", p_leaf)
    # The same update, with a BLAS product also reading p: p must survive the loop.
    gram = ir.einsum([p_leaf, p_leaf], [(0, 1), (0, 2)], (1, 2))
    mixed = plan({"p": update, "gram": gram})
    assert not mixed.in_place_safe("p", p_leaf)
    # A later member of the same loop reading p would see the new values.
    doubled = ir.scale(p_leaf, 2)
    later = plan({"p": update, "q": doubled})
    (group,) = later.steps
    assert group.members.index(doubled) > group.members.index(update)
    assert not later.in_place_safe("p", p_leaf)
    # Reading p at another index than the one written (a reversal) is never in place.
    flipped = ir.add(ir.einsum([A], [(0, 1)], (1, 0)), A)
    assert not plan({"A": flipped}).in_place_safe("A", A)


def test_every_step_kind_answers_reads_provides_needs_and_flops() -> None:
    z = matmul(X, W)
    solved = ir.solve(ir.add(A, B), c)
    p = plan({"p": ir.softmax(z, 1), "x": solved, "s": total(exp(X))})
    seen = set()
    for step in p.steps:
        seen.add(type(step))
        assert step.provides()
        assert {id(op) for op, _ in step.reads()} <= step.needs()
        assert isinstance(sp.sympify(step.flops()), sp.Expr)
    assert {Contraction, RowStats, LoopGroup, LinearSolve} <= seen
    assert RowStream not in seen
