"""Source text -> imported module, through a content-addressed file cache.

The generated source is written to ``<cache>/symdl_<sha256 prefix>.py`` and run from there, so
``numba.njit(cache=True)`` can keep its compiled machine code beside it (Numba caches only
functions that live in a real file). The file is written atomically (temporary file, then
``os.replace``); a file whose content does not hash to its name is rewritten.

What is trusted, and why:

* the cache folder only when this user owns it and no other user can write it (else a private
  temporary folder is used, with a ``CacheWarning``): Numba unpickles its index files, so a
  file planted there would run as this user;
* a kernel's source only after its bytes hash to its name; the verified text is compiled and
  run (never a ``.pyc`` beside it, whose bytecode nobody checked);
* cached files only when they are regular files (a FIFO would block, a link redirect);
* Numba's cache files of a kernel only when they match the SHA-256 digests symdl recorded in a
  manifest after Numba wrote them: a flipped bit in machine code can crash the process that
  loads it, so a mismatch removes them and Numba compiles again.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import os
import stat
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from types import ModuleType

from numba.core import event as numba_event

from symdl.errors import CacheWarning

_MODULES: dict[str, ModuleType] = {}
_WARNED: set[str] = set()
_PRIVATE_FALLBACK: list[Path] = []  # the one fallback folder of this process, once chosen
_NUMBA_SUFFIXES = (".nbi", ".nbc")
_MANIFEST_SUFFIX = ".sha256"
# Kernel modules whose Numba cache files changed since their digests were last recorded.
_UNRECORDED: dict[str, Path] = {}
_LOADED: dict[str, tuple[str, Path]] = {}  # source file -> (digest, cache folder)
_RECORD_LOCK = threading.Lock()


def cache_dir() -> Path:
    """``SYMDL_CACHE_DIR``, else ``$XDG_CACHE_HOME/symdl``, else ``~/.cache/symdl``."""
    configured = os.environ.get("SYMDL_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "symdl"


def source_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _write_atomically(path: Path, data: str | bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_regular(path: Path) -> bytes | None:
    """The bytes of ``path`` if it is a regular file, else None (missing, a symbolic link, a
    FIFO, a device or a folder). Never blocks: a FIFO is opened non-blocking and refused."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _unsafe_reason(directory: Path, follow: bool, strict: bool = False) -> str | None:
    """Why ``directory`` may not hold cached code, or None when it may: it must be a folder
    this user owns that no other user can write (group-writable only for the user's own
    group, as with per-user groups, unless ``strict``). ``follow=False`` also refuses a
    symbolic link."""
    try:
        st = os.stat(directory) if follow else os.lstat(directory)
    except OSError as exc:
        return f"it cannot be inspected ({exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder" + ("" if follow else " (or is a symbolic link)")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it belongs to another user (uid {st.st_uid})"
    if st.st_mode & stat.S_IWOTH:
        return "every user can write to it"
    if st.st_mode & stat.S_IWGRP and (strict or st.st_gid != os.getgid()):
        return f"members of group {st.st_gid} can write to it"
    return None


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:  # once per folder and process: a training loop compiles many kernels
        _WARNED.add(key)
        warnings.warn(message, CacheWarning, stacklevel=4)


def _private_fallback(directory: Path, problem: str) -> Path:
    """``$TMPDIR/symdl-cache-<uid>`` when it is this user's private folder (created with mode
    0700), else a fresh private temporary folder: a predictable name in a shared folder can
    be created first by another user."""
    if not _PRIVATE_FALLBACK:
        shared = Path(tempfile.gettempdir()) / f"symdl-cache-{os.getuid()}"
        try:
            shared.mkdir(mode=0o700)
        except OSError:
            pass  # exists already (checked next) or cannot be made
        # symdl makes it 0700: any group or other write bit means someone else made it.
        if (_unsafe_reason(shared, follow=False, strict=True) is None
                and _write_error(shared) is None):
            _PRIVATE_FALLBACK.append(shared)
        else:
            _PRIVATE_FALLBACK.append(Path(tempfile.mkdtemp(prefix="symdl-cache-")))
    fallback = _PRIVATE_FALLBACK[0]
    _warn_once(str(directory), f"symdl: kernel cache folder {directory} {problem}; using "
               f"{fallback}. Set SYMDL_CACHE_DIR to a folder of your own that only you can "
               "write to keep compiled kernels.")
    return fallback


