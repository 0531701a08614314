"""Packaging (issue 17, item 7): the sdist carries everything needed to run the tests, the
wheel carries the whole package, both build without deprecation warnings, the wheel installs
without warnings and ``pip check`` passes, and the sdist's own tests run against it.

Everything runs offline: ``python -m build --no-isolation`` uses the installed setuptools and
``pip install --no-index --no-deps`` the built wheel alone.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import symdl

ROOT = Path(__file__).resolve().parents[1]
QUIET_PIP = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, **QUIET_PIP, **kwargs.pop("env", {})}
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, **kwargs)


def _source_files() -> list[str]:
    """The files of a clean clone (tracked, or new and not ignored); in an unpacked sdist
    (no git), the files that are there."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                      cwd=ROOT)
        assert listed.returncode == 0, listed.stderr
        names = [n for n in listed.stdout.split("\0") if n]
    else:
        skip = {".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
                 and not p.relative_to(ROOT).parts[0].endswith(".egg-info")
                 and p.name != "PKG-INFO" and p.name != "setup.cfg"]
    # symdl/derivations is a link to derivations/ in a development tree, not a source file.
    return sorted(n for n in names
                  if (ROOT / n).is_file() and not n.startswith("symdl/derivations"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    files = _source_files()
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    # The sdist first, then the wheel built from the unpacked sdist (what `python -m build`
    # does), so the wheel proves the sdist is complete.
    build = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"),
                  str(src)])
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    sdist = next((tmp / "dist").glob("*.tar.gz"))
    wheel = next((tmp / "dist").glob("*.whl"))
    return {"tmp": tmp, "files": files, "log": build.stdout + build.stderr, "sdist": sdist,
            "wheel": wheel}


def test_build_has_no_deprecation_warnings(built: dict) -> None:
    assert "deprecat" not in built["log"].lower(), built["log"]


def test_sdist_has_every_source_file(built: dict) -> None:
    with tarfile.open(built["sdist"]) as archive:
        top = archive.getnames()[0].split("/")[0]
        inside = {name.removeprefix(f"{top}/") for name in archive.getnames()}
    # Dot files (.gitignore, the CI script) are the repository's, not the release's.
    wanted = {f for f in built["files"] if not f.startswith(".")}
    missing = sorted(wanted - inside)
    assert not missing, f"not in the sdist: {missing}"
    for needed in ("tests/conftest.py", "tests/oracles.py", "tests/named_steps.py",
                   "tests/printing/golden/two_layer_mlp.tex", "LICENSE", "CHANGELOG.md",
                   "symdl/py.typed", "docs/conf.py", "Makefile"):
        assert needed in inside, needed
    assert not [n for n in inside if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_has_the_whole_package_and_its_metadata(built: dict) -> None:
    with zipfile.ZipFile(built["wheel"]) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_string(archive.read(info).decode())
    package = {f for f in built["files"] if f.startswith("symdl/") and f.endswith(".py")}
    package |= {f"symdl/{f}" for f in built["files"]
                if f.startswith("derivations/") and f.endswith(".py")}
    missing = sorted(package - names)
    assert not missing, f"not in the wheel (a package missing from pyproject?): {missing}"
    assert "symdl/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith("tests/")]
    assert metadata["Version"] == symdl.__version__
    assert metadata["License-Expression"] == "MIT"
    assert not [c for c in metadata.get_all("Classifier") if c.startswith("License ::")]
    assert metadata.get_all("Project-URL")
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"test", "bench", "demo", "docs", "torch", "jax", "dask"} <= extras


@pytest.fixture(scope="module")
def installed(built: dict) -> Path:
    target = built["tmp"] / "site"
    result = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                   "--no-compile", "--root-user-action=ignore", "--target", str(target),
                   str(built["wheel"])])
    assert result.returncode == 0, result.stdout + result.stderr
    output = (result.stdout + result.stderr).lower()
    assert "warning" not in output and "deprecat" not in output, result.stdout + result.stderr
    return target


def test_wheel_installs_and_pip_check_passes(installed: Path) -> None:
    env = {"PYTHONPATH": str(installed)}
    check = _run([sys.executable, "-m", "pip", "check"], env=env, cwd=installed.parent)
    assert check.returncode == 0, check.stdout + check.stderr
    probe = _run([sys.executable, "-c", "import symdl, symdl.derivations, symdl.optimizers; "
                  "print(symdl.__file__); print(symdl.__version__)"], env=env,
                 cwd=installed.parent)
    assert probe.returncode == 0, probe.stderr
    where, version = probe.stdout.split()
    assert Path(where).is_relative_to(installed) and version == symdl.__version__


def test_sdist_runs_its_own_tests(built: dict, installed: Path) -> None:
    """The unpacked sdist's suite, against the installed wheel: every test module imports
    (collection would stop at a missing conftest.py, oracles.py or helper module), and the
    import-layout test and the stored-copy (golden) LaTeX tests pass."""
    unpacked = built["tmp"] / "unpacked"
    with tarfile.open(built["sdist"]) as archive:
        archive.extractall(unpacked, filter="data")
    root = next(unpacked.iterdir())
    # Run from outside the unpacked tree, so that its source symdl/ does not shadow the
    # installed package; the tree itself is on the path for `tests.` and `benchmarks.`.
    env = {"PYTHONPATH": os.pathsep.join([str(installed), str(root)])}
    result = _run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                   "-n", "0",
                   "--rootdir", str(root), "-c", str(root / "pyproject.toml"),
                   str(root / "tests"), "-k", "test_layout or test_stored_copy"],
                  env=env, cwd=built["tmp"])
    tail = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    assert "error" not in result.stdout.lower(), tail
    for name in ("linear_regression", "logistic_regression", "two_layer_mlp"):
        assert f"test_latex.py::test_stored_copy[{name}]" in result.stdout, tail
    assert "test_layout.py::" in result.stdout, tail


def test_version_is_defined_once() -> None:
    """pyproject.toml reads the version from symdl.__version__ (setuptools' attr:, read
    statically), so the wheel, `symdl --version` and the package cannot disagree."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project
    assert not re.search(r"^version\s*=", project, re.MULTILINE)
    assert 'version = { attr = "symdl.__version__" }' in text


def test_license_and_changelog() -> None:
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 the symdl developers" in license_text
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "keepachangelog.com" in changelog and "## [Unreleased]" in changelog
