"""Source text -> imported module, through a content-addressed file cache.

The generated source is written to ``<cache>/symdl_<sha256 prefix>.py`` and imported from
there, so ``numba.njit(cache=True)`` can keep its compiled machine code beside it (Numba
caches only functions that live in a real file). The file is written atomically (temporary
file, then ``os.replace``); a file whose content does not hash to its name is rewritten.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickletools
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

from symdl.errors import CacheWarning

_MODULES: dict[str, ModuleType] = {}
_WARNED: set[str] = set()


def cache_dir() -> Path:
    """``SYMDL_CACHE_DIR``, else ``$XDG_CACHE_HOME/symdl``, else ``~/.cache/symdl``."""
    configured = os.environ.get("SYMDL_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "symdl"


def source_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _usable_dir() -> Path:
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-probe"
        probe.write_text("")
        probe.unlink()
        return directory
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / f"symdl-cache-{os.getuid()}"
        if not _WARNED:  # once per process: a training loop compiles many kernels
            _WARNED.add(str(directory))
            warnings.warn(
                f"symdl: kernel cache folder {directory} is not writable ({exc}); using "
                f"{fallback}. Set SYMDL_CACHE_DIR to a writable folder to keep compiled kernels.",
                CacheWarning, stacklevel=3,
            )
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _symdl_files(directory: Path) -> list[Path]:
    """The files symdl wrote in ``directory``: kernel sources, their unfinished temporary
    files, and Python's and Numba's caches of them in ``__pycache__``."""
    found = [*directory.glob("symdl_*.py"), *directory.glob(".tmp-*.py")]
    pycache = directory / "__pycache__"
    if pycache.is_dir():
        found += [p for p in pycache.glob("symdl_*") if p.suffix in (".pyc", ".nbi", ".nbc")]
    return [p for p in found if p.is_file()]


def cache_info() -> dict[str, object]:
    """The cache folder, the number of kernels in it and the bytes symdl's files take."""
    directory = cache_dir()
    files = _symdl_files(directory) if directory.is_dir() else []
    kernels = sum(1 for p in files if p.parent == directory and p.name.startswith("symdl_"))
    return {"folder": str(directory), "kernels": kernels,
            "bytes": sum(p.stat().st_size for p in files)}


def clear_cache() -> int:
    """Removes symdl's files from the cache folder (nothing else); returns how many."""
    directory = cache_dir()
    removed = 0
    for path in _symdl_files(directory) if directory.is_dir() else []:
        path.unlink(missing_ok=True)
        removed += 1
    _MODULES.clear()
    return removed


def _drop_unreadable_numba_cache(directory: Path, digest: str) -> None:
    """Numba raises on an index or data file it cannot unpickle instead of recompiling, so
    the cache files of this module are read first and, if any is damaged, all removed."""
    pycache = directory / "__pycache__"
    if not pycache.is_dir():
        return
    files = [p for p in pycache.glob(f"symdl_{digest}*") if p.suffix in (".nbi", ".nbc")]
    try:
        for path in files:
            # An index holds Numba's version stamp, then the index: two pickles.
            _check_pickles(path.read_bytes(), 2 if path.suffix == ".nbi" else 1)
    except (OSError, ValueError, EOFError):  # any unreadable file means recompile
        for path in files:
            path.unlink(missing_ok=True)


def _check_pickles(data: bytes, count: int) -> None:
    """Raises ValueError unless ``data`` is exactly ``count`` well-formed pickles. The opcode
    stream is parsed, not executed: no object is built (unpickling Numba's compiled code
    objects here would be slow and is Numba's business)."""
    stream = io.BytesIO(data)
    for _ in range(count):
        for _opcode, _arg, _pos in pickletools.genops(stream):
            pass
    if stream.read(1):
        raise ValueError("trailing bytes after the pickles")


def load(text: str) -> ModuleType:
    """Imports the module whose source is ``text``, writing it to the cache if needed."""
    digest = source_hash(text)
    if digest in _MODULES:
        return _MODULES[digest]
    directory = _usable_dir()
    path = directory / f"symdl_{digest}.py"
    try:
        current = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        current = None
    if current is None or source_hash(current) != digest:
        _write_atomically(path, text)
    _drop_unreadable_numba_cache(directory, digest)
    name = f"symdl_kernel_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _MODULES[digest] = module
    return module


def _identity_njit(*args, **options):
    """``numba.njit`` that compiles nothing: ``@njit`` and ``@njit(...)`` return the function."""
    if len(args) == 1 and callable(args[0]) and not options:
        return args[0]
    return lambda function: function


def load_interpreted(text: str) -> ModuleType:
    """Runs ``text`` as plain Python: ``numba.njit`` is the identity and ``prange`` is
    ``range``, so the same generated source runs without compiling (for tests that build
    hundreds of small kernels; far slower per call on large arrays)."""
    shim = ModuleType("numba")
    shim.njit = _identity_njit
    shim.prange = range
    real_import = __import__

    def importer(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        if name == "numba":
            return shim
        return real_import(name, globals, locals, fromlist, level)

    module = ModuleType(f"symdl_interpreted_{source_hash(text)}")
    builtins = dict(vars(__builtins__)) if isinstance(__builtins__, ModuleType) \
        else dict(__builtins__)
    builtins["__import__"] = importer
    module.__dict__["__builtins__"] = builtins
    exec(compile(text, module.__name__, "exec"), module.__dict__)  # noqa: S102 - our own source
    return module
