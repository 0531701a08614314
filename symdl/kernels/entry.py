"""The named entry point of a generated kernel module: ``compute(*, X, w, y, out=None, ...)``.

The low-level ``kernel(a0, a1, ..., out0, ...)`` takes anonymous arrays by position; an
exported module is used without symdl, so it also gets ``compute``, whose keyword-only
arguments are named after the definition's symbols and which checks every argument as
``Kernel.run`` does (dtypes, ranks, each axis against the symbolic dimensions, out buffers,
overlaps) before it calls ``kernel``. It raises the module's own ``KernelArgumentError``
(a ``ValueError``): a generated module imports only NumPy and Numba.

User strings never become code: an argument is named by an ASCII identifier derived from the
symbol's name (``argument_names``), and every other user string (the symbol's name, output
names, dimension names) appears only as an ``ascii()`` literal or escaped docstring text.
"""

from __future__ import annotations

import keyword
import re
import unicodedata
from collections.abc import Sequence

RESERVED = frozenset({"out", "parallel", "compiled", "_compute"})
"""Names ``compute`` uses itself (its options and the one global its body reads)."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_ ()*+\-/,.:]*\Z")


def _transliterated(char: str) -> str:
    """An ASCII spelling of one non-ASCII character: a letter by its Unicode name (``α`` ->
    ``alpha``, ``Σ`` -> ``Sigma``, ``é`` -> ``e``), anything else by its code point."""
    name = unicodedata.name(char, "")
    if " LETTER " in name:
        letter = name.split(" LETTER ", 1)[1].split(" ")[0]
        if letter.isascii() and letter.isalpha():
            return letter.capitalize() if "CAPITAL" in name else letter.lower()
    return f"u{ord(char):04x}"


def _identifier(name: str) -> str:
    """``name`` as an ASCII identifier that is no Python keyword (not yet made unique)."""
    if _IDENTIFIER.match(name) and not keyword.iskeyword(name):
        return name
    text = "".join(c if c.isascii() else _transliterated(c) for c in name)
    text = re.sub(r"[^A-Za-z0-9_]+", "_", text) or "arg"
    if text[0].isdigit():
        text = "_" + text
    if keyword.iskeyword(text):
        text += "_"
    return text


def argument_names(names: Sequence[str]) -> dict[str, str]:
    """The keyword of each input of ``compute``, by symbol name: ASCII identifiers, no
    Python keyword, none in ``RESERVED``, all distinct.

    A name that already is such an identifier keeps it; the others are sanitised
    (``a,b`` -> ``a_b``, ``lambda`` -> ``lambda_``, ``α`` -> ``alpha``) and, where that
    collides, numbered in the order of ``names`` (``a_b_2``): the same names always give the
    same keywords.

    >>> argument_names(["X", "a,b", "a_b", "lambda", "out"])
    {'X': 'X', 'a,b': 'a_b_2', 'a_b': 'a_b', 'lambda': 'lambda_', 'out': 'out_2'}
    """
    chosen: dict[str, str] = {}
    taken = set(RESERVED)
    for name in names:  # exact identifiers first: a user's valid name is never renamed
        if _identifier(name) == name and name not in RESERVED:
            chosen[name] = name
            taken.add(name)
    for name in names:
        if name in chosen:
            continue
        base = _identifier(name)
        candidate, number = base, 2
        while candidate in taken:
            candidate, number = f"{base}_{number}", number + 1
        chosen[name] = candidate
        taken.add(candidate)
    return {name: chosen[name] for name in names}


def _text(value: str) -> str:
    """A user string for docstring text: as it is when plain, else its ``ascii()`` form."""
    return value if _PLAIN_TEXT.match(value) else ascii(value)


def symbolic_shape(shape: Sequence[object]) -> str:
    """``(n, d)``: a shape for messages and docstrings (dimension names as ``_text``)."""
    parts = [_text(str(d)) for d in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def named_entry(gen, in_place: Sequence[tuple[int, int]]) -> list[str]:
    """The source lines of ``compute`` and what it reads (appended to a kernel module).

    Args:
        gen: the module's ``symdl.kernels.codegen.Generator`` (after its steps are emitted).
        in_place: ``(output index, input index)`` of each output the plan may write into the
            input of the same name (``Source.in_place``).
    """
    leaves, outputs = gen.leaves, gen.outputs
    keywords = argument_names([leaf.name for leaf in leaves])
    dim_args = ", ".join(gen.dim_names[d] for d in gen.dims)
    lines = ["", "", "# -- compute(): the entry point by keyword (see its docstring) " + "-" * 28,
             "", _ERROR_CLASS, "", "", "_ARGUMENTS = (  # (keyword, symbol name, rank, shape)"]
    for leaf in leaves:
        lines.append(f"    ({ascii(keywords[leaf.name])}, {ascii(leaf.name)}, {leaf.rank}, "
                     f"{ascii(symbolic_shape(leaf.shape))}),")
    lines += [")", "_OUTPUTS = (  # (name, rank, shape), in the order of kernel()'s outputs"]
    for name in outputs:
        node = gen.plan.roots[name]
        lines.append(f"    ({ascii(name)}, {node.rank}, {ascii(symbolic_shape(node.shape))}),")
    lines += [")", "_DIMS = (  # (dimension, argument, axis it is read from)"]
    for d in gen.dims:
        source = gen._dim_from_arrays(d)  # "aK.shape[axis]"
        k, axis = re.fullmatch(r"a(\d+)\.shape\[(\d+)\]", source).groups()
        lines.append(f"    ({ascii(_text(str(d)))}, {k}, {axis}),")
    lines += [")", f"_IN_PLACE = {tuple(in_place)!r}  # (output, input) it may be written into",
              "", "", f"def _input_shapes({dim_args}):",
              "    return " + _tuple("()" if not leaf.rank else gen.shape_tuple(leaf)
                                 for leaf in leaves),
              "", "", f"def _output_shapes({dim_args}):",
              "    return " + _tuple(gen.shape_tuple(gen.plan.roots[name]) for name in outputs),
              _COMPUTE]
    signature = ", ".join([keywords[leaf.name] for leaf in leaves]
                          + ["out=None", "parallel=False", "compiled=False"])
    doc = _docstring(gen, keywords).replace("\\", "\\\\").replace('"', "\\x22")
    values = _tuple(keywords[leaf.name] for leaf in leaves)
    lines += ["", "", f"def compute(*, {signature}):", '    """' + doc + '\n    """',
              f"    return _compute({values}, out, parallel, compiled)", "", "",
              '__all__ = ["KernelArgumentError", "compute", "kernel"]', ""]
    return lines


def _tuple(items) -> str:
    """A tuple display of source texts: ``(a, b,)``, ``()`` when empty."""
    items = list(items)
    return "(" + ", ".join(items) + ",)" if items else "()"


def _docstring(gen, keywords: dict[str, str]) -> str:
    outputs = [ascii(name) for name in gen.outputs]
    lines = [f"Computes {', '.join(outputs)} from the arrays, each by keyword.", "",
             "Args:"]
    for leaf in gen.leaves:
        given = f"the symbol {ascii(leaf.name)}, " if keywords[leaf.name] != leaf.name else ""
        what = ("a real number" if not leaf.rank
                else f"an array of shape {symbolic_shape(leaf.shape)}")
        lines.append(f"    {keywords[leaf.name]}: {given}{what}")
    lines += [
        "    out: optional dict of preallocated results by output name (C-contiguous arrays",
        "        of the shapes below and the dtype of the inputs); the others are allocated.",
        "    parallel: run the parallel loops (for large arrays).",
        "    compiled: run the steps as one compiled function (compiled on first use).", "",
        "Every array is float64, or every array is float32 (then so are the results); each",
        "dimension has one size in all of them"
        + (f" ({', '.join(_text(str(d)) for d in gen.dims)})" if gen.dims else "")
        + ". Arrays in other layouts are copied.", "",
        "Returns:", "    A dict by output name: a float for a scalar output, else an array."]
    for name in gen.outputs:
        node = gen.plan.roots[name]
        shape = "float" if not node.rank else f"shape {symbolic_shape(node.shape)}"
        lines.append(f"    {ascii(name)}: {shape}")
    lines += ["", "Raises:",
              "    KernelArgumentError: a missing, mistyped or misshapen argument, an out",
              "        buffer of the wrong shape or dtype, or results that overlap an input."]
    return "\n".join(lines[:1] + [f"    {line}" if line else "" for line in lines[1:]])


_ERROR_CLASS = '''
class KernelArgumentError(ValueError):
    """An argument of compute() is missing, mistyped, misshapen or overlaps another.

    Attributes: argument (its keyword or output name), expected and actual (shapes or
    dtypes, where those are what is wrong)."""

    def __init__(self, message, argument="", expected=None, actual=None):
        super().__init__(message)
        self.argument = argument
        self.expected = expected
        self.actual = actual'''.strip("\n")

_COMPUTE = '''

_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def _argument(keyword, rank, value, dtype):
    """One input, checked: a float for a scalar, else a C-ordered float array."""
    if isinstance(value, np.ma.MaskedArray):
        raise KernelArgumentError(
            f"{keyword} is a masked array; kernels ignore masks: pass np.ma.filled(...)",
            keyword)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise KernelArgumentError(
            f"{keyword} cannot be read as an array ({exc})", keyword) from None
    if rank == 0:
        if array.shape != () or array.dtype.kind not in "fiu":
            raise KernelArgumentError(
                f"{keyword} is a scalar: pass a real number, got {type(value).__name__} "
                f"{array.dtype} of shape {array.shape}", keyword, (), array.shape)
        return float(array), dtype
    if array.dtype not in _DTYPES:
        raise KernelArgumentError(
            f"{keyword} has dtype {array.dtype}; pass float64 or float32 arrays "
            f"({keyword}.astype(np.float64))", keyword, "float64", array.dtype)
    if dtype is not None and array.dtype != dtype:
        raise KernelArgumentError(
            f"{keyword} is {array.dtype} but other arguments are {dtype}: pass every array "
            "in one precision", keyword, dtype, array.dtype)
    if array.ndim != rank or 0 in array.shape:
        raise KernelArgumentError(
            f"{keyword} must have {rank} axes, none empty; got shape {array.shape}",
            keyword, rank, array.shape)
    return np.ascontiguousarray(array), array.dtype


def _same_array(a, b):
    return (a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _compute(values, out, parallel, compiled):
    """compute()'s checks, then kernel(); results by output name."""
    if not isinstance(parallel, (bool, np.bool_)) or not isinstance(compiled, (bool, np.bool_)):
        raise KernelArgumentError("parallel= and compiled= must be True or False")
    arrays, dtype = [], None
    for (keyword, _, rank, _), value in zip(_ARGUMENTS, values):
        array, dtype = _argument(keyword, rank, value, dtype)
        arrays.append(array)
    dtype = np.dtype(np.float64) if dtype is None else dtype
    sizes = [arrays[k].shape[axis] for _, k, axis in _DIMS]
    where = ", ".join(f"{d} = {arrays[k].shape[axis]} from {_ARGUMENTS[k][0]} axis {axis}"
                      for d, k, axis in _DIMS)
    for (keyword, _, rank, shape), array, expected in zip(
            _ARGUMENTS, arrays, _input_shapes(*sizes)):
        if rank and array.shape != expected:
            raise KernelArgumentError(
                f"{keyword} must have shape {shape} = {expected} ({where}); got "
                f"{array.shape}: check that each array is passed by the right keyword",
                keyword, expected, array.shape)
    if out is None:
        out = {}
    if not isinstance(out, dict):
        raise KernelArgumentError(
            f"out= takes a dict of result arrays by output name, got {type(out).__name__}",
            "out")
    names = [name for name, _, _ in _OUTPUTS]
    unknown = sorted(str(name) for name in set(out) - set(names))
    if unknown:
        raise KernelArgumentError(
            f"out= names {unknown}, which this kernel does not compute; it computes {names}",
            unknown[0])
    buffers = []
    for name, expected in zip(names, _output_shapes(*sizes)):
        given = out.get(name)
        if given is None:
            buffers.append(np.empty(expected, dtype=dtype))
            continue
        if (not isinstance(given, np.ndarray) or given.shape != expected
                or given.dtype != dtype or not given.flags.c_contiguous
                or not given.flags.writeable):
            raise KernelArgumentError(
                f"out[{name!r}] must be a writeable C-contiguous {dtype} array of shape "
                f"{expected}, got {type(given).__name__} {getattr(given, 'shape', '')}",
                name, expected, getattr(given, "shape", None))
        buffers.append(given)
    allowed = dict(_IN_PLACE)
    for o, (name, buffer) in enumerate(zip(names, buffers)):
        for other, buffer2 in zip(names[o + 1:], buffers[o + 1:]):
            if np.shares_memory(buffer, buffer2):
                raise KernelArgumentError(
                    f"out[{name!r}] and out[{other!r}] share memory", name)
        for k, array in enumerate(arrays):
            if (isinstance(array, np.ndarray) and np.shares_memory(buffer, array)
                    and not (allowed.get(o) == k and _same_array(buffer, array))):
                raise KernelArgumentError(
                    f"out[{name!r}] overlaps the input {_ARGUMENTS[k][0]}; pass a separate "
                    "array", name)
    inplace = bool(_IN_PLACE) and all(
        _same_array(buffers[o], arrays[k]) for o, k in _IN_PLACE)
    kernel(*arrays, *buffers, parallel=bool(parallel), compiled=bool(compiled),
           inplace=inplace)
    return {name: float(buffer[0]) if rank == 0 else buffer
            for (name, rank, _), buffer in zip(_OUTPUTS, buffers)}'''