def _write_error(directory: Path) -> OSError | None:
    """Why a file cannot be created in ``directory``, or None when it can."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc
    return None


def _usable_dir() -> Path:
    directory = cache_dir()
    try:
        if not directory.exists():
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        return _private_fallback(directory, f"is not writable ({exc})")
    if not directory.is_dir():
        return _private_fallback(directory, "is not writable (it is not a folder)")
    # Ownership first: probing an unsafe folder could follow a link planted there.
    for folder in (directory, directory / "__pycache__"):
        if folder.name == "__pycache__" and not os.path.lexists(folder):
            continue
        reason = _unsafe_reason(folder, follow=folder is directory)
        if reason is not None:
            return _private_fallback(directory, f"is not safe for compiled code: {folder} "
                                     f"{reason}, so files planted there would run as you")
    error = _write_error(directory)
    if error is not None:
        return _private_fallback(directory, f"is not writable ({error})")
    return directory


def _symdl_files(directory: Path) -> list[Path]:
    """The files symdl wrote in ``directory``: kernel sources, their unfinished temporary
    files, and Python's and Numba's caches of them and their digests in ``__pycache__``."""
    found = [*directory.glob("symdl_*.py"), *directory.glob(".tmp-*.py")]
    pycache = directory / "__pycache__"
    if pycache.is_dir():
        found += [p for p in pycache.glob("symdl_*")
                  if p.suffix in (".pyc", *_NUMBA_SUFFIXES, _MANIFEST_SUFFIX)]
        found += pycache.glob(".tmp-*.py")
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


def _numba_files(directory: Path, digest: str) -> list[Path]:
    """Numba's index and data files of one kernel module, whatever their file type."""
    pycache = directory / "__pycache__"
    if not pycache.is_dir():
        return []
    return sorted(p for p in pycache.glob(f"symdl_{digest}.*") if p.suffix in _NUMBA_SUFFIXES)


def _manifest_path(directory: Path, digest: str) -> Path:
    return directory / "__pycache__" / f"symdl_{digest}{_MANIFEST_SUFFIX}"


def _sha256(path: Path) -> str | None:
    data = _read_regular(path)
    return None if data is None else hashlib.sha256(data).hexdigest()


def _verify_numba_cache(directory: Path, digest: str) -> None:
    """Removes this module's Numba cache files unless each is a regular file whose SHA-256 is
    the one recorded when it was written: Numba unpickles the index and runs the machine code
    of the data files as they are, so a damaged file can crash the process (or, planted, run
    code), and a removed one is just compiled again."""
    files = _numba_files(directory, digest)
    if not files:
        return
    manifest = _manifest_path(directory, digest)
    try:
        recorded = json.loads(_read_regular(manifest) or b"{}")
    except ValueError:
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    damaged = [p.name for p in files if p.name in recorded and _sha256(p) != recorded[p.name]]
    if damaged:
        _warn_once(f"damaged:{digest}", f"symdl: Numba cache files {damaged} in "
                   f"{manifest.parent} do not match the digests recorded when they were "
                   "written (damaged on disk?); they were removed and the kernel is compiled "
                   "again.")
    if damaged or any(p.name not in recorded for p in files):
        # Files symdl did not record (another process is still writing them, or a process
        # ended before recording them) are not trusted either: compiling again is safe.
        for path in [*files, manifest]:
            _remove(path)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except IsADirectoryError:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass  # Numba then fails to read it and compiles again


def _record_numba_cache(directory: Path, digest: str) -> None:
    """Writes the manifest of the SHA-256 digests of this module's Numba cache files as they
    are now (after Numba wrote them)."""
    sums = {}
    for path in _numba_files(directory, digest):
        digest_of_file = _sha256(path)
        if digest_of_file is not None:
            sums[path.name] = digest_of_file
    try:
        _write_atomically(_manifest_path(directory, digest),
                          json.dumps(sums, indent=0, sort_keys=True))
    except OSError:
        pass  # unrecorded files are compiled again by the next process: slower, not unsafe


def record_compiled() -> None:
    """Records the digests of the Numba cache files written since the last call (Numba saves
    them right after it compiles, inside the call that needed the code). Cheap when nothing
    was compiled; called after every kernel call and at exit."""
    if not _UNRECORDED:
        return
    with _RECORD_LOCK:
        while _UNRECORDED:
            try:
                digest, directory = _UNRECORDED.popitem()  # atomic: the listener may add more
            except KeyError:
                break
            _record_numba_cache(directory, digest)


class _CompileListener(numba_event.Listener):
    """Notes which symdl kernel module Numba compiled a function of (Numba's event API)."""

    def on_start(self, event) -> None:
        pass

    def on_end(self, event) -> None:
        dispatcher = (event.data or {}).get("dispatcher")
        filename = getattr(getattr(getattr(dispatcher, "py_func", None), "__code__", None),
                           "co_filename", None)
        if filename in _LOADED:
            digest, directory = _LOADED[filename]
            _UNRECORDED[digest] = directory


numba_event.register("numba:compile", _CompileListener())
atexit.register(record_compiled)


def load(text: str) -> ModuleType:
    """Imports the module whose source is ``text``, writing it to the cache if needed."""
    digest = source_hash(text)
    if digest in _MODULES:
        return _MODULES[digest]
    directory = _usable_dir()
    path = directory / f"symdl_{digest}.py"
    data = text.encode("utf-8")
    if _read_regular(path) != data:  # missing, damaged, or not a regular file
        try:
            _write_atomically(path, data)
        except OSError as exc:  # e.g. a folder in its place
            directory = _private_fallback(directory, f"holds an unusable {path.name} ({exc})")
            path = directory / f"symdl_{digest}.py"
            _write_atomically(path, data)
    _verify_numba_cache(directory, digest)
    name = f"symdl_kernel_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    _LOADED[str(path)] = (digest, directory)
    # The verified text itself is compiled, under the file's name (Numba's cache needs a
    # real file): not a .pyc beside it, whose bytecode was never checked against the source.
    exec(compile(text, str(path), "exec"), module.__dict__)  # noqa: S102 - our own source
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
    shim.objmode = contextlib.nullcontext  # Python is object mode already
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
