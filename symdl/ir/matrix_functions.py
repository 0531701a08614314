"""The numbers behind ``ir.MatrixFunction``: norms, singular values, symmetric eigenvalues and
the factors their derivatives read, with the assumptions of those derivatives checked.

One source text serves NumPy evaluation (``symdl.ir.evaluate``) and kernels (the generated
module embeds it: a kernel module imports nothing of symdl), so both compute the same numbers
and refuse the same inputs.

The derivative of a singular value ``sigma_i`` is ``u_i v_i^T``, that of an eigenvalue
``lambda_i`` of a symmetric matrix ``v_i v_i^T``: both hold where that value is simple
(distinct from the others) and, for a singular value, nonzero (``|x|`` at 0). Near a repeated
value the singular or eigen-vectors are ill-conditioned (an error of ``eps ||A|| / gap``), so
the factors a derivative reads raise ``numpy.linalg.LinAlgError`` (``EvaluationError`` in
symdl) when a gap is at or below ``GAP_TOLERANCE`` times the largest magnitude, naming the
gap and the tolerance. The values themselves are computed everywhere.
"""

from __future__ import annotations

import numpy as np

GAP_TOLERANCE = 1e-6
"""Singular values (or eigenvalues) closer than this times the largest one are taken as
repeated: their vectors, and so the derivative, would keep fewer than about 10 correct digits
(``eps / 1e-6``). A singular value at or below it is taken as zero."""

SOURCE = f'''
class MatrixFunctionAssumptionError(np.linalg.LinAlgError):
    """A derivative's assumption about the singular values or eigenvalues fails."""


def _matrix_function(kind, a):
    """The matrix function ``kind`` of the 2-D array ``a`` (see symdl.ir.matrix_functions)."""
    tolerance = {GAP_TOLERANCE!r}
    if kind == "fro":
        return np.asarray(np.sqrt(np.sum(a * a)))
    if kind == "tril_half":  # the lower triangle, half the diagonal, over the first two axes
        mask = np.tril(np.ones(a.shape[:2]))
        np.fill_diagonal(mask, 0.5)
        return a * mask.reshape(mask.shape + (1,) * (a.ndim - 2))
    if kind == "cholesky":
        try:
            return np.linalg.cholesky((a + a.T) / 2)
        except np.linalg.LinAlgError:
            raise MatrixFunctionAssumptionError(
                "cholesky: the matrix (its symmetric part, (A + A^T)/2) is not positive "
                "definite; pass a symmetric positive definite matrix (add a multiple of the "
                "identity)") from None
    if kind == "eigvalsh" or kind == "eigvecsh" or kind == "eigh_gaps":
        w, v = np.linalg.eigh((a + a.T) / 2)
        if kind == "eigvalsh":
            return w.reshape(-1, 1)
        scale = np.max(np.abs(w)) if w.size else 0.0
        if w.size > 1:
            k = int(np.argmin(np.diff(w)))
            gap = w[k + 1] - w[k]
            if gap <= tolerance * scale:
                raise MatrixFunctionAssumptionError(
                    "eigh: the derivative of the eigenvalues assumes they are distinct, but "
                    f"eigenvalues {{k}} and {{k + 1}} (ascending, {{w[k]:.6g}} and "
                    f"{{w[k + 1]:.6g}}) are {{gap:.3g}} apart, at or below the tolerance "
                    f"{{tolerance!r}} times the largest magnitude {{scale:.6g}}: at a repeated "
                    "eigenvalue only symmetric functions of them (their sum, the trace) are "
                    "differentiable")
        if kind == "eigvecsh":
            return v
        gaps = w[None, :] - w[:, None]
        np.fill_diagonal(gaps, 1.0)
        inverse = 1.0 / gaps
        np.fill_diagonal(inverse, 0.0)
        return inverse
    rows, cols = a.shape
    if rows < cols and kind in ("svdvals", "svd_u", "svd_v"):
        raise MatrixFunctionAssumptionError(
            f"svdvals: a matrix with fewer rows than columns ({{rows}} x {{cols}}) has "
            f"{{rows}} singular values, not {{cols}}; take svdvals of its transpose")
    if kind in ("svdvals", "nuclear", "norm2"):
        s = np.linalg.svd(a, compute_uv=False)
        if kind == "svdvals":
            return s.reshape(-1, 1)
        if kind == "nuclear":
            return np.asarray(np.sum(s))
        return np.asarray(s[0] if s.size else 0.0)
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    scale = s[0] if s.size else 0.0
    if kind == "top":
        if s.size > 1 and s[0] - s[1] <= tolerance * scale or scale == 0:
            raise MatrixFunctionAssumptionError(
                "the derivative of the 2-norm (the largest singular value) assumes it is "
                f"simple and nonzero, but sigma_1 = {{scale:.6g}} and sigma_2 = "
                f"{{s[1] if s.size > 1 else 0.0:.6g}} are at most the tolerance {{tolerance!r}} "
                "times sigma_1 apart: the 2-norm has no gradient there")
        return np.outer(u[:, 0], vt[0])
    smallest = s[-1] if s.size else 0.0
    if smallest <= tolerance * scale:
        raise MatrixFunctionAssumptionError(
            f"the derivative of the singular values (or of the nuclear norm) assumes they are "
            f"nonzero, but the smallest, {{smallest:.6g}}, is at or below the tolerance "
            f"{{tolerance!r}} times the largest, {{scale:.6g}}: the matrix is (numerically) rank "
            "deficient, where they are not differentiable")
    if kind == "polar":
        return u @ vt
    if s.size > 1:
        k = int(np.argmin(-np.diff(s)))
        gap = s[k] - s[k + 1]
        if gap <= tolerance * scale:
            raise MatrixFunctionAssumptionError(
                "svdvals: the derivative of the singular values assumes they are distinct, but "
                f"singular values {{k}} and {{k + 1}} (largest first, {{s[k]:.6g}} and "
                f"{{s[k + 1]:.6g}}) are {{gap:.3g}} apart, at or below the tolerance "
                f"{{tolerance!r}} times the largest, {{scale:.6g}}: only symmetric functions of "
                "them (the nuclear norm) are differentiable there")
    return u if kind == "svd_u" else vt.T
'''
"""A Python function ``_matrix_function(kind, a)`` of NumPy arrays (``np`` in its globals)."""

_NAMESPACE: dict = {"np": np}
exec(compile(SOURCE, "<symdl matrix functions>", "exec"), _NAMESPACE)  # noqa: S102 - our text
matrix_function_value = _NAMESPACE["_matrix_function"]
"""``matrix_function_value(kind, a)``: the value of the matrix function ``kind`` of ``a``;
raises ``numpy.linalg.LinAlgError`` where a derivative's assumption fails."""
