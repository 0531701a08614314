"""The ``symdl`` command: list the shipped derivations and print their equations."""

from __future__ import annotations

import argparse
import sys
import time

import sympy as sp

from symdl.catalog import entries, load
from symdl.derivation import Derivation
from symdl.errors import SymdlError
from symdl.printing.plain import plain
from symdl.printing.to_sympy import IndexForm


def _shape(expr: sp.Basic | IndexForm) -> str:
    if isinstance(expr, IndexForm):
        return " × ".join(str(d) for d in expr.shape)
    if isinstance(expr, sp.MatrixExpr):
        return f"{expr.shape[0]} × {expr.shape[1]}"
    return "scalar"


def _print_equations(title: str, equations, out) -> None:
    print(title, file=out)
    rows = [(plain(lhs), plain(rhs), _shape(rhs)) for lhs, rhs in equations]
    width = max((len(lhs) for lhs, _, _ in rows), default=0)
    for lhs, rhs, shape in rows:
        print(f"  {lhs:<{width}} = {rhs}    [{shape}]", file=out)


def print_derivation(name: str, title: str, der: Derivation, hessian: bool, out) -> None:
    print(f"{title}  ({name})", file=out)
    definitions = der.definitions()
    if definitions:
        _print_equations("forward:", definitions, out)
    else:
        print(f"definition:\n  {plain(der.steps[-1][1])}", file=out)
    if der.is_scalar:
        _print_equations("backward (reverse mode):", der.equations(), out)
    else:
        _print_equations("Jacobians:", [(sp.Symbol(f"J_{p}"), der.jacobian(p)) for p in der.wrt],
                         out)
    if hessian and der.is_scalar:
        blocks = [
            (sp.Symbol(f"H[{p},{q}]"), der.hessian(p, q))
            for i, p in enumerate(der.wrt) for q in der.wrt[i:]
        ]
        _print_equations("Hessian blocks:", blocks, out)


def _cmd_list(args: argparse.Namespace) -> int:
    rows = [(e.name, e.title) for e in entries()]
    width = max(len(n) for n, _ in rows)
    for name, title in rows:
        print(f"{name:<{width}}  {title}")
    return 0


def _cmd_derive(args: argparse.Namespace) -> int:
    entry = load(args.derivation)
    start = time.perf_counter()
    der = entry.derive()
    print_derivation(entry.name, entry.title, der, args.hessian, sys.stdout)
    if args.timing:
        print(f"derived and printed in {time.perf_counter() - start:.2f} s")
    return 0


