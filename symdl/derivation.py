"""``symdl.derive`` and the ``Derivation`` it returns: the public face of the derivation core.

The pipeline: the definition is translated into the IR (``frontend``), differentiated there
(``autodiff``) and printed back as SymPy (``to_sympy``): matrix notation where recognised,
index notation otherwise. Derivatives are computed lazily and cached; ``hessian=True``
computes every Hessian block up front.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symdl import ir
from symdl.define.limits import check_size, count_subexpressions
from symdl.define.positions import index_arrays
from symdl.define.recurrence import Recurrence
from symdl.define.symbols import fresh_name, symbol_name
from symdl.define.tensor_ir import step_symbol, tensor, translate_step
from symdl.define.translate import Translator, dimension_symbols, translate_matrix_or_scalar
from symdl.derive import autodiff
from symdl.errors import (
    ClosedFormTooLargeError,
    DefinitionError,
    DerivationError,
    EvaluationError,
)
from symdl.ir import rewrites
from symdl.ir.evaluate import evaluate as evaluate_nodes
from symdl.ir.keys import (
    HVP,
    Gradient,
    HessianBlock,
    Named,
    OutputKey,
    OutputKeyError,
    Outputs,
    Value,
    resolve_all,
)
from symdl.ir.naming import WRITTEN_OUT_LIMIT, auto_name, names_too_large, written_out_size
from symdl.ir.shape import squeeze
from symdl.kernels.compilable import check_compilable
from symdl.primitives.sympy_results import lambdifiable
from symdl.printing.to_sympy import IndexForm, SympyPrinter

if TYPE_CHECKING:
    from symdl.kernels.kernel import Kernel
    from symdl.printing.numpy_functions import NumpyFunctions

Definition = sp.Basic | Sequence[tuple[sp.Basic, sp.Basic]]
Parameter = sp.Symbol | sp.MatrixSymbol | sp.IndexedBase


class Equation(NamedTuple):
    """One step of a derivation: ``lhs = rhs``."""

    lhs: sp.Basic
    rhs: sp.Basic | IndexForm



def _parameter_shape(p: Parameter) -> tuple:
    if isinstance(p, sp.MatrixSymbol):
        return tuple(p.shape)
    if isinstance(p, sp.IndexedBase):
        if p.shape is None:
            raise DerivationError(
                f"IndexedBase {p} has no shape; create it as IndexedBase('{p}', shape=(...))"
            )
        return tuple(p.shape)
    return ()



def _like(symbol: sp.Basic, name: str, shape: tuple) -> sp.Basic:
    """A new symbol of the same kind and shape as ``symbol`` (adjoints, gradients)."""
    if len(shape) == 2:
        return sp.MatrixSymbol(name, *shape)
    if not shape:
        return sp.Symbol(name, real=True)
    return sp.IndexedBase(name, shape=shape)


class Derivation:
    """Derivatives of one definition, for every size its symbolic dimensions can take.

    Build it with ``symdl.derive``. Results are SymPy expressions: matrix expressions where
    the pattern is recognised (``X.T*(sigmoid(X*w) - y)/n``), an ``IndexForm`` otherwise
    (Hessian blocks of matrix parameters, which have four indices).
    """

    def __init__(self, definition: Definition, wrt: Iterable[Parameter], hessian: bool = False):
        wrt = [_check_parameter(p) for p in _parameter_list(wrt)]
        if not isinstance(hessian, (bool, np.bool_)):
            raise DerivationError(f"hessian= must be True or False, got {hessian!r}")
        steps = _as_steps(definition)
        self.steps: tuple[tuple[sp.Basic, sp.Basic], ...] = tuple(steps)
        exprs = [d for _, d in steps] + [s for s, _ in steps if isinstance(s, sp.Indexed)]
        self.dims: frozenset[sp.Symbol] = frozenset(dimension_symbols(exprs + list(wrt)))
        self._translator = Translator(set(self.dims))
        self._intermediates: list[ir.Named] = []
        node = None
        for symbol, definition_k in steps:
            node = translate_step(self._translator, symbol, definition_k)
            if node is None:
                node = translate_matrix_or_scalar(self._translator, definition_k)
            symbol = step_symbol(symbol)
            if symbol is not None:
                node = ir.named(symbol_name(symbol), node, symbol)
                self._translator.named[symbol] = node
                self._intermediates.append(node)
        self.output: ir.Node = node
        check_compilable([node])
        self.source_steps = self.steps
        self._auto_named: list[ir.Named] = []
        self._name_shared_subexpressions(wrt)
        self.wrt: tuple[Parameter, ...] = tuple(_check_parameter(p) for p in wrt)
        if not self.wrt:
            raise DerivationError("derive() needs at least one parameter in wrt=[...]")
        names = [symbol_name(p) for p in self.wrt]
        if len(set(names)) != len(names):
            raise DerivationError(f"wrt lists a parameter twice: {names}")
        self._leaves = {p: self._leaf_for(p) for p in self.wrt}
        _refuse_index_arrays(self.wrt, self.output)
        self._gradients: dict[Parameter, ir.Node] | None = None
        self._adjoints: list[tuple[ir.Named, ir.Node]] = []
        self._hessians: dict[tuple[Parameter, Parameter], ir.Node] = {}
        self._printers: dict[bool, SympyPrinter] = {}
        if hessian:
            for p in self.wrt:
                for q in self.wrt:
                    self.hessian_node(p, q)

    # -- construction helpers -------------------------------------------------------------

    def _name_shared_subexpressions(self, wrt: list[Parameter]) -> None:
        """Gives generated names (``t1``, ``t2``, ...) to the shared, non-small
        subexpressions of the definition (see ``symdl.ir.naming``), so that a layer written as
        one expression gets short backprop equations. ``steps`` then lists the definition
        as named steps (``source_steps`` keeps it as written)."""
        taken = {str(d) for d in self.dims} | set(self._translator.leaves)
        taken |= {n.name for n in self._intermediates} | {symbol_name(p) for p in wrt}
        taken |= {"d" + name for name in set(taken)}
        output, generated, replaced = auto_name(
            self.output, taken, lambda name, shape: _like(None, name, shape))
        if not generated:
            return
        # A step the generated names did not touch keeps the user's own spelling.
        unchanged = {n.name: d for n, (_, d) in zip(self._intermediates, [
            st for st in self.steps if st[0] is not None], strict=True)
            if replaced.get(id(n), n) is n}
        self.output = output
        self._auto_named = generated
        self._intermediates = [replaced.get(id(n), n) for n in self._intermediates]
        for symbol, node in list(self._translator.named.items()):
            self._translator.named[symbol] = replaced.get(id(node), node)
        named = [n for n in ir.topological_order([output]) if isinstance(n, ir.Named)]
        self._intermediates = [n for n in named if n in self._intermediates or n in generated]
        reserved = {str(d) for d in self.dims} | set(self._translator.leaves)
        reserved |= {n.name for n in named}
        printer = SympyPrinter(inline_named=False, aliases={id(n.body): n for n in named},
                               reserved=reserved)
        steps = [(n.symbol, unchanged[n.name] if n.name in unchanged and n not in generated
                  else printer.definition(n.body)) for n in named]
        last = self.steps[-1][0]
        if last is None or not isinstance(output, ir.Named):
            steps.append((last, printer.result(output)))
        self.steps = tuple(steps)

    def _leaf_for(self, p: Parameter) -> ir.Node:
        name = symbol_name(p)
        if p in self._translator.named:
            raise DerivationError(
                f"{name} is a named intermediate, not a parameter; differentiate with respect to "
                "the inputs it is computed from"
            )
        known = self._translator.leaves.get(name)
        if known is not None:
            if known.shape != _parameter_shape(p):
                raise DerivationError(
                    f"parameter {name} has shape {_parameter_shape(p)} in wrt but {known.shape} "
                    "in the definition"
                )
            return known
        # Not in the definition: the derivative is zero, of the parameter's shape.
        return ir.leaf(name, _parameter_shape(p), p)

    @property
    def is_scalar(self) -> bool:
        return self.output.rank == 0

    def _require_parameter(self, p: Parameter) -> ir.Node:
        if p not in self._leaves:
            raise DerivationError(
                f"{p} is not among the parameters of this derivation "
                f"({', '.join(symbol_name(q) for q in self.wrt)}); add it to wrt=[...]"
            )
        return self._leaves[p]

    def _ensure_gradients(self) -> dict[Parameter, ir.Node]:
        if self._gradients is None:
            if not self.is_scalar:
                raise DerivationError(
                    f"the definition is a {self.output.shape} tensor, not a scalar: use "
                    "jacobian(p), or reduce it (symdl.sum, symdl.mean) to get a gradient"
                )
            leaves = [self._leaves[p] for p in self.wrt]
            by_id, adjoints = autodiff.reverse(self.output, leaves, self._adjoint_name)
            # Derivatives re-create unstable forms: rewritten as one graph, so that the named
            # adjoints the gradients read stay the objects listed in the equations.
            grads = [by_id[id(self._leaves[p])] for p in self.wrt]
            stable = rewrites.stabilize(grads + [a for _, a in adjoints])
            self._gradients = dict(zip(self.wrt, stable[:len(grads)], strict=True))
            self._adjoints = [(n, a) for (n, _), a in zip(adjoints, stable[len(grads):],
                                                          strict=True) if n is not self.output]
            self._adjoints += self._recurrence_adjoints(stable[:len(grads)])
        return self._gradients

    def _recurrence_adjoints(self, gradients: list[ir.Node]) -> list[tuple[ir.Named, ir.Named]]:
        """The adjoint recurrences of backprop through time (``δ_t`` from ``δ_{t+1}``), named
        ``delta_h`` after their state and paired with the named states they run back over,
        so that the equations define each once and the gradients refer to it by name."""
        taken = {str(d) for d in self.dims} | set(self._translator.leaves)
        taken |= {n.name for n in self._intermediates} | {a.name for _, a in self._adjoints}
        states = {id(n.body): n for n in self._intermediates}
        found = []
        for node in ir.topological_order(list(gradients)):
            if not (isinstance(node, ir.Scan) and node.reverse and node.mode == "stack"):
                continue
            forward = next((s for s in node.seqs if id(s) in states), None)
            if forward is None:
                continue
            carry = next(c for c in node.carry if c is node.emit or c in node.emit.children())
            name = fresh_name("delta_" + carry.name.removeprefix("d").removesuffix("_next"),
                              taken)
            found.append((states[id(forward)],
                          ir.named(name, node, _like(None, name, node.shape))))
        return found

    def _adjoint_name(self, node: ir.Named) -> tuple[str, sp.Basic]:
        name = "d" + node.name
        return name, _like(node.symbol, name, node.shape)

    # -- read-only views (used by LaTeX, kernels, training and checks) --------------------

    @property
    def adjoints(self) -> list[tuple[ir.Named, ir.Named]]:
        """The reverse-mode adjoints in the order backprop computes them: pairs of a named
        intermediate and its named adjoint (``Z2`` and ``dZ2``), the ones ``equations()``
        lists first. Derives the gradients when that has not happened yet.

        Raises:
            DerivationError: the definition is not a scalar (it has Jacobians, no adjoints).
        """
        self._ensure_gradients()
        return list(self._adjoints)

    @property
    def hessian_blocks(self) -> list[tuple[Parameter, Parameter]]:
        """The ``(p, q)`` parameter pairs whose Hessian blocks have been derived, in the order
        they were (every pair with ``derive(..., hessian=True)``)."""
        return list(self._hessians)

    def output_nodes(self) -> dict[OutputKey, ir.Node]:
        """What ``compile()`` and ``evaluate()`` compute, by output key, as IR: the value,
        each gradient (of a scalar definition) and the Hessian blocks derived so far, with
        their size-1 axes dropped (``d x d`` for a ``d x 1`` parameter)."""
        nodes: dict[OutputKey, ir.Node] = {Value(): self.output}
        if self.is_scalar:
            for p in self.wrt:
                nodes[Gradient(symbol_name(p))] = self.gradient_node(p)
        for (p, q), node in self._hessians.items():
            nodes[HessianBlock(symbol_name(p), symbol_name(q))] = squeeze(node)
        return nodes

    # -- IR-level results (used by kernels, checks and reports) ---------------------------

    def gradient_node(self, p: Parameter) -> ir.Node:
        self._require_parameter(p)
        return self._ensure_gradients()[p]

    def hessian_node(self, p: Parameter, q: Parameter | None = None) -> ir.Node:
        q = p if q is None else q
        key = (p, q)
        if key not in self._hessians:
            self._require_parameter(q)
            self._hessians[key] = rewrites.stabilize_one(
                autodiff.jacobian(self.gradient_node(p), self._leaves[q]))
        return self._hessians[key]

    def jacobian_node(self, p: Parameter) -> ir.Node:
        return rewrites.stabilize_one(autodiff.jacobian(self.output, self._require_parameter(p)))

    # -- public results -------------------------------------------------------------------

    def printer(self, inline: bool = True) -> SympyPrinter:
        """The printer of this derivation's results (one per mode, so that shared
        subexpressions are printed once).

        Args:
            inline: write named intermediates out (a self-contained closed form), or refer to
                them by name (``A1``, ``dZ2``) as the step-by-step equations do.
        """
        if self.is_scalar:
            self._ensure_gradients()  # the adjoints are named before anything prints
        if inline in self._printers:
            return self._printers[inline]
        aliases = {id(n.body): n for n in self._intermediates}
        aliases.update({id(a.body): a for _, a in self._adjoints})
        reserved = {str(d) for d in self.dims} | set(self._translator.leaves)
        reserved |= {n.name for n in self._intermediates} | {a.name for _, a in self._adjoints}
        printer = SympyPrinter(inline_named=inline, aliases=aliases, reserved=reserved)
        self._printers[inline] = printer
        return printer

    def _print(self, node: ir.Node, inline: bool) -> sp.Basic | IndexForm:
        """A result, written out when ``inline`` as far as ``symdl.ir.naming.INLINE_LIMIT``
        allows: a named intermediate whose written-out form would exceed it keeps its name,
        so that the time and size of a closed form stay bounded (a tree written out from a
        DAG grows exponentially with the depth of the definition)."""
        by_name = names_too_large(node) if inline else set()
        _require_printable(node, inline, by_name)
        if by_name:
            printer = self.printer(True)
            return SympyPrinter(inline_named=True, reserved=printer.reserved,
                                by_name=by_name).result(node)
        return self.printer(inline).result(node)

    def gradient(self, p: Parameter, inline: bool = True) -> sp.Basic | IndexForm:
        """∂L/∂p for a scalar definition L, with the shape of ``p``.

        Args:
            p: a parameter listed in ``wrt``.
            inline: see ``printer``; ``False`` writes it in terms of the named intermediates.
                Written out, a named intermediate (a step, an adjoint ``dZ1`` or a generated
                ``t1``) whose own closed form would exceed ``symdl.ir.naming.INLINE_LIMIT`` IR
                nodes keeps its name, so that the result stays bounded in size and time;
                ``definitions()`` and ``equations()`` define every name.
        """
        node = self.gradient_node(p)
        return self._print(node, inline)

    def hessian(self, p: Parameter, q: Parameter | None = None,
                inline: bool = True) -> sp.Basic | IndexForm:
        """The Hessian block ∂²L/∂p∂q (``q`` defaults to ``p``).

        For vector (or scalar) parameters it is a matrix expression (``X.T*diag(s)*X/n``);
        for matrix parameters it has four indices and comes as an ``IndexForm`` whose
        indices are those of ``p`` then those of ``q`` (size-1 axes dropped).
        """
        node = self.hessian_node(p, q)
        return self._print(node, inline)

    def hvp(self, p: Parameter, v: sp.Basic | Mapping[Parameter, sp.Basic],
            inline: bool = True) -> sp.Basic:
        """The Hessian-vector product ``Σ_q H[p, q] v_q``, without forming the Hessian.

        Args:
            p: the parameter whose gradient is differentiated (the result has its shape).
            v: the direction: a symbol shaped like ``p`` (then ``H[p, p] v``), or a mapping
                from parameters to directions shaped like each.
        """
        directions = dict(v) if isinstance(v, Mapping) else {p: v}
        seeds = {}
        for q, vq in directions.items():
            leaf = self._require_parameter(q)
            shape = _parameter_shape(q)
            vshape = tuple(vq.shape) if isinstance(vq, MatrixExpr) or (
                isinstance(vq, sp.IndexedBase) and vq.shape is not None) else ()
            if vshape != tuple(shape):
                raise DerivationError(
                    f"the direction for {q} has shape {vshape}, but {q} has shape {shape}"
                )
            seeds[id(leaf)] = (tensor(self._translator, vq) if isinstance(vq, sp.IndexedBase)
                               else translate_matrix_or_scalar(self._translator, vq))
        node = rewrites.stabilize_one(autodiff.directional(self.gradient_node(p), seeds))
        return self._print(node, inline)

    def hvp_node(self, p: Parameter, directions: Mapping[Parameter, ir.Node]) -> ir.Node:
        seeds = {id(self._require_parameter(q)): v for q, v in directions.items()}
        return rewrites.stabilize_one(autodiff.directional(self.gradient_node(p), seeds))

    def jacobian(self, p: Parameter, inline: bool = True) -> sp.Basic | IndexForm:
        """∂f/∂p of the (possibly matrix-valued) definition f, axes of f then axes of p.

        The Jacobian of a column vector with respect to a column vector is a matrix.
        """
        return self._print(self.jacobian_node(p), inline)

    def compile(self, hvp: bool = False, outputs: Iterable[OutputKey | str] | None = None,
                jit: bool = True, background: bool = False) -> Kernel:
        """Numba kernels for the value, every gradient and the Hessian blocks computed so
        far (``derive(..., hessian=True)`` computes them all).

        Args:
            hvp: also compile Hessian-vector products: for each parameter ``p`` an input
                ``v_p`` shaped like ``p`` and an output ``hvp:p`` = ``Σ_q H[p, q] v_q``,
                computed without forming the Hessian. Where the definition already has an
                input named ``v_p`` the direction is ``v_p_1`` (``Kernel.hvp_inputs`` maps
                each parameter to its direction's name).
            outputs: compile only these outputs, by key (``Value()``, ``Gradient("w")``,
                ``HessianBlock("w", "w")``, ``HVP("w")`` from ``symdl.ir.keys``) or spelling
                (``"value"``, ``"grad:w"``, ``"hessian:w,w"``, ``"hvp:w"``; see
                ``symdl.ir.keys.resolve``); all of them by default.
            jit: ``False`` runs the generated source as plain Python, without compiling
                (same code, for tests that build many small kernels).
            background: answer the first calls of each kind with the NumPy evaluator while
                Numba compiles in a thread, then run the jitted code: the first result in
                well under a second instead of after the compile; results equal the jitted
                kernel's to rounding (1e-12 relative in float64), not bit for bit (see
                ``symdl.kernels.background``). ``Kernel.wait_compiled()`` waits for it.
        """
        from symdl.kernels.kernel import Kernel

        if isinstance(outputs, (str, OutputKey)):
            outputs = [outputs]  # one output named alone, not a string's characters
        outputs_wanted = None if outputs is None else list(outputs)
        outputs: dict[OutputKey, ir.Node] = self.output_nodes()
        leaves = dict(self._translator.leaves)
        leaves.update({leaf.name: leaf for leaf in self._leaves.values()})
        directions: dict[sp.Basic, ir.Node] = {}
        hvp_inputs: dict[str, str] = {}
        if hvp:
            taken = set(leaves) | {symbol_name(p) for p in self.wrt}
            for p in self.wrt:
                # v_w, unless the definition already reads an array of that name (v_w_1 then).
                name = fresh_name(f"v_{symbol_name(p)}", taken)
                hvp_inputs[symbol_name(p)] = name
                shape = _parameter_shape(p)
                directions[p] = ir.leaf(name, shape, _like(p, name, shape))
                leaves[name] = directions[p]
            for p in self.wrt:
                outputs[HVP(symbol_name(p))] = self.hvp_node(p, directions)
        if outputs_wanted is not None:
            try:
                wanted = set(resolve_all(outputs_wanted, outputs))
            except OutputKeyError as exc:
                raise DerivationError(f"compile(outputs=...): {exc}") from None
            outputs = {key: node for key, node in outputs.items() if key in wanted}
        used = {leaf.name for leaf in _leaves_under(list(outputs.values()))}
        # Parameters and HVP directions stay arguments even where an output does not use
        # them (a zero Hessian), so that the calling convention follows the derivation.
        kept = set(self._leaves.values())
        if any(isinstance(key, HVP) for key in outputs):
            kept.update(directions.values())
        leaves = {name: leaf for name, leaf in leaves.items() if name in used or leaf in kept}
        if not any(isinstance(key, HVP) for key in outputs):
            hvp_inputs = {}
        return Kernel(outputs, list(leaves.values()), self.title, jit=jit,
                      hvp_inputs=hvp_inputs, background=background)

    @property
    def title(self) -> str:
        """A one-line description: the named steps and the output's formula (shortened)."""
        from symdl.printing.plain import plain

        names = [symbol_name(s) for s, _ in self.source_steps if s is not None]
        if len(names) > 12:  # a long chain: its ends say what it is
            names = names[:6] + [f"... ({len(names) - 12} more)"] + names[-6:]
        last = self.source_steps[-1][1]
        # SymPy orders the terms of a sum before printing it (time quadratic in their
        # number) and prints recursively: a large step is summarised, not printed.
        nodes = count_subexpressions(last, limit=2000)
        text = plain(last) if nodes <= 2000 else (
            f"a {type(last).__name__} of {len(last.args)} terms, over 2000 subexpressions")
        if len(text) > 120:
            text = text[:117] + "..."
        return (" -> ".join(names) + ": " if names else "") + text

    def definitions(self) -> list[Equation]:
        """The forward equations: each named intermediate and its definition (in the classes
        ``sympy.lambdify`` accepts: ``tanh(Z1)``, not ``Lambda(_d, tanh(_d)).(Z1)``)."""
        return [Equation(s, lambdifiable(d)) for s, d in self.steps if s is not None]

    def equations(self) -> list[Equation]:
        """The reverse-mode equations in the order backprop computes them: one adjoint per
        named intermediate (``dZ2``, ``dA1``, ``dZ1``), then the gradient of each parameter
        (``dW1``), each written in terms of the named quantities."""
        gradients = self._ensure_gradients()
        printer = self.printer(inline=False)
        eqs = [Equation(adj.symbol, printer.definition(adj.body)) for _, adj in self._adjoints]
        for p in self.wrt:
            name = "d" + symbol_name(p)
            eqs.append(Equation(_like(p, name, _parameter_shape(p)), printer.result(gradients[p])))
        return eqs

    def evaluate(self, values: Mapping[str, np.ndarray | float],
                 dims: Mapping[sp.Symbol, int] | None = None) -> Outputs:
        """NumPy values of the output, the gradients and any Hessians computed so far.

        Args:
            values: an array per input and parameter, by name.
            dims: sizes of the dimension symbols; inferred from the arrays when omitted.

        Returns:
            The arrays by output key (``Value()``, ``Gradient("w")``, ``HessianBlock("w",
            "w")``), also read by spelling: ``["value"]``, ``["grad:w"]``, ``["hessian:w,w"]``.
        """
        values = _numpy_values(values)
        dims = dict(dims) if dims is not None else self.infer_dims(values)
        roots = self.output_nodes()
        arrays = evaluate_nodes(list(roots.values()), values, dims)
        return Outputs(zip(roots, arrays, strict=False))

    def infer_dims(self, values: Mapping[str, np.ndarray | float]) -> dict[sp.Symbol, int]:
        """Binds each dimension symbol to a size from the shapes of ``values``."""
        sizes: dict[sp.Symbol, int] = {}
        leaves = dict(self._translator.leaves)
        leaves.update({leaf.name: leaf for leaf in self._leaves.values()})
        for name, leaf in leaves.items():
            if name not in values:
                continue
            shape = np.shape(values[name])
            for dim, size in zip(leaf.shape, shape, strict=False):
                if isinstance(dim, sp.Symbol) and dim in self.dims:
                    if sizes.setdefault(dim, size) != size:
                        raise DefinitionError(
                            f"dimension {dim} is {sizes[dim]} in one array and {size} in {name}"
                        )
        return sizes

    def lambdify(self) -> NumpyFunctions:
        """Plain NumPy functions (no Numba) of the value, each gradient and the Hessian
        blocks computed so far, made by ``sympy.lambdify`` from the printed results.

        Each takes every input by the name of its symbol and infers the dimension sizes from
        the arrays: ``f = der.lambdify(); f.grad["w"](X=X, w=w, y=y)``; ``f(X=..., ...)``
        gives them all by output name (``"value"``, ``"grad:w"``, ``"hessian:w,w"``).
        A four-index Hessian block is filled entry by entry (small sizes); compile the
        derivation for speed.

        Raises:
            EvaluationError: when called with a missing, unknown or misshapen input.
        """
        from symdl.printing.numpy_functions import numpy_functions

        shapes: dict[str, tuple] = {Value(): self.output.shape}
        grads, hessians = {}, {}
        if self.is_scalar:
            for p in self.wrt:
                grads[symbol_name(p)] = self.gradient(p)
                shapes[Gradient(symbol_name(p))] = _parameter_shape(p)
        for (p, q), node in self._hessians.items():
            names = (symbol_name(p), symbol_name(q))
            hessians[names] = self.hessian(p, q)
            shapes[HessianBlock(*names)] = squeeze(node).shape
        symbols = {name: leaf.symbol for name, leaf in self.leaves.items()}
        symbols.update({symbol_name(p): p for p in self.wrt})
        return numpy_functions(self._print(self.output, True), grads, hessians, symbols,
                               shapes)

    @property
    def leaves(self) -> dict[str, ir.Leaf]:
        """Every array and scalar the definition reads, by name."""
        return dict(self._translator.leaves)

    def __repr__(self) -> str:
        params = ", ".join(symbol_name(p) for p in self.wrt)
        return f"Derivation(output shape {self.output.shape}, wrt [{params}])"

    def to_latex(self) -> str:
        """The derivation as a LaTeX ``aligned`` block, ready to paste into a paper: the
        definition, each backprop step as the chain rule then in matrix form, each gradient
        and the Hessian blocks computed so far, with shapes (see ``symdl.latex``)."""
        from symdl.printing.latex import derivation_latex

        return derivation_latex(self)

    def _repr_latex_(self) -> str:
        return "$$" + self.to_latex() + "$$"

    def _repr_html_(self) -> str:
        from symdl.printing.html import derivation_html

        return derivation_html(
            self.title, {symbol_name(p): _parameter_shape(p) for p in self.wrt},
            {name: leaf.shape for name, leaf in self.leaves.items()}, self.output.shape,
            self.to_latex())


