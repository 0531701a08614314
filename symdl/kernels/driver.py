"""The driver of a generated kernel module: the plain-Python function that runs the steps in
order (``_steps``) and its jitted twin (``_steps_compiled``), split into parts when long."""

from __future__ import annotations

import re

MAX_DRIVER_STATEMENTS = 120
"""The most top-level statements in one driver function. Numba compiles the driver as a
whole for ``compiled=True``, in time that grows faster than linearly with its length; a
longer driver is split into parts that the driver calls in order."""

_ASSIGNED = re.compile(r"^([A-Za-z_]\w*) = ")
_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*\b")


def driver(statements: list[str], run_args: str, dtype: str) -> list[str]:
    """The source of ``_steps`` (the driver: ``statements`` in order) and ``_steps_compiled``
    (the same, jitted). Up to ``MAX_DRIVER_STATEMENTS`` top-level statements it is one
    function; beyond, the statements go into parts ``_steps_part0, _steps_part1, ...`` that
    take the arrays earlier parts allocated and return those that later parts read."""
    header = '    """Every step in order: allocations, BLAS products, fused loops."""'
    # Top-level statements: a line that is not indented (and not an else:) starts one.
    blocks: list[list[str]] = []
    for line in statements:
        if blocks and (line.startswith((" ", "else:", "elif "))):
            blocks[-1].append(line)
        else:
            blocks.append([line])
    compiled = ["", "", "# The same steps compiled into one function: no Python between the steps,",
                "# for small arrays in training loops; compiled on first use (a few seconds)."]
    if len(blocks) <= MAX_DRIVER_STATEMENTS:
        return (["", f"def _steps({run_args}):", header, f"    dtype = {dtype}"]
                + [f"    {line}" for line in statements] + compiled
                + ['_steps_compiled = numba.njit(cache=True, error_model="numpy")(_steps)'])
    parts = [blocks[k:k + MAX_DRIVER_STATEMENTS]
             for k in range(0, len(blocks), MAX_DRIVER_STATEMENTS)]
    lines, calls = _driver_parts(parts, run_args)
    for name, suffix in (("_steps", ""), ("_steps_driver_jit", "_jit")):
        lines += ["", "", f"def {name}({run_args}):", header, f"    dtype = {dtype}"]
        lines += calls[suffix]
    return lines + compiled + [
        '_steps_compiled = numba.njit(cache=True, error_model="numpy")(_steps_driver_jit)']


def _driver_parts(parts: list[list[list[str]]], run_args: str
                  ) -> tuple[list[str], dict[str, list[str]]]:
    """The part functions, and the calls of them (plain and jitted) that the driver makes."""
    base = [a.strip() for a in run_args.split(",")] + ["dtype"]
    defined = [{m.group(1) for b in part for m in [_ASSIGNED.match(b[0])] if m}
               for part in parts]
    used = [set(_IDENTIFIER.findall("\n".join(line for b in part for line in b)))
            for part in parts]
    lines: list[str] = []
    calls: dict[str, list[str]] = {"": [], "_jit": []}
    for k, part in enumerate(parts):
        earlier = set().union(*defined[:k]) - set(base)
        later = set().union(*used[k + 1:])
        params = base + sorted(used[k] & earlier)
        results = sorted(defined[k] & later - set(base))
        lines += ["", "", f"def _steps_part{k}({', '.join(params)}):",
                  f'    """Steps, part {k + 1} of {len(parts)} (a long driver is split)."""']
        lines += [f"    {line}" for b in part for line in b]
        if results:
            lines.append(f"    return ({', '.join(results)},)")
        lines.append(f'_steps_part{k}_jit = numba.njit(cache=True, error_model="numpy")'
                     f"(_steps_part{k})")
        target = f"({', '.join(results)},) = " if results else ""
        for suffix in calls:
            calls[suffix].append(f"    {target}_steps_part{k}{suffix}({', '.join(params)})")
    return lines, calls
