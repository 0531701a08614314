"""Linear algebra primitives (the inverse, the log-determinant and the determinant): values,
gradients and Hessians against PyTorch's ``torch.linalg`` through autograd, float64."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import symdl

d = sp.Symbol("d", integer=True, positive=True)
A = sp.MatrixSymbol("A", d, d)
b = sp.MatrixSymbol("b", d, 1)


def _torch_hessian(f, x: np.ndarray) -> np.ndarray:
    h = torch.autograd.functional.hessian(f, torch.tensor(x, dtype=torch.float64))
    return h.numpy()


def test_hessian_and_latex_through_an_inverse_match_torch() -> None:
    # b^T A^{-1} b: its Hessian in A has a rank-4 solve inside, which had no index notation
    # (UnsupportedError) before; printed, evaluated and typeset it now agrees with torch.
    der = symdl.derive((b.T * A.inv() * b)[0, 0], wrt=[A, b], hessian=True)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3)) + 3 * np.eye(3)
    v = rng.normal(size=(3, 1))
    values, dims = {"A": a, "b": v}, {d: 3}
    tb = torch.tensor(v)
    want_aa = _torch_hessian(lambda x: (tb.T @ torch.linalg.inv(x) @ tb).sum(), a)
    printed = symdl.evaluate(der.hessian(A, A), values, dims)
    np.testing.assert_allclose(np.reshape(printed, (3, 3, 3, 3)), want_aa, rtol=1e-10,
                               atol=1e-12)
    got = der.evaluate(values, dims)["hessian:A,A"]
    np.testing.assert_allclose(np.reshape(got, (3, 3, 3, 3)), want_aa, rtol=1e-10, atol=1e-12)
    ta = torch.tensor(a)
    want_ba = torch.autograd.functional.hessian(
        lambda x, y: (y.T @ torch.linalg.inv(x) @ y).sum(), (ta, tb))[1][0].numpy()
    printed = symdl.evaluate(der.hessian(b, A), values, dims)
    np.testing.assert_allclose(np.reshape(printed, (3, 3, 3)), want_ba.reshape(3, 3, 3),
                               rtol=1e-10, atol=1e-12)
    latex = der.to_latex()
    assert "A^{-1}" in latex and "Hessian" in latex


# ---------------------------------------------------------------------------------------------
# det and logdet: one kernel for the three (LU log |det A|, Cholesky log det S, det A).

S = sp.MatrixSymbol("S", d, d)


def _torch_loss(a, s):
    return (torch.linalg.slogdet(a)[1] + torch.logdet(s)
            + torch.linalg.det(a) ** 2 / 2)


@pytest.fixture(scope="module")
def det_derivation() -> symdl.Derivation:
    loss = symdl.logdet(A) + symdl.logdet(S, spd=True) + symdl.det(A) ** 2 / 2
    return symdl.derive(loss, wrt=[A, S], hessian=True)


@pytest.fixture(scope="module")
def det_kernel(det_derivation) -> symdl.Kernel:
    return det_derivation.compile(hvp=True)


def _inputs(condition: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A (not symmetric, negative determinant allowed) and an SPD S, both of the given
    condition number (singular values spread geometrically)."""
    rng = np.random.default_rng(seed)
    q1, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    q2, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    spectrum = np.geomspace(1.0, 1.0 / condition, 4)
    a = q1 @ np.diag(spectrum * [1, -1, 1, 1]) @ q2
    s = q1 @ np.diag(spectrum) @ q1.T
    return a, (s + s.T) / 2


@pytest.mark.parametrize("condition", [3.0, 1e6], ids=["well", "ill"])
def test_det_and_logdet_match_torch_linalg(det_derivation, det_kernel, condition) -> None:
    a, s = _inputs(condition, 1)
    ta, ts = torch.tensor(a, requires_grad=True), torch.tensor(s, requires_grad=True)
    value = _torch_loss(ta, ts)
    grad_a, grad_s = torch.autograd.grad(value, (ta, ts))
    hessian = torch.autograd.functional.hessian(_torch_loss, (ta.detach(), ts.detach()))
    # Derivatives of an inverse lose about log10(condition) digits, in torch as here.
    rtol = 1e-12 * condition
    out = det_kernel(A=a, S=s, v_A=np.ones((4, 4)), v_S=np.eye(4))
    reference = det_derivation.evaluate({"A": a, "S": s}, {d: 4})
    for got in (out.value, reference["value"]):
        np.testing.assert_allclose(got, value.item(), rtol=max(rtol, 1e-13))
    for got in (out.grad["A"], reference["grad:A"]):
        np.testing.assert_allclose(got, grad_a.numpy(), rtol=rtol, atol=rtol * abs(grad_a).max())
    for got in (out.grad["S"], reference["grad:S"]):
        np.testing.assert_allclose(got, grad_s.numpy(), rtol=rtol, atol=rtol * abs(grad_s).max())
    for (p, q), block in (("A", "A"), hessian[0][0]), (("S", "S"), hessian[1][1]):
        want = block.numpy().reshape(16, 16)
        scale = abs(want).max()
        np.testing.assert_allclose(out.hessian[p, q].reshape(16, 16), want, rtol=rtol,
                                   atol=rtol * scale)
    # The Hessian-vector product along (V_A, V_S) = (ones, I).
    h = np.block([[hessian[0][0].numpy().reshape(16, 16), hessian[0][1].numpy().reshape(16, 16)],
                  [hessian[1][0].numpy().reshape(16, 16), hessian[1][1].numpy().reshape(16, 16)]])
    hv = h @ np.concatenate([np.ones(16), np.eye(4).reshape(-1)])
    np.testing.assert_allclose(np.concatenate([out.hvp["A"].reshape(-1), out.hvp["S"].reshape(-1)]),
                               hv, rtol=rtol, atol=rtol * abs(hv).max())


