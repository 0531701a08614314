"""Cache faults: corrupted files are regenerated, concurrent writers leave one consistent file,
an unusable folder falls back with one CacheWarning, and `symdl cache info|clear`."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import uuid
import warnings

import pytest

from symdl.cli import main
from symdl.errors import CacheWarning
from symdl.kernels import jit


def _source(tag: str) -> str:
    # A jitted function cached by Numba beside the file, like a kernel module.
    return ("import numba\n\n\n@numba.njit(cache=True)\n"
            f"def f(x):\n    return x * 3.0 + 1.0  # {tag}\n")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMDL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "emptied"])
def test_damaged_kernel_file_is_regenerated(folder, damage):
    text = _source(uuid.uuid4().hex)
    assert jit.load(text).f(2.0) == 7.0
    path = folder / f"symdl_{jit.source_hash(text)}.py"
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "corrupted":
        path.write_text(text.replace("3.0", "4.0"))
    else:
        path.write_bytes(b"\xff\xfe\x00")
    jit._MODULES.clear()
    assert jit.load(text).f(2.0) == 7.0
    assert path.read_text() == text


_LOAD_AND_CALL = """
import sys
from symdl.kernels import jit
print(jit.load(open(sys.argv[1]).read()).f(2.0))
"""


def test_corrupted_numba_cache_files_recompile(folder, tmp_path):
    text = _source(uuid.uuid4().hex)
    source_file = tmp_path / "text.py"
    source_file.write_text(text)
    run = [sys.executable, "-c", _LOAD_AND_CALL, str(source_file)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert first.stdout.strip() == "7.0", first.stderr
    numba_files = [p for p in (folder / "__pycache__").iterdir() if p.suffix in (".nbi", ".nbc")]
    assert {p.suffix for p in numba_files} == {".nbi", ".nbc"}
    for path in numba_files:
        path.write_bytes(b"garbage" * 10)
    second = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "7.0"


def _compile_in_child(args: tuple[str, str]) -> float:
    import os

    folder, text = args
    os.environ["SYMDL_CACHE_DIR"] = folder
    from symdl.kernels import jit as child_jit

    return child_jit.load(text).f(2.0)


def test_four_processes_compile_the_same_kernel(folder):
    text = _source(uuid.uuid4().hex)
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results = pool.map(_compile_in_child, [(str(folder), text)] * 4)
    assert results == [7.0] * 4
    sources = sorted(p.name for p in folder.glob("*.py"))
    assert sources == [f"symdl_{jit.source_hash(text)}.py"]  # no temporary files left
    assert (folder / sources[0]).read_text() == text


def test_uncreatable_cache_folder_falls_back_with_one_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SYMDL_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    monkeypatch.setattr(jit, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert jit.load(_source(uuid.uuid4().hex)).f(1.0) == 4.0
        assert jit.load(_source(uuid.uuid4().hex)).f(2.0) == 7.0
    cache_warnings = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(cache_warnings) == 1
    assert "SYMDL_CACHE_DIR" in str(cache_warnings[0].message)


def test_read_only_cache_folder_falls_back(tmp_path, monkeypatch):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        probe = folder / "probe"
        try:
            probe.write_text("")
            probe.unlink()
            # Root ignores the mode: a folder below a regular file is unwritable for anyone.
            (tmp_path / "file").write_text("")
            target = tmp_path / "file" / "cache"
        except OSError:
            target = folder
        monkeypatch.setenv("SYMDL_CACHE_DIR", str(target))
        monkeypatch.setattr(jit, "_WARNED", set())
        with pytest.warns(CacheWarning, match="not writable"):
            assert jit.load(_source(uuid.uuid4().hex)).f(1.0) == 4.0
    finally:
        folder.chmod(0o700)


def test_cache_info_and_clear_touch_only_symdl_files(folder, capsys):
    text = _source(uuid.uuid4().hex)
    assert jit.load(text).f(2.0) == 7.0
    (folder / "notes.txt").write_text("mine")
    (folder / "other.py").write_text("x = 1")
    (folder / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"keep")
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(folder) in out and "kernels: 1" in out
    size = jit.cache_info()["bytes"]
    assert size > len(text)
    assert main(["cache", "clear"]) == 0
    assert jit.cache_info()["kernels"] == 0 and jit.cache_info()["bytes"] == 0
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "other.py").exists()
    assert (folder / "__pycache__" / "other.cpython-311.pyc").exists()
