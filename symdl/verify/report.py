"""The result of a check: one row per compared block, the tolerances, the report that prints,
serialises and raises, and the error it raises."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from symdl.errors import SymdlError
from symdl.ir.keys import OutputKey


@dataclass(frozen=True)
class Tolerance:
    """``|analytic - numeric| <= atol + rtol * scale`` (see the module docstring)."""

    rtol: float
    atol: float


DEFAULT_TOLERANCES = {
    "float64": Tolerance(rtol=1e-6, atol=1e-9),
    "float32": Tolerance(rtol=2e-3, atol=1e-5),
}


class GradientCheckError(SymdlError, AssertionError):
    """A derivative disagrees with its numeric estimate; ``rows`` holds the failures."""

    def __init__(self, message: str, rows: list[CheckRow]):
        super().__init__(message)
        self.rows = rows


@dataclass(frozen=True)
class CheckRow:
    """One compared entry. ``output`` is the output's key (``symdl.ir.keys``; it equals its
    spelling, ``"grad:w"``)."""

    output: OutputKey | str
    parameter: str
    entry: str
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float
    tolerance: float
    method: str
    passed: bool


@dataclass(frozen=True)
class Skipped:
    """A comparison that did not run: the reference would exceed its time budget, or SymPy
    cannot evaluate it; ``reason`` says which (in seconds for the budget)."""

    output: OutputKey | str
    parameter: str
    method: str
    reason: str


@dataclass
class CheckReport:
    """The outcome of ``symdl.check``: one row per compared entry, notes on what was not
    applicable and why, and error-against-step curves for ``plot``."""

    rows: list[CheckRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dtype: str = "float64"
    seed: int = 0
    dims: dict[str, int] = field(default_factory=dict)
    tolerance: Tolerance = DEFAULT_TOLERANCES["float64"]
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether something was compared, every row passed and no error is NaN or inf."""
        return bool(self.rows) and all(
            r.passed and math.isfinite(r.abs_error) and math.isfinite(r.rel_error)
            for r in self.rows)

    @property
    def failures(self) -> list[CheckRow]:
        return [r for r in self.rows if not r.passed]

    @property
    def max_rel_error(self) -> float:
        """The largest relative error; NaN when any is NaN (``max`` would skip it)."""
        return _worst([r.rel_error for r in self.rows])

    def summary(self) -> list[dict]:
        """One line per (output, parameter, method): entries, worst errors, passed; the
        output by its spelling (``"grad:w"``) and as data (``"key"``: kind and names)."""
        groups: dict[tuple[OutputKey | str, str, str], list[CheckRow]] = {}
        for r in self.rows:
            groups.setdefault((r.output, r.parameter, r.method), []).append(r)
        lines = []
        for (output, parameter, method), rows in groups.items():
            worst = max(rows, key=lambda r: r.abs_error / r.tolerance if r.tolerance else 0.0)
            lines.append({"output": str(output), "key": _key_data(output),
                          "parameter": parameter, "method": method, "entries": len(rows),
                          "max_abs_error": _worst([r.abs_error for r in rows]),
                          "max_rel_error": _worst([r.rel_error for r in rows]),
                          "tolerance": worst.tolerance, "passed": all(r.passed for r in rows)})
        return lines

    def __str__(self) -> str:
        head = ("output", "parameter", "method", "entries", "max abs err", "max rel err",
                "tol", "")
        body = [(s["output"], s["parameter"], s["method"], str(s["entries"]),
                 f"{s['max_abs_error']:.1e}", f"{s['max_rel_error']:.1e}",
                 f"{s['tolerance']:.1e}", "ok" if s["passed"] else "FAILED")
                for s in self.summary()]
        body += [(str(k.output), k.parameter, k.method, "-", "-", "-", "-", k.reason)
                 for k in self.skipped]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in [head, *body]]
        dims = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        verdict = "passed" if self.ok else f"FAILED ({len(self.failures)} entries)"
        lines.insert(0, f"gradient check {verdict}: {self.dtype}, seed {self.seed}"
                     + (f", {dims}" if dims else "")
                     + f", rtol {self.tolerance.rtol:g}, atol {self.tolerance.atol:g}")
        for r in self.failures[:10]:
            lines.append(f"  FAILED {r.output!s} / {r.parameter}[{r.entry}] ({r.method}): "
                         f"analytic {r.analytic:.8g}, numeric {r.numeric:.8g}, abs error "
                         f"{r.abs_error:.2e}, rel error {r.rel_error:.2e} > tol {r.tolerance:.2e}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from symdl.printing.html import check_report_html

        text = str(self).splitlines()
        return check_report_html(
            text[0], self.ok, self.summary(),
            [(k.output, k.parameter, k.method, k.reason) for k in self.skipped],
            [line.strip() for line in text if line.startswith("  FAILED")], self.notes)

    def to_dict(self) -> dict:
        """Everything in the report as JSON-able data."""
        return {"ok": self.ok, "max_rel_error": self.max_rel_error, "dtype": self.dtype,
                "seed": self.seed, "dims": dict(self.dims), "tolerance": asdict(self.tolerance),
                "summary": self.summary(), "notes": list(self.notes),
                "skipped": [_with_key(k) for k in self.skipped],
                "rows": [_with_key(r) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_latex(self) -> str:
        """The summary as a LaTeX ``tabular`` (booktabs rules)."""
        # Output and parameter names are user strings: the one escaping of symdl.latex (^^5c
        # and the like included).
        from symdl.printing.latex import escape_text as tex

        lines = [r"\begin{tabular}{lllrrrrl}", r"\toprule",
                 r"output & parameter & method & entries & max abs err & max rel err & tol & \\",
                 r"\midrule"]
        for s in self.summary():
            lines.append(" & ".join([tex(s["output"]), tex(s["parameter"]), tex(s["method"]),
                                     str(s["entries"]), f"{s['max_abs_error']:.1e}",
                                     f"{s['max_rel_error']:.1e}", f"{s['tolerance']:.1e}",
                                     "ok" if s["passed"] else r"\textbf{FAILED}"]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raises ``GradientCheckError`` naming the worst failing entry."""
        failures = self.failures
        if not failures:
            if not self.rows:
                raise GradientCheckError("nothing was checked: the kernel has no derivative "
                                         "outputs and no reference", [])
            return
        r = max(failures, key=lambda r: r.abs_error / r.tolerance)
        raise GradientCheckError(
            f"{len(failures)} of {len(self.rows)} checked entries fail; worst: output "
            f"{r.output}, parameter {r.parameter}, entry {r.entry} ({r.method}): analytic "
            f"{r.analytic:.10g}, numeric {r.numeric:.10g}, abs error {r.abs_error:.3e}, rel "
            f"error {r.rel_error:.3e}, tolerance {r.tolerance:.3e}", failures)

    def plot(self, path: str) -> None:
        """Draws, per output, the finite-difference error against the step on log-log axes."""
        from symdl.verify.plot import plot_curves

        plot_curves(self.curves, path, title=f"finite-difference error ({self.dtype} kernel)")


def _key_data(output: OutputKey | str) -> dict:
    """An output as JSON-able data: ``{"kind": "hessian", "names": ["p", "q"]}`` (its
    spelling alone is ambiguous to split where names hold commas)."""
    return output.to_dict() if isinstance(output, OutputKey) else {"kind": "named",
                                                                   "names": [str(output)]}


def _with_key(entry: CheckRow | Skipped) -> dict:
    data = {f.name: getattr(entry, f.name) for f in fields(entry)}
    return {**data, "output": str(entry.output), "key": _key_data(entry.output)}


def _worst(errors: list[float]) -> float:
    """The largest error; NaN when any is NaN (``max`` would skip it by where it stands)."""
    if any(math.isnan(e) for e in errors):
        return math.nan
    return max(errors, default=0.0)


class CheckArgumentError(SymdlError, ValueError):
    """``check`` was called with something it cannot check."""


class CheckError(SymdlError, RuntimeError):
    """``check`` failed for a reason that is no wrong derivative (the cause is chained)."""
