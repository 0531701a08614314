"""The names of a kernel's outputs, as small value types.

A derivation's kernel computes ``Value()``, a ``Gradient(p)`` per parameter, the
``HessianBlock(p, q)`` blocks derived so far and, with ``hvp=True``, an ``HVP(p)`` per
parameter; a training step adds ``Update(name)`` (the new value of a parameter or optimizer
state) and ``compile_expressions`` names each output ``Named(name)``. Parameter names are
whatever SymPy allows (commas, colons, quotes, spaces, keywords): a key holds them as they
are and never parses them back out of text.

A key is a ``str``, its one spelling: ``value``, ``grad:w``, ``hessian:p,q``, ``hvp:w``,
``new:W1`` and ``W``, with a name written as a Python string literal where it could be read
two ways (``grad:'a,b'``, ``hessian:'a,b','c'``, ``'new:W'``). Distinct keys have distinct
spellings, so a dict keyed by keys is read with the spelling too (``outputs["grad:w"]``),
``report.rows[0].output == "grad:w"`` holds, and keys print and go into JSON as text. Code
that needs the names reads them from the key (``key.param``, ``key.p``), never from the text.
``resolve`` also accepts the plain spelling ``hessian:a,b,c`` where it names one output of a
given set, and says how to write it where it names several.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from typing import ClassVar

from symdl.errors import SymdlError

_PLAIN = re.compile(r"[^\s,:'\"\\]+")
"""A name written as it is in a spelling: no separator, quote, backslash or white space."""


def _token(name: str) -> str:
    return name if _PLAIN.fullmatch(name) else repr(name)


class OutputKeyError(SymdlError, ValueError):
    """An output named by a string that names no output, or several, or is no spelling."""


class OutputKey(str):
    """The name of one output of a kernel (see the module docstring): a string, its spelling,
    that also holds the names it was built from (``key.names``; ``Gradient("w").param``).
    Immutable; code reads the names, never the text."""

    kind: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()
    """The names the constructor takes, in order (``("p", "q")`` for a Hessian block)."""

    def __new__(cls, *args: str, **kwargs: str) -> OutputKey:
        names = list(args) + [kwargs.pop(f) for f in cls.fields[len(args):] if f in kwargs]
        if kwargs or len(names) != len(cls.fields):
            raise TypeError(f"{cls.__name__} takes the names {cls.fields}, got {args!r} "
                            f"{kwargs!r}")
        for name in names:
            if not isinstance(name, str):
                raise OutputKeyError(
                    f"{cls.__name__} takes parameter names as strings (the symbol's name, "
                    f"e.g. 'w'), got {type(name).__name__} {name!r}")
        names = tuple(str(n) for n in names)  # plain strings, even from a key
        self = super().__new__(cls, cls._spell(names))
        object.__setattr__(self, "_names", names)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    __delattr__ = __setattr__

    @property
    def names(self) -> tuple[str, ...]:
        """The parameter (or output) names the key holds, in order."""
        return self._names

    @classmethod
    def _spell(cls, names: tuple[str, ...]) -> str:
        return cls.kind + ":" + ",".join(_token(n) for n in names)

    def plain(self) -> str:
        """The spelling with every name written as it is (``hessian:a,b,c``): what a user
        types, unambiguous only when no name holds a separator."""
        return self.kind + ":" + ",".join(self.names)

    def to_dict(self) -> dict:
        """The key as JSON-able data: ``{"kind": "hessian", "names": ["p", "q"]}``."""
        return {"kind": self.kind, "names": list(self.names)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.names))})"

    def __reduce__(self):
        return type(self), self.names


class Value(OutputKey):
    """The definition's value: ``value``."""

    kind: ClassVar[str] = "value"

    @classmethod
    def _spell(cls, names: tuple[str, ...]) -> str:
        return "value"

    def plain(self) -> str:
        return "value"


class Gradient(OutputKey):
    """∂L/∂param: ``grad:w``."""

    kind: ClassVar[str] = "grad"
    fields: ClassVar[tuple[str, ...]] = ("param",)

    @property
    def param(self) -> str:
        return self.names[0]


class HessianBlock(OutputKey):
    """The Hessian block ∂²L/∂p∂q, size-1 axes dropped: ``hessian:p,q``."""

    kind: ClassVar[str] = "hessian"
    fields: ClassVar[tuple[str, ...]] = ("p", "q")

    @property
    def p(self) -> str:
        return self.names[0]

    @property
    def q(self) -> str:
        return self.names[1]


class HVP(OutputKey):
    """The Hessian-vector product Σ_q H[param, q] v_q: ``hvp:w``."""

    kind: ClassVar[str] = "hvp"
    fields: ClassVar[tuple[str, ...]] = ("param",)

    @property
    def param(self) -> str:
        return self.names[0]


class Update(OutputKey):
    """A training step's new value of a parameter or optimizer state: ``new:W1``."""

    kind: ClassVar[str] = "new"
    fields: ClassVar[tuple[str, ...]] = ("name",)

    @property
    def name(self) -> str:
        return self.names[0]


class Named(OutputKey):
    """An output of ``compile_expressions``, by the name the user gave it: ``W``."""

    kind: ClassVar[str] = "named"
    fields: ClassVar[tuple[str, ...]] = ("name",)

    @property
    def name(self) -> str:
        return self.names[0]

    @classmethod
    def _spell(cls, names: tuple[str, ...]) -> str:
        # Quoted where it could be read as another kind's spelling ('value', 'grad:w').
        (name,) = names
        return name if _PLAIN.fullmatch(name) and name != "value" else repr(name)

    def plain(self) -> str:
        return self.name


