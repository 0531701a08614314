"""Source text -> imported module, through a content-addressed file cache.

The generated source is written to ``<cache>/symdl_<sha256 prefix>.py`` and imported from
there, so ``numba.njit(cache=True)`` can keep its compiled machine code beside it (Numba
caches only functions that live in a real file). The file is written atomically (temporary
file, then ``os.replace``); a file whose content does not hash to its name is rewritten.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

_MODULES: dict[str, ModuleType] = {}


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
        warnings.warn(
            f"symdl: kernel cache folder {directory} is not writable ({exc}); using {fallback}. "
            "Set SYMDL_CACHE_DIR to a writable folder to keep compiled kernels.",
            stacklevel=3,
        )
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


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
