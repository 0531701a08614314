"""``symdl.check``: every output of a kernel against finite differences and a reference.

What is compared, for each output of the kernel:

* ``grad:p`` against central differences of ``value`` in ``p``;
* ``hessian:p,q`` against central differences of ``grad:p`` in ``q``;
* ``hvp:p`` against the central difference of ``grad:p`` along the kernel's direction
  inputs (``v_q``, named in ``Kernel.hvp_inputs``; all of them at once, as the product is
  defined);
* with a ``Derivation``: ``grad:p`` against the complex-step derivative of the SymPy
  definition (when every function in it has an analytic continuation; the report says why
  not otherwise), and the value, gradients and Hessian blocks against an independent
  evaluation of the SymPy expressions (``symdl.verify.reference``: explicit entries and
  ``sympy.lambdify``); with a bare ``Kernel``: every output against NumPy evaluation of its IR.

Finite differences: central differences with step ``h = eps**(1/5) * max(1, |x|)`` (``eps``
of float64, the precision the numeric side is always computed in), sharpened by one
Richardson extrapolation ``(4 D(h/2) - D(h)) / 3``, whose error ``O(h^4) + O(eps/h)`` that
step balances; for definitions with kinks and for a bare ``Kernel`` the step is
``eps**(1/3) * max(1, |x|)``, so that both points stay on one side of a kink. A parameter
with at most ``ENTRYWISE_MAX`` entries is checked entry by entry; a larger one along
``DIRECTIONS`` random unit directions (the analytic side contracted with the direction).

Tolerances (``DEFAULT_TOLERANCES``, overridable with ``rtol=`` and ``atol=``): an entry
passes when ``|analytic - numeric| <= atol + rtol * scale`` with ``scale = max(|numeric|,
max |numeric| over the block)``, so that an entry that is tiny next to the rest of its
block is not held to a relative error finite differences cannot reach. The relative error
reported is ``|analytic - numeric| / max(scale, atol / rtol)`` (finite where a whole block is
zero). An entry that is NaN or infinite on either side fails, and so does the report. float64:
``rtol=1e-6, atol=1e-9``; float32 (the kernel runs in float32, the reference in float64
on the same float32-rounded inputs): ``rtol=2e-3, atol=1e-5``.

Test points: seeded (``seed=``), dimensions bound to small odd distinct sizes (3, 5, 7,
...), ordered so that every inverted product (a Gram matrix ``(A^T A)^{-1}``) can be
nonsingular; entries normal with standard deviation ``fan ** -0.25``, ``fan`` the sizes the
input is contracted over in a product (so products and the sigmoids, tanhs and softmaxes
after them stay away from saturation); inputs under ``log``/``sqrt``/fractional powers of a
variable (and scalar symbols declared positive) drawn from [0.5, 2]; a point where the
kernel cannot evaluate (a singular solve, a non-finite output) is drawn again (``DRAWS``
tries, with a note); with kinks (``NON_SMOOTH_FUNCTIONS``)
entries with ``|x| < KINK_MARGIN`` are pushed out to ``|x| + KINK_MARGIN``. A derivation
module may define ``sample_inputs(rng, dims) -> dict[str, np.ndarray]`` for restricted
inputs (probabilities, one-hot labels, variances); ``symdl check NAME`` passes it on.

Cost: the SymPy reference writes every composite matrix subexpression out entry by entry
(each its own lambdified piece) and runs under ``REFERENCE_BUDGET`` seconds; a reference
that would exceed it (estimated before printing, or found while building), or that SymPy
cannot evaluate, is a row saying "not run" or "not applicable" and why.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixExpr

from symdl.derivation import Derivation
from symdl.errors import EvaluationError, SymdlError
from symdl.ir.assumptions import conform, declared_checks, step_limit
from symdl.ir.keys import HVP, Gradient, HessianBlock, OutputKey, Value
from symdl.kernels.kernel import Kernel
from symdl.primitives.registry import NON_SMOOTH_FUNCTIONS
from symdl.verify import reference

ENTRYWISE_MAX = 64
"""A parameter with at most this many entries is checked entry by entry; larger ones along
random directions."""
DIRECTIONS = 4
"""Random unit directions for parameters larger than ``ENTRYWISE_MAX``."""
REFERENCE_MAX_ENTRIES = 1500
"""The SymPy reference runs only when every input and output has at most this many entries."""
REFERENCE_BUDGET = 10.0
"""Seconds the SymPy reference (and complex step) may take in all; what would take longer
is reported as not run (``check(..., reference_budget=)`` changes it)."""
DRAWS = 3
"""Drawn test points tried before giving up on one where the kernel evaluates (a singular
matrix to solve, a non-finite value)."""
KINK_MARGIN = 0.05
SIZES = (3, 5, 7, 9, 11, 13)
COMPLEX_STEP = 1e-30


@dataclass(frozen=True)
class Tolerance:
    """``|analytic - numeric| <= atol + rtol * scale`` (see the module docstring)."""

    rtol: float
    atol: float


DEFAULT_TOLERANCES = {
    "float64": Tolerance(rtol=1e-6, atol=1e-9),
    "float32": Tolerance(rtol=2e-3, atol=1e-5),
}


class GradientCheckError(SymdlError, AssertionError):
    """A derivative disagrees with its numeric estimate; ``rows`` holds the failures."""

    def __init__(self, message: str, rows: list[CheckRow]):
        super().__init__(message)
        self.rows = rows


@dataclass(frozen=True)
class CheckRow:
    """One compared entry. ``output`` is the output's key (``symdl.ir.keys``; it equals its
    spelling, ``"grad:w"``)."""

    output: OutputKey | str
    parameter: str
    entry: str
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float
    tolerance: float
    method: str
    passed: bool


@dataclass(frozen=True)
class Skipped:
    """A comparison that did not run: the reference would exceed its time budget, or SymPy
    cannot evaluate it; ``reason`` says which (in seconds for the budget)."""

    output: OutputKey | str
    parameter: str
    method: str
    reason: str


@dataclass
class CheckReport:
    """The outcome of ``symdl.check``: one row per compared entry, notes on what was not
    applicable and why, and error-against-step curves for ``plot``."""

    rows: list[CheckRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dtype: str = "float64"
    seed: int = 0
    dims: dict[str, int] = field(default_factory=dict)
    tolerance: Tolerance = DEFAULT_TOLERANCES["float64"]
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether something was compared, every row passed and no error is NaN or inf."""
        return bool(self.rows) and all(
            r.passed and math.isfinite(r.abs_error) and math.isfinite(r.rel_error)
            for r in self.rows)

    @property
    def failures(self) -> list[CheckRow]:
        return [r for r in self.rows if not r.passed]

    @property
    def max_rel_error(self) -> float:
        """The largest relative error; NaN when any is NaN (``max`` would skip it)."""
        return _worst([r.rel_error for r in self.rows])

    def summary(self) -> list[dict]:
        """One line per (output, parameter, method): entries, worst errors, passed; the
        output by its spelling (``"grad:w"``) and as data (``"key"``: kind and names)."""
        groups: dict[tuple[OutputKey | str, str, str], list[CheckRow]] = {}
        for r in self.rows:
            groups.setdefault((r.output, r.parameter, r.method), []).append(r)
        lines = []
        for (output, parameter, method), rows in groups.items():
            worst = max(rows, key=lambda r: r.abs_error / r.tolerance if r.tolerance else 0.0)
            lines.append({"output": str(output), "key": _key_data(output),
                          "parameter": parameter, "method": method, "entries": len(rows),
                          "max_abs_error": _worst([r.abs_error for r in rows]),
                          "max_rel_error": _worst([r.rel_error for r in rows]),
                          "tolerance": worst.tolerance, "passed": all(r.passed for r in rows)})
        return lines

    def __str__(self) -> str:
        head = ("output", "parameter", "method", "entries", "max abs err", "max rel err",
                "tol", "")
        body = [(s["output"], s["parameter"], s["method"], str(s["entries"]),
                 f"{s['max_abs_error']:.1e}", f"{s['max_rel_error']:.1e}",
                 f"{s['tolerance']:.1e}", "ok" if s["passed"] else "FAILED")
                for s in self.summary()]
        body += [(str(k.output), k.parameter, k.method, "-", "-", "-", "-", k.reason)
                 for k in self.skipped]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in [head, *body]]
        dims = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        verdict = "passed" if self.ok else f"FAILED ({len(self.failures)} entries)"
        lines.insert(0, f"gradient check {verdict}: {self.dtype}, seed {self.seed}"
                     + (f", {dims}" if dims else "")
                     + f", rtol {self.tolerance.rtol:g}, atol {self.tolerance.atol:g}")
        for r in self.failures[:10]:
            lines.append(f"  FAILED {r.output!s} / {r.parameter}[{r.entry}] ({r.method}): "
                         f"analytic {r.analytic:.8g}, numeric {r.numeric:.8g}, abs error "
                         f"{r.abs_error:.2e}, rel error {r.rel_error:.2e} > tol {r.tolerance:.2e}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from symdl.printing.html import check_report_html

        text = str(self).splitlines()
        return check_report_html(
            text[0], self.ok, self.summary(),
            [(k.output, k.parameter, k.method, k.reason) for k in self.skipped],
            [line.strip() for line in text if line.startswith("  FAILED")], self.notes)

    def to_dict(self) -> dict:
        """Everything in the report as JSON-able data."""
        return {"ok": self.ok, "max_rel_error": self.max_rel_error, "dtype": self.dtype,
                "seed": self.seed, "dims": dict(self.dims), "tolerance": asdict(self.tolerance),
                "summary": self.summary(), "notes": list(self.notes),
                "skipped": [_with_key(k) for k in self.skipped],
                "rows": [_with_key(r) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_latex(self) -> str:
        """The summary as a LaTeX ``tabular`` (booktabs rules)."""
        # Output and parameter names are user strings: the one escaping of symdl.latex (^^5c
        # and the like included).
        from symdl.printing.latex import escape_text as tex

        lines = [r"\begin{tabular}{lllrrrrl}", r"\toprule",
                 r"output & parameter & method & entries & max abs err & max rel err & tol & \\",
                 r"\midrule"]
        for s in self.summary():
            lines.append(" & ".join([tex(s["output"]), tex(s["parameter"]), tex(s["method"]),
                                     str(s["entries"]), f"{s['max_abs_error']:.1e}",
                                     f"{s['max_rel_error']:.1e}", f"{s['tolerance']:.1e}",
                                     "ok" if s["passed"] else r"\textbf{FAILED}"]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raises ``GradientCheckError`` naming the worst failing entry."""
        failures = self.failures
        if not failures:
            if not self.rows:
                raise GradientCheckError("nothing was checked: the kernel has no derivative "
                                         "outputs and no reference", [])
            return
        r = max(failures, key=lambda r: r.abs_error / r.tolerance)
        raise GradientCheckError(
            f"{len(failures)} of {len(self.rows)} checked entries fail; worst: output "
            f"{r.output}, parameter {r.parameter}, entry {r.entry} ({r.method}): analytic "
            f"{r.analytic:.10g}, numeric {r.numeric:.10g}, abs error {r.abs_error:.3e}, rel "
            f"error {r.rel_error:.3e}, tolerance {r.tolerance:.3e}", failures)

    def plot(self, path: str) -> None:
        """Draws, per output, the finite-difference error against the step on log-log axes."""
        from symdl.verify.plot import plot_curves

        plot_curves(self.curves, path, title=f"finite-difference error ({self.dtype} kernel)")


def _key_data(output: OutputKey | str) -> dict:
    """An output as JSON-able data: ``{"kind": "hessian", "names": ["p", "q"]}`` (its
    spelling alone is ambiguous to split where names hold commas)."""
    return output.to_dict() if isinstance(output, OutputKey) else {"kind": "named",
                                                                   "names": [str(output)]}


def _with_key(entry: CheckRow | Skipped) -> dict:
    data = {f.name: getattr(entry, f.name) for f in fields(entry)}
    return {**data, "output": str(entry.output), "key": _key_data(entry.output)}


def _worst(errors: list[float]) -> float:
    """The largest error; NaN when any is NaN (``max`` would skip it by where it stands)."""
    if any(math.isnan(e) for e in errors):
        return math.nan
    return max(errors, default=0.0)


# --------------------------------------------------------------------------------------------
# Finite differences


def _richardson(g: Callable[[float], np.ndarray], h: float) -> np.ndarray:
    """d/dt g at 0 by central differences at h and h/2, Richardson-extrapolated."""
    d1 = (g(h) - g(-h)) / (2 * h)
    d2 = (g(h / 2) - g(-h / 2)) / h
    return (4 * d2 - d1) / 3


def _fd_entrywise(f: Callable[[dict], np.ndarray], values: dict, name: str,
                  limit: float = math.inf, power: float = 1 / 3) -> np.ndarray:
    """∂f/∂values[name] entry by entry: shape f.shape + shape of the parameter; steps at most
    ``limit`` (probes stay inside the input's declared sign, which kernels enforce)."""
    x = np.asarray(values[name], dtype=np.float64)
    eps = np.finfo(np.float64).eps
    columns = []
    for idx in np.ndindex(*x.shape):
        def g(t, idx=idx):
            moved = x.copy()
            moved[idx] += t
            return np.asarray(f({**values, name: moved if x.shape else float(moved)}),
                              dtype=np.float64)
        columns.append(_richardson(g, min(eps ** power * max(1.0, abs(float(x[idx]))),
                                          limit)))
    out = np.stack(columns, axis=-1) if columns else np.zeros(0)
    return out.reshape(out.shape[:-1] + x.shape)


def _fd_directional(f: Callable[[dict], np.ndarray], values: dict,
                    directions: Mapping[str, np.ndarray], step: float | None = None,
                    limits: Mapping[str, float] | None = None,
                    power: float = 1 / 3) -> np.ndarray:
    """The derivative of f along ``directions`` (by input name), all inputs moved at once;
    no input moves by more than its ``limits`` entry."""
    eps = np.finfo(np.float64).eps
    # The step moves every input in ``directions`` at once: scaled to the smallest of them,
    # so that a small input next to a large one (a decay factor next to a step count) is not
    # moved by a step sized for the large one.
    scale = min([max(1.0, float(np.max(np.abs(values[k])))) for k in directions], default=1.0)
    if step is None:
        step = eps ** power * scale
        for k, u in directions.items():
            reach = float(np.max(np.abs(u))) if np.size(u) else 0.0
            if limits and k in limits and reach > 0:
                step = min(step, limits[k] / reach)

    def g(t):
        moved = {k: np.asarray(values[k], dtype=np.float64) + t * u
                 for k, u in directions.items()}
        moved = {k: (float(v) if np.ndim(values[k]) == 0 else v) for k, v in moved.items()}
        return np.asarray(f({**values, **moved}), dtype=np.float64)

    return _richardson(g, step)


# --------------------------------------------------------------------------------------------
# Comparing


class _Collector:
    def __init__(self, report: CheckReport, tol: Tolerance):
        self.report = report
        self.tol = tol

    def skip(self, output: OutputKey | str, parameter: str, method: str, reason: str) -> None:
        """Records a comparison that did not run, and why (a row of its own in the table)."""
        self.report.skipped.append(Skipped(output, parameter, method, reason))

    def scale_floor(self) -> float:
        """The scale below which the absolute tolerance governs: ``atol / rtol``."""
        if self.tol.rtol > 0:
            return self.tol.atol / self.tol.rtol
        return self.tol.atol

    def compare(self, output: OutputKey | str, parameter: str, analytic, numeric, method: str,
                labels: list[str] | None = None) -> None:
        a = np.asarray(analytic, dtype=np.float64).ravel()
        n = np.asarray(numeric, dtype=np.float64).ravel()
        if a.size != n.size:
            self.report.rows.append(CheckRow(output, parameter, "shape", math.nan, math.nan,
                                             math.inf, math.inf, 0.0, method, False))
            return
        finite = n[np.isfinite(n)]
        block = float(np.max(np.abs(finite))) if finite.size else 0.0
        floor = self.scale_floor()
        shape = np.shape(analytic)
        for k in range(a.size):
            err = abs(a[k] - n[k])
            scale = max(abs(n[k]), block)
            tolerance = self.tol.atol + self.tol.rtol * scale
            # Relative to the block's scale, and below atol/rtol (where the absolute tolerance
            # governs) to that floor: an entry compared with an all-zero block (a Hessian block
            # that is zero, computed as 1e-21) has a finite relative error, not inf.
            if not (math.isfinite(err) and math.isfinite(scale)):
                rel = math.nan if math.isnan(err) else math.inf
            else:
                rel = err / max(scale, floor) if max(scale, floor) > 0 else (
                    0.0 if err == 0 else math.inf)
            label = labels[k] if labels else (
                ",".join(map(str, np.unravel_index(k, shape))) if shape else "")
            # NaN compares False; an infinite analytic or numeric value never passes.
            passed = (bool(err <= tolerance) and math.isfinite(a[k]) and math.isfinite(n[k])
                      and math.isfinite(rel))
            self.report.rows.append(CheckRow(output, parameter, label, float(a[k]), float(n[k]),
                                             float(err), float(rel), float(tolerance), method,
                                             passed))


def _parameter(key: OutputKey) -> str:
    """The parameter an output is a derivative in (the report's "parameter" column)."""
    return key.names[-1] if key.names and not isinstance(key, Value) else ""


def _size(a) -> int:
    return int(np.size(a))


def _unit(rng: np.random.Generator, shape) -> np.ndarray:
    u = rng.standard_normal(shape)
    return u / max(float(np.linalg.norm(u)), 1e-300)


def _check_kernel(kernel: Kernel, values: dict, dtype: str, rng: np.random.Generator,
                  out: _Collector, curves: bool, power: float = 1 / 3) -> None:
    """The finite-difference checks of every output of ``kernel`` at ``values`` (float64)."""
    keys = kernel.output_keys
    inputs = set(kernel.input_names)
    cast = {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in values.items()}
    analytic = kernel.run(cast).outputs
    exact = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
             for k, v in cast.items()}  # the float32-rounded point, in float64

    def output(key: OutputKey):
        return lambda vals: kernel.run(vals).outputs[key]

    # Kernels refuse values outside an input's declared sign: probes stay inside.
    limits = {k: step_limit(symbol, exact[k]) for k, symbol in kernel.input_symbols.items()}

    for key in keys:
        if isinstance(key, Gradient) and Value() in keys and key.param in inputs:
            _compare_derivative(out, key, key.param, analytic[key], output(Value()), exact,
                                rng, extra_axes=0, limits=limits, power=power)
        elif isinstance(key, HessianBlock):
            if Gradient(key.p) in keys and key.q in inputs:
                _compare_derivative(out, key, key.q, analytic[key], output(Gradient(key.p)),
                                    exact, rng, extra_axes=np.ndim(exact[key.p]),
                                    limits=limits, power=power)
        elif isinstance(key, HVP) and Gradient(key.param) in keys:
            # By the kernel's own map: a direction is v_W_1 where the definition has a v_W.
            directions = {p: np.asarray(exact[v], dtype=np.float64)
                          for p, v in kernel.hvp_inputs.items()}
            numeric = _fd_directional(output(Gradient(key.param)), exact, directions,
                                      limits=limits, power=power)
            out.compare(key, ",".join(sorted(directions)), analytic[key],
                        numeric.reshape(np.shape(analytic[key])), "central-richardson along v")
    if curves:
        out.report.curves.update(_step_curves(kernel, exact, rng))


def _compare_derivative(out: _Collector, name: OutputKey, param: str, analytic, f, values, rng,
                        extra_axes: int, limits: Mapping[str, float] | None = None,
                        power: float = 1 / 3) -> None:
    """An output that is ∂f/∂param (f's axes first): entry by entry or along directions."""
    x = values[param]
    analytic = np.asarray(analytic, dtype=np.float64)
    f_shape = np.shape(f(values)) if extra_axes else ()
    if _size(x) <= ENTRYWISE_MAX:
        numeric = _fd_entrywise(f, values, param, (limits or {}).get(param, math.inf),
                                power)
        out.compare(name, param, analytic, numeric.reshape(analytic.shape), "central-richardson")
        return
    block = analytic.reshape(f_shape + np.shape(x)) if extra_axes else analytic.reshape(
        np.shape(x))
    for k in range(DIRECTIONS):
        u = _unit(rng, np.shape(x))
        a = np.tensordot(block, u, axes=np.ndim(x))
        numeric = _fd_directional(f, values, {param: u}, limits=limits, power=power)
        labels = [f"u{k}" + (f"[{','.join(map(str, i))}]" if f_shape else "")
                  for i in np.ndindex(*np.shape(a))]
        out.compare(name, param, a, numeric, "central-richardson along random u", labels)


def _step_curves(kernel: Kernel, values: dict, rng: np.random.Generator) -> dict:
    """Per derivative output: |plain central difference - analytic| / scale against h."""
    steps = np.logspace(-13, -1, 37)
    keys = kernel.output_keys
    inputs = set(kernel.input_names)
    curves: dict[OutputKey, tuple[list[float], list[float]]] = {}
    for name in keys:
        if isinstance(name, Gradient) and Value() in keys and name.param in inputs:
            f_name, p = Value(), name.param
        elif isinstance(name, HessianBlock) and Gradient(name.p) in keys:
            f_name, p = Gradient(name.p), name.q
        else:
            continue
        u = _unit(rng, np.shape(values[p]))
        analytic = np.asarray(kernel.run(values).outputs[name], dtype=np.float64)
        x_axes = np.ndim(values[p])
        f_shape = np.shape(kernel.run(values).outputs[f_name])
        exact = np.tensordot(analytic.reshape(f_shape + np.shape(values[p])), u, axes=x_axes)
        scale = max(float(np.max(np.abs(exact))), 1e-300)
        errors = []
        def g(t, p=p, u=u, f_name=f_name):
            moved = np.asarray(values[p], dtype=np.float64) + t * u
            return np.asarray(kernel.run({**values, p: moved if np.ndim(moved) else
                                          float(moved)}).outputs[f_name], dtype=np.float64)

        for h in steps:
            d = (g(h) - g(-h)) / (2 * h)
            errors.append(float(np.max(np.abs(d - exact))) / scale)
        curves[name] = ([float(h) for h in steps], errors)
    return curves


# --------------------------------------------------------------------------------------------
# Test points


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


def _has_kink(body: sp.Basic) -> bool:
    return bool(reference.uses_function(body, NON_SMOOTH_FUNCTIONS))


def _leaf_names(expr: sp.Basic) -> set[str]:
    names = {str(m.name) for m in expr.atoms(sp.MatrixSymbol)}
    names |= {str(s) for s in expr.free_symbols if isinstance(s, sp.Symbol)}
    return names


def _restrictions(der: Derivation) -> tuple[set[str], bool]:
    """Names that must be positive (under log, sqrt, fractional powers, declared positive)
    and whether the definition has kinks."""
    positive: set[str] = set()
    kink = False
    for _, expr in der.source_steps:
        for body, argument in _walk_functions(expr):
            kink = kink or _has_kink(body)
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
    must_be_positive, kink = _restrictions(der)
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
                given = np.asarray(given, dtype=np.float64)
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


def _draw_evaluable(der: Derivation, kernel: Kernel, seed: int, sample_inputs, dims,
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


# --------------------------------------------------------------------------------------------
# References


def _reference_checks(der: Derivation, kernel: Kernel, values: dict, bound: dict, dtype: str,
                      out: _Collector, budget_seconds: float) -> None:
    """Kernel outputs against SymPy's own evaluation; gradients by complex step.

    The reference runs under a time budget (``budget_seconds`` in all): what would exceed
    it, and what SymPy cannot write out (it raises, or recurses too deep), is reported as a
    skipped row saying why, and the finite-difference rows stand on their own."""
    cast = {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in values.items()}
    exact = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
             for k, v in cast.items()}
    analytic = kernel.run(cast).outputs
    largest = max(_size(v) for v in [*values.values(), *analytic.values()])
    if largest > REFERENCE_MAX_ENTRIES:
        out.report.notes.append(f"SymPy reference and complex step: not applicable (an input "
                                f"or output has {largest} > {REFERENCE_MAX_ENTRIES} entries)")
        return
    budget = reference.Budget(budget_seconds)
    grads = [Gradient(_name(p)) for p in der.wrt if Gradient(_name(p)) in analytic]
    hessians = [key for key in analytic if isinstance(key, HessianBlock)]

    def attempt(outputs: list[OutputKey], method: str, work: Callable[[], object]) -> object:
        try:
            budget.check()  # once it is spent, nothing more starts
            return work()
        except reference.ReferenceBudgetExceededError as exc:
            reason = f"not run: {exc} (check(..., reference_budget=seconds) sets it)"
        except RecursionError:
            reason = ("not applicable: SymPy recursed too deep writing it out entry by entry "
                      "(RecursionError)")
        except Exception as exc:  # noqa: BLE001 - SymPy raises anything; the reference is optional
            reason = f"not applicable: SymPy could not evaluate it ({type(exc).__name__}: {exc})"
        for name in outputs:
            out.skip(name, _parameter(name), method, reason)
        reasons.append(reason)
        return None

    reasons: list[str] = []
    forward = attempt([Value(), *grads, *hessians], "sympy reference",
                      lambda: reference.Chain(der.source_steps, bound, budget=budget))
    result = forward and attempt([Value(), *grads, *hessians], "sympy reference",
                                 lambda: forward(exact))
    if not result:
        # The complex step evaluates the same forward pass: it cannot run either.
        for name in grads:
            out.skip(name, name.param, "complex step", reasons[-1])
        return
    env, value = result
    out.compare(Value(), "", analytic[Value()],
                np.reshape(value, np.shape(analytic[Value()])), "sympy reference")
    if not der.is_scalar:
        return

    # The complex step first: it checks the gradients against the definition alone (the
    # backward reference evaluates symdl's printed equations), and costs one forward pass.
    _complex_step(der, analytic, exact, bound, forward, out, budget, attempt)

    def backward_pass():
        return reference.Chain(der.equations(), bound, budget=budget)(env)[0]

    env = attempt([*grads, *hessians], "sympy reference", backward_pass)
    if env is not None:
        for p in der.wrt:
            name = Gradient(_name(p))
            if name in analytic:
                out.compare(name, _name(p), analytic[name],
                            np.reshape(env["d" + _name(p)], np.shape(analytic[name])),
                            "sympy reference")
    if env is None:
        return
    for name in hessians:
        p, q = (next(w for w in der.wrt if _name(w) == s) for s in (name.p, name.q))

        def block(p=p, q=q):
            chain = reference.Chain([(None, der.hessian(p, q, inline=False))], bound,
                                    budget=budget)
            return chain(env)[1]

        result = attempt([name], "sympy reference", block)
        if result is not None:
            out.compare(name, _name(q), analytic[name],
                        np.reshape(result, np.shape(analytic[name])), "sympy reference")


def _complex_step(der: Derivation, analytic: dict, exact: dict, bound: dict, forward,
                  out: _Collector, budget, attempt) -> None:
    """Every gradient against the complex-step derivative of the SymPy definition."""
    grads = [Gradient(_name(p)) for p in der.wrt if Gradient(_name(p)) in analytic]
    blocking = sorted({f for body in forward.bodies
                       for f in reference.uses_function(body, reference.NOT_COMPLEX_STEPPABLE)})
    if blocking:
        out.report.notes.append(f"complex step: not applicable ({', '.join(blocking)} has no "
                                "analytic continuation)")
        return
    complex_forward = attempt(grads, "complex step", lambda: reference.Chain(
        der.source_steps, bound, complex_valued=True, budget=budget))
    if complex_forward is None:
        return
    for p in der.wrt:
        name, pname = Gradient(_name(p)), _name(p)
        if name not in analytic:
            continue

        def derivative(pname=pname):
            x = np.asarray(exact[pname], dtype=np.complex128)
            numeric = np.empty(np.shape(x))
            for idx in np.ndindex(*np.shape(x)):
                budget.check()
                moved = x.copy()
                moved[idx] += 1j * COMPLEX_STEP
                _, v = complex_forward({**exact, pname: moved if x.shape else moved.reshape(())})
                numeric[idx] = np.imag(v)
            return numeric

        numeric = attempt([name], "complex step", derivative)
        if numeric is not None:
            out.compare(name, pname, analytic[name],
                        numeric.reshape(np.shape(analytic[name])) / COMPLEX_STEP, "complex step")


def _name(p: sp.Basic) -> str:
    if isinstance(p, sp.MatrixSymbol):
        return str(p.name)
    if isinstance(p, sp.IndexedBase):
        return str(p.label)
    return str(p)


# --------------------------------------------------------------------------------------------
# Entry point


def check(target: Derivation | Kernel, *, seed: int = 0, dtype: str | None = None,
          rtol: float | None = None, atol: float | None = None,
          sample_inputs: Callable | None = None, dims: Mapping[sp.Symbol, int] | None = None,
          positive: tuple[str, ...] = (), hvp: bool = True, jit: bool = True,
          curves: bool = False, kernel: Kernel | None = None,
          reference_budget: float | None = None, **arrays) -> CheckReport:
    """Checks every output of a kernel against finite differences and a reference.

    Args:
        target: a ``Derivation`` (compiled here, with Hessian-vector products, inputs drawn
            when none are given) or a ``Kernel`` (then ``**arrays`` are required).
        seed: seeds the drawn inputs and the random directions.
        dtype: ``"float64"`` or ``"float32"``: the precision the kernel runs in (by default
            that of the given arrays, else float64).
        rtol, atol: override ``DEFAULT_TOLERANCES[dtype]``.
        sample_inputs: ``sample_inputs(rng, dims) -> {name: array}`` for restricted inputs.
        dims: sizes for some dimension symbols instead of the drawn ones.
        positive: names of inputs to draw from [0.5, 2].
        hvp: also compile and check Hessian-vector products (a ``Derivation``).
        jit: compile with Numba (``False``: the same source interpreted, for small tests).
        curves: also record error-against-step curves (for ``CheckReport.plot``).
        kernel: a kernel already compiled from the derivation (skips compiling).
        reference_budget: seconds the SymPy reference may take (default
            ``REFERENCE_BUDGET``); one that would take longer is reported as not run.
        **arrays: the inputs, by name.

    Returns:
        A ``CheckReport``; ``report.raise_if_failed()`` raises ``GradientCheckError``.

    Example:
        >>> import sympy as sp
        >>> import symdl
        >>> n, d = sp.symbols("n d", integer=True, positive=True)
        >>> X, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1)
        >>> y = sp.MatrixSymbol("y", n, 1)
        >>> der = symdl.derive(symdl.binary_cross_entropy_with_logits(X * w, y), wrt=[w])
        >>> report = symdl.check(der, jit=False)  # jit=False: interpreted, no Numba compile
        >>> report.ok, report.max_rel_error < 1e-6
        (True, True)
        >>> report.raise_if_failed()  # GradientCheckError when an output disagrees
    """
    try:
        return _check(target, seed=seed, dtype=dtype, rtol=rtol, atol=atol,
                      sample_inputs=sample_inputs, dims=dims, positive=positive, hvp=hvp,
                      jit=jit, curves=curves, kernel=kernel, reference_budget=reference_budget,
                      arrays=arrays)
    except SymdlError:
        raise
    except (Exception, RecursionError) as exc:
        # Every failure of check is typed; the cause stays chained for a bug report.
        raise CheckError(f"check could not complete: {type(exc).__name__}: {exc}") from exc


def _check(target, *, seed, dtype, rtol, atol, sample_inputs, dims, positive, hvp, jit,
           curves, kernel, reference_budget, arrays) -> CheckReport:
    if isinstance(target, Derivation):
        der = target
        kernel = kernel or der.compile(hvp=hvp and der.is_scalar, jit=jit)
    elif isinstance(target, Kernel):
        der, kernel = None, target
    else:
        raise CheckArgumentError(f"check() takes a symdl.Derivation or a compiled Kernel, got "
                                 f"{type(target).__name__}")
    rng = np.random.default_rng(seed + 1)
    redrawn = ""
    if arrays:
        missing = sorted(set(kernel.input_names) - set(arrays))
        if der is not None and missing:
            drawn, bound = draw_inputs(der, kernel, seed, sample_inputs, dims, positive)
            arrays = {**{k: drawn[k] for k in missing}, **arrays}
        values = {k: v for k, v in arrays.items()}
        given = [v.dtype for v in values.values() if isinstance(v, np.ndarray)]
        dtype = dtype or (str(given[0]) if given else "float64")
        bound = der.infer_dims(values) if der is not None else {}
    elif der is not None:
        values, bound, redrawn = _draw_evaluable(der, kernel, seed, sample_inputs, dims,
                                                 positive)
    else:
        raise CheckArgumentError("check(kernel) needs the kernel's inputs: check(k, " +
                                 ", ".join(f"{n}=..." for n in kernel.input_names) + ")")
    dtype = dtype or "float64"
    if dtype not in DEFAULT_TOLERANCES:
        raise CheckArgumentError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    base = DEFAULT_TOLERANCES[dtype]
    tol = Tolerance(base.rtol if rtol is None else rtol, base.atol if atol is None else atol)
    values = {k: (np.asarray(v, dtype=np.float64) if np.ndim(v) else float(v))
              for k, v in values.items()}
    report = CheckReport(dtype=dtype, seed=seed, dims={str(k): int(v) for k, v in bound.items()},
                         tolerance=tol)
    if redrawn:
        report.notes.append(redrawn)
    out = _Collector(report, tol)
    # Richardson's error is O(h^4) + O(eps/h): the step eps^(1/5) balances the two (rounding
    # error about eps^(4/5), a hundred times below the eps^(2/3) of the step eps^(1/3), which
    # only suits a plain central difference). A value computed with cancellation (log(1 -
    # sigmoid(z))) carries more rounding; at eps^(1/3) it failed correct gradients. Near a
    # kink (relu of a product) the smaller step keeps the points on one side.
    kink = der is not None and _restrictions(der)[1]
    _check_kernel(kernel, values, dtype, rng, out, curves,
                  power=1 / 3 if der is None or kink else 1 / 5)
    if der is not None:
        seconds = REFERENCE_BUDGET if reference_budget is None else reference_budget
        try:
            with _alarm(seconds + ALARM_GRACE, f"exceeded its {seconds:g} s budget "
                        f"(interrupted after {seconds + ALARM_GRACE:g} s)"):
                _reference_checks(der, kernel, values, bound, dtype, out, seconds)
        except reference.ReferenceBudgetExceededError as exc:  # between two attempts
            done = {(r.output, r.method) for r in report.rows}
            done |= {(k.output, k.method) for k in report.skipped}
            for name in kernel.output_keys:
                if not isinstance(name, HVP) and (name, "sympy reference") not in done:
                    out.skip(name, _parameter(name), "sympy reference", f"not run: {exc}")
    else:
        _ir_reference(kernel, values, dtype, out)
    return report


ALARM_GRACE = 1.0
"""Seconds past the reference budget after which a timer interrupts work that has no
checkpoint of its own (printing a long derivation, one large ``Sum`` written out)."""


@contextlib.contextmanager
def _alarm(seconds: float, message: str):
    """Raises ``ReferenceBudgetExceededError`` in the block after ``seconds`` (a real-time timer),
    where that is possible: in the main thread, on a system with ``SIGALRM``, and when no one
    else handles that signal. Elsewhere the budget's own checkpoints bound the work."""
    usable = (hasattr(signal, "SIGALRM") and math.isfinite(seconds)
              and threading.current_thread() is threading.main_thread()
              and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
              and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))
    if not usable:
        yield
        return

    def interrupt(signum, frame):
        raise reference.ReferenceBudgetExceededError(message)

    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _ir_reference(kernel: Kernel, values: dict, dtype: str, out: _Collector) -> None:
    from symdl.ir.evaluate import evaluate

    cast = {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in values.items()}
    exact = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
             for k, v in cast.items()}
    analytic = kernel.run(cast).outputs
    dims = {}
    for name, shape in kernel.inputs.items():
        for d, s in zip(shape, np.shape(exact[name]), strict=False):
            if isinstance(d, sp.Symbol):
                dims[d] = s
    roots = kernel.output_nodes
    results = evaluate(list(roots.values()), exact, dims)
    for name, result in zip(roots, results, strict=True):
        out.compare(name, "", analytic[name], np.reshape(result, np.shape(analytic[name])),
                    "numpy reference (IR)")


class CheckArgumentError(SymdlError, ValueError):
    """``check`` was called with something it cannot check."""


class CheckError(SymdlError, RuntimeError):
    """``check`` failed for a reason that is no wrong derivative (the cause is chained)."""