_KINDS: dict[str, type[OutputKey]] = {k.kind: k for k in (Gradient, HessianBlock, HVP, Update)}
_NEW_SPELLING = ("write the key itself (from symdl.ir.keys import HessianBlock; "
                 "HessianBlock(p, q)), or quote the names as Python strings: hessian:'a,b','c'")


def parse(text: str) -> OutputKey:
    """The key a spelling stands for: ``value``, ``grad:w``, ``hessian:p,q``, ``hvp:w``,
    ``new:W``, names quoted as Python strings where they hold a separator (``hessian:'a,b',c``);
    a gradient, HVP or update takes the whole rest as its name (``grad:a,b`` is
    ``Gradient('a,b')``). Any other text is ``Named(text)``.

    Raises:
        OutputKeyError: a Hessian spelling that does not split into two names one way only.
    """
    if not isinstance(text, str):
        raise OutputKeyError(f"an output is named by a key or a string, got {text!r}")
    if text == "value":
        return Value()
    kind, colon, rest = text.partition(":")
    if not colon or kind not in _KINDS:
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
            try:
                return Named(ast.literal_eval(text))  # a quoted spelling: 'new:W'
            except (ValueError, SyntaxError):
                pass
        return Named(text)
    names = _names(rest)
    cls = _KINDS[kind]
    if cls is HessianBlock:
        if names is None:
            parts = rest.split(",")
            if len(parts) != 2:
                raise OutputKeyError(
                    f"{text!r} does not say where the first parameter's name ends (the "
                    f"names hold commas); {_NEW_SPELLING}")
            names = parts
        if len(names) != 2:
            raise OutputKeyError(f"{text!r}: a Hessian block names two parameters")
        return HessianBlock(*names)
    if names is None or len(names) != 1:
        names = [rest]  # one name: everything after the colon, as written
    return cls(names[0])


_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'" + "|" + r'"(?:[^"\\\n]|\\.)*"')
"""A name as ``repr`` writes it: a single- or double-quoted Python string literal."""


def _names(rest: str) -> list[str] | None:
    """The names of a spelling with quoted names (``'a,b',c``), or ``None`` when the text is
    not written that way."""
    if not any(q in rest for q in "'\""):
        return None
    names, k = [], 0
    while True:
        quoted = _QUOTED.match(rest, k)
        if quoted:
            try:
                names.append(ast.literal_eval(quoted.group(0)))
            except (ValueError, SyntaxError):
                return None
            k = quoted.end()
        else:
            end = rest.find(",", k)
            end = len(rest) if end < 0 else end
            if any(q in rest[k:end] for q in "'\""):
                return None
            names.append(rest[k:end])
            k = end
        if k == len(rest):
            return names
        if rest[k] != ",":
            return None
        k += 1


def as_key(name: object) -> OutputKey:
    """A key given as a key or as its spelling (``parse``)."""
    if isinstance(name, OutputKey):
        return name
    return parse(name)


def resolve(name: object, keys: Iterable[OutputKey]) -> OutputKey | None:
    """The one key of ``keys`` that ``name`` names: the key itself, its spelling
    (``str(key)``), or its plain spelling (``key.plain()``: ``grad:a,b``, ``hessian:a,b,c``)
    where that names one key only. ``None`` when it names none.

    Raises:
        OutputKeyError: ``name`` is not a key or a string, or its plain spelling names several
            keys (the message lists their spellings).
    """
    keys = list(keys)
    if isinstance(name, OutputKey):
        return name if name in keys else None
    if not isinstance(name, str):
        raise OutputKeyError(
            f"outputs are named by keys (symdl.ir.keys: Gradient('w'), ...) or their "
            f"spellings ('grad:w'), got {type(name).__name__} {name!r}")
    for key in keys:
        if str(key) == name:
            return key
    matches = [key for key in keys if key.plain() == name]
    if len(matches) > 1:
        raise OutputKeyError(
            f"{name!r} names {len(matches)} outputs: "
            f"{', '.join(f'{k!r} (spelt {str(k)!r})' for k in matches)}; use the key or its "
            "spelling")
    return matches[0] if matches else None


class Outputs(dict):
    """Arrays by output key (a ``dict``), also read by a key's spelling or plain spelling
    (``outputs["grad:w"]``, ``outputs["hessian:a,b,c"]`` where that names one block)."""

    def __missing__(self, name: object):
        key = resolve(name, self) if isinstance(name, (str, OutputKey)) else None
        if key is None:
            raise KeyError(name)
        return dict.__getitem__(self, key)

    def __contains__(self, name: object) -> bool:
        if dict.__contains__(self, name):
            return True
        return isinstance(name, str) and resolve(name, self) is not None

    def get(self, name: object, default=None):
        return self[name] if name in self else default

    def __repr__(self) -> str:
        return "Outputs({" + ", ".join(f"{str(k)!r}: {v!r}" for k, v in self.items()) + "})"


def resolve_all(names: Mapping | Iterable, keys: Iterable[OutputKey]) -> list[OutputKey]:
    """``resolve`` for each name, in order; raises ``OutputKeyError`` naming those that name
    no key (with the keys there are) or that name one key twice."""
    keys = list(keys)
    found, unknown = [], []
    for name in names:
        key = resolve(name, keys)
        if key is None:
            unknown.append(name)
        else:
            found.append(key)
    if unknown:
        raise OutputKeyError(
            f"no outputs named {[str(u) for u in unknown]}; there are "
            f"{[str(k) for k in keys]}")
    return found
