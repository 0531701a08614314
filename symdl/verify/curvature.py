"""The curvature of a loss: its Hessian's spectrum, from Hessian-vector products alone.

The Hessian is that of the loss with respect to every parameter of the derivation at once
(the concatenation of the flattened parameters, in the derivation's ``wrt`` order); it is
never formed. Each product ``H v`` is one call of the derivation's HVP kernel
(``der.compile(hvp=True)``), so the cost of an analysis is a few hundred kernel calls:

- ``lanczos``: the Lanczos process with full reorthogonalisation (each new vector is
  orthogonalised against every earlier one, twice), so that its Ritz values converge to the
  extreme eigenvalues without the ghost copies plain Lanczos makes in floating point;
- ``extreme_eigenvalues``: the largest and smallest Ritz values, with their residual bounds
  ``|beta_k s_k|`` (an eigenvalue of ``H`` lies within that bound of each Ritz value);
- ``spectral_density``: stochastic Lanczos quadrature (Ubaru, Chen and Saad 2017): the
  Ritz values and the squared first components of their eigenvectors from several random unit
  probes are a quadrature of the spectral measure; each node is broadened by a Gaussian, and
  the density on a grid integrates to the dimension;
- ``hutchinson_trace``: ``tr H`` as the mean of ``z^T H z`` over Rademacher probes ``z``, with
  its standard error;
- ``analyze``: all of them, the condition number and the reading: negative eigenvalues (a
  saddle point, not a minimum), a (nearly) singular Hessian, or a condition number.

Seeds make every result reproducible: the same seed gives the same probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from symdl.define.symbols import symbol_name
from symdl.errors import SymdlError
from symdl.ir.keys import HVP

if TYPE_CHECKING:
    from symdl.derivation import Derivation
    from symdl.kernels.kernel import Kernel, KernelResult

ZERO_TOLERANCE = 1e-8
"""An eigenvalue within ``ZERO_TOLERANCE * |lambda|_max`` (or within its residual bound) of
zero is read as zero: the Hessian is then called singular, not ill-conditioned."""


class CurvatureError(SymdlError, ValueError):
    """A curvature analysis cannot run as asked (no HVP kernel, a non-scalar loss, bad
    options or inputs)."""


# -- the Hessian as an operator ----------------------------------------------------------------

def _hvp_arrays(result: KernelResult, params: list[str]) -> list[np.ndarray]:
    """The HVP of each parameter from a kernel result, in ``params`` order.

    The one place that knows how a kernel names its HVP outputs (the documented accessor
    ``KernelResult.hvp[name]``); scalar parameters come back as floats.
    """
    return [np.atleast_1d(np.asarray(result.hvp[p])) for p in params]


class HessianOperator:
    """``v -> H v`` for the Hessian of a scalar loss with respect to all its parameters.

    Attributes:
        params: the parameter names, in the order their entries are concatenated.
        shapes: each parameter's array shape (``()`` for a scalar).
        dim: the number of entries, the Hessian's order.
        dtype: the precision the kernel runs in.
        calls: how many products were computed (one kernel call each).
    """

    def __init__(self, kernel: Kernel, values: Mapping[str, object],
                 parallel: bool | None = None):
        """Args:
            kernel: a kernel with Hessian-vector products (``der.compile(hvp=True)``).
            values: every input the kernel reads other than the HVP directions: the
                parameters (the point where the Hessian is taken), the data and the
                hyperparameters, by name.
            parallel: the kernel's ``parallel=`` option (``None``: its own choice).
        """
        directions = dict(getattr(kernel, "hvp_inputs", {}) or {})
        if not directions:
            raise CurvatureError(
                "this kernel computes no Hessian-vector products; compile it with "
                "der.compile(hvp=True) (or pass the Derivation itself)")
        if not isinstance(values, Mapping):
            raise CurvatureError(f"values must be a dict of inputs by name, got "
                                 f"{type(values).__name__}")
        self.kernel = kernel
        self.params = list(directions)
        self._directions = [directions[p] for p in self.params]
        missing = [p for p in self.params if p not in values]
        if missing:
            raise CurvatureError(
                f"values has no {missing}: give the parameters at which to take the Hessian "
                f"(the kernel reads {kernel.input_names})")
        # Inputs the HVP kernel does not read (the labels of a loss whose Hessian does not
        # depend on them) are left out; a missing one is the kernel's KernelArgumentError.
        arrays = {k: v for k, v in values.items()
                  if k in kernel.input_names and k not in self._directions}
        self.shapes = [np.shape(np.asarray(arrays[p])) for p in self.params]
        self._sizes = [math.prod(s) for s in self.shapes]
        self._offsets = np.cumsum([0] + self._sizes)
        self.dim = int(self._offsets[-1])
        self._arrays = arrays
        floats = [np.asarray(a) for a in arrays.values() if np.ndim(a) > 0]
        self.dtype = np.dtype(np.float32) if floats and all(
            a.dtype == np.float32 for a in floats) else np.dtype(np.float64)
        self.calls = 0
        self.parallel = parallel

    def split(self, vector: np.ndarray) -> dict[str, np.ndarray | float]:
        """A flat vector as one array per parameter (shaped like it), by the direction's name."""
        parts = {}
        for name, shape, lo, hi in zip(self._directions, self.shapes, self._offsets[:-1],
                                       self._offsets[1:], strict=True):
            piece = vector[lo:hi]
            parts[name] = float(piece[0]) if shape == () else piece.reshape(shape)
        return parts

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        """``H @ vector`` for a flat vector of ``dim`` entries (in the kernel's precision)."""
        vector = np.ascontiguousarray(vector, dtype=self.dtype)
        if vector.shape != (self.dim,):
            raise CurvatureError(f"the vector must have shape ({self.dim},), got {vector.shape}")
        result = self.kernel.run({**self._arrays, **self.split(vector)}, parallel=self.parallel)
        self.calls += 1
        return np.concatenate([a.ravel() for a in _hvp_arrays(result, self.params)])

    def dense(self) -> np.ndarray:
        """The whole Hessian, column by column from products with unit vectors (``dim``
        kernel calls: for checks on small models only)."""
        eye = np.eye(self.dim, dtype=self.dtype)
        return np.column_stack([self(eye[:, j]) for j in range(self.dim)])


