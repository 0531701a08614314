"""The kernel cache cannot be used to run someone else's code or to crash a later process.

* a cache folder that another user owns or can write is not used (a private one is, with a
  ``CacheWarning``), nor is a predictable fallback folder another user created first;
* what runs is the hash-checked source: a ``.pyc`` planted beside it is never loaded;
* a FIFO or a symbolic link in place of a cached file neither blocks nor redirects;
* Numba's cache files are checked against the digests symdl recorded when they were written:
  a flipped bit makes the next process compile again (a warning), never crash.

Loads that could hang or run planted code run in a child process with a timeout.
"""

from __future__ import annotations

import json
import os
import py_compile
import shutil
import stat
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from symdl.errors import CacheWarning
from symdl.kernels import jit


def _source(tag: str) -> str:
    return ("import numba\n\n\n@numba.njit(cache=True)\n"
            f"def f(x):\n    return x * 3.0 + 1.0  # {tag}\n")


_CHILD = """
import json, sys, warnings
warnings.simplefilter("always")
from symdl.kernels import jit
module = jit.load(open(sys.argv[1]).read())
value = module.f(2.0)
print(json.dumps({"value": value, "file": module.__file__,
                  "misses": sum(module.f.stats.cache_misses.values()),
                  "hits": sum(module.f.stats.cache_hits.values())}))
"""


def _child(text: str, folder: Path, tmp_path: Path, timeout: float = 120) -> tuple[dict, str]:
    source_file = tmp_path / f"text-{uuid.uuid4().hex}.py"
    source_file.write_text(text)
    (tmp_path / "child-tmp").mkdir(exist_ok=True)  # where a fallback folder would go
    env = dict(os.environ, SYMDL_CACHE_DIR=str(folder), TMPDIR=str(tmp_path / "child-tmp"))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(source_file)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture
def fresh_fallback(tmp_path, monkeypatch):
    """A private $TMPDIR for the fallback folder, and no fallback chosen yet."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(mode=0o755)
    monkeypatch.setattr(jit.tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(jit, "_PRIVATE_FALLBACK", [])
    monkeypatch.setattr(jit, "_WARNED", set())
    monkeypatch.setattr(jit, "_MODULES", {})
    return tmp


def _is_private_folder_of_mine(path: Path) -> bool:
    st = os.lstat(path)
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _load_with_warning(text: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = jit.load(text)
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    return module, messages


@pytest.mark.parametrize("made", ["by-another-user", "group-writable", "as-a-link"])
def test_planted_fallback_folder_is_not_used(tmp_path, monkeypatch, fresh_fallback, made):
    # Someone made the predictable fallback folder first and planted a file in it; the
    # configured folder cannot be created.
    shared = fresh_fallback / f"symdl-cache-{os.getuid()}"
    if made == "as-a-link":
        target = tmp_path / "target"
        target.mkdir(mode=0o700)
        shared.symlink_to(target)
        shared = target
    else:
        shared.mkdir()
    shared.chmod(0o777 if made == "by-another-user" else 0o770 if made == "group-writable"
                 else 0o700)
    (shared / "planted.txt").write_text("x")
    if os.getuid() == 0 and made == "by-another-user":
        os.chown(shared, 65534, 65534)  # really another user's, where the test can do that
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SYMDL_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    module, messages = _load_with_warning(_source(uuid.uuid4().hex))
    assert module.f(2.0) == 7.0
    used = Path(module.__file__).parent
    assert used != shared and shared not in used.parents
    assert _is_private_folder_of_mine(used)
    assert len(messages) == 1 and "SYMDL_CACHE_DIR" in messages[0]
    assert sorted(p.name for p in shared.iterdir()) == ["planted.txt"]


def test_fallback_folder_is_created_private(tmp_path, monkeypatch, fresh_fallback):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SYMDL_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    module, _ = _load_with_warning(_source(uuid.uuid4().hex))
    used = Path(module.__file__).parent
    assert used == fresh_fallback / f"symdl-cache-{os.getuid()}"
    assert stat.S_IMODE(os.lstat(used).st_mode) == 0o700


@pytest.mark.parametrize("problem", ["world-writable", "another-owner", "foreign-group"])
def test_unsafe_configured_folder_is_not_used(tmp_path, monkeypatch, fresh_fallback, problem):
    folder = tmp_path / "cache"
    folder.mkdir()
    if problem == "world-writable":
        folder.chmod(0o777)
    elif problem == "another-owner":
        if os.getuid() == 0:
            os.chown(folder, 65534, os.getgid())
            folder.chmod(0o755)  # root can still write to it: only the owner is wrong
        else:
            folder = Path(os.path.abspath(os.sep + "tmp"))  # root's, and writable by all
    else:
        if os.getuid() == 0:
            os.chown(folder, 0, 65534)
            folder.chmod(0o775)
        else:
            folder.chmod(0o777)
    monkeypatch.setenv("SYMDL_CACHE_DIR", str(folder))
    module, messages = _load_with_warning(_source(uuid.uuid4().hex))
    assert module.f(2.0) == 7.0
    used = Path(module.__file__).parent
    assert used != folder and _is_private_folder_of_mine(used)
    assert len(messages) == 1 and "not safe" in messages[0]


def test_private_configured_folder_is_used_silently(tmp_path, monkeypatch, fresh_fallback):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SYMDL_CACHE_DIR", str(folder))
    module, messages = _load_with_warning(_source(uuid.uuid4().hex))
    assert Path(module.__file__).parent == folder and messages == []
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700  # created private


def test_planted_pyc_beside_the_source_is_not_run(tmp_path):
    folder = tmp_path / "cache"
    marker = tmp_path / "MARKER"
    text = _source(uuid.uuid4().hex * 8)  # room for the planted code below
    assert _child(text, folder, tmp_path)[0]["value"] == 7.0
    path = folder / f"symdl_{jit.source_hash(text)}.py"
    # Bytecode of other code, stamped with the source's own size and time, where Python's
    # import system looks first.
    evil = (f"open({str(marker)!r}, 'w').close()\n"
            "def f(x):\n    return 666.0\n")
    evil += "#" * (len(text.encode()) - len(evil.encode()) - 1) + "\n"
    assert len(evil.encode()) == len(text.encode())
    fake = tmp_path / "fake.py"
    fake.write_text(evil)
    stamp = os.stat(path)
    os.utime(fake, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    import importlib.util

    py_compile.compile(str(fake), cfile=importlib.util.cache_from_source(str(path)),
                       doraise=True)
    report, _ = _child(text, folder, tmp_path)
    assert report["value"] == 7.0
    assert not marker.exists()


def test_folder_in_place_of_the_source(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    text = _source(uuid.uuid4().hex)
    (folder / f"symdl_{jit.source_hash(text)}.py" / "inside").mkdir(parents=True)
    report, stderr = _child(text, folder, tmp_path, timeout=60)
    assert report["value"] == 7.0 and "CacheWarning" in stderr
    assert Path(report["file"]).parent != folder
    assert _is_private_folder_of_mine(Path(report["file"]).parent)


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_fifo_or_link_in_place_of_the_source(tmp_path, kind):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    text = _source(uuid.uuid4().hex)
    path = folder / f"symdl_{jit.source_hash(text)}.py"
    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text(text)  # right content today, someone else's file tomorrow
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(elsewhere)
    report, _ = _child(text, folder, tmp_path, timeout=60)  # a blocked open times out
    assert report["value"] == 7.0
    assert stat.S_ISREG(os.lstat(path).st_mode) and path.read_text() == text
    assert elsewhere.read_text() == text


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_fifo_or_link_in_place_of_numba_index(tmp_path, kind):
    folder = tmp_path / "cache"
    text = _source(uuid.uuid4().hex)
    assert _child(text, folder, tmp_path)[0]["value"] == 7.0
    (index,) = (folder / "__pycache__").glob("*.nbi")
    index.unlink()
    if kind == "fifo":
        os.mkfifo(index)
    else:
        (tmp_path / "other.nbi").write_bytes(b"not an index")
        index.symlink_to(tmp_path / "other.nbi")
    report, _ = _child(text, folder, tmp_path, timeout=60)
    assert report["value"] == 7.0 and report["misses"] == 1


_KERNEL_CHILD = """
import json, sys, warnings
warnings.simplefilter("always")
import numpy as np
import sympy as sp
import symdl
n, d = sp.symbols("n d", integer=True, positive=True)
X, w = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1)
kernel = symdl.derive(symdl.mean(symdl.softplus(X * w)), wrt=[w]).compile()
rng = np.random.default_rng(0)
x, wv = rng.standard_normal((30, 3)), rng.standard_normal((3, 1))
result = kernel(X=x, w=wv)
jitted = [f for f in vars(kernel._module).values() if hasattr(f, "stats")]
print(json.dumps({"value": result.value, "grad": result.grad["w"].ravel().tolist(),
                  "misses": sum(sum(f.stats.cache_misses.values()) for f in jitted),
                  "hits": sum(sum(f.stats.cache_hits.values()) for f in jitted)}))
