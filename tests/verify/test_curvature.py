"""The Hessian spectrum from HVP kernels (symdl.verify.curvature) against an independent
oracle: ``numpy.linalg.eigvalsh`` of the full Hessian that PyTorch's autograd computes from
the same loss written in torch. One compiled HVP kernel for the whole module (the demo
network's loss; its shapes are symbolic, so the small random model and the digits subset
share it)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl.report import demo
from symdl.verify import curvature as cv

torch.set_default_dtype(torch.float64)
PARAMS = ("W1", "b1", "W2", "b2")


def torch_hessian(values: dict) -> np.ndarray:
    """The demo network's loss in torch, its Hessian over the concatenated parameters."""
    X, Y = torch.tensor(values["X"]), torch.tensor(values["Y"])
    lam = values["lambda"]
    shapes = [values[p].shape for p in PARAMS]
    sizes = [int(np.prod(s)) for s in shapes]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        W1, b1, W2, b2 = (piece.reshape(shape) for piece, shape in
                          zip(torch.split(flat, sizes), shapes, strict=True))
        Z2 = torch.tanh(X @ W1 + b1) @ W2 + b2
        data = (torch.logsumexp(Z2, 1) - (Y * Z2).sum(1)).mean()
        return data + lam / 2 * ((W1 ** 2).sum() + (W2 ** 2).sum())

    flat = torch.tensor(np.concatenate([values[p].ravel() for p in PARAMS]))
    # One torch thread: torch's OpenMP workers spin after each op and would take the cores
    # from the kernels' BLAS calls that follow (tens of times slower on 2 cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.func.hessian(loss)(flat).numpy()
    finally:
        torch.set_num_threads(threads)


def network_values(rng: np.random.Generator, X: np.ndarray, Y: np.ndarray, hidden: int,
                   lam: float = 1e-3) -> dict:
    d, k = X.shape[1], Y.shape[1]
    return {"W1": rng.normal(size=(d, hidden)) / np.sqrt(d), "b1": rng.normal(size=(1, hidden)),
            "W2": rng.normal(size=(hidden, k)) / np.sqrt(hidden),
            "b2": rng.normal(size=(1, k)) * 0.1, "X": X, "Y": Y, "lambda": lam}


@pytest.fixture(scope="module")
def kernel() -> symdl.Kernel:
    der = demo.network_derivation()
    return der.compile(hvp=True, outputs=[f"hvp:{p}" for p in PARAMS])


@pytest.fixture(scope="module")
def small(kernel):
    """A random network with 3 inputs, 4 hidden units, 3 classes, 6 rows: 31 parameters."""
    rng = np.random.default_rng(1)
    values = network_values(rng, rng.normal(size=(6, 3)), np.eye(3)[rng.integers(0, 3, 6)], 4)
    return cv.hessian_operator(kernel, values), torch_hessian(values)


@pytest.fixture(scope="module")
def digits():
    """40 of the digits scikit-learn ships (as the demo loads them), 4 hidden units: 310
    parameters, a Hessian with negative eigenvalues at a random initialisation."""
    split = demo.digits()
    rng = np.random.default_rng(2)
    return network_values(rng, split.X_train[:40], split.Y_train[:40], 4)


def test_operator_is_the_torch_hessian(small) -> None:
    op, hessian = small
    assert op.dim == 31 and op.params == list(PARAMS)
    np.testing.assert_allclose(op.dense(), hessian, rtol=1e-10, atol=1e-12)


def test_small_model_extremes_match_eigvalsh(small) -> None:
    op, hessian = small
    exact = np.linalg.eigvalsh(hessian)
    found = cv.extreme_eigenvalues(op, op.dim, iterations=80, seed=0)
    assert found.top == pytest.approx(exact[-1], rel=1e-8)
    assert found.bottom == pytest.approx(exact[0], rel=1e-8)
    # Without early stopping, a run of dim steps has every eigenvalue as a Ritz value.
    every = cv.extreme_eigenvalues(op, op.dim, iterations=80, tol=0.0, seed=0)
    # Lanczos stops on an invariant subspace (repeated eigenvalues: the shift invariance of
    # the softmax); every distinct eigenvalue is then a Ritz value.
    gaps = np.abs(np.subtract.outer(exact, np.array(every.ritz))).min(axis=1)
    assert np.all(gaps <= 1e-8 * abs(exact).max())


