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
from symdl.check import KINK_MARGIN, GradientCheckError, check, draw_inputs
from symdl.cli import main
from symdl.registry import load, names

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
    from symdl.kernel import Kernel

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
    data = json.loads(capsys.readouterr().out)
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
                   sample_inputs=getattr(entry.module, "sample_inputs", None))
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