def _require_printable(node: ir.Node, inline: bool, by_name: set[int]) -> None:
    """Raises ``ClosedFormTooLargeError`` when ``node`` printed (``by_name``: the named nodes
    it keeps by name) would exceed ``WRITTEN_OUT_LIMIT`` IR nodes (one pass over the DAG)."""
    size = written_out_size(node, inline, by_name)
    if size <= WRITTEN_OUT_LIMIT:
        return
    message = (f"this result written out as one expression has {size:,} IR nodes (the limit "
               f"is symdl.ir.naming.WRITTEN_OUT_LIMIT = {WRITTEN_OUT_LIMIT:,}). ")
    if inline and written_out_size(node, inline=False) <= WRITTEN_OUT_LIMIT:
        raise ClosedFormTooLargeError(
            message + "Ask for it in terms of the named steps instead: "
            "der.gradient(p, inline=False), der.hessian(p, q, inline=False) or "
            "der.equations()")
    raise ClosedFormTooLargeError(
        message + "Its shared subexpressions of rank 3 or more have no names to print it "
        "by. Compute it instead: der.compile() (kernels of every Hessian block computed so "
        "far), der.evaluate(values) or der.compile(hvp=True) for Hessian-vector products")


def _numpy_values(values: Mapping[str, object]) -> dict[str, object]:
    """Torch tensors among ``values`` as NumPy arrays (see ``symdl.kernels.kernel.as_numpy``)."""
    from symdl.kernels.kernel import as_numpy

    if not isinstance(values, Mapping):
        raise EvaluationError(
            f"values must be a dict of arrays by name, e.g. {{'X': X, 'w': w}}; got "
            f"{type(values).__name__}")
    return {name: as_numpy(name, value) for name, value in values.items()}


