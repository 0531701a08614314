"""Sphinx configuration of the API reference (``make docs``; the test suite builds it too).

Autodoc reads the docstrings of the public API; napoleon reads their Google style. Nothing is
downloaded while building (no intersphinx, the theme that ships with Sphinx), and the build
runs with warnings as errors, so a broken docstring fails it.
"""

from __future__ import annotations

import sys

from sphinx.pycode import ModuleAnalyzer

import symdl

project = "symdl"
author = "the symdl developers"
copyright = "2026, the symdl developers"
release = symdl.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["design-notes.md", "img"]
root_doc = "index"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_static_path: list[str] = []


def _public_names(module_name: str) -> list[str]:
    """What a module defines for its users: its functions and classes (not the names it
    imports) and its module-level constants that carry a docstring, in source order."""
    module = sys.modules[module_name]
    analyzer = ModuleAnalyzer.for_module(module.__name__)
    documented = {name for (scope, name) in analyzer.find_attr_docs() if scope == ""}
    order = analyzer.tagorder if hasattr(analyzer, "tagorder") else {}
    names = [name for name, value in vars(module).items() if not name.startswith("_") and (
        getattr(value, "__module__", None) == module.__name__ or name in documented)]
    return sorted(names, key=lambda name: order.get(name, len(order)))


# symdl.optimizers, symdl.schedules and symdl.latex are public names of modules that live in
# the stage packages (symdl.define.optimizers, ...): to autodoc everything in them looks
# imported. Their __all__, where they have none, is what they define themselves.
for _alias in ("symdl.optimizers", "symdl.schedules", "symdl.latex"):
    if not hasattr(sys.modules[_alias], "__all__"):
        sys.modules[_alias].__all__ = _public_names(_alias)
