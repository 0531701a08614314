"""The notebooks in ``examples/`` run from top to bottom (issue 17, item 4).

Each is executed in a fresh Jupyter kernel (``nbclient``) from the repository root, so it
imports this checkout's symdl and shares the suite's kernel cache (``SYMDL_CACHE_DIR``). A
cell that raises fails the test (``CellExecutionError``); the notebooks assert their own
results, and the test checks that the rich displays came out.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))

# What each notebook must display: a MIME type and a fragment of it.
DISPLAYS = {
    "backprop_equations": [("text/html", "symdl derivation"), ("text/html", "gradient check"),
                           ("text/plain", "dZ2 = ")],
    "training_loop": [("text/html", "symdl kernel"), ("text/plain", "training accuracy 0.9")],
    "latex": [("text/latex", "\\begin{aligned}"), ("text/plain", "\\documentclass")],
}


def _texts(notebook) -> dict[str, str]:
    texts: dict[str, str] = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                texts["text/plain"] = texts.get("text/plain", "") + output["text"]
            for mime, data in output.get("data", {}).items():
                texts[mime] = texts.get(mime, "") + "".join(data)
    return texts


def test_every_example_is_listed() -> None:
    assert {p.stem for p in NOTEBOOKS} == set(DISPLAYS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    texts = _texts(notebook)
    for mime, fragment in DISPLAYS[path.stem]:
        assert fragment in texts.get(mime, ""), (path.stem, mime, fragment)
