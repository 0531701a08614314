"""symdl.check and `symdl check`: the checks decide, catch wrong derivatives, explain.

Most checks run interpreted kernels (``jit=False``: the same generated source without Numba
compilation) to stay fast; the command-line tests run jitted kernels.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl.catalog import load, names
from symdl.cli import main
from symdl.verify.check import check
from symdl.verify.report import GradientCheckError
from symdl.verify.sampling import KINK_MARGIN, draw_inputs

n, d = sp.symbols("n d", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, d)
w = sp.MatrixSymbol("w", d, 1)
y = sp.MatrixSymbol("y", n, 1)
LOGREG = symdl.binary_cross_entropy_with_logits(X * w, y)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture(scope="module")
def logreg():
    return symdl.derive(LOGREG, wrt=[w], hessian=True)


def _arrays(rng, rows=6, cols=4):
    return {"X": rng.standard_normal((rows, cols)), "w": rng.standard_normal((cols, 1)),
            "y": (rng.random((rows, 1)) < 0.5).astype(float)}


def _perturb(kernel, output: str, amount: float):
    """Makes the generated code's ``output`` wrong by ``amount`` in its first entry."""
    position = len(kernel.input_names) + kernel.output_names.index(output)
    original = kernel._module.kernel

    def wrong(*args, **options):
        original(*args, **options)
        args[position].reshape(-1)[0] += amount

    kernel._module = type("Wrong", (), {"kernel": staticmethod(wrong)})
    return kernel


def test_report_api(logreg):
    report = check(logreg, jit=False)
    assert report.ok and report.max_rel_error < 1e-6
    methods = {r.method for r in report.rows}
    assert {"central-richardson", "central-richardson along v", "sympy reference",
            "complex step"} <= methods
    assert {r.output for r in report.rows} == {"value", "grad:w", "hessian:w,w", "hvp:w"}
    text = str(report)
    assert "gradient check passed" in text and "hessian:w,w" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and len(data["rows"]) == len(report.rows)
    latex = report.to_latex()
    assert latex.startswith(r"\begin{tabular}") and r"hessian:w,w" in latex
    report.raise_if_failed()


def test_check_kernel_at_given_inputs(logreg, rng):
    k = logreg.compile(hvp=True, jit=False)
    arrays = _arrays(rng)
    arrays["v_w"] = rng.standard_normal((4, 1))
    report = check(k, **arrays)
    assert report.ok
    assert "numpy reference (IR)" in {r.method for r in report.rows}
    assert report.dims == {}


def test_seeded_and_reproducible(logreg):
    a, b = check(logreg, seed=3, jit=False), check(logreg, seed=3, jit=False)
    assert [r.numeric for r in a.rows] == [r.numeric for r in b.rows]
    c = check(logreg, seed=4, jit=False)
    assert [r.numeric for r in a.rows] != [r.numeric for r in c.rows]
    assert set(a.dims.values()) <= {3, 5, 7, 9, 11, 13}


@pytest.mark.parametrize("output, amount", [("grad:w", 1e-4), ("hessian:w,w", 1e-4),
                                            ("hvp:w", 1e-4)])
def test_wrong_derivative_is_caught(logreg, rng, output, amount):
    k = _perturb(logreg.compile(hvp=True, jit=False), output, amount)
    report = check(logreg, kernel=k)
    assert not report.ok
    bad = report.failures
    assert {r.output for r in bad} == {output}
    worst = bad[0]
    assert worst.abs_error == pytest.approx(amount, rel=1e-3)
    with pytest.raises(GradientCheckError) as caught:
        report.raise_if_failed()
    message = str(caught.value)
    assert output in message and "analytic" in message and "numeric" in message
    assert "tolerance" in message and "rel error" in message
    assert isinstance(caught.value, symdl.SymdlError)


