"""The exported kernel module's named entry point: ``compute(*, <symbols by keyword>)``.

Oracle: the loss, gradient and Hessian-vector product of a regularised softplus model written
by hand in NumPy. The kernels here run as plain Python (``jit=False``: the same generated
source, no Numba compile); the subprocess runs the exported file with Numba's JIT disabled
and symdl unimportable, so these tests compile nothing (``tests/kernels/test_kernels.py``
runs exported modules compiled).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import keyword
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symdl
from symdl.kernels.entry import RESERVED, argument_names

XNAME, WNAME, LNAME = "X 1,2", "α", "lambda"
"""Symbol names that are no Python identifiers: a space and a comma, non-ASCII, a keyword."""


def _oracle(X, w, lam, v):
    """Value, gradient and Hessian-vector product of mean(softplus(X w)) + lam * sum(w**2)."""
    z = X @ w
    sig = 1 / (1 + np.exp(-z))
    n = X.shape[0]
    value = np.mean(np.logaddexp(0, z)) + lam * np.sum(w**2)
    grad = X.T @ sig / n + 2 * lam * w
    hvp = X.T @ (sig * (1 - sig) * (X @ v)) / n + 2 * lam * v
    return value, grad, hvp


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    n, d = sp.symbols("n d", integer=True, positive=True)
    X = sp.MatrixSymbol(XNAME, n, d)
    w = sp.MatrixSymbol(WNAME, d, 1)
    lam = sp.Symbol(LNAME, real=True)
    der = symdl.derive(symdl.mean(symdl.softplus(X * w))
                       + lam * symdl.total(sp.hadamard_product(w, w)), wrt=[w])
    kernel = der.compile(hvp=True, jit=False)
    path = kernel.export(tmp_path_factory.mktemp("export") / "named_kernels.py")
    return kernel, path, _load(path, "named_kernels")


def _data(seed=0, n=6, d=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(d, 1)), 0.3, rng.normal(size=(d, 1))


def test_argument_names_are_distinct_identifiers():
    names = ["X", "a,b", "a_b", "lambda", "class", "out", "parallel", "_compute", "2w",
             "α", "Σ", "权重", "my weights", "x\ny", '"""', "", "a b", "a-b", "None"]
    chosen = argument_names(names)
    assert list(chosen) == names
    for keyword_name in chosen.values():
        assert keyword_name.isidentifier() and keyword_name.isascii(), keyword_name
        assert not keyword.iskeyword(keyword_name) and keyword_name not in RESERVED
    assert len(set(chosen.values())) == len(names)
    # Valid names stay; the others are sanitised, collisions numbered in the order given.
    assert chosen["X"] == "X" and chosen["a_b"] == "a_b" and chosen["a,b"] == "a_b_2"
    assert chosen["lambda"] == "lambda_" and chosen["None"] == "None_"
    assert chosen["out"] == "out_2" and chosen["α"] == "alpha" and chosen["Σ"] == "Sigma"
    assert chosen["a b"] == "a_b_3" and chosen["a-b"] == "a_b_4"
    assert argument_names(names) == chosen  # deterministic


def test_compute_takes_the_symbols_by_keyword(exported):
    kernel, path, module = exported
    parameters = inspect.signature(module.compute).parameters
    # In the order of the symbols' names (kernel.inputs), then the options.
    assert list(parameters) == ["X_1_2", "lambda_", "v_alpha", "alpha", "out", "parallel",
                                "compiled"]
    assert list(kernel.inputs) == [XNAME, LNAME, "v_α", WNAME]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())
    X, w, lam, v = _data()
    got = module.compute(X_1_2=X, alpha=w, lambda_=lam, v_alpha=v)
    value, grad, hvp = _oracle(X, w, lam, v)
    assert set(got) == {"value", "grad:α", "hvp:α"}
    assert got["value"] == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(got["grad:α"], grad, rtol=1e-12)
    np.testing.assert_allclose(got["hvp:α"], hvp, rtol=1e-12)
    # float32 in, float32 out.
    got32 = module.compute(X_1_2=X.astype(np.float32), alpha=w.astype(np.float32),
                           lambda_=lam, v_alpha=v.astype(np.float32))
    assert got32["grad:α"].dtype == np.float32
    np.testing.assert_allclose(got32["grad:α"], grad, rtol=1e-4)


def test_no_silent_swaps(exported):
    _, _, module = exported
    X, w, lam, v = _data()
    with pytest.raises(TypeError):  # keyword-only: no order to get wrong
        module.compute(X, w, lam, v)
    with pytest.raises(module.KernelArgumentError, match="alpha must have shape") as info:
        module.compute(X_1_2=X, alpha=X, lambda_=lam, v_alpha=v)  # two shapes swapped
    assert isinstance(info.value, ValueError) and info.value.argument == "alpha"
    assert info.value.expected == (3, 1) and info.value.actual == (6, 3)
    with pytest.raises(module.KernelArgumentError, match="v_alpha must have shape"):
        module.compute(X_1_2=X, alpha=w, lambda_=lam, v_alpha=v[:2])
    with pytest.raises(TypeError, match="v_alpha"):  # a missing argument is named
        module.compute(X_1_2=X, alpha=w, lambda_=lam)


