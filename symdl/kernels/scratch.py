"""Scratch arrays: the driver's temporaries kept across calls instead of allocated per call.

A generated driver needs temporaries (activations, masks, back-propagated tensors) whose size
grows with the dimensions. Allocated per call, glibc returns memory of that size to the
system when it is freed, and the next call faults it in again page by page: the digits CNN's
training step at batch 256 spent about half its time in those page faults (1,184 per float32
step; ``benchmarks/README.md``).

``hoist_scratch`` takes those allocations out of the driver: they become arguments of the
driver, made by one generated function ``_scratch(n0, ..., dtype)``. The generated
``kernel()`` asks its caller's pool (``kernel(..., scratch=pool)``) for a set of that layout
and gives it back after the call; without a pool (an exported module used alone) it allocates
them as before. A temporary is fully written before it is read in every call (it came from
``np.empty``), so a reused array gives the same numbers as a fresh one.

``ScratchPool`` is the pool a ``Kernel`` keeps: sets by layout (the dimension sizes and the
dtype), taken by one call at a time (two threads calling at once get two sets), a few layouts
and a bounded number of bytes kept, the least recently used layout dropped first.
"""

from __future__ import annotations

import ast
import threading
from collections import OrderedDict
from collections.abc import Callable

SCRATCH_KEEP_BYTES = 1 << 28
"""The most bytes of scratch arrays one kernel keeps between calls (256 MiB). A set larger
than this is allocated per call and dropped after it, as before: a one-off call on a huge
batch does not pin its temporaries."""

SCRATCH_LAYOUTS = 4
"""The most layouts (dimension sizes and dtype) one kernel keeps sets for: a training loop
whose last batch is shorter alternates two."""

SCRATCH_SETS_PER_LAYOUT = 2
"""The most sets kept per layout: one per thread for two threads calling at once; more
concurrent calls allocate their own and drop them."""

_INTEGER_DTYPES = {"int64", "int32", "intp"}


def hoist_scratch(statements: list[str], dim_names: list[str]
                  ) -> tuple[list[str], list[tuple[str, str]]]:
    """The driver's statements without the allocations that can move into ``_scratch``, and
    those allocations as ``(name, np.empty(...) text)`` in driver order.

    An allocation moves when it is a top-level ``name = np.empty(shape, dtype=...)`` whose
    shape is computed from the dimensions alone and uses at least one (a temporary of fixed
    size is cheap and stays where it is), of the kernel's ``dtype`` or an integer dtype, and
    ``name`` is bound nowhere else in the driver (a name rebound later is left alone).
    """
    dims = set(dim_names)
    try:
        tree = ast.parse("\n".join(statements))
    except SyntaxError:  # never expected: the driver is valid Python; keep it as it is
        return statements, []
    stores: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            stores[node.id] = stores.get(node.id, 0) + 1
    for node in ast.walk(tree):  # an in-place update of an array is no rebinding
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            stores[node.target.id] -= 1
    kept: list[str] = []
    hoisted: list[tuple[str, str]] = []
    for line in statements:
        name = None if line[:1].isspace() else _scratch_allocation(line, dims)
        if name is not None and stores.get(name) == 1:
            hoisted.append((name, line.split(" = ", 1)[1]))
        else:
            kept.append(line)
    return kept, hoisted


def _scratch_allocation(line: str, dims: set[str]) -> str | None:
    """The name ``line`` allocates when it is a movable ``np.empty`` (see ``hoist_scratch``)."""
    if "np.empty(" not in line:
        return None
    try:
        (statement,) = ast.parse(line).body
    except (SyntaxError, ValueError):
        return None
    if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)):
        return None
    call = statement.value
    if not (isinstance(call, ast.Call) and ast.unparse(call.func) == "np.empty"
            and len(call.args) == 1 and [k.arg for k in call.keywords] == ["dtype"]):
        return None
    dtype = ast.unparse(call.keywords[0].value)
    if dtype != "dtype" and dtype.removeprefix("np.") not in _INTEGER_DTYPES:
        return None
    names = {n.id for n in ast.walk(call.args[0]) if isinstance(n, ast.Name)}
    if not names & dims or not names <= dims | {"int"}:
        return None
    return statement.targets[0].id


def scratch_function(hoisted: list[tuple[str, str]], dim_args: list[str]) -> list[str]:
    """The source of ``_scratch(n0, ..., dtype)``: the hoisted temporaries, in order."""
    lines = ["", "", f"def _scratch({', '.join([*dim_args, 'dtype'])}):",
             '    """The temporaries that grow with the dimensions, in the order the driver '
             "takes them:", "    allocated once per layout by a caller that keeps them "
             '(kernel(..., scratch=pool))."""', "    return ("]
    lines += [f"        {text},  # {name}" for name, text in hoisted]
    return lines + ["    )"]


class ScratchPool:
    """Scratch sets of one kernel by layout; ``take`` and ``give`` are thread-safe.

    ``take(key, make, *args)`` returns a kept set of that layout, or ``make(*args)`` when none
    is free; ``give(key, arrays)`` keeps it for the next call (within ``SCRATCH_LAYOUTS``,
    ``SCRATCH_SETS_PER_LAYOUT`` and ``SCRATCH_KEEP_BYTES``). A set is used by one call at a
    time: it is out of the pool while the call runs.
    """

    def __init__(self, keep_bytes: int = SCRATCH_KEEP_BYTES, layouts: int = SCRATCH_LAYOUTS,
                 per_layout: int = SCRATCH_SETS_PER_LAYOUT):
        self._lock = threading.Lock()
        self._free: OrderedDict[tuple, list[tuple]] = OrderedDict()
        self._keep_bytes = keep_bytes
        self._layouts = layouts
        self._per_layout = per_layout

    def take(self, key: tuple, make: Callable[..., tuple], *args: object) -> tuple:
        """A free set of layout ``key``, else a new one (``make(*args)``)."""
        with self._lock:
            sets = self._free.get(key)
            if sets:
                self._free.move_to_end(key)
                return sets.pop()
        return make(*args)

    def give(self, key: tuple, arrays: tuple) -> None:
        """Returns a set taken for layout ``key`` (kept when the bounds allow)."""
        size = sum(a.nbytes for a in arrays)
        if size > self._keep_bytes:
            return
        with self._lock:
            sets = self._free.setdefault(key, [])
            self._free.move_to_end(key)
            if len(sets) >= self._per_layout:
                return
            sets.append(arrays)
            while len(self._free) > 1 and (len(self._free) > self._layouts
                                           or self._nbytes_locked() > self._keep_bytes):
                self._free.popitem(last=False)  # the least recently used layout

    def _nbytes_locked(self) -> int:
        return sum(a.nbytes for sets in self._free.values() for s in sets for a in s)

    @property
    def nbytes(self) -> int:
        """The bytes of the sets kept now."""
        with self._lock:
            return self._nbytes_locked()

    def layouts(self) -> list[tuple]:
        """The layouts with kept sets, least recently used first."""
        with self._lock:
            return [key for key, sets in self._free.items() if sets]

    def kept_sets(self) -> list[tuple]:
        """The sets kept now (not those a running call holds), for inspection."""
        with self._lock:
            return [s for sets in self._free.values() for s in sets]

    def clear(self) -> None:
        """Drops every kept set (their memory goes back when no call holds them)."""
        with self._lock:
            self._free.clear()
