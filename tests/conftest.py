"""Shared pytest configuration for the symdl test suite."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def kernel_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Compiled kernels go to a fresh temporary folder, never to the user's ~/.cache/symdl.

    Under pytest-xdist the workers share one folder (beside their own temporary folders, in
    pytest's per-run folder that only this user can write), so a kernel that two test files
    compile is compiled once for the run, as it would be for a user: symdl's cache is written
    atomically and Numba's is safe for concurrent processes."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.getbasetemp().parent / "symdl-cache"
        folder.mkdir(mode=0o700, exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("symdl-cache")
    previous = os.environ.get("SYMDL_CACHE_DIR")
    os.environ["SYMDL_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SYMDL_CACHE_DIR", None)
    else:
        os.environ["SYMDL_CACHE_DIR"] = previous


# The files that take longest (seconds of one core, measured with --durations on 2 cores),
# longest first. `make test` runs each file on one worker (--dist loadfile); pytest-xdist hands
# files out in order of their number of tests, which puts a long file with few tests (the
# property tests: 3 tests, ~150 s) last, on one worker while the other idles. Handing the
# longest files out first lets the short ones fill in around them (longest-processing-time-first
# scheduling): the run then takes about half the suite's total time. A file missing from this
# list keeps xdist's order (most tests first) after these; re-measure with
# `pytest -n 2 --dist loadfile --durations=60` when a file grows past the last one here.
LONGEST_FILES = (
    "tests/end_to_end/test_properties.py",
    "tests/end_to_end/test_properties_outside.py",
    "tests/kernels/test_kernels.py",
    "tests/report/test_demo.py",
    "tests/printing/test_latex.py",
    "tests/end_to_end/test_derivations.py",
    "tests/kernels/test_security.py",
    "tests/verify/test_check.py",
    "tests/define/test_long_definitions.py",
    "tests/kernels/test_training.py",
    "tests/test_packaging.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """Under ``--dist loadfile``, xdist keeps the file order of ``pytest_collection_modifyitems``
    below instead of sorting files by their number of tests."""
    if getattr(config.option, "dist", None) == "loadfile":
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files in ``LONGEST_FILES`` order first, then the others by their number of tests (most
    first, as xdist orders them), each file's tests in their own order."""
    files = [item.nodeid.split("::", 1)[0] for item in items]
    counts: dict[str, int] = {}
    for name in files:
        counts[name] = counts.get(name, 0) + 1
    rank = {name: k for k, name in enumerate(LONGEST_FILES)}

    def key(position: int) -> tuple[int, int, int]:
        name = files[position]
        return rank.get(name, len(rank)), -counts[name], position

    order = sorted(range(len(items)), key=key)
    items[:] = [items[k] for k in order]
