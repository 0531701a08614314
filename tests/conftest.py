"""Shared pytest configuration for the symdl test suite."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def kernel_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Compiled kernels go to a fresh temporary folder, never to the user's ~/.cache/symdl."""
    folder = tmp_path_factory.mktemp("symdl-cache")
    previous = os.environ.get("SYMDL_CACHE_DIR")
    os.environ["SYMDL_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SYMDL_CACHE_DIR", None)
    else:
        os.environ["SYMDL_CACHE_DIR"] = previous
