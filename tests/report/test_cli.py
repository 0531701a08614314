"""The symdl command: list, derive, errors; run as a user would, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from symdl import catalog as registry
from symdl import errors as symdl_errors


def _symdl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "symdl", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_lists_the_commands() -> None:
    result = _symdl("--help")
    assert result.returncode == 0
    assert "derive" in result.stdout and "list" in result.stdout


def test_list_shows_every_shipped_derivation() -> None:
    result = _symdl("list")
    assert result.returncode == 0
    for name in registry.names():
        assert name in result.stdout


def test_derive_prints_backprop_equations_with_shapes() -> None:
    result = _symdl("derive", "two_layer_mlp")
    assert result.returncode == 0, result.stderr
    assert "dZ2 = (softmax(Z2) - Y)/n    [n × k]" in result.stdout
    assert "dW1 = X^T*dZ1    [d × h]" in result.stdout


def test_derive_accepts_a_file(tmp_path: Path) -> None:
    source = tmp_path / "ridge.py"
    source.write_text(textwrap.dedent('''
        """Ridge regression."""
        import sympy as sp
        import symdl

        n, d = sp.symbols("n d", integer=True, positive=True)
        X, y, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("y", n, 1), sp.MatrixSymbol("w", d, 1)
        lam = sp.Symbol("lam", positive=True)

        def derivation():
            r = X * w - y
            penalty = lam * symdl.total(sp.hadamard_product(w, w))
            loss = symdl.total(sp.hadamard_product(r, r)) + penalty
            return symdl.derive(loss, wrt=[w], hessian=True)
    '''))
    result = _symdl("derive", str(source), "--hessian")
    assert result.returncode == 0, result.stderr
    assert "Ridge regression" in result.stdout
    assert "H[w,w]" in result.stdout


def test_unknown_derivation_is_a_clear_error() -> None:
    result = _symdl("derive", "no_such_model")
    assert result.returncode == 2
    assert "no derivation named 'no_such_model'" in result.stderr
    assert "Traceback" not in result.stderr


# Conventions of a Unix tool (issue 17, item 6): one-line errors, exit status 2 for usage and
# definition errors and 1 for a failed check, quiet on a closed pipe, stable JSON.

def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_version_is_the_package_version() -> None:
    import symdl

    result = _symdl("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"symdl {symdl.__version__}\n"


@pytest.mark.parametrize("argv, expected", [
    (["demo", "--epochs", "0"], "--epochs: must be a positive whole number, got 0"),
    (["demo", "--epochs", "many"], "--epochs: must be a whole number, got 'many'"),
    (["check", "--seed", "-1"], "--seed: must be 0 or more, got -1"),
    (["check"], "name a derivation"),
    (["derive"], "the following arguments are required: NAME"),
    ([], "the following arguments are required: COMMAND"),
    (["derive", "two_layer_mlp", "--no-such-option"], "unrecognized arguments"),
    (["lst"], "did you mean 'list'?"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, expected, capsys) -> None:
    status = _main_status(argv)
    captured = capsys.readouterr()
    assert status == 2
    line = _one_line_error(captured.err)
    assert expected in line and "error:" in line
    assert captured.out == ""


def _main_status(argv: list[str]) -> int:
    from symdl.cli import main

    try:
        return main(argv)
    except SystemExit as exc:  # argparse exits by itself on a usage error
        return exc.code


def test_derivation_file_that_raises_is_one_line_exit_2(tmp_path: Path) -> None:
    source = tmp_path / "broken.py"
    source.write_text('"""Broken."""\n\n\ndef helper():\n    return undefined_name\n\n\n'
                      'def derivation():\n    return helper()\n')
    result = _symdl("derive", str(source))
    assert result.returncode == 2
    line = _one_line_error(result.stderr)
    assert "broken.py: line 5: NameError: name 'undefined_name' is not defined" in line
    assert result.stdout == ""


@pytest.mark.parametrize("text, expected", [
    ('"""Bad syntax."""\ndef derivation(:\n    pass\n', "line 2: SyntaxError"),
    ('"""Missing import."""\nimport no_such_module_xyz\n', "line 2: ModuleNotFoundError"),
    ('"""Raises on import."""\nraise RuntimeError("no data")\n', "RuntimeError: no data"),
    ('"""Wrong type."""\ndef derivation():\n    return 3\n', "must return a symdl.Derivation"),
])
def test_definition_errors_exit_2(tmp_path: Path, capsys, text: str, expected: str) -> None:
    source = tmp_path / "model.py"
    source.write_text(text)
    assert _main_status(["derive", str(source)]) == 2
    assert expected in _one_line_error(capsys.readouterr().err)


def test_traceback_option_shows_the_traceback(tmp_path: Path) -> None:
    from symdl.cli import main

    source = tmp_path / "model.py"
    source.write_text('"""Raises."""\ndef derivation():\n    raise RuntimeError("boom")\n')
    with pytest.raises(symdl_errors.DefinitionError) as info:
        main(["derive", str(source), "--traceback"])
    assert isinstance(info.value.__cause__, RuntimeError)


def test_unwritable_output_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (["latex", "layer_relu", "-o", str(a_file / "doc.tex")], "is not a folder"),
        (["latex", "layer_relu", "-o", str(tmp_path / "missing" / "doc.tex")],
         "does not exist"),
        (["latex", "layer_relu", "-o", str(tmp_path)], "it is a folder"),
        # Fails before training (no scikit-learn needed to see it).
        (["demo", "--no-pdf", "-o", str(a_file / "out")], "cannot create the output folder"),
        (["check", "layer_relu", "--plot", str(a_file / "err.png")], "is not a folder"),
    ]
    for argv, expected in cases:
        assert _main_status(argv) == 2, argv
        assert expected in _one_line_error(capsys.readouterr().err)


def _fake_report(ok: bool):
    class Report:
        def __init__(self) -> None:
            self.ok = ok

        def to_dict(self) -> dict:
            return {"ok": ok}

        def __str__(self) -> str:
            return f"gradient check {'passed' if ok else 'FAILED'}"

    return Report()


def test_failed_check_exits_1_and_json_is_keyed_by_name(monkeypatch, capsys) -> None:
    import symdl.verify.check as check_module

    verdicts: list[bool] = []  # one per derivation checked, in order

    def fake_check(der, **_):
        return _fake_report(verdicts.pop(0))

    monkeypatch.setattr(check_module, "check", fake_check)
    verdicts[:] = [True]
    assert _main_status(["check", "layer_relu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"layer_relu": {"ok": True}}
    verdicts[:] = [True, False]
    assert _main_status(["check", "layer_relu", "layer_tanh", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"layer_relu": {"ok": True},
                                                   "layer_tanh": {"ok": False}}
    verdicts[:] = [False]
    assert _main_status(["check", "layer_tanh"]) == 1
    assert "FAILED" in capsys.readouterr().out
    # A definition error outranks a failed check; its entry says why, under its name.
    verdicts[:] = [False]
    assert _main_status(["check", "layer_tanh", "no_such_model", "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert list(report) == ["layer_tanh", "no_such_model"]
    assert "no derivation named 'no_such_model'" in report["no_such_model"]["error"]


def test_json_of_one_unknown_name_is_keyed_by_name(capsys) -> None:
    assert _main_status(["check", "no_such_model", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["no_such_model"] and "error" in report["no_such_model"]


def test_list_json(capsys) -> None:
    assert _main_status(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert list(listing) == registry.names()
    assert listing["two_layer_mlp"]["title"] == registry.load("two_layer_mlp").title
    assert Path(listing["two_layer_mlp"]["file"]).name == "two_layer_mlp.py"


@pytest.mark.parametrize("typo, suggestion", [
    ("two_layer_mlpp", "'two_layer_mlp'"),
    ("adam", "'optim_adam'"),
    ("loss_mes", "'loss_mse'"),
    ("two_layer_mlp.py", "'two_layer_mlp'"),
])
def test_unknown_name_suggests_the_close_one(typo: str, suggestion: str, capsys) -> None:
    assert _main_status(["derive", typo]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"did you mean {suggestion}" in line
    # The close names only, not all of them.
    assert sum(name in line for name in registry.names()) <= 3


def test_closed_pipe_is_quiet() -> None:
    """The reader of stdout goes away before symdl writes: no BrokenPipeError, status 141
    (as a C tool killed by SIGPIPE). The read end is closed before the child starts, so the
    broken pipe is certain, not a race."""
    import os

    procs = []
    for argv in (["list"], ["derive", "two_layer_mlp"]):
        read, write = os.pipe()
        os.close(read)
        procs.append(subprocess.Popen([sys.executable, "-m", "symdl", *argv], stdout=write,
                                      stderr=subprocess.PIPE, text=True))
        os.close(write)
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert err == "", err
        assert proc.returncode == 141


def test_head_of_a_pipe_is_quiet() -> None:
    """`symdl list | head -1` as a shell runs it, three times at once (the race the issue saw
    in 2 of 5 runs)."""
    command = f"'{sys.executable}' -m symdl list | head -1"
    procs = [subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert err == "", err
        assert out.split()[0] == registry.names()[0]


def test_verbose_logs_every_compile_and_quiet_silences(monkeypatch, capsys) -> None:
    import time

    from symdl import cli
    from symdl.kernels import progress

    with cli._logging(verbose=2, quiet=False):
        with progress.compile_progress("k", 2, after_s=10.0):
            pass  # fast: not reported at INFO, but -vv shows every compile
    err = capsys.readouterr().err
    assert "symdl: kernel k (2 loops) ready in 0.0 s" in err
    monkeypatch.setattr(progress.logger, "hasHandlers", lambda: False)
    with cli._logging(verbose=0, quiet=True):
        with progress.compile_progress("k", 2, after_s=0.0):
            time.sleep(0.05)
    assert capsys.readouterr().err == ""


def test_demo_epochs_reach_each_network(monkeypatch, tmp_path: Path, capsys) -> None:
    # --epochs set only the 2-layer network's epochs; the CNN and the RNN kept 30 whatever
    # the user asked for. Each network now has its own option.
    import symdl.report.demo as demo_module

    seen = {}

    def fake_run(out, **options):
        seen.update(options)
        return {"final_test_accuracy": 0.5, "data": {"test": 1},
                "check": {"ok": True, "max_rel_error": 0.0}}

    monkeypatch.setattr(demo_module, "run", fake_run)
    status = _main_status(["demo", "--epochs", "3", "--cnn-epochs", "4", "--rnn-epochs", "5",
                           "--no-pdf", "-o", str(tmp_path / "out")])
    assert status == 0
    assert (seen["epochs"], seen["cnn_epochs"], seen["rnn_epochs"]) == (3, 4, 5)