@pytest.mark.parametrize("case", ["int", "mixed", "scalar", "rank", "empty", "out-shape",
                                  "out-name", "out-overlap", "out-type", "parallel"])
def test_bad_arguments_raise_the_modules_error(exported, case):
    _, _, module = exported
    X, w, lam, v = _data()
    args = {"X_1_2": X, "alpha": w, "lambda_": lam, "v_alpha": v}
    bad = {
        "int": {"alpha": np.ones((3, 1), dtype=np.int64)},
        "mixed": {"alpha": w.astype(np.float32)},
        "scalar": {"lambda_": np.ones(2)},
        "rank": {"alpha": w.ravel()},
        "empty": {"X_1_2": np.ones((0, 3))},
        "out-shape": {"out": {"grad:α": np.empty((2, 1))}},
        "out-name": {"out": {"grad:w": np.empty((3, 1))}},
        "out-overlap": {"out": {"grad:α": v}},
        "out-type": {"out": [np.empty((3, 1))]},
        "parallel": {"parallel": "yes"},
    }[case]
    with pytest.raises(module.KernelArgumentError):
        module.compute(**{**args, **bad})


def test_out_buffers_are_filled(exported):
    _, _, module = exported
    X, w, lam, v = _data(seed=3)
    grad = np.empty((3, 1))
    got = module.compute(X_1_2=X, alpha=w, lambda_=lam, v_alpha=v, out={"grad:α": grad})
    assert got["grad:α"] is grad
    np.testing.assert_allclose(grad, _oracle(X, w, lam, v)[1], rtol=1e-12)
    # Non-contiguous inputs are copied, not misread.
    got = module.compute(X_1_2=np.asfortranarray(X), alpha=w, lambda_=lam, v_alpha=v)
    np.testing.assert_allclose(got["grad:α"], grad, rtol=1e-12)


def test_docstring_lists_every_argument(exported):
    _, _, module = exported
    doc = module.compute.__doc__
    for line in ["X_1_2: the symbol 'X 1,2', an array of shape (n, d)",
                 "alpha: the symbol '\\u03b1', an array of shape (d, 1)",
                 "lambda_: the symbol 'lambda', a real number",
                 "v_alpha: the symbol 'v_\\u03b1', an array of shape (d, 1)",
                 "'value': float", "'grad:\\u03b1': shape (d, 1)", "float64", "float32",
                 "KernelArgumentError"]:
        assert line in doc, line
    assert "compute(" in module.__doc__


_CHILD = textwrap.dedent("""
    import importlib.util, json, sys
    sys.modules["symdl"] = None  # import symdl raises ImportError here
    import numpy as np
    spec = importlib.util.spec_from_file_location("named_kernels", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    X, w, v = rng.normal(size=(6, 3)), rng.normal(size=(3, 1)), rng.normal(size=(3, 1))
    got = module.compute(X_1_2=X, alpha=w, lambda_=0.3, v_alpha=v)
    try:
        module.compute(X_1_2=X, alpha=X, lambda_=0.3, v_alpha=v)
        raise SystemExit("a swap was accepted")
    except module.KernelArgumentError as exc:
        error = str(exc)
    assert not [m for m in sys.modules if m.startswith("symdl") and sys.modules[m]]
    print(json.dumps({"value": got["value"], "grad": got["grad:\\u03b1"].ravel().tolist(),
                      "error": error}))
""")


def test_exported_module_runs_without_symdl(exported):
    _, path, _ = exported
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= {"math", "numba", "numpy"}, imported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NUMBA_DISABLE_JIT"] = "1"  # the same code as plain Python: no compile here
    proc = subprocess.run([sys.executable, "-I", "-c", _CHILD, str(path)], capture_output=True,
                          text=True, timeout=120, cwd=path.parent, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    X, w, lam, v = _data()
    value, grad, _ = _oracle(X, w, lam, v)
    assert got["value"] == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(got["grad"], grad.ravel(), rtol=1e-12)
    assert "alpha must have shape" in got["error"]


def test_hostile_names_never_become_code(tmp_path):
    marker = tmp_path / "MARKER"
    payload = f'"""\nimport os; os.system("touch {marker}")\n"""'
    n = sp.Symbol("n", integer=True, positive=True)
    X = sp.MatrixSymbol(payload, n, 1)
    w = sp.MatrixSymbol(payload + ") or __import__('os')", n, 1)
    der = symdl.derive(symdl.mean(symdl.softplus(sp.hadamard_product(X, w))), wrt=[w])
    path = der.compile(jit=False).export(tmp_path / "hostile.py")
    source = path.read_text(encoding="utf-8")
    assert source.isascii()
    # The names are in string literals only: the code names no os, system nor __import__.
    tree = ast.parse(source)
    identifiers = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    identifiers |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not identifiers & {"os", "system", "__import__"}
    module = _load(path, "hostile_kernels")
    xk, wk = list(inspect.signature(module.compute).parameters)[:2]
    rng = np.random.default_rng(2)
    xv, wv = rng.normal(size=(4, 1)), rng.normal(size=(4, 1))
    got = module.compute(**{xk: xv, wk: wv})
    assert got["value"] == pytest.approx(np.mean(np.logaddexp(0, xv * wv)), rel=1e-12)
    assert not marker.exists()
