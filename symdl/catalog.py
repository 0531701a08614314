"""The ready derivations in ``derivations/`` (installed as ``symdl.derivations``), by name.

A derivation file is a literate Python module: a docstring whose first line is its title,
prose comments, and a function ``derivation()`` that returns a ``symdl.Derivation``. The
command line accepts a name from this registry or the path of such a file of the user's own.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from symdl.derivation import Derivation
from symdl.errors import SymdlError


class DerivationNotFoundError(SymdlError, LookupError):
    """No shipped derivation has that name and no such file exists."""


@dataclass(frozen=True)
class Entry:
    """A derivation file: its ``name`` (module name or path) and its title."""

    name: str
    title: str
    module: ModuleType

    def derive(self) -> Derivation:
        result = self.module.derivation()
        if not isinstance(result, Derivation):
            raise SymdlError(
                f"{self.name}: derivation() must return a symdl.Derivation, got "
                f"{type(result).__name__}"
            )
        return result


def _title(module: ModuleType) -> str:
    doc = (module.__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else module.__name__


def names() -> list[str]:
    """The names of the shipped derivations, sorted."""
    import symdl.derivations as package

    return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                  if not m.name.startswith("_"))


def load(name_or_path: str) -> Entry:
    """The shipped derivation called ``name_or_path``, or the derivation file at that path."""
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            shipped = f"; did you mean {path.stem!r}?" if path.stem in names() else ""
            raise DerivationNotFoundError(f"no such file: {path}{shipped}")
        spec = importlib.util.spec_from_file_location(f"symdl_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        if name_or_path not in names():
            raise DerivationNotFoundError(
                f"no derivation named {name_or_path!r}; {_suggest(name_or_path)}`symdl list` "
                "shows the names, or pass the path of a .py file"
            )
        module = importlib.import_module(f"symdl.derivations.{name_or_path}")
    if not callable(getattr(module, "derivation", None)):
        raise DerivationNotFoundError(
            f"{name_or_path} defines no function derivation() returning a symdl.Derivation"
        )
    return Entry(str(name_or_path), _title(module), module)


def _suggest(name: str) -> str:
    """``did you mean ...? `` for the shipped names close to ``name`` (a typo, or a part of
    the name such as ``adam`` for ``optim_adam``), else nothing."""
    shipped = names()
    close = difflib.get_close_matches(name, shipped, n=3, cutoff=0.6)
    lowered = name.lower()
    close += [n for n in shipped if lowered and lowered in n.split("_") and n not in close]
    if not close:
        return ""
    return f"did you mean {' or '.join(repr(n) for n in close[:3])}? "


def entries() -> list[Entry]:
    return [load(name) for name in names()]
