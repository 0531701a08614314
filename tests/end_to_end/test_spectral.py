"""Norms, singular values and symmetric eigenvalues (``ir.MatrixFunction``): values and
gradients against ``torch.linalg`` through autograd (float64, 1e-10), the Frobenius norm's
Hessian, the run-time checks of the distinct-value assumptions, finite differences through
``symdl.check``, and printing."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl
from symdl.errors import EvaluationError, ShapeMismatchError, UnsupportedError

n, d = sp.symbols("n d", integer=True, positive=True)
A = sp.MatrixSymbol("A", n, d)
S = sp.MatrixSymbol("S", d, d)
w = sp.MatrixSymbol("w", d, 1)

LOSS = (symdl.norm(A) + 2 * symdl.norm(A, "nuc") + 3 * symdl.norm(A, 2)
        + symdl.total(symdl.svdvals(A).T * w) + symdl.total(symdl.eigvalsh(S).T * w))


def _torch_loss(a, s, v):
    return (torch.linalg.matrix_norm(a) + 2 * torch.linalg.matrix_norm(a, "nuc")
            + 3 * torch.linalg.matrix_norm(a, 2) + (torch.linalg.svdvals(a) * v[:, 0]).sum()
            + (torch.linalg.eigvalsh((s + s.T) / 2) * v[:, 0]).sum())


@pytest.fixture(scope="module")
def derivation() -> symdl.Derivation:
    return symdl.derive(LOSS, wrt=[A, S, w])


@pytest.fixture(scope="module")
def kernel(derivation):
    # Interpreted: the factorisations run in the driver either way; the compiled driver is
    # tested once, on a small kernel, below.
    return derivation.compile(jit=False)


def _inputs(seed: int, rows: int = 5, cols: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"A": rng.normal(size=(rows, cols)), "S": rng.normal(size=(cols, cols)),
            "w": rng.normal(size=(cols, 1))}


@pytest.mark.parametrize("seed,rows", [(0, 5), (1, 3)])
def test_values_and_gradients_match_torch_linalg(derivation, kernel, seed, rows) -> None:
    values = _inputs(seed, rows)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    want = _torch_loss(tensors["A"], tensors["S"], tensors["w"])
    want.backward()
    numpy_outputs = derivation.evaluate(values)
    result = kernel(**values)
    for got_value, got_grad in ((numpy_outputs["value"], lambda p: numpy_outputs[f"grad:{p}"]),
                                (result.value, lambda p: result.grad[p])):
        np.testing.assert_allclose(float(got_value), want.item(), rtol=1e-10)
        for p in ("A", "S", "w"):
            np.testing.assert_allclose(np.reshape(got_grad(p), values[p].shape),
                                       tensors[p].grad.numpy(), rtol=1e-10, atol=1e-12)


def test_gradients_are_the_factors_of_the_svd_and_eigh(derivation) -> None:
    # The formulas: U V^T, u_1 v_1^T, U diag(w) V^T and V diag(w) V^T, by name.
    text = str(derivation.gradient(A))
    assert "svd_polar(A)" in text and "svd_top(A)" in text and "svd_u(A)" in text
    assert str(derivation.gradient(S)) == "eigvecsh(S)*DiagMatrix(w)*eigvecsh(S).T"
    assert sp.latex(symdl.norm(A, "nuc")) == r"\left\|A\right\|_{*}"
    assert sp.latex(symdl.norm(A, 2)) == r"\left\|A\right\|_{2}"
    assert sp.latex(symdl.norm(A)) == r"\left\|A\right\|_{F}"
    assert sp.latex(symdl.eigvalsh(S)) == r"\lambda\left(S\right)"
    assert str(symdl.norm(A, "nuc")) == "norm(A, 'nuc')"
    assert r"\left\|A\right\|_{F}" in derivation.to_latex()


def test_the_frobenius_norm_has_hessians_matching_torch() -> None:
    der = symdl.derive(symdl.norm(A * w) + symdl.norm(A) ** 2 / 2, wrt=[A, w], hessian=True)
    values = _inputs(2, 4)
    ta, tw = (torch.tensor(values[k]) for k in ("A", "w"))
    want = torch.autograd.functional.hessian(
        lambda a, v: torch.linalg.matrix_norm(a @ v) + torch.linalg.matrix_norm(a) ** 2 / 2,
        (ta, tw))
    got = der.evaluate({"A": values["A"], "w": values["w"]})
    np.testing.assert_allclose(got["hessian:A,A"], want[0][0].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.reshape(got["hessian:A,w"], (4, 3, 3)),
                               want[0][1].numpy().reshape(4, 3, 3), rtol=1e-10, atol=1e-12)
    hvp = der.compile(hvp=True, jit=False)
    direction = {"v_A": np.ones((4, 3)), "v_w": np.zeros((3, 1))}
    result = hvp(A=values["A"], w=values["w"], **direction)
    np.testing.assert_allclose(
        result.hvp["A"], np.einsum("ijkl,kl->ij", want[0][0].numpy(), np.ones((4, 3))),
        rtol=1e-10, atol=1e-12)


def test_the_frobenius_gradient_at_zero_is_zero_as_torch() -> None:
    der = symdl.derive(symdl.norm(A), wrt=[A])
    zero = np.zeros((2, 3))
    ta = torch.tensor(zero, requires_grad=True)
    torch.linalg.matrix_norm(ta).backward()
    want = ta.grad.numpy()
    assert not want.any()
    with np.errstate(divide="ignore"):  # NumPy evaluates both branches of the Piecewise
        np.testing.assert_array_equal(der.evaluate({"A": zero})["grad:A"], want)
    np.testing.assert_array_equal(der.compile(jit=False)(A=zero).grad["A"], want)


@pytest.mark.parametrize("case,matrix,message", [
    ("eigvalsh", np.diag([2.0, 2.0 + 1e-9, -1.0]),
     r"eigenvalues 1 and 2 \(ascending, 2 and 2\) are 1e-09 apart, at or below the tolerance "
     r"1e-06 times the largest magnitude 2"),
    ("svdvals", np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0], [0, 0, 0]]),
     r"singular values 0 and 1 \(largest first, 3 and 3\) are 0 apart, at or below the "
     r"tolerance 1e-06"),
    ("nuclear", np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0, 0, 1.0], [0, 0, 0]]),
     r"the smallest, .* is at or below the tolerance 1e-06 times the largest"),
    ("norm2", np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [0, 0, 0]]),
     r"sigma_1 = 2 and sigma_2 = 2 are at most the tolerance 1e-06 times sigma_1 apart"),
])
def test_repeated_or_zero_values_raise_a_typed_error_naming_the_gap(case, matrix, message):
    expr = {"eigvalsh": symdl.total(symdl.eigvalsh(S).T * w),
            "svdvals": symdl.total(symdl.svdvals(A).T * w),
            "nuclear": symdl.norm(A, "nuc"), "norm2": symdl.norm(A, 2)}[case]
    leaf = S if case == "eigvalsh" else A
    der = symdl.derive(expr, wrt=[leaf])
    values = {leaf.name: matrix}
    if case in ("eigvalsh", "svdvals"):
        values["w"] = np.ones((3, 1))
    with pytest.raises(EvaluationError, match=message):
        der.evaluate(values)
    with pytest.raises(EvaluationError, match=message):
        der.compile(jit=False)(**values)
    # The value alone is computed anywhere: only a derivative reads the vectors.
    assert np.isfinite(float(symdl.evaluate(expr, values, {n: 4, d: 3})))


def test_second_derivatives_through_singular_values_and_eigenvectors_raise_unsupported():
    with pytest.raises(UnsupportedError,
                       match=r"Hessian-vector products through U V\^T .* not supported"):
        symdl.derive(symdl.norm(A, "nuc"), wrt=[A], hessian=True)
    with pytest.raises(UnsupportedError, match="hvp=True"):
        symdl.derive(symdl.total(symdl.svdvals(A).T * w), wrt=[A]).compile(hvp=True, jit=False)
    _, vectors = symdl.eigh(S)
    with pytest.raises(UnsupportedError, match="the derivative of the eigenvectors"):
        symdl.derive(symdl.total(sp.HadamardPower(vectors * w, 2)), wrt=[S], hessian=True)


def test_eigenvector_gradients_and_eigenvalue_hessians_match_torch() -> None:
    values, vectors = symdl.eigh(S)
    X = sp.MatrixSymbol("X", d, d)
    # Invariant to each eigenvector's sign, which LAPACK chooses.
    projections = symdl.total(sp.HadamardPower(vectors.T * X, 2))
    der = symdl.derive(projections + symdl.total(sp.HadamardPower(values, 2)), wrt=[S])
    rng = np.random.default_rng(4)
    s, x = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))

    def torch_loss(t):
        lam, vec = torch.linalg.eigh((t + t.T) / 2)
        return ((vec.T @ torch.tensor(x)) ** 2).sum() + (lam**2).sum()

    ts = torch.tensor(s, requires_grad=True)
    torch_loss(ts).backward()
    np.testing.assert_allclose(der.evaluate({"S": s, "X": x})["grad:S"], ts.grad.numpy(),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(der.compile(jit=False)(S=s, X=x).grad["S"], ts.grad.numpy(),
                               rtol=1e-10, atol=1e-12)
    assert "eigh_gaps(S)" in str(der.gradient(S))
    cubes = symdl.derive(symdl.total(sp.HadamardPower(values, 3)), wrt=[S], hessian=True)
    want = torch.autograd.functional.hessian(
        lambda t: (torch.linalg.eigvalsh((t + t.T) / 2) ** 3).sum(), torch.tensor(s)).numpy()
    np.testing.assert_allclose(cubes.evaluate({"S": s})["hessian:S,S"], want, rtol=1e-10,
                               atol=1e-12)
    hvp = cubes.compile(hvp=True, jit=False)(S=s, v_S=x).hvp["S"]
    np.testing.assert_allclose(hvp, np.einsum("ijkl,kl->ij", want, x), rtol=1e-10, atol=1e-12)


def test_check_passes_with_finite_differences_and_notes_the_missing_hvp() -> None:
    square = sp.MatrixSymbol("A", d, d)  # square: singular values for every drawn size
    der = symdl.derive(symdl.norm(square, "nuc") + symdl.norm(square, 2)
                       + symdl.total(symdl.eigvalsh(square).T * w), wrt=[square, w])
    report = symdl.check(der, jit=False)
    report.raise_if_failed()
    methods = {(row.output, row.method) for row in report.rows}
    assert ("grad:A", "central-richardson") in methods
    assert any("Hessian-vector products: not checked" in note for note in report.notes)


def test_a_wide_matrix_has_no_column_of_singular_values() -> None:
    wide = sp.MatrixSymbol("W", 2, 3)
    with pytest.raises(ShapeMismatchError, match=r"svdvals\(m.T\)"):
        symdl.svdvals(wide)
    assert symdl.svdvals(wide.T).shape == (2, 1)


# ---------------------------------------------------------------------------------------------
# cholesky: L of (S + S^T)/2, with dL = L Φ(L^{-1} dS L^{-T}) (Φ: the lower triangle, half the
# diagonal, a node of its own rather than a product with a dense mask).


def _spd(rng: np.random.Generator, dims: dict) -> dict[str, np.ndarray]:
    b = rng.normal(size=(dims["d"], dims["d"]))
    return {"S": b @ b.T + dims["d"] * np.eye(dims["d"])}


def test_cholesky_value_gradient_hessian_and_hvp_match_torch() -> None:
    X = sp.MatrixSymbol("X", d, d)
    lower = symdl.cholesky(S)
    der = symdl.derive(symdl.total(sp.HadamardProduct(lower, X))
                       + symdl.total(sp.HadamardPower(lower, 3)), wrt=[S], hessian=True)
    rng = np.random.default_rng(5)
    s = _spd(rng, {"d": 4})["S"] + 0.3 * rng.normal(size=(4, 4))  # not symmetric: its part
    x = rng.normal(size=(4, 4))

    def torch_loss(t):
        factor = torch.linalg.cholesky((t + t.T) / 2)
        return (factor * torch.tensor(x)).sum() + (factor**3).sum()

    np.testing.assert_allclose(symdl.evaluate(lower, {"S": s}, {d: 4}),
                               torch.linalg.cholesky(torch.tensor((s + s.T) / 2)).numpy(),
                               rtol=1e-12)
    ts = torch.tensor(s, requires_grad=True)
    torch_loss(ts).backward()
    hessian = torch.autograd.functional.hessian(torch_loss, torch.tensor(s)).numpy()
    got = der.evaluate({"S": s, "X": x})
    np.testing.assert_allclose(got["grad:S"], ts.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["hessian:S,S"], hessian, rtol=1e-10, atol=1e-12)
    result_kernel = der.compile(hvp=True, jit=False)
    result = result_kernel(S=s, X=x, v_S=x)
    np.testing.assert_allclose(result.grad["S"], ts.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.hvp["S"], np.einsum("ijkl,kl->ij", hessian, x),
                               rtol=1e-10, atol=1e-12)
    assert "tril_half(cholesky(S).T*" in str(der.gradient(S))
    assert r"\operatorname{chol}\left(S\right)" in sp.latex(der.gradient(S))
    # Finite differences only: the SymPy reference of an index-form Hessian through Φ is slow.
    report = symdl.check(der, jit=False, sample_inputs=_spd, dims={d: 3}, kernel=result_kernel,
                         reference_budget=0)
    report.raise_if_failed()
    assert ("hessian:S,S", "central-richardson") in {(r.output, r.method) for r in report.rows}


def test_cholesky_of_an_indefinite_matrix_raises_a_typed_error() -> None:
    der = symdl.derive(symdl.total(symdl.cholesky(S)), wrt=[S])
    indefinite = np.diag([1.0, -1.0, 2.0])
    with pytest.raises(EvaluationError, match="not positive definite"):
        der.evaluate({"S": indefinite})
    with pytest.raises(EvaluationError, match="not positive definite"):
        der.compile(jit=False)(S=indefinite)


def test_the_compiled_driver_runs_factorisations_and_raises_their_errors() -> None:
    # run_unchecked (training loops) jits the whole driver: the factorisation runs in Numba's
    # object mode, so its errors keep their messages (it did not compile before: an untyped
    # global function).
    der = symdl.derive(symdl.norm(S, "nuc"), wrt=[S])  # no loops: the driver alone
    kernel = der.compile()
    s = np.random.default_rng(6).normal(size=(3, 3))
    ts = torch.tensor(s, requires_grad=True)
    want = torch.linalg.matrix_norm(ts, "nuc")
    want.backward()
    value, grad = np.empty(1), np.empty((3, 3))
    kernel.run_unchecked([s], [value, grad])
    np.testing.assert_allclose(value[0], want.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, ts.grad.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(np.linalg.LinAlgError, match="the smallest, 0, is at or below"):
        kernel.run_unchecked([np.diag([1.0, 0.0, 3.0])], [value, grad])


def test_norms_inside_kinks_translate_and_match_torch() -> None:
    # relu(||W||_F - 1) (a norm constraint as a penalty) and max(||W||_*, 2): a norm inside
    # Max/Piecewise was cut into its matrix (DefinitionError) before.
    der = symdl.derive(symdl.relu(symdl.norm(S) - 1) + sp.Max(symdl.norm(S, "nuc"), 2),
                       wrt=[S])
    s = np.array([[2.0, 1.0], [0.0, 3.0]])
    ts = torch.tensor(s, requires_grad=True)
    (torch.relu(torch.linalg.matrix_norm(ts) - 1)
     + torch.clamp(torch.linalg.matrix_norm(ts, "nuc"), min=2)).backward()
    np.testing.assert_allclose(der.evaluate({"S": s})["grad:S"], ts.grad.numpy(), rtol=1e-10)
