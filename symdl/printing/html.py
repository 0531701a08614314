"""HTML for Jupyter: check reports, kernels and derivations as tables.

The renderers take plain data (strings, numbers, shapes), not symdl's objects, so that each
class's ``_repr_html_`` is one call here whatever stage it belongs to. Every user string
(symbol names, titles, notes) is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence

PASS_COLOUR = "#d4edda"
FAIL_COLOUR = "#f8d7da"
SKIP_COLOUR = "#eeeeee"

_STEP_LABELS = {
    "Contraction": "matrix product (BLAS)",
    "BatchedContraction": "tensor product as matrix products (BLAS)",
    "LinearSolve": "linear solve (LAPACK)",
    "Determinant": "determinant (LU, or Cholesky when SPD)",
    "MatrixFunctionStep": "norm, SVD or eigh (LAPACK)",
    "LoopGroup": "fused loop",
    "RowStats": "row pass (max and sum of exp)",
    "RowStream": "one pass over the rows (X v, loop, X^T r)",
}

_TABLE = 'style="border-collapse: collapse; font-family: monospace; font-size: 90%"'
_CELL = 'style="border: 1px solid #bbb; padding: 2px 6px; text-align: left"'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def shape_text(shape: Sequence[object]) -> str:
    """A shape as the README writes it: ``n × d``, ``scalar`` for ``()``."""
    return " × ".join(str(d) for d in shape) if len(shape) else "scalar"


def table(head: Sequence[str], rows: Iterable[Sequence[object]],
          colours: Iterable[str | None] | None = None) -> str:
    """An HTML table; ``colours`` gives each row's background (``None``: none)."""
    colours = list(colours) if colours is not None else None
    lines = [f"<table {_TABLE}>", "<thead><tr>"
             + "".join(f"<th {_CELL}>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        colour = colours[i] if colours is not None else None
        style = f' style="background: {colour}"' if colour else ""
        lines.append(f"<tr{style}>" + "".join(f"<td {_CELL}>{_e(c)}</td>" for c in row)
                     + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def check_report_html(headline: str, ok: bool, summary: Sequence[Mapping[str, object]],
                      skipped: Sequence[Sequence[str]], failures: Sequence[str],
                      notes: Sequence[str]) -> str:
    """A check report: its verdict, one coloured row per (output, parameter, method), the
    comparisons that did not run, the first failing entries and the notes.

    Args:
        headline: the report's first line (verdict, dtype, seed, sizes, tolerances).
        ok: the verdict (colours the headline).
        summary: ``CheckReport.summary()`` rows.
        skipped: (output, parameter, method, reason) of each comparison that did not run.
        failures: one line per failing entry shown.
        notes: the report's notes.
    """
    head = ("output", "parameter", "method", "entries", "max abs err", "max rel err", "tol",
            "")
    rows = [(s["output"], s["parameter"], s["method"], s["entries"],
             f"{s['max_abs_error']:.1e}", f"{s['max_rel_error']:.1e}", f"{s['tolerance']:.1e}",
             "ok" if s["passed"] else "FAILED") for s in summary]
    colours = [PASS_COLOUR if s["passed"] else FAIL_COLOUR for s in summary]
    rows += [(o, p, m, "-", "-", "-", "-", reason) for o, p, m, reason in skipped]
    colours += [SKIP_COLOUR] * len(skipped)
    verdict = PASS_COLOUR if ok else FAIL_COLOUR
    parts = [f'<div><p style="background: {verdict}; padding: 2px 6px"><b>{_e(headline)}</b>'
             "</p>", table(head, rows, colours)]
    parts += [f'<p style="color: #a00">{_e(f)}</p>' for f in failures]
    parts += [f"<p><i>note:</i> {_e(n)}</p>" for n in notes]
    return "\n".join(parts) + "</div>"


def kernel_html(title: str, inputs: Mapping[str, Sequence[object]],
                outputs: Mapping[str, Sequence[object]], steps: Sequence[str],
                hvp_inputs: Mapping[str, str] | None = None) -> str:
    """A kernel: what it computes, its inputs and outputs with their symbolic shapes, and
    its steps (``type(step).__name__`` of each planned step, counted by kind).

    Args:
        title: what the kernel computes.
        inputs: each input's symbolic shape, by name.
        outputs: each output's symbolic shape, by name (``"grad:w"``).
        steps: the class name of each planned step, in order.
        hvp_inputs: the HVP direction input of each parameter.
    """
    counts: dict[str, int] = {}
    for step in steps:
        label = _STEP_LABELS.get(step, step)
        counts[label] = counts.get(label, 0) + 1
    directions = {v: k for k, v in (hvp_inputs or {}).items()}
    rows_in = [(name, shape_text(shape),
                f"HVP direction of {directions[name]}" if name in directions else "")
               for name, shape in inputs.items()]
    rows_out = [(name, shape_text(shape)) for name, shape in outputs.items()]
    return "\n".join([
        f"<div><p><b>symdl kernel</b>: {_e(title)}</p>",
        "<p>inputs (by name)</p>", table(("name", "shape", ""), rows_in),
        "<p>outputs</p>", table(("name", "shape"), rows_out),
        f"<p>{len(steps)} steps</p>",
        table(("step", "count"), sorted(counts.items(), key=lambda kv: -kv[1])),
        "</div>"])


def derivation_html(title: str, parameters: Mapping[str, Sequence[object]],
                    inputs: Mapping[str, Sequence[object]], output_shape: Sequence[object],
                    latex: str) -> str:
    """A derivation: its parameters and other inputs with shapes beside its equations in
    LaTeX (typeset by the notebook's MathJax).

    Args:
        title: the derivation's one-line description.
        parameters: each parameter's shape, by name.
        inputs: each other input's shape, by name.
        output_shape: the shape of the definition's value.
        latex: the equations, one ``aligned`` block (``Derivation.to_latex()``).
    """
    rows = [(name, shape_text(shape), "parameter") for name, shape in parameters.items()]
    rows += [(name, shape_text(shape), "input") for name, shape in inputs.items()
             if name not in parameters]
    rows.append(("value", shape_text(output_shape), "output"))
    return "\n".join([
        f"<div><p><b>symdl derivation</b>: {_e(title)}</p>",
        '<div style="display: flex; gap: 2em; align-items: flex-start">',
        f"<div>{table(('name', 'shape', 'role'), rows)}</div>",
        f"<div>$${_e(latex)}$$</div>",
        "</div></div>"])