def test_wrong_derivative_caught_along_random_directions(logreg):
    """Above ENTRYWISE_MAX entries the gradient is checked along random projections."""
    big = {d: 80, n: 5}
    report = check(logreg, dims=big, jit=False)
    assert report.ok and any("along random u" in r.method for r in report.rows)
    k = _perturb(logreg.compile(hvp=True, jit=False), "grad:w", 1e-3)
    bad = check(logreg, kernel=k, dims=big)
    assert not bad.ok and "grad:w" in {r.output for r in bad.failures}


def test_wrong_formula_kernel_caught(rng):
    """A hand-built kernel whose gradient formula is wrong: the gradient of the summed loss
    (missing the 1/n of the mean) under the name grad:w."""
    from symdl.kernels.kernel import Kernel

    good = symdl.derive(LOGREG, wrt=[w])
    summed = symdl.derive(symdl.total(symdl.softplus(X * w) - sp.hadamard_product(y, X * w)),
                          wrt=[w])
    k = Kernel({"value": good.output, "grad:w": summed.gradient_node(w)},
               list(good.leaves.values()), "wrong gradient", jit=False)
    report = check(k, **_arrays(rng))
    assert not report.ok
    assert {r.output for r in report.failures} == {"grad:w"}


def test_regression_duplicate_loop_member_clobbered_a_temporary(rng):
    """Found by the property tests: with value, gradient, Hessian and HVP in one kernel, the
    fused loop listed the recomputed map 1/Q twice and the second copy took the name of the
    next temporary (-1/Q^2), so hvp was wrong. f(q) = sigmoid(log q) = q / (1 + q), so the
    HVP is f''(q) v = -2 v / (1 + q)^3, entry by entry."""
    d_, k_ = sp.symbols("d k", integer=True, positive=True)
    Q = sp.MatrixSymbol("Q0", d_, k_)
    der = symdl.derive(symdl.total(symdl.sigmoid(symdl.log(Q))), wrt=[Q], hessian=True)
    q, v = rng.uniform(0.5, 2.0, (3, 2)), rng.standard_normal((3, 2))
    for jit in (False, True):
        result = der.compile(hvp=True, jit=jit)(Q0=q, v_Q0=v)
        np.testing.assert_allclose(result.hvp["Q0"], -2 * v / (1 + q) ** 3, rtol=1e-12)


def test_regression_zero_output_is_written(rng):
    """A zero Hessian block (of a term linear in a scalar) had no step writing it: the
    kernel returned uninitialised memory. (lambda/2) ||W||^2 has d^2/dlambda^2 = 0."""
    lam = sp.Symbol("lambda", real=True)
    W = sp.MatrixSymbol("W", d, n)
    der = symdl.derive(lam / 2 * symdl.total(sp.HadamardPower(W, 2)), wrt=[W, lam],
                       hessian=True)
    k = der.compile(jit=False)
    for _ in range(3):
        garbage = np.full(10_000, 7.5)  # noqa: F841 - dirties freed memory
        assert k(W=rng.standard_normal((3, 2)), **{"lambda": 0.3}).hessian[
            "lambda", "lambda"] == 0.0


def test_regression_constant_output_is_written():
    """Found by the property tests: sum(P0 ⊙ P1) for 1 x 1 P0, P1 has the constant Hessian
    block ∂²/∂P0∂P1 = 1, which no kernel step wrote (uninitialised memory came back)."""
    P0, P1 = sp.MatrixSymbol("P0", 1, 1), sp.MatrixSymbol("P1", 1, 1)
    der = symdl.derive(symdl.total(sp.hadamard_product(P0, P1)), wrt=[P0, P1], hessian=True)
    k = der.compile(jit=False)
    for _ in range(3):
        garbage = np.full(10_000, 7.5)  # noqa: F841 - dirties freed memory
        out = k(P0=np.array([[2.0]]), P1=np.array([[3.0]]))
        assert out.hessian["P0", "P1"] == 1.0 and out.hessian["P1", "P0"] == 1.0


def test_float32_tolerances(logreg):
    report = check(logreg, dtype="float32", jit=False)
    assert report.ok and report.dtype == "float32"
    assert report.tolerance.rtol == 2e-3
    assert report.max_rel_error > 1e-8  # float32 rounding shows: the float64 limits would fail
    strict = check(logreg, dtype="float32", rtol=1e-9, atol=0.0, jit=False)
    assert not strict.ok