def hessian_operator(target: Derivation | Kernel, values: Mapping[str, object],
                     parallel: bool | None = None) -> HessianOperator:
    """The Hessian of a derivation's scalar loss (all parameters jointly) as an operator.

    Args:
        target: a ``Derivation`` (its HVP outputs are compiled, nothing else) or a kernel
            compiled with ``hvp=True``.
        values: the parameters, data and hyperparameters by name.
        parallel: the kernel's ``parallel=`` option (``None``: its own choice).

    Raises:
        CurvatureError: the loss is not a scalar, or the kernel has no HVP outputs.
    """
    from symdl.derivation import Derivation

    if isinstance(target, Derivation):
        if not target.is_scalar:
            raise CurvatureError("a Hessian spectrum needs a scalar loss; this derivation's "
                                 "value is a matrix")
        target = target.compile(hvp=True, outputs=[HVP(symbol_name(p)) for p in target.wrt])
    return HessianOperator(target, values, parallel=parallel)


# -- Lanczos ------------------------------------------------------------------------------------

@dataclass
class LanczosResult:
    """The tridiagonal matrix ``T = Q^T H Q`` of a Lanczos run.

    Attributes:
        alpha: its diagonal (``m`` entries).
        beta: its off-diagonal (``m - 1`` entries), then the last residual norm.
        basis: the ``m x dim`` orthonormal Lanczos vectors (rows), when kept.
    """

    alpha: np.ndarray
    beta: np.ndarray
    basis: np.ndarray | None = None

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """The Ritz values (ascending) and the eigenvectors of ``T`` (columns)."""
        m = self.steps
        tri = np.diag(self.alpha) + np.diag(self.beta[:m - 1], 1) + np.diag(self.beta[:m - 1], -1)
        return np.linalg.eigh(tri)

    def residuals(self) -> np.ndarray:
        """``|beta_m s_{m,i}|``: each Ritz value is within it of an eigenvalue of ``H``."""
        _, vectors = self.ritz()
        return np.abs(self.beta[-1] * vectors[-1, :])