def test_det_gradient_matches_finite_differences(det_kernel) -> None:
    a, s = _inputs(3.0, 2)
    out = det_kernel(A=a, S=s, v_A=np.zeros((4, 4)), v_S=np.zeros((4, 4)))
    rng = np.random.default_rng(3)
    for name, x in (("A", a), ("S", s)):
        direction = rng.normal(size=(4, 4))
        if name == "S":
            direction = (direction + direction.T) / 2  # S stays symmetric positive definite
        h = 1e-6

        def at(t, name=name, x=x, direction=direction):
            moved = {"A": a, "S": s, name: x + t * direction}
            return det_kernel(**moved, v_A=np.zeros((4, 4)), v_S=np.zeros((4, 4))).value

        numeric = (at(h) - at(-h)) / (2 * h)
        np.testing.assert_allclose(np.sum(out.grad[name] * direction), numeric, rtol=1e-7)


def test_det_printing_and_the_plain_sympy_spellings(det_derivation) -> None:
    from symdl.printing.plain import plain

    assert "\\log\\det S" in det_derivation.to_latex()
    text = plain(det_derivation.printer().scalar(det_derivation.output))
    assert text.count("logdet(") == 2 and "det(A)" in text
    # sympy's own spellings mean the same nodes, and evaluate to torch's numbers.
    a, s = _inputs(3.0, 4)
    for expr, want in ((sp.log(sp.Determinant(S)), torch.logdet(torch.tensor(s))),
                       (sp.log(sp.Abs(sp.det(A))), torch.linalg.slogdet(torch.tensor(a))[1]),
                       (sp.det(A), torch.linalg.det(torch.tensor(a)))):
        der = symdl.derive(expr, wrt=[A] if expr.has(A) else [S])
        values = {"A": a, "S": s}
        np.testing.assert_allclose(der.evaluate(values, {d: 4})["value"], want.item(),
                                   rtol=1e-12)
    gradient = symdl.derive(sp.log(sp.Determinant(S)), wrt=[S]).gradient(S)
    assert plain(gradient) == "S^T**(-1)"  # A^{-T}: one solve in a kernel, no inverse


def test_singular_and_indefinite_matrices_raise_typed_errors(det_derivation, det_kernel):
    a, s = _inputs(3.0, 5)
    # Exactly singular in every LAPACK: a zero column (a copied column leaves an LU pivot of
    # 5e-17 with some OpenBLAS builds, so slogdet is finite there, as NumPy's and torch's).
    singular = a.copy()
    singular[:, 0] = 0.0
    zeros = np.zeros((4, 4))
    with pytest.raises(symdl.EvaluationError, match="singular"):
        det_kernel(A=singular, S=s, v_A=zeros, v_S=zeros)
    with pytest.raises(symdl.EvaluationError, match="singular"):
        det_derivation.evaluate({"A": singular, "S": s}, {d: 4})
    indefinite = s - 2 * np.eye(4)
    with pytest.raises(symdl.EvaluationError, match="positive definite"):
        det_kernel(A=a, S=indefinite, v_A=zeros, v_S=zeros)
    with pytest.raises(symdl.EvaluationError, match="positive definite"):
        det_derivation.evaluate({"A": a, "S": indefinite}, {d: 4})
    with pytest.raises(symdl.ShapeMismatchError, match="square"):
        symdl.logdet(sp.MatrixSymbol("X", d, 3))
    with pytest.raises(symdl.DefinitionError, match="spd"):
        symdl.logdet(S, spd="yes")


# ---------------------------------------------------------------------------------------------
# pinv of full-rank matrices: tall (full column rank) and wide (full row rank), one kernel.