def test_float64_is_tight(logreg):
    report = check(logreg, jit=False)
    assert report.max_rel_error < 1e-8


def test_kinks_and_positive_inputs():
    Z = sp.MatrixSymbol("Z", n, d)
    V = sp.MatrixSymbol("V", n, d)
    loss = symdl.total(symdl.relu(Z)) + symdl.total(symdl.log(V)) + symdl.total(
        sp.HadamardProduct(Z, Z).applyfunc(sp.Abs))
    der = symdl.derive(loss, wrt=[Z, V])
    k = der.compile(jit=False)
    values, dims = draw_inputs(der, k, seed=0)
    assert np.min(np.abs(values["Z"])) >= KINK_MARGIN
    assert np.min(values["V"]) >= 0.5
    report = check(der, jit=False)
    assert report.ok
    assert any("complex step: not applicable" in note for note in report.notes)


def test_at_a_kink_finite_differences_disagree():
    """At relu's kink the central difference is 1/2; the check must say so, not pass."""
    Z = sp.MatrixSymbol("Z", n, d)
    der = symdl.derive(symdl.total(symdl.relu(Z)), wrt=[Z])
    report = check(der, jit=False, sample_inputs=lambda rng, dims: {"Z": np.zeros((3, 5))},
                   dims={n: 3, d: 5})
    assert not report.ok
    assert {r.numeric for r in report.failures if r.method == "central-richardson"} == {0.5}


def test_sample_inputs_hook_gets_dims_and_overrides():
    seen = {}

    def sample(rng, dims):
        seen.update(dims)
        return {"y": np.ones((dims["n"], 1))}

    der = symdl.derive(LOGREG, wrt=[w])
    k = der.compile(jit=False)
    values, bound = draw_inputs(der, k, seed=1, sample_inputs=sample)
    assert seen["n"] == bound[n] and seen[n] == bound[n]
    assert np.all(values["y"] == 1.0)


def test_check_rejects_bad_arguments(logreg):
    with pytest.raises(symdl.SymdlError, match="Derivation or a compiled Kernel"):
        check("logistic_regression")
    k = logreg.compile(jit=False)
    with pytest.raises(symdl.SymdlError, match="needs the kernel's inputs"):
        check(k)
    with pytest.raises(symdl.SymdlError, match="float64"):
        check(logreg, dtype="float16", jit=False)


# --------------------------------------------------------------------------------------------
# The command line (jitted kernels)