def _leaves_under(roots: list[ir.Node]) -> list[ir.Leaf]:
    return [n for n in ir.topological_order(roots) if isinstance(n, ir.Leaf)]


def _parameter_list(wrt: object) -> list:
    """``wrt`` as a list, with typed errors for what is not a collection of parameters."""
    if wrt is None:
        raise DerivationError(
            "derive() needs wrt=[...], the parameters to differentiate with respect to, e.g. "
            "symdl.derive(loss, wrt=[w]) with w = sp.MatrixSymbol('w', d, 1)")
    if isinstance(wrt, sp.Basic):
        return [wrt]
    if isinstance(wrt, (str, bytes)):
        raise DerivationError(
            f"wrt={wrt!r} is a string: pass the symbol objects themselves, e.g. wrt=[w] with "
            "w = sp.MatrixSymbol('w', d, 1)")
    try:
        return list(wrt)
    except TypeError:
        raise DerivationError(
            f"wrt must be a list of parameters (Symbols, MatrixSymbols or IndexedBases), e.g. "
            f"wrt=[w]; got {type(wrt).__name__} {wrt!r}") from None


def _check_value(expr: object, where: str) -> sp.Basic:
    """A definition (or one step's) as SymPy, refusing what is not a number-valued
    expression before the translator meets it."""
    if expr is None:
        raise DefinitionError(
            f"{where} is None: pass a SymPy expression (did a function that builds it forget "
            "to return it?)")
    if isinstance(expr, (str, bytes)):
        raise DefinitionError(
            f"{where} is the string {expr!r}: build it from SymPy symbols (x = sp.Symbol('x', "
            "real=True); loss = x**2), not from text")
    if isinstance(expr, np.ndarray) or (
            isinstance(expr, sp.MatrixBase) and not isinstance(expr, sp.Basic)):
        raise DefinitionError(
            f"{where} is an explicit array of type {type(expr).__name__}: write it with "
            "MatrixSymbols of symbolic shape (X = sp.MatrixSymbol('X', n, d))")
    try:
        value = sp.sympify(expr, strict=True)
    except sp.SympifyError as exc:
        raise DefinitionError(
            f"{where} is a {type(expr).__name__}, not a SymPy expression: build it from "
            "SymPy symbols and symdl's functions") from exc
    if isinstance(value, sp.logic.boolalg.Boolean) and not isinstance(value, sp.Expr):
        # (a Symbol is a Boolean too, and a value)
        raise DefinitionError(
            f"{where} is the condition {value}, not a number: a definition computes a value "
            "(write conditions inside sp.Piecewise or with Heaviside)")
    if isinstance(value, sp.Lambda):
        raise DefinitionError(
            f"{where} is the function {value}, not a value: apply it to its arguments, or "
            "use its body")
    return value