def test_digits_extremes_trace_density_against_eigvalsh(kernel, digits) -> None:
    exact = np.linalg.eigvalsh(torch_hessian(digits))
    op = cv.hessian_operator(kernel, digits)
    assert op.dim == 310
    report = cv.analyze(op, iterations=80, tol=1e-12, density_probes=6, density_steps=30,
                        trace_probes=40, seed=0)
    e = report.extremes
    assert e.iterations <= 80
    scale = abs(exact).max()
    assert e.top == pytest.approx(exact[-1], rel=1e-8)
    assert e.bottom == pytest.approx(exact[0], rel=1e-8)
    # The stated residual bounds hold.
    assert np.min(np.abs(exact - e.top)) <= e.top_bound + 1e-12 * scale
    assert np.min(np.abs(exact - e.bottom)) <= e.bottom_bound + 1e-12 * scale
    assert exact[0] < 0 and report.reading == "indefinite" and report.negative_eigenvalues
    assert report.condition_number is None and "saddle" in report.summary()
    # Hutchinson: within three of its own standard errors (seeded, so deterministic).
    assert abs(report.trace.trace - exact.sum()) <= 3 * report.trace.standard_error
    assert report.trace.standard_error > 0
    # The density integrates to the dimension; its quadrature weights sum to it exactly.
    d = report.density
    assert d.weights.sum() == pytest.approx(310, rel=1e-10)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(310, rel=1e-3)
    assert d.grid[0] < exact[0] and d.grid[-1] > exact[-1]
    assert report.hvp_calls == e.iterations + 6 * 30 + 40
    again = cv.analyze(op, iterations=80, tol=1e-12, density_probes=6, density_steps=30,
                       trace_probes=40, seed=0)
    assert again.to_dict() == report.to_dict()


def test_density_moments_within_their_sampling_error(small) -> None:
    """With 3 Lanczos steps the quadrature of each probe z is exact for polynomials of
    degree <= 5, so the density's first and second moments are Hutchinson estimates of
    tr(H) and tr(H^2): each within 4 standard deviations (2 (||A||_F^2 - sum A_ii^2) / m
    for Rademacher probes) of the truth."""
    op, hessian = small
    probes = 200
    density = cv.spectral_density(op, op.dim, probes=probes, steps=3, seed=3)
    for power in (1, 2):
        A = np.linalg.matrix_power(hessian, power)
        sd = np.sqrt(2 * (np.sum(A ** 2) - np.sum(np.diag(A) ** 2)) / probes)
        moment = float(density.weights @ density.nodes ** power)
        assert abs(moment - np.trace(A)) <= 4 * sd, power


def test_positive_definite_condition_number() -> None:
    """A convex loss (L2-regularised logistic regression, an interpreted kernel): no negative
    eigenvalue, the condition number is lambda_max / lambda_min of eigvalsh."""
    rng = np.random.default_rng(4)
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, w, y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
    lam = sp.Symbol("lam", positive=True)
    der = symdl.derive(symdl.binary_cross_entropy_with_logits(X * w, y)
                       + lam / 2 * symdl.total(sp.hadamard_product(w, w)), wrt=[w])
    kernel = der.compile(hvp=True, outputs=["hvp:w"], jit=False)
    Xv = rng.normal(size=(30, 6)) * np.array([3, 1, 1, 0.3, 0.1, 0.05])
    values = {"X": Xv, "y": (rng.random((30, 1)) < 0.5) * 1.0, "w": rng.normal(size=(6, 1)),
              "lam": 1e-3}
    s = 1 / (1 + np.exp(-Xv @ values["w"]))
    hessian = Xv.T @ (Xv * (s * (1 - s))) / 30 + 1e-3 * np.eye(6)
    exact = np.linalg.eigvalsh(hessian)
    report = cv.analyze(kernel, values, density_probes=2, density_steps=6, trace_probes=4)
    assert report.reading == "positive definite" and not report.negative_eigenvalues
    assert report.condition_number == pytest.approx(exact[-1] / exact[0], rel=1e-8)
    assert "no negative eigenvalues" in report.summary()


