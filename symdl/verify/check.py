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
import math
import signal
import threading
from collections.abc import Callable, Mapping

import numpy as np
import sympy as sp

from symdl.derivation import Derivation
from symdl.errors import SymdlError, UnsupportedError
from symdl.ir.assumptions import step_limit
from symdl.ir.keys import HVP, Gradient, HessianBlock, OutputKey, Value
from symdl.kernels.kernel import Kernel
from symdl.verify import reference
from symdl.verify.finite_differences import fd_directional, fd_entrywise
from symdl.verify.report import (
    DEFAULT_TOLERANCES,
    CheckArgumentError,
    CheckError,
    CheckReport,
    CheckRow,
    Skipped,
    Tolerance,
)
from symdl.verify.sampling import draw_evaluable, draw_inputs, restrictions

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
COMPLEX_STEP = 1e-30


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


def _floating(v: object) -> bool:
    """An array the check casts to its precision (integer index arrays stay integers)."""
    return isinstance(v, np.ndarray) and not np.issubdtype(v.dtype, np.integer)


def _precision(dtype: object) -> str:
    """``"float64"`` or ``"float32"`` from any NumPy spelling of it (``np.float32``,
    ``"f4"``, ``np.dtype("float32")``)."""
    try:
        name = np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        name = None
    if name not in DEFAULT_TOLERANCES:
        raise CheckArgumentError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    return name


def _integers(v: object) -> bool:
    return isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.integer)


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
    cast = {k: (v.astype(dtype) if _floating(v) else v) for k, v in values.items()}
    analytic = kernel.run(cast).outputs
    exact = {k: (v.astype(np.float64) if _floating(v) else v)
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
            numeric = fd_directional(output(Gradient(key.param)), exact, directions,
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
        numeric = fd_entrywise(f, values, param, (limits or {}).get(param, math.inf),
                                power)
        out.compare(name, param, analytic, numeric.reshape(analytic.shape), "central-richardson")
        return
    block = analytic.reshape(f_shape + np.shape(x)) if extra_axes else analytic.reshape(
        np.shape(x))
    for k in range(DIRECTIONS):
        u = _unit(rng, np.shape(x))
        a = np.tensordot(block, u, axes=np.ndim(x))
        numeric = fd_directional(f, values, {param: u}, limits=limits, power=power)
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
# References


def _reference_checks(der: Derivation, kernel: Kernel, values: dict, bound: dict, dtype: str,
                      out: _Collector, budget_seconds: float) -> None:
    """Kernel outputs against SymPy's own evaluation; gradients by complex step.

    The reference runs under a time budget (``budget_seconds`` in all): what would exceed
    it, and what SymPy cannot write out (it raises, or recurses too deep), is reported as a
    skipped row saying why, and the finite-difference rows stand on their own."""
    cast = {k: (v.astype(dtype) if _floating(v) else v) for k, v in values.items()}
    exact = {k: (v.astype(np.float64) if _floating(v) else v)
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


def check(target: Derivation | Kernel, *, seed: int = 0, dtype: str | type | None = None,
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
        dtype: ``"float64"`` or ``"float32"`` (or ``np.float32``, any NumPy spelling): the
            precision the kernel runs in (by default that of the given float arrays, else
            float64).
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
    hvp_note = ""
    if isinstance(target, Derivation):
        der = target
        if kernel is None:
            kernel, hvp_note = _compiled(der, hvp, jit)
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
        given = [v.dtype for v in values.values() if _floating(v)]
        dtype = dtype or (str(given[0]) if given else "float64")
        bound = der.infer_dims(values) if der is not None else {}
    elif der is not None:
        values, bound, redrawn = draw_evaluable(der, kernel, seed, sample_inputs, dims,
                                                 positive)
    else:
        raise CheckArgumentError("check(kernel) needs the kernel's inputs: check(k, " +
                                 ", ".join(f"{n}=..." for n in kernel.input_names) + ")")
    dtype = _precision(dtype or "float64")
    base = DEFAULT_TOLERANCES[dtype]
    tol = Tolerance(base.rtol if rtol is None else rtol, base.atol if atol is None else atol)
    values = {k: (v if _integers(v) else np.asarray(v, dtype=np.float64) if np.ndim(v)
                  else float(v)) for k, v in values.items()}
    report = CheckReport(dtype=dtype, seed=seed, dims={str(k): int(v) for k, v in bound.items()},
                         tolerance=tol)
    if redrawn:
        report.notes.append(redrawn)
    if hvp_note:
        report.notes.append(hvp_note)
    out = _Collector(report, tol)
    # Richardson's error is O(h^4) + O(eps/h): the step eps^(1/5) balances the two (rounding
    # error about eps^(4/5), a hundred times below the eps^(2/3) of the step eps^(1/3), which
    # only suits a plain central difference). A value computed with cancellation (log(1 -
    # sigmoid(z))) carries more rounding; at eps^(1/3) it failed correct gradients. Near a
    # kink (relu of a product) the smaller step keeps the points on one side.
    kink = der is not None and restrictions(der)[1]
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

    cast = {k: (v.astype(dtype) if _floating(v) else v) for k, v in values.items()}
    exact = {k: (v.astype(np.float64) if _floating(v) else v)
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


def _compiled(der: Derivation, hvp: bool, jit: bool) -> tuple[Kernel, str]:
    """The derivation's kernel with Hessian-vector products where asked for; without them,
    and a note saying why, where a primitive has no second derivative (singular values,
    eigenvalues): the gradients are still checked."""
    try:
        return der.compile(hvp=hvp and der.is_scalar, jit=jit), ""
    except UnsupportedError as exc:
        if not (hvp and der.is_scalar):
            raise
        return der.compile(hvp=False, jit=jit), f"Hessian-vector products: not checked ({exc})"