def _as_steps(definition: Definition) -> list[tuple[sp.Basic | None, sp.Basic]]:
    if definition is None or isinstance(definition, (sp.Basic, int, float, str, bytes,
                                                     np.ndarray, np.number, sp.MatrixBase)):
        definition = _check_value(definition, "the definition")
        check_size(definition)
        return [(None, definition)]
    if not isinstance(definition, (Mapping, Iterable)):
        raise DefinitionError(
            f"the definition is a {type(definition).__name__}: pass a SymPy expression (the "
            "loss) or a list of (symbol, definition) steps")
    if isinstance(definition, Mapping):
        definition = list(definition.items())
    steps = []
    for item in definition:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise DefinitionError(
                "a model is a list of (symbol, definition) pairs, e.g. [(Z1, X*W1), (A1, "
                f"symdl.tanh(Z1)), (L, ...)]; got {item!r}"
            )
        symbol, expr = item
        if isinstance(symbol, sp.IndexedBase) and isinstance(expr, Recurrence):
            _check_recurrence_name(symbol, expr)
        elif not isinstance(symbol, (sp.Symbol, sp.MatrixSymbol, sp.IndexedBase, sp.Indexed)):
            raise DefinitionError(
                "the name of an intermediate must be a Symbol, MatrixSymbol, IndexedBase "
                f"with a shape (a tensor) or its entry Y[b, i, j, c], got {symbol!r}"
            )
        expr = _check_value(expr, f"the definition of {symbol}")
        if isinstance(symbol, sp.MatrixSymbol):
            if not isinstance(expr, MatrixExpr) or tuple(expr.shape) != tuple(symbol.shape):
                shape = tuple(expr.shape) if isinstance(expr, MatrixExpr) else ()
                from symdl.errors import ShapeMismatchError

                raise ShapeMismatchError(
                    f"intermediate {symbol.name} is declared {symbol.shape[0]} x "
                    f"{symbol.shape[1]} but its definition has shape {shape}",
                    tuple(symbol.shape), shape,
                )
        check_size(expr, f"the definition of {symbol}")
        steps.append((symbol, expr))
    if not steps:
        raise DefinitionError("the model has no steps")
    return steps