"""


def _run_kernel_child(folder: Path) -> tuple[dict, str]:
    env = dict(os.environ, SYMDL_CACHE_DIR=str(folder))
    proc = subprocess.run([sys.executable, "-c", _KERNEL_CHILD], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _numpy_expected() -> tuple[float, np.ndarray]:
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((30, 3)), rng.standard_normal((3, 1))
    z = x @ w
    return float(np.mean(np.logaddexp(0, z))), (x.T @ (1 / (1 + np.exp(-z))) / 30).ravel()


@pytest.fixture(scope="module")
def recorded_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder where one process compiled the kernel and a second one loaded it.

    Built once for both parameters of the test below (each cold compile in a child takes a few
    seconds); each copies it (modification times too: Numba compares the source's) before
    damaging a file."""
    folder = tmp_path_factory.mktemp("recorded") / "cache"
    first, _ = _run_kernel_child(folder)
    assert first["misses"] > 0
    warm, _ = _run_kernel_child(folder)
    assert warm["misses"] == 0 and warm["hits"] > 0  # the recorded files are trusted
    return folder


@pytest.mark.parametrize("suffix", [".nbc", ".nbi"])
def test_flipped_bit_in_numba_cache_file_recompiles(tmp_path, suffix, recorded_cache):
    folder = tmp_path / "cache"
    shutil.copytree(recorded_cache, folder)
    files = sorted((folder / "__pycache__").glob(f"*{suffix}"), key=lambda p: p.stat().st_size)
    target = files[-1]  # the largest: machine code (or the largest index)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))
    report, stderr = _run_kernel_child(folder)
    value, grad = _numpy_expected()
    assert report["value"] == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(report["grad"], grad, rtol=1e-12)
    assert report["misses"] > 0  # the damaged file was not used: compiled again
    assert "CacheWarning" in stderr and target.name in stderr
    again, _ = _run_kernel_child(folder)  # and the new files are recorded and trusted
    assert again["misses"] == 0 and again["value"] == report["value"]