def lanczos(matvec: Callable[[np.ndarray], np.ndarray], start: np.ndarray, steps: int,
            keep_basis: bool = False,
            stop: Callable[[LanczosResult], bool] | None = None) -> LanczosResult:
    """The Lanczos process with full reorthogonalisation, from ``start``.

    Args:
        matvec: ``v -> H v`` for a symmetric ``H``.
        start: the first vector (normalised here; must not be zero).
        steps: at most this many iterations (at most the dimension).
        keep_basis: return the Lanczos vectors too.
        stop: called every few iterations with the run so far; ``True`` stops it.

    Returns:
        The tridiagonal matrix's entries; it stops early on an invariant subspace (a residual
        norm below ``1e-12 * ||T||``: its Ritz values are then eigenvalues of ``H``).
    """
    start = np.asarray(start, dtype=np.float64)
    dim = start.shape[0]
    steps = min(int(steps), dim)
    norm = np.linalg.norm(start)
    if not norm > 0:
        raise CurvatureError("the Lanczos start vector is zero")
    basis = np.zeros((steps, dim))
    basis[0] = start / norm
    alpha, beta = [], []
    scale = 0.0
    for j in range(steps):
        # A copy: the product may be read-only (a JAX array) or the operator's own buffer.
        w = np.array(matvec(basis[j]), dtype=np.float64)
        a = float(basis[j] @ w)
        alpha.append(a)
        # Two passes of classical Gram-Schmidt against every earlier vector ("twice is
        # enough"): the basis stays orthogonal to working precision.
        for _ in range(2):
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        b = float(np.linalg.norm(w))
        beta.append(b)
        scale = max(scale, abs(a) + b + (beta[-2] if len(beta) > 1 else 0.0))
        if b <= 1e-12 * max(scale, np.finfo(float).tiny) or j + 1 == steps:
            break
        basis[j + 1] = w / b
        if stop is not None and (j + 1) % 5 == 0 and stop(
                LanczosResult(np.array(alpha), np.array(beta))):
            break
    m = len(alpha)
    return LanczosResult(np.array(alpha), np.array(beta), basis[:m] if keep_basis else None)