def _check_recurrence_name(symbol: sp.IndexedBase, expr: Recurrence) -> None:
    """A recurrence's states are named by an ``IndexedBase`` of their shape."""
    if symbol.shape is None or tuple(symbol.shape) != tuple(expr.shape):
        from symdl.errors import ShapeMismatchError

        raise ShapeMismatchError(
            f"the states of a scan have shape {tuple(expr.shape)}: name them "
            f"IndexedBase('{symbol.label}', shape={tuple(expr.shape)}), got shape "
            f"{symbol.shape}", tuple(expr.shape), tuple(symbol.shape or ()))


def _check_parameter(p: object) -> Parameter:
    if isinstance(p, (sp.MatrixSymbol, sp.IndexedBase)):
        return p
    if isinstance(p, sp.Symbol):
        if p.is_integer:
            raise DerivationError(
                f"{p} is declared integer; a parameter must be real to be differentiated. "
                "Declare it with sp.Symbol(name, real=True)"
            )
        return p
    raise DerivationError(
        f"cannot differentiate with respect to {p!r} ({type(p).__name__}): a parameter must "
        "be a Symbol, MatrixSymbol or IndexedBase: pass the symbol object itself, e.g. "
        "wrt=[w] with w = sp.MatrixSymbol('w', d, 1)"
    )