n = sp.Symbol("n", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
Y = sp.MatrixSymbol("Y", d, n)
G = sp.MatrixSymbol("G", d, n)


def _pinv_torch(x, y, g):
    tall = torch.linalg.pinv(x)
    wide = torch.linalg.pinv(y)
    return (g * tall).sum() + (tall @ torch.tanh(x)).pow(2).sum() + (g @ wide).trace() \
        + (wide * g.T).pow(2).sum() + (y @ wide).trace()


@pytest.fixture(scope="module")
def pinv_derivation() -> symdl.Derivation:
    tall, wide = symdl.pinv(X), symdl.pinv(Y, full_rank="rows")
    loss = (symdl.total(sp.hadamard_product(G, tall))
            + symdl.total(sp.HadamardPower(tall * symdl.tanh(X), 2))
            + symdl.trace(G * wide) + symdl.total(sp.HadamardPower(sp.hadamard_product(
                wide, G.T), 2)) + symdl.trace(Y * wide))
    return symdl.derive(loss, wrt=[X, Y], hessian=True)


def _full_rank(condition: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(5, 3)))
    v, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    x = u @ np.diag(np.geomspace(1.0, 1.0 / condition, 3)) @ v
    return {"X": x, "Y": rng.normal(size=(3, 5)), "G": rng.normal(size=(3, 5))}


@pytest.mark.parametrize("condition", [2.0, 1e4], ids=["well", "ill"])
def test_pinv_value_gradient_and_hessian_match_torch(pinv_derivation, condition) -> None:
    values = _full_rank(condition, 6)
    tensors = [torch.tensor(values[k], requires_grad=True) for k in ("X", "Y")]
    g = torch.tensor(values["G"])
    value = _pinv_torch(*tensors, g)
    grads = torch.autograd.grad(value, tensors)
    hessian = torch.autograd.functional.hessian(lambda x, y: _pinv_torch(x, y, g),
                                                tuple(t.detach() for t in tensors))
    out = pinv_derivation.evaluate(values, {n: 5, d: 3})
    # The Gram matrix squares the condition number: derivatives lose that many digits.
    rtol = 1e-13 * condition**2
    np.testing.assert_allclose(out["value"], value.item(), rtol=rtol)
    for name, grad in zip(("X", "Y"), grads, strict=True):
        want = grad.numpy()
        np.testing.assert_allclose(out[f"grad:{name}"], want, rtol=rtol,
                                   atol=rtol * abs(want).max())
    for (i, p), (j, q) in [((0, "X"), (0, "X")), ((1, "Y"), (0, "X")), ((1, "Y"), (1, "Y"))]:
        want = hessian[i][j].numpy().reshape(15, 15)
        got = np.reshape(out[f"hessian:{p},{q}"], (15, 15))
        np.testing.assert_allclose(got, want, rtol=rtol * 10, atol=rtol * 10 * abs(want).max())


def test_pinv_kernel_matches_numpy_and_refuses_rank_deficient_matrices(pinv_derivation):
    kernel = symdl.compile_expressions({"tall": symdl.pinv(X),
                                        "wide": symdl.pinv(Y, full_rank="rows")})
    values = _full_rank(10.0, 7)
    out = kernel(X=values["X"], Y=values["Y"])
    for name, key in (("tall", "X"), ("wide", "Y")):
        np.testing.assert_allclose(out.outputs[name], np.linalg.pinv(values[key]), rtol=1e-12,
                                   atol=1e-13)
    assert "np.linalg.cholesky" in kernel.source and "np.linalg.inv" not in kernel.source
    deficient = values["X"].copy()
    deficient[:, 2] = deficient[:, 0] - deficient[:, 1]  # rank 2 of 3 columns
    with pytest.raises(symdl.EvaluationError, match="singular"):
        kernel(X=deficient, Y=values["Y"])
    with pytest.raises(symdl.EvaluationError, match="full rank"):
        pinv_derivation.evaluate({**values, "X": deficient}, {n: 5, d: 3})
    assert sp.latex(symdl.pinv(X)) == "X^{+}"
    with pytest.raises(symdl.DefinitionError, match="columns"):
        symdl.pinv(X, full_rank="tall")



def test_the_new_sympy_objects_rebuild_from_their_args() -> None:
    # SymPy rebuilds expressions as func(*args) (subs, xreplace, the reference evaluator):
    # the spd flag and the full-rank declaration survive, and substitution works.
    B = sp.MatrixSymbol("B", d, d)  # noqa: N806
    for expr in (symdl.logdet(S, spd=True), symdl.det(A), symdl.pinv(X, full_rank="columns"),
                 symdl.pinv(Y, full_rank="rows")):
        assert expr.func(*expr.args) == expr
    assert symdl.logdet(S, spd=True).subs(S, B) == symdl.logdet(B, spd=True)
    assert symdl.pinv(Y, full_rank="rows").xreplace({Y: G}).full_rank == "rows"


def test_the_sum_of_a_solve_compiles_its_gradient() -> None:
    # d total(A^{-1} b) / db = A^{-T} 1: a solve with a right-hand side of ones, which the
    # kernel refused ("a linear solve of a constant Ones").
    kernel = symdl.derive(symdl.total(A.inv() * b), wrt=[A, b]).compile()
    rng = np.random.default_rng(8)
    a, v = rng.normal(size=(3, 3)) + 3 * np.eye(3), rng.normal(size=(3, 1))
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(v, requires_grad=True)
    torch.linalg.solve(ta, tb).sum().backward()
    out = kernel(A=a, b=v)
    np.testing.assert_allclose(out.grad["b"], tb.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(out.grad["A"], ta.grad.numpy(), rtol=1e-12)
