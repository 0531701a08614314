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
    take the arrays earlier parts allocated and return those that later parts read.

    The jitted driver exists once per variant the statements tell apart (serial or parallel
    loops, in place or not: ``specialise``), each compiled on first use: Numba compiles every
    function a jitted function can call, so one jitted driver that chose its loops at run time
    compiled the parallel loops of a serial call too (the demo's Adam step: 9.5 s, not 2.9 s).
    """
    lines = _plain_driver(statements, run_args, dtype)
    flags = [flag for flag in ("parallel", "inplace")
             if any(line.strip() == f"if {flag}:" for line in statements)]
    variants = [(p, i) for p in ((False, True) if "parallel" in flags else (False,))
                for i in ((False, True) if "inplace" in flags else (False,))]
    lines += ["", "", "# The same steps compiled into one function per variant (serial or parallel "
              "loops,", "# in place or not): no Python between the steps, for small arrays "
              "in training loops;", "# each compiled on first use (a few seconds), only the "
              "variant a call uses."]
    table = []
    for parallel, inplace in variants:
        suffix = "_parallel" if parallel else "_serial"
        suffix += "_inplace" if inplace else ""
        lines += _jitted_driver(specialise(statements, parallel, inplace), run_args, dtype,
                                suffix)
        table.append(f"    ({parallel}, {inplace}): _steps{suffix}_jit,")
    choose = ("bool(parallel)" if "parallel" in flags else "False",
              "bool(inplace)" if "inplace" in flags else "False")
    return lines + ["", "", "_COMPILED = {  # (parallel, inplace): the jitted driver of that "
                    "variant", *table, "}", "", "", f"def _steps_compiled({run_args}):",
                    '    """The steps as one compiled function: the variant this call uses."""',
                    f"    _COMPILED[({choose[0]}, {choose[1]})]({run_args})"]


def specialise(statements: list[str], parallel: bool, inplace: bool) -> list[str]:
    """``statements`` with every ``if parallel:`` / ``if inplace:`` block (from
    ``steps.dispatch``) replaced by the branch the given values take, dedented."""
    values = {"parallel": parallel, "inplace": inplace}
    out: list[str] = []
    k = 0
    while k < len(statements):
        line = statements[k]
        indent = line[:len(line) - len(line.lstrip())]
        flag = line.strip()[3:-1] if line.strip() in ("if parallel:", "if inplace:") else None
        if flag is None:
            out.append(line)
            k += 1
            continue
        branches: list[list[str]] = [[], []]
        branch = 0
        k += 1
        while k < len(statements):
            current = statements[k]
            if current == f"{indent}else:" and branch == 0:
                branch = 1
            elif current.startswith(indent + " "):
                branches[branch].append(current[len(indent) + 4:])
            else:
                break
            k += 1
        taken = branches[0] if values[flag] else branches[1]
        out += [indent + body for body in specialise(taken, parallel, inplace)]
    return out


def _plain_driver(statements: list[str], run_args: str, dtype: str) -> list[str]:
    """``_steps``: the statements as plain Python (choosing loops by its arguments), split
    into parts ``_steps_part<k>`` when long."""
    header = '    """Every step in order: allocations, BLAS products, fused loops."""'
    blocks = _blocks(statements)
    if len(blocks) <= MAX_DRIVER_STATEMENTS:
        return (["", f"def _steps({run_args}):", header, f"    dtype = {dtype}"]
                + [f"    {line}" for line in statements])
    lines, calls = _driver_parts(_split(blocks), run_args, "", jitted=False)
    return lines + ["", "", f"def _steps({run_args}):", header, f"    dtype = {dtype}", *calls]


def _jitted_driver(statements: list[str], run_args: str, dtype: str, suffix: str) -> list[str]:
    """``_steps<suffix>_jit``: the (specialised) statements as one jitted function, or a
    jitted driver of jitted parts when long."""
    jit = 'numba.njit(cache=True, error_model="numpy")'
    header = f'    """The steps of the {suffix[1:]} variant (compiled below)."""'
    blocks = _blocks(statements)
    if len(blocks) <= MAX_DRIVER_STATEMENTS:
        return (["", "", f"def _steps{suffix}_code({run_args}):", header,
                 f"    dtype = {dtype}"] + [f"    {line}" for line in statements]
                + [f"_steps{suffix}_jit = {jit}(_steps{suffix}_code)"])
    lines, calls = _driver_parts(_split(blocks), run_args, suffix, jitted=True)
    return lines + ["", "", f"def _steps{suffix}_code({run_args}):", header,
                    f"    dtype = {dtype}", *calls,
                    f"_steps{suffix}_jit = {jit}(_steps{suffix}_code)"]


def _blocks(statements: list[str]) -> list[list[str]]:
    """Top-level statements: a line that is not indented (and not an else:) starts one."""
    blocks: list[list[str]] = []
    for line in statements:
        if blocks and (line.startswith((" ", "else:", "elif "))):
            blocks[-1].append(line)
        else:
            blocks.append([line])
    return blocks


def _split(blocks: list[list[str]]) -> list[list[list[str]]]:
    return [blocks[k:k + MAX_DRIVER_STATEMENTS]
            for k in range(0, len(blocks), MAX_DRIVER_STATEMENTS)]


def _driver_parts(parts: list[list[list[str]]], run_args: str, suffix: str, jitted: bool
                  ) -> tuple[list[str], list[str]]:
    """The part functions ``_steps_part<k><suffix>`` (each jitted when ``jitted``), and the
    driver's calls of them."""
    base = [a.strip() for a in run_args.split(",")] + ["dtype"]
    defined = [{m.group(1) for b in part for m in [_ASSIGNED.match(b[0])] if m}
               for part in parts]
    used = [set(_IDENTIFIER.findall("\n".join(line for b in part for line in b)))
            for part in parts]
    lines: list[str] = []
    calls: list[str] = []
    for k, part in enumerate(parts):
        earlier = set().union(*defined[:k]) - set(base)
        later = set().union(*used[k + 1:])
        params = base + sorted(used[k] & earlier)
        results = sorted(defined[k] & later - set(base))
        # Never ending in _parallel or _inplace: those suffixes name the loop variants.
        name = f"_steps_part{k}{suffix}" + ("_code" if jitted else "")
        lines += ["", "", f"def {name}({', '.join(params)}):",
                  f'    """Steps, part {k + 1} of {len(parts)} (a long driver is split)."""']
        lines += [f"    {line}" for b in part for line in b]
        if results:
            lines.append(f"    return ({', '.join(results)},)")
        if jitted:
            lines.append(f'_steps_part{k}{suffix}_jit = numba.njit(cache=True, '
                         f'error_model="numpy")({name})')
        target = f"({', '.join(results)},) = " if results else ""
        called = f"_steps_part{k}{suffix}_jit" if jitted else name
        calls.append(f"    {target}{called}({', '.join(params)})")
    return lines, calls