def derive(definition: Definition, wrt: Iterable[Parameter], hessian: bool = False) -> Derivation:
    """Derives gradients (and Hessians) of a definition, for symbolic shapes.

    Args:
        definition: a scalar SymPy expression (a loss); a matrix expression (for Jacobians);
            or a model, a list of ``(symbol, definition)`` pairs whose later definitions use
            the earlier symbols and whose last entry is the output.
        wrt: the parameters, each a ``MatrixSymbol``, ``Symbol`` or ``IndexedBase``.
        hessian: compute every Hessian block now (they are computed on demand otherwise).

    Returns:
        A ``Derivation``.

    Raises:
        DefinitionError: the definition is malformed (``ShapeMismatchError`` for shapes that
            do not agree, ``UnsupportedError`` for functions symdl does not differentiate).
        DerivationError: a parameter is not a symbol.

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> n, d = sp.symbols("n d", integer=True, positive=True)
        >>> X, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1)
        >>> y = sp.MatrixSymbol("y", n, 1)
        >>> der = symdl.derive(symdl.mse(X * w, y), wrt=[w])
        >>> der.gradient(w)
        (2/n)*X.T*(X*w - y)
    """
    return Derivation(definition, wrt, hessian=hessian)


def compile_expressions(outputs: Mapping[str, sp.Basic], title: str = "",
                        jit: bool = True) -> Kernel:
    """Numba kernels for plain expressions (no derivative): an optimizer update, a forward
    pass. Each output is computed into an array of its expression's shape.

    Args:
        outputs: output name -> a matrix or scalar SymPy expression over shared symbols. The
            results are keyed ``Named(name)`` (``symdl.ir.keys``), read by the name itself
            (``result.outputs["W"]``); any non-empty string is a name.
        title: what the kernel computes, for the generated module's header.
        jit: compile with Numba (``False``: run the same generated source as plain Python).

    Example:
        >>> import numpy as np
        >>> import sympy as sp
        >>> import symdl
        >>> n = sp.Symbol("n", integer=True, positive=True)
        >>> p, g = sp.MatrixSymbol("p", n, 1), sp.MatrixSymbol("g", n, 1)
        >>> step = symdl.compile_expressions({"p_new": p - g / 10}, title="SGD", jit=False)
        >>> step(p=np.ones((2, 1)), g=np.ones((2, 1))).outputs["p_new"].ravel().tolist()
        [0.9, 0.9]
    """
    from symdl.kernels.kernel import Kernel

    if not isinstance(outputs, Mapping) or not outputs:
        raise DefinitionError(
            "compile_expressions takes a non-empty dict of output name -> SymPy expression, "
            f"e.g. {{'W': W - lr * G}}; got {outputs!r:.80}")
    for name in outputs:
        if not isinstance(name, str):
            raise DefinitionError(f"output names must be strings, got {name!r}")
    exprs = [_check_value(e, f"output {name!r}") for name, e in outputs.items()]
    translator = Translator(dimension_symbols(exprs))
    for name in outputs:
        if not name:
            raise DefinitionError("an output name must be a non-empty string, got ''")
    nodes = {Named(name): translate_matrix_or_scalar(translator, e) for name, e in
             zip(outputs, exprs, strict=True)}
    return Kernel(nodes, list(translator.leaves.values()), title or ", ".join(outputs), jit=jit)