def test_singular_and_indefinite_readings() -> None:
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))

    def operator(eigenvalues):
        matrix = q @ np.diag(eigenvalues) @ q.T
        return lambda v: matrix @ v

    values = np.linspace(1, 4, 12)
    values[0] = 0.0
    found = cv.extreme_eigenvalues(operator(values), 12)
    assert found.bottom == pytest.approx(0, abs=1e-12)
    tolerance = max(cv.ZERO_TOLERANCE * 4, found.bottom_bound)
    assert cv.classify(found.top, found.bottom, tolerance) == ("singular", None)
    values[0] = -0.5
    found = cv.extreme_eigenvalues(operator(values), 12)
    assert found.bottom == pytest.approx(-0.5, rel=1e-10)
    assert cv.classify(found.top, found.bottom, 1e-8) == ("indefinite", None)
    assert cv.classify(-1.0, -2.0, 1e-8) == ("negative definite", None)
    assert cv.classify(4.0, 0.5, 1e-8) == ("positive definite", 8.0)


def test_bad_input_is_a_typed_error(kernel, small) -> None:
    op, _ = small
    with pytest.raises(cv.CurvatureError, match="hvp=True"):
        cv.HessianOperator(_no_hvp_kernel(), {})
    with pytest.raises(cv.CurvatureError, match="W1"):
        cv.hessian_operator(kernel, {"X": np.ones((2, 3))})
    with pytest.raises(symdl.KernelArgumentError, match="X"):
        cv.hessian_operator(kernel, {**dict.fromkeys(PARAMS, np.ones((1, 1))), "Q": 1.0})(
            np.ones(4))
    with pytest.raises(cv.CurvatureError, match="shape"):
        op(np.ones(5))
    with pytest.raises(cv.CurvatureError, match="iterations"):
        cv.extreme_eigenvalues(op, op.dim, iterations=1)
    with pytest.raises(cv.CurvatureError, match="probes"):
        cv.hutchinson_trace(op, op.dim, probes=1)
    with pytest.raises(cv.CurvatureError, match="zero"):
        cv.lanczos(op, np.zeros(op.dim), 3)
    with pytest.raises(cv.CurvatureError, match="scalar"):
        n = sp.Symbol("n", integer=True, positive=True)
        x = sp.MatrixSymbol("x", n, 1)
        cv.hessian_operator(symdl.derive(symdl.tanh(x), wrt=[x]), {})
    assert issubclass(cv.CurvatureError, symdl.SymdlError)


def _no_hvp_kernel() -> symdl.Kernel:
    n = sp.Symbol("n", integer=True, positive=True)
    x = sp.MatrixSymbol("x", n, 1)
    return symdl.derive(symdl.total(sp.hadamard_product(x, x)), wrt=[x]).compile(jit=False)


def test_plot_writes_a_png_and_names_the_extra_when_matplotlib_is_missing(
        small, tmp_path, monkeypatch) -> None:
    op, _ = small
    report = cv.analyze(op, iterations=31, density_probes=2, density_steps=8, trace_probes=2)
    path = tmp_path / "density.png"
    report.plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    from symdl.verify.plot import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"symdl\[plot\]"):
        report.plot(str(tmp_path / "again.png"))


def test_lanczos_takes_read_only_products() -> None:
    """An operator may return a read-only array (JAX does) or reuse one buffer."""
    matrix = np.diag([1.0, 2.0, 5.0])

    def read_only(v):
        out = matrix @ v
        out.flags.writeable = False
        return out

    found = cv.extreme_eigenvalues(read_only, 3, iterations=3)
    assert (found.bottom, found.top) == (pytest.approx(1.0), pytest.approx(5.0))