def _cmd_latex(args: argparse.Namespace) -> int:
    from pathlib import Path

    from symdl.printing import latex

    entry = load(args.derivation)
    der = entry.derive()
    if args.hessian and der.is_scalar:
        for i, p in enumerate(der.wrt):
            for q in der.wrt[i:]:
                der.hessian_node(p, q)
    report = None
    if args.check:
        import symdl

        if not callable(getattr(symdl, "check", None)):
            print("symdl: --check needs symdl.check, which this installation does not have; "
                  "writing the document without the check table", file=sys.stderr)
        else:
            report = symdl.check(der)
    out = Path(args.output)
    out.write_text(latex.document(der, title=entry.title, check_report=report), encoding="utf-8")
    written = [str(out)]
    if args.pdf:
        written.append(str(latex.compile_pdf(out.read_text(encoding="utf-8"),
                                             out.with_suffix(".pdf"))))
    print(f"wrote {', '.join(written)}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    import json

    from symdl.catalog import names
    from symdl.verify.check import check

    targets = list(args.derivations) + (names() if args.all else [])
    if not targets:
        print("symdl check: error: name a derivation (see `symdl list`) or pass --all",
              file=sys.stderr)
        return 2
    failed = errors = False
    results = {}
    progress = _progress(targets)
    for target in progress:
        try:
            entry = load(target)
            report = check(entry.derive(), seed=args.seed, dtype=args.dtype,
                           sample_inputs=getattr(entry.module, "sample_inputs", None),
                           curves=bool(args.plot))
        except SymdlError as exc:
            errors = True
            results[target] = {"error": str(exc)}
            print(f"symdl check: {target}: error: {exc}", file=sys.stderr)
            continue
        failed = failed or not report.ok
        results[target] = report.to_dict()
        if args.plot:
            path = args.plot if len(targets) == 1 else _suffixed(args.plot, entry.name)
            report.plot(path)
        if not args.json:
            print(f"{entry.title}  ({entry.name})\n{report}\n")
    if args.json:
        print(json.dumps(results if len(targets) > 1 else results[targets[0]], indent=1))
    return 2 if errors else (1 if failed else 0)


def _progress(targets: list[str]):
    """A tqdm bar over several derivations; one line per derivation without tqdm."""
    if len(targets) < 2:
        return targets
    try:
        from tqdm.auto import tqdm
    except ImportError:
        def lines():
            for k, target in enumerate(targets, 1):
                print(f"[{k}/{len(targets)}] {target}", file=sys.stderr)
                yield target
        return lines()
    return tqdm(targets, desc="symdl check", unit="derivation", file=sys.stderr)


def _suffixed(path: str, name: str) -> str:
    from pathlib import Path

    p = Path(path)
    return str(p.with_name(f"{p.stem}_{Path(name).stem}{p.suffix or '.png'}"))


def _cmd_demo(args: argparse.Namespace) -> int:
    from symdl.report.demo import run

    start = time.perf_counter()
    metrics = run(args.out, newton=args.newton, epochs=args.epochs, pdf=not args.no_pdf)
    out = args.out
    print(f"held-out test accuracy: {metrics['final_test_accuracy']:.4f} "
          f"({metrics['data']['test']} images); finite-difference check of the training-step "
          f"kernel: {'passed' if metrics['check']['ok'] else 'FAILED'} "
          f"(max relative error {metrics['check']['max_rel_error']:.1e})")
    if "newton" in metrics:
        newton = metrics["newton"]
        print(f"Newton's method: optimum in {newton['newton_iterations']} iterations; gradient "
              f"descent needed {newton['gd_iterations_to_match']} to get within 1e-6 of it")
    written = ["metrics.json", "kernels.py", "training.png"] + (
        [] if args.no_pdf else ["report.pdf"])
    print(f"wrote {', '.join(f'{out}/{name}' for name in written)} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0 if metrics["check"]["ok"] else 1


def _cmd_cache(args: argparse.Namespace) -> int:
    from symdl.kernels.jit import cache_info, clear_cache

    if args.action == "clear":
        print(f"removed {clear_cache()} files from {cache_info()['folder']}")
        return 0
    info = cache_info()
    print(f"folder:  {info['folder']}\nkernels: {info['kernels']}\nbytes:   {info['bytes']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symdl",
        description="Exact derivatives of deep-learning math written in SymPy, for symbolic "
        "shapes: gradients, Hessians and backprop equations in matrix form.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="list the shipped derivations")
    listing.set_defaults(run=_cmd_list)
    derive = commands.add_parser(
        "derive", help="print the forward and backprop equations of a derivation",
        description="Print the forward definitions, the reverse-mode (backprop) equations and "
        "the gradients of a derivation, with the shape of each.",
    )
    derive.add_argument("derivation", help="a name from `symdl list`, or a .py file that "
                        "defines derivation() returning a symdl.Derivation")
    derive.add_argument("--hessian", action="store_true", help="also print the Hessian blocks")
    derive.add_argument("--timing", action="store_true", help="print how long it took")
    derive.set_defaults(run=_cmd_derive)
    cache = commands.add_parser("cache", help="show or clear the compiled-kernel cache")
    cache.add_argument("action", choices=["info", "clear"],
                       help="info: folder, kernels, bytes; clear: remove symdl's files only")
    cache.set_defaults(run=_cmd_cache)
    tex = commands.add_parser(
        "latex", help="write a derivation as a LaTeX document (optionally a PDF)",
        description="Write a standalone LaTeX document: the definition, each backprop step as "
        "the chain rule and in matrix form, the gradients (and Hessians), with shapes.",
    )
    tex.add_argument("derivation", help="a name from `symdl list`, or a .py file that "
                     "defines derivation() returning a symdl.Derivation")
    tex.add_argument("-o", "--output", required=True, help="the .tex file to write")
    tex.add_argument("--pdf", action="store_true", help="also compile it with pdflatex (the PDF "
                     "goes next to the .tex)")
    tex.add_argument("--hessian", action="store_true", help="also the Hessian blocks")
    tex.add_argument("--check", action="store_true", help="run symdl.check and include its "
                     "finite-difference table")
    tex.set_defaults(run=_cmd_latex)
    demo = commands.add_parser(
        "demo", help="train a network on scikit-learn's digits with generated kernels",
        description="Derive a 2-layer network (tanh, softmax cross-entropy, weight decay), "
        "generate one fused training-step kernel (forward, backward, Adam), check it against "
        "finite differences, train it on the digits scikit-learn ships and write a report.",
    )
    demo.add_argument("-o", "--out", default="out", help="output folder (default: out)")
    demo.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    demo.add_argument("--newton", action="store_true",
                      help="also run Newton's method on logistic regression (Hessian kernel)")
    demo.add_argument("--no-pdf", action="store_true", help="skip report.pdf (no pdflatex)")
    demo.set_defaults(run=_cmd_demo)
    checking = commands.add_parser(
        "check", help="check derivations' kernels against finite differences",
        description="Compile each derivation, draw seeded inputs and check every output "
        "(gradients, Hessian blocks, Hessian-vector products) against Richardson-extrapolated "
        "central differences, the complex step and SymPy's own evaluation. Exit status: 0 "
        "when every check passes, 1 when one fails, 2 on a usage or definition error.",
    )
    checking.add_argument("derivations", nargs="*", metavar="NAME",
                          help="names from `symdl list` or .py files defining derivation()")
    checking.add_argument("--all", action="store_true", help="every shipped derivation")
    checking.add_argument("--json", action="store_true", help="print the reports as JSON")
    checking.add_argument("--plot", metavar="PNG", help="draw the finite-difference error "
                          "against the step (needs matplotlib); with several derivations "
                          "the file name gets each name as a suffix")
    checking.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                          help="precision the kernels run in (default float64)")
    checking.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    checking.set_defaults(run=_cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SymdlError as exc:
        print(f"symdl: error: {exc}", file=sys.stderr)
        return 2