def test_cli_passes_with_json(capsys):
    assert main(["check", "logistic_regression", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["logistic_regression"]  # {name: report}, always
    assert data["ok"] is True and data["rows"]


def test_cli_table_and_float32(capsys):
    assert main(["check", "linear_regression", "--dtype", "float32", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "gradient check passed: float32, seed 2" in out


def test_cli_plot_written(tmp_path):
    path = tmp_path / "err.png"
    assert main(["check", "logistic_regression", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(logreg, tmp_path, monkeypatch):
    report = check(logreg, jit=False, curves=True)
    assert set(report.curves) == {"grad:w", "hessian:w,w"}
    steps, errors = report.curves["grad:w"]
    # The V: the error is smallest in the middle, larger at both ends.
    best = int(np.argmin(errors))
    assert 0 < best < len(steps) - 1 and errors[0] > 100 * errors[best] < errors[-1] / 100
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(symdl.SymdlError, match="pip install"):
        report.plot(str(tmp_path / "x.png"))


def test_cli_exit_codes(tmp_path, capsys):
    assert main(["check", "no_such_derivation"]) == 2
    assert main(["check"]) == 2
    kinked = tmp_path / "kinked.py"
    kinked.write_text(
        '"""A ReLU sum, checked at its kink."""\n'
        "import numpy as np\nimport sympy as sp\nimport symdl\n"
        "n = sp.Symbol('n', integer=True, positive=True)\n"
        "Z = sp.MatrixSymbol('Z', n, 1)\n"
        "def sample_inputs(rng, dims):\n    return {'Z': np.zeros((dims['n'], 1))}\n"
        "def derivation():\n    return symdl.derive(symdl.total(symdl.relu(Z)), wrt=[Z])\n"
    )
    assert main(["check", str(kinked)]) == 1
    assert "FAILED" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Every shipped derivation (interpreted kernels; the CLI tests above cover the jitted path)


@pytest.mark.parametrize("name", names())
def test_every_shipped_derivation_checks(name):
    entry = load(name)
    report = check(entry.derive(), jit=False,
                   sample_inputs=getattr(entry.module, "sample_inputs", None),
                   dims=getattr(entry.module, "CHECK_DIMS", None))  # small, where declared
    assert report.ok, str(report)


def test_regression_relu_of_a_one_by_one_matrix():
    """Found by the property tests: printing relu' = Heaviside of a literal 1 x 1
    MatrixSymbol raised SymPy's ValueError (SymPy applies the function to a 1 x 1 matrix
    itself, and Heaviside refuses an argument not known to be real)."""
    P0 = sp.MatrixSymbol("P0", 1, 1)
    der = symdl.derive(symdl.total(symdl.relu(P0)), wrt=[P0], hessian=True)
    grad = symdl.evaluate(der.gradient(P0), {"P0": np.array([[0.7]])}, {})
    assert grad.ravel().tolist() == [1.0]
    assert check(der, jit=False).ok


# --------------------------------------------------------------------------------------------
# Regressions of issue 15, item 12: check finishes, never crashes untyped, never false-passes


@pytest.mark.parametrize("name", ["tanh", "lambda", "a b", "x0"])
def test_regression_any_matrix_name_reaches_the_reference(name):
    """A matrix named like a NumPy function (``tanh``), a keyword (``lambda``), a non-identifier
    (``a b``) or a temporary of lambdify's CSE (``x0``, an RNN's first input) raised an untyped
    TypeError/IndexError inside the SymPy reference: names are now generated there."""
    M = sp.MatrixSymbol(name, n, d)
    der = symdl.derive(symdl.total(symdl.tanh(M * w)), wrt=[w, M], hessian=True)
    report = check(der, jit=False, dims={n: 3, d: 2})
    assert report.ok, str(report)
    assert {"sympy reference", "complex step"} <= {r.method for r in report.rows}


def _textbook_bce():
    s = symdl.sigmoid(X * w)
    one = sp.OneMatrix(n, 1)
    return -symdl.mean(sp.hadamard_product(y, symdl.log(s))
                       + sp.hadamard_product(one - y, symdl.log(one - s)))


@pytest.fixture(scope="module")
def textbook_bce():
    return symdl.derive(_textbook_bce(), wrt=[w], hessian=True)


def test_regression_textbook_bce_is_no_false_alarm(textbook_bce):
    """-mean(y ⊙ log σ(Xw) + (1-y) ⊙ log(1-σ(Xw))) FAILED on correct gradients (seeds 3, 9,
    13, 14: max relative error up to 2e-4 against a tolerance near 1e-6): the drawn logits
    reached 10-15, where the computed log(1 - σ) carries rounding that the step eps^(1/3)
    amplified. Drawn points now keep logits moderate, and at a given point with logits of 15
    the Richardson step eps^(1/5) keeps the rounding below the tolerance."""
    import torch

    k = textbook_bce.compile(hvp=True, jit=False)
    for seed in (3, 13):  # finite differences only: the SymPy reference agreed before
        report = check(textbook_bce, kernel=k, seed=seed, reference_budget=0)
        assert report.ok, str(report)
    rng = np.random.default_rng(3)
    for scale in (1, 3, 6, 10):  # the last point has |Xw| up to 14.5
        arrays = {"X": rng.standard_normal((5, 7)),
                  "w": rng.standard_normal((7, 1)) * scale / np.sqrt(7),
                  "y": (rng.random((5, 1)) < 0.5).astype(float),
                  "v_w": rng.standard_normal((7, 1))}
    assert 14 < np.max(np.abs(arrays["X"] @ arrays["w"])) < 15
    # The kernel's gradient is right there (PyTorch autograd as the oracle) ...
    tx, ty = torch.tensor(arrays["X"]), torch.tensor(arrays["y"])
    tw = torch.tensor(arrays["w"], requires_grad=True)
    torch.nn.functional.binary_cross_entropy(torch.sigmoid(tx @ tw), ty).backward()
    np.testing.assert_allclose(k(**arrays).grad["w"], tw.grad.numpy(), rtol=1e-9, atol=1e-12)
    # ... so the check passes; and a gradient wrong by 1e-5 in one entry still fails.
    report = check(textbook_bce, kernel=k, reference_budget=0, **arrays)
    assert report.ok, str(report)
    wrong = _perturb(textbook_bce.compile(hvp=True, jit=False), "grad:w", 1e-5)
    assert not check(textbook_bce, kernel=wrong, reference_budget=0, **arrays).ok
    assert not check(textbook_bce, kernel=wrong, seed=3, reference_budget=0).ok


def test_regression_erf_gelu_hessian_is_not_vacuous():
    """GELU written x (1 + erf(x/sqrt(2)))/2 on X W: the constant 1/sqrt(2) made the check
    draw X and W positive, X W was about 10, the GELU saturated, its Hessian block was 0 by
    finite differences and 1e-14 by the kernel, and the check PASSED with max_rel_error = inf.
    Now the inputs are drawn around 0, the Hessian is compared where it is not zero (the
    kernel's block against PyTorch's Hessian as the oracle) and every error is finite."""
    import torch

    h = sp.Symbol("h", integer=True, positive=True)
    W, G = sp.MatrixSymbol("W", d, h), sp.MatrixSymbol("G", n, h)
    t = sp.Symbol("t")
    gelu = sp.Lambda(t, t * (1 + sp.erf(t / sp.sqrt(2))) / 2)
    der = symdl.derive(symdl.total(sp.hadamard_product(G, (X * W).applyfunc(gelu))), wrt=[W],
                       hessian=True)
    report = check(der, jit=False)
    assert report.ok and np.isfinite(report.max_rel_error), str(report)
    rows = [r for r in report.rows if r.output == "hessian:W,W"
            and r.method == "central-richardson"]
    assert max(abs(r.numeric) for r in rows) > 0.1
    values, _ = draw_inputs(der, der.compile(jit=False), seed=0)
    x, g = torch.tensor(values["X"]), torch.tensor(values["G"])

    def loss(wt):
        return (g * torch.nn.functional.gelu(x @ wt)).sum()

    expected = torch.autograd.functional.hessian(loss, torch.tensor(values["W"])).numpy()
    block = der.compile(jit=False)(**values).hessian["W", "W"]
    np.testing.assert_allclose(block.reshape(expected.shape), expected, rtol=1e-9, atol=1e-12)


def test_regression_relative_error_of_zero_blocks_and_non_finite_values():
    """A row compared with an all-zero block had relative error inf yet passed; a numeric
    value of inf passed (inf <= inf); report.ok ignored NaN and inf errors."""
    from symdl.verify.check import _Collector
    from symdl.verify.report import CheckReport, CheckRow, Tolerance

    report = CheckReport()
    out = _Collector(report, Tolerance(rtol=1e-6, atol=1e-9))
    out.compare("hessian:W,W", "W", [1e-21, 0.0], [0.0, 0.0], "test")
    assert all(r.passed for r in report.rows)
    assert report.ok and report.max_rel_error == pytest.approx(1e-18)
    out.compare("grad:w", "w", [1.0], [np.inf], "test")
    out.compare("grad:v", "v", [1.0], [np.nan], "test")
    assert [r.passed for r in report.rows[2:]] == [False, False]
    assert not report.ok and np.isnan(report.max_rel_error)
    forged = CheckReport(rows=[CheckRow("grad:w", "w", "0", 1.0, 1.0, 0.0, np.inf, 1e-6, "x",
                                        True)])
    assert not forged.ok


@pytest.mark.parametrize("gram", ["AtA", "AAt"])
def test_regression_inverted_gram_matrix_gets_nonsingular_sizes(gram):
    """(A^T A)^{-1} A^T y drew n < d, so A^T A was singular and check ended in an
    EvaluationError; the sizes are now ordered so every inverted product has full rank (and
    a point where the kernel still cannot evaluate is drawn again)."""
    A = sp.MatrixSymbol("A", n, d)
    if gram == "AtA":
        solution = (A.T * A).inv() * A.T * y  # d x d Gram: needs n >= d
    else:
        solution = A.T * (A * A.T).inv() * y  # n x n Gram: needs d >= n
    der = symdl.derive(symdl.total(sp.HadamardPower(solution, 2)), wrt=[A])
    for seed in range(3):
        report = check(der, jit=False, seed=seed)
        assert report.ok, str(report)
        rows, cols = report.dims["n"], report.dims["d"]
        assert (rows > cols) if gram == "AtA" else (cols > rows)


def test_regression_reference_failure_is_a_row_not_a_traceback(monkeypatch):
    """SymPy's polynomial code raised an untyped RecursionError out of check on sums of
    shifted-matrix products. Whatever the reference raises is now a row saying "not
    applicable" and why; the finite-difference rows still decide. (The definition itself is
    checked with its reference too.)"""
    from symdl.verify import reference as check_reference

    A, B, C = (sp.MatrixSymbol(s, n, n) for s in "ABC")
    eye, c = sp.Identity(n), sp.Symbol("c")
    shifted = (A + c * eye) * (B + eye) + (B + 3 * eye) * (C + eye) + (A + eye) * (C + 2 * eye)
    der = symdl.derive(symdl.total(sp.HadamardPower(shifted, 2)), wrt=[A, B, c], hessian=True)
    report = check(der, jit=False, dims={n: 3})
    assert report.ok and "sympy reference" in {r.method for r in report.rows}, str(report)

    def recursing(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(check_reference.Chain, "__init__", recursing)
    report = check(der, jit=False, dims={n: 3})
    assert report.ok and {r.method for r in report.rows} == {
        "central-richardson", "central-richardson along v"}
    assert report.skipped and all("not applicable" in s.reason and "RecursionError" in s.reason
                                  for s in report.skipped)
    assert "not applicable" in str(report)


def test_regression_one_expression_network_check_is_bounded():
    """A 3-layer network written as one expression took 393 s to check (the SymPy reference
    wrote every layer out inside every entry). The reference now runs piece by piece under
    a time budget; what does not fit is a row saying "not run" with the seconds, and the
    finite-difference rows still run."""
    import time

    h, c = sp.symbols("h c", integer=True, positive=True)
    Y = sp.MatrixSymbol("Y", n, c)
    Ws = [sp.MatrixSymbol("W1", d, h), sp.MatrixSymbol("W2", h, h), sp.MatrixSymbol("W3", h, h)]
    Wo = sp.MatrixSymbol("Wo", h, c)
    a = X
    for W in Ws:
        a = symdl.tanh(a * W)
    der = symdl.derive(symdl.softmax_cross_entropy(a * Wo, Y), wrt=[*Ws, Wo])
    start = time.monotonic()
    report = check(der, jit=False, reference_budget=1.0)
    assert time.monotonic() - start < 60
    assert report.ok, str(report)
    finite_differences = {r.output for r in report.rows if r.method == "central-richardson"}
    assert finite_differences == {f"grad:{p}" for p in ("W1", "W2", "W3", "Wo")}
    assert report.skipped and all(s.reason.startswith("not run") and " s budget" in s.reason
                                  for s in report.skipped)
    assert "not run" in str(report) and report.to_dict()["skipped"]


def test_reference_budget_refuses_what_it_estimates_too_slow():
    from symdl.verify.reference import Budget, ReferenceBudgetExceededError

    with pytest.raises(ReferenceBudgetExceededError, match=r"estimated \d+ s .* 1 s budget"):
        Budget(1.0).before_printing(10**7)
    assert issubclass(ReferenceBudgetExceededError, symdl.SymdlError)


def test_regression_every_check_failure_is_typed(logreg):
    """Whatever goes wrong inside check reaches the caller as a SymdlError (the cause
    chained): a sample_inputs hook that raises or returns the wrong shape, a RecursionError
    from deep inside (SymPy's polynomial code raised one on shifted-matrix products)."""
    def raising(rng, dims):
        raise ZeroDivisionError("hook bug")

    with pytest.raises(symdl.SymdlError, match="sample_inputs.*ZeroDivisionError"):
        check(logreg, jit=False, sample_inputs=raising)
    with pytest.raises(symdl.SymdlError, match="sample_inputs gave y"):
        check(logreg, jit=False, sample_inputs=lambda rng, dims: {"y": np.ones(2)})
    k = logreg.compile(hvp=True, jit=False)

    def recursing(*args, **options):
        raise RecursionError("maximum recursion depth exceeded")

    k._module = type("Deep", (), {"kernel": staticmethod(recursing)})
    with pytest.raises(symdl.SymdlError, match="RecursionError") as caught:
        check(logreg, kernel=k)
    assert isinstance(caught.value.__cause__, RecursionError)


def test_regression_reference_work_without_checkpoints_is_interrupted(logreg, monkeypatch):
    """Printing a long derivation's equations (minutes for a 6-layer network in one
    expression: check took 330 s with jitted kernels) has no checkpoint of the budget: a timer
    interrupts it, the rows say so, and the finite differences still decide."""
    import time

    from symdl.derivation import Derivation

    monkeypatch.setattr(Derivation, "equations", lambda self: time.sleep(60))
    start = time.monotonic()
    report = check(logreg, jit=False, reference_budget=0.5)
    assert time.monotonic() - start < 30
    assert report.ok, str(report)
    reasons = {s.output: s.reason for s in report.skipped}
    assert "interrupted" in reasons["grad:w"] and "0.5 s budget" in reasons["grad:w"]
    assert {"central-richardson", "complex step"} <= {r.method for r in report.rows}


def test_the_sympy_reference_reads_zero_outside_a_padded_window():
    """Regression: the SymPy reference evaluated X[b, 2*t + k - 1] with NumPy indexing, so a
    padded convolution's reference raised IndexError past the end ("not applicable") and
    would have wrapped around before the start. It reads 0 outside, as the definition means,
    and the reference rows pass (values and the complex-step gradients)."""
    n, T, K = sp.symbols("n T K", integer=True, positive=True)
    b, t, k = sp.symbols("b t k", integer=True)
    X, W = sp.IndexedBase("X", shape=(n, T)), sp.IndexedBase("W", shape=(K,))
    conv = sp.Sum(W[k] * X[b, 2 * t + k - 1], (k, 0, K - 1))  # stride 2, padding 1
    loss = sp.Sum(sp.log(1 + sp.exp(conv)), (t, 0, (T + 2 - K) // 2), (b, 0, n - 1))
    der = symdl.derive(loss, wrt=[W, X])
    report = check(der, jit=False, dims={n: 2, T: 7, K: 3})
    assert report.ok, str(report)
    methods = {row.method for row in report.rows if row.passed}
    assert {"sympy reference", "complex step"} <= methods, str(report)
    assert not report.skipped and not report.notes, str(report)


def test_check_takes_numpy_spellings_of_the_precision():
    # np.float32 is how NumPy users name a precision; so are "f4" and np.dtype("float32").
    n = sp.Symbol("n", integer=True, positive=True)
    w = sp.MatrixSymbol("w", n, 1)
    der = symdl.derive(symdl.sum(w.T * w), wrt=[w])
    for spelling in (np.float32, "f4", np.dtype("float32")):
        assert symdl.check(der, dtype=spelling, jit=False, hvp=False).dtype == "float32"
    with pytest.raises(symdl.errors.SymdlError, match="float64' or 'float32'"):
        symdl.check(der, dtype=np.int64, jit=False)