def evaluate(expr: sp.Basic | IndexForm, values: Mapping[str, np.ndarray | float],
             dims: Mapping[sp.Symbol, int]) -> np.ndarray:
    """Evaluates a SymPy expression over matrices (or an ``IndexForm``) with NumPy.

    This is how a derived formula is checked: bind the dimensions, give arrays by name.

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> n, d = sp.symbols("n d", integer=True, positive=True)
        >>> X = sp.MatrixSymbol("X", n, d)
        >>> float(symdl.evaluate(symdl.sum(X), {"X": [[1.0, 2.0], [3.0, 4.0]]}, {n: 2, d: 2}))
        10.0
    """
    values = _numpy_values(values)
    if not isinstance(dims, Mapping):
        raise EvaluationError(
            f"dims must be a dict binding each dimension symbol to a size, e.g. {{n: 5, d: 3}}; "
            f"got {type(dims).__name__}")
    dim_symbols = set(dims)
    translator = Translator(dim_symbols)
    if isinstance(expr, IndexForm):
        translator.index_dims.update(zip(expr.indices, expr.shape, strict=False))
        node, indices = translator.indexed(expr.expr)
        missing = [i for i in expr.indices if i not in indices]
        labels = {i: k for k, i in enumerate(indices)}
        if missing:
            extra = ir.ones(tuple(expr.shape[expr.indices.index(i)] for i in missing))
            for i in missing:
                labels[i] = len(labels)
            node = ir.einsum(
                [node, extra], [tuple(range(len(indices))), tuple(labels[i] for i in missing)],
                tuple(labels[i] for i in expr.indices),
            )
        else:
            node = ir.einsum([node], [tuple(range(len(indices)))],
                             tuple(labels[i] for i in expr.indices))
        node = rewrites.stabilize_one(node)
    else:
        node = translate_matrix_or_scalar(translator, sp.sympify(expr))
    (result,) = evaluate_nodes([node], values, dims)
    return result


def _refuse_index_arrays(wrt: Sequence[Parameter], output: ir.Node) -> None:
    """An integer index array (``idx`` in ``W[idx[b], j]``) picks entries: it has no
    derivative, and finite differences cannot move it."""
    arrays = index_arrays([output])
    for p in wrt:
        if symbol_name(p) in arrays:
            raise DerivationError(
                f"{p} is an integer index array (it picks rows of a table): it has no "
                "derivative; leave it out of wrt=[...] and pass its values as an input")