def _unit_start(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


@dataclass
class ExtremeEigenvalues:
    """The largest and smallest eigenvalues as Lanczos found them.

    Attributes:
        top, bottom: the largest and the smallest Ritz value.
        top_bound, bottom_bound: their residual bounds (an eigenvalue lies within each).
        iterations: Lanczos steps (one Hessian-vector product each).
        ritz: every Ritz value of the run, ascending.
    """

    top: float
    bottom: float
    top_bound: float
    bottom_bound: float
    iterations: int
    ritz: list[float] = field(repr=False)


def extreme_eigenvalues(matvec: Callable[[np.ndarray], np.ndarray], dim: int, *,
                        iterations: int = 80, tol: float = 1e-10,
                        seed: int = 0) -> ExtremeEigenvalues:
    """The top and bottom eigenvalues of ``H`` by Lanczos (full reorthogonalisation).

    Args:
        matvec: ``v -> H v`` (a ``HessianOperator``).
        dim: the dimension.
        iterations: at most this many products (all of them when ``dim`` is smaller: the
            Ritz values are then the eigenvalues).
        tol: stop when both extreme residual bounds are below ``tol * |lambda|_max``.
        seed: the seed of the random start vector.
    """
    if iterations < 2:
        raise CurvatureError(f"iterations must be at least 2, got {iterations}")

    def converged(run: LanczosResult) -> bool:
        values = run.ritz()[0]
        bounds = run.residuals()
        scale = max(abs(values[0]), abs(values[-1]), np.finfo(float).tiny)
        return bool(bounds[0] <= tol * scale and bounds[-1] <= tol * scale)

    run = lanczos(matvec, _unit_start(np.random.default_rng(seed), dim), iterations,
                  stop=converged)
    values = run.ritz()[0]
    bounds = run.residuals()
    return ExtremeEigenvalues(float(values[-1]), float(values[0]), float(bounds[-1]),
                              float(bounds[0]), run.steps, values.tolist())


# -- stochastic Lanczos quadrature ----------------------------------------------------------------

@dataclass
class SpectralDensity:
    """A Gaussian-broadened estimate of the eigenvalue density (eigenvalues per unit).

    Attributes:
        grid: the points where it is evaluated.
        density: its value there; ``trapz(density, grid)`` is about the dimension.
        nodes, weights: the quadrature (Ritz values and weights, every probe together:
            the weights sum to the dimension).
        sigma: the Gaussian's standard deviation.
        probes, steps: random probes and Lanczos steps per probe.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    probes: int
    steps: int


def spectral_density(matvec: Callable[[np.ndarray], np.ndarray], dim: int, *,
                     probes: int = 8, steps: int = 40, sigma: float | None = None,
                     grid_points: int = 400, seed: int = 0) -> SpectralDensity:
    """Stochastic Lanczos quadrature of the spectral density of ``H``.

    Each probe is a random unit vector ``q``; ``q^T f(H) q`` is approximated by
    ``sum_i tau_i f(theta_i)`` with the Ritz values ``theta_i`` of ``steps`` Lanczos steps
    from ``q`` and ``tau_i`` the squared first components of their eigenvectors. The average
    over probes, times the dimension, is the quadrature; each node is spread as a Gaussian.

    Args:
        matvec, dim: the operator and its dimension.
        probes: random probes (Rademacher, normalised).
        steps: Lanczos steps per probe.
        sigma: the broadening; by default 1/100 of the spread of the nodes.
        grid_points: grid size; the grid reaches 5 sigma beyond the extreme nodes.
        seed: the seed of the probes.
    """
    if probes < 1 or steps < 1 or grid_points < 2:
        raise CurvatureError("probes and steps must be at least 1 and grid_points at least 2")
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    used = 0
    for _ in range(probes):
        start = rng.choice([-1.0, 1.0], size=dim)
        run = lanczos(matvec, start, steps)
        values, vectors = run.ritz()
        nodes.append(values)
        weights.append(vectors[0, :] ** 2 * dim / probes)
        used = max(used, run.steps)
    nodes_all, weights_all = np.concatenate(nodes), np.concatenate(weights)
    spread = float(nodes_all.max() - nodes_all.min())
    if sigma is None:
        sigma = spread / 100 if spread > 0 else max(abs(float(nodes_all[0])) * 1e-2, 1e-12)
    if not sigma > 0:
        raise CurvatureError(f"sigma must be positive, got {sigma}")
    grid = np.linspace(nodes_all.min() - 5 * sigma, nodes_all.max() + 5 * sigma, grid_points)
    gauss = np.exp(-0.5 * ((grid[:, None] - nodes_all[None, :]) / sigma) ** 2)
    density = gauss @ weights_all / (sigma * math.sqrt(2 * math.pi))
    return SpectralDensity(grid, density, nodes_all, weights_all, float(sigma), probes, used)


# -- Hutchinson -----------------------------------------------------------------------------------

@dataclass
class TraceEstimate:
    """Hutchinson's estimate of ``tr H``: the mean of ``z^T H z`` over Rademacher ``z``.

    Attributes:
        trace: the estimate.
        standard_error: the sample standard deviation over ``sqrt(probes)``.
        probes: how many probes.
    """

    trace: float
    standard_error: float
    probes: int


def hutchinson_trace(matvec: Callable[[np.ndarray], np.ndarray], dim: int, *,
                     probes: int = 30, seed: int = 0) -> TraceEstimate:
    """``tr H`` from ``probes`` Rademacher probes, with its standard error."""
    if probes < 2:
        raise CurvatureError(f"probes must be at least 2 (for a standard error), got {probes}")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(probes):
        z = rng.choice([-1.0, 1.0], size=dim)
        samples.append(float(z @ np.asarray(matvec(z), dtype=np.float64)))
    s = np.array(samples)
    return TraceEstimate(float(s.mean()), float(s.std(ddof=1) / math.sqrt(probes)), probes)


# -- the analysis ----------------------------------------------------------------------------------

@dataclass
class CurvatureReport:
    """The Hessian spectrum of a loss at one point, and what it says.

    Attributes:
        dim: the number of parameters (the Hessian's order).
        extremes: the top and bottom eigenvalues.
        density: the spectral density estimate.
        trace: Hutchinson's trace estimate.
        condition_number: ``lambda_max / lambda_min`` when the Hessian is positive definite,
            else ``None`` (see ``reading``).
        reading: ``"positive definite"``, ``"indefinite"`` (negative eigenvalues: a saddle
            point, not a minimum), ``"singular"`` (an eigenvalue at zero within tolerance),
            or ``"negative definite"``.
        hvp_calls: Hessian-vector products computed in all.
    """

    dim: int
    extremes: ExtremeEigenvalues
    density: SpectralDensity
    trace: TraceEstimate
    condition_number: float | None
    reading: str
    hvp_calls: int

    @property
    def negative_eigenvalues(self) -> bool:
        """Whether ``H`` has an eigenvalue below zero (beyond the tolerance)."""
        return self.reading in ("indefinite", "negative definite")

    def summary(self) -> str:
        """One sentence: the extreme eigenvalues and what they mean."""
        e = self.extremes
        if self.reading == "positive definite":
            tail = (f"no negative eigenvalues (a minimum); condition number "
                    f"{self.condition_number:.3g}" + (" (ill-conditioned)"
                                                     if self.condition_number > 1e3 else ""))
        elif self.reading == "indefinite":
            tail = (f"negative eigenvalues present (|bottom|/top = "
                    f"{abs(e.bottom) / abs(e.top):.2g}): the loss curves downward along some "
                    "direction, so this is no minimum (at a stationary point, a saddle); no "
                    "condition number (the Hessian is indefinite)")
        elif self.reading == "singular":
            tail = ("no negative eigenvalues, but the smallest is zero within tolerance: the "
                    "Hessian is singular (flat directions); the condition number is infinite")
        else:
            tail = "every eigenvalue negative: a maximum"
        return f"top eigenvalue {e.top:.6g}, bottom {e.bottom:.6g}: {tail}"

    def __str__(self) -> str:
        e, t = self.extremes, self.trace
        return "\n".join([
            f"parameters:        {self.dim}",
            f"top eigenvalue:    {e.top:.10g}  (residual bound {e.top_bound:.1e})",
            f"bottom eigenvalue: {e.bottom:.10g}  (residual bound {e.bottom_bound:.1e})",
            f"trace (Hutchinson): {t.trace:.6g} ± {t.standard_error:.2g} ({t.probes} probes)",
            "condition number:  " + (f"{self.condition_number:.6g}"
                                     if self.condition_number is not None else self.reading),
            f"reading:           {self.summary()}",
            f"Lanczos steps:     {e.iterations}; HVP kernel calls: {self.hvp_calls}",
        ])

    def to_dict(self) -> dict:
        """Plain numbers and lists, for JSON (the density on its grid, not its nodes)."""
        return {
            "dim": self.dim,
            "top": self.extremes.top, "bottom": self.extremes.bottom,
            "top_bound": self.extremes.top_bound, "bottom_bound": self.extremes.bottom_bound,
            "lanczos_iterations": self.extremes.iterations,
            "trace": asdict(self.trace),
            "condition_number": self.condition_number,
            "reading": self.reading,
            "negative_eigenvalues": self.negative_eigenvalues,
            "summary": self.summary(),
            "density": {"grid": self.density.grid.tolist(),
                        "density": self.density.density.tolist(),
                        "sigma": self.density.sigma, "probes": self.density.probes,
                        "steps": self.density.steps},
            "hvp_calls": self.hvp_calls,
        }

    def plot(self, path: str, title: str = "Hessian spectral density") -> None:
        """Writes the density with the extreme eigenvalues marked (needs matplotlib)."""
        plot_density([(title, self)], path)


def classify(top: float, bottom: float, tolerance: float) -> tuple[str, float | None]:
    """The reading and the condition number from the extreme eigenvalues.

    An eigenvalue within ``tolerance`` of zero counts as zero: the Hessian is then singular
    and has no finite condition number; a negative one makes it indefinite (a saddle).
    """
    if bottom < -tolerance:
        return ("negative definite" if top < -tolerance else "indefinite"), None
    if bottom <= tolerance:
        return "singular", None
    return "positive definite", top / bottom


def analyze(target: Derivation | Kernel | HessianOperator,
            values: Mapping[str, object] | None = None, *, iterations: int = 80,
            tol: float = 1e-10, density_probes: int = 8, density_steps: int = 40,
            trace_probes: int = 30, seed: int = 0) -> CurvatureReport:
    """The Hessian spectrum of a scalar loss with respect to all its parameters jointly.

    Args:
        target: a ``Derivation``, a kernel compiled with ``hvp=True``, or an operator.
        values: the point (parameters) and the data, by name (not for an operator).
        iterations: Lanczos steps at most for the extreme eigenvalues.
        tol: their convergence tolerance (relative residual bound).
        density_probes, density_steps: stochastic Lanczos quadrature.
        trace_probes: Hutchinson probes.
        seed: every random vector derives from it.

    Returns:
        The report: extremes, density, trace, condition number and reading.
    """
    if isinstance(target, HessianOperator):
        op = target
    else:
        if values is None:
            raise CurvatureError("give the values (parameters, data) at which to analyse")
        op = hessian_operator(target, values)
    start_calls = op.calls
    extremes = extreme_eigenvalues(op, op.dim, iterations=iterations, tol=tol, seed=seed)
    density = spectral_density(op, op.dim, probes=density_probes, steps=density_steps,
                               seed=seed + 1)
    trace = hutchinson_trace(op, op.dim, probes=trace_probes, seed=seed + 2)
    scale = max(abs(extremes.top), abs(extremes.bottom))
    tolerance = max(ZERO_TOLERANCE * scale, extremes.bottom_bound)
    reading, condition = classify(extremes.top, extremes.bottom, tolerance)
    return CurvatureReport(op.dim, extremes, density, trace, condition, reading,
                           op.calls - start_calls)


def plot_density(reports: list[tuple[str, CurvatureReport]], path: str) -> None:
    """One panel per report: the density (log scale) with the top and bottom eigenvalues
    marked. Needs matplotlib (``pip install 'symdl[plot]'``)."""
    from symdl.verify.plot import MissingExtraError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError(
            "the spectral density plot needs matplotlib: pip install 'symdl[plot]' "
            "(or pip install matplotlib)") from exc
    if not reports:
        raise CurvatureError("nothing to plot: no curvature report given")
    fig, axes = plt.subplots(1, len(reports), figsize=(4.2 * len(reports), 3.2), squeeze=False)
    for axis, (title, report) in zip(axes[0], reports, strict=True):
        d = report.density
        floor = max(float(d.density.max()) * 1e-8, 1e-300)
        axis.semilogy(d.grid, np.maximum(d.density, floor), color="tab:blue")
        for value, label, colour in ((report.extremes.bottom, "bottom", "tab:red"),
                                     (report.extremes.top, "top", "tab:green")):
            axis.axvline(value, color=colour, linestyle="--", linewidth=1,
                         label=f"{label} {value:.3g}")
        axis.set_xlabel("eigenvalue")
        axis.set_ylabel("density")
        axis.set_title(title, fontsize="medium")
        axis.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
