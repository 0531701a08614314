"""The ``symdl`` command: list the shipped derivations and print their equations.

Conventions, as in other Unix tools: results go to stdout, messages to stderr; an error is one
line on stderr (``symdl: error: ...``, no traceback unless ``--traceback``). Exit status: 0 on
success, 1 when a check fails, 2 on a usage or definition error (a bad option, an unknown
name, a derivation file that raises, an output that cannot be written), 130 when interrupted,
141 when the reader of stdout goes away (``symdl list | head -1``), silently.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import sympy as sp

from symdl import __version__
from symdl.catalog import Entry, entries, load
from symdl.derivation import Derivation
from symdl.errors import DefinitionError, SymdlError
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


class UsageError(SymdlError):
    """The command line asks for something that cannot be done as asked."""


def _one_line(message: str) -> str:
    """A message on one line: errors are one line on stderr, whatever the exception said."""
    return " ".join(message.split())


def _print_json(value: object) -> None:
    import json

    print(json.dumps(value, indent=1))


def _load_and_derive(target: str) -> tuple[Entry, Derivation]:
    """The derivation ``target`` names, derived; code of the derivation file that raises is a
    ``DefinitionError`` naming the file, the line and the exception (one line, no traceback)."""
    try:
        entry = load(target)
        return entry, entry.derive()
    except SymdlError:
        raise
    except Exception as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else exc
        raise DefinitionError(
            f"{target}: {_where(exc, target)}{type(exc).__name__}: {detail} (the derivation "
            "file raised it; --traceback shows the whole traceback)"
        ) from exc


def _where(exc: BaseException, target: str) -> str:
    """``line N: `` of the innermost frame of the derivation file in ``exc``'s traceback."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"line {exc.lineno}: "
    module = Path(target).name if target.endswith(".py") else f"{target}.py"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).name == module]
    return f"line {frames[-1].lineno}: " if frames else ""


def _check_writable(path: Path) -> None:
    """Fails now, not after minutes of work, when ``path`` cannot be written."""
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"cannot write {path}: {folder} {problem}")
    _probe(folder, path)


def _check_writable_folder(folder: Path) -> None:
    """Creates the output folder and checks that files can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {folder}: "
                         f"{exc.strerror or exc}") from exc
    _probe(folder, folder)


def _probe(folder: Path, shown: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {shown}: {exc.strerror or exc}") from exc


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) and did-you-mean for a mistyped command."""

    def error(self, message: str) -> NoReturn:
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'?([\w-]+)'?", match.group(2))
            close = difflib.get_close_matches(match.group(1), choices, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"one of {', '.join(choices)}"
            message = f"{message[:match.start()]}unknown {match.group(1)!r}; {hint}"
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see `{self.prog} --help`)\n")


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes: how much to log and how to show an error."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what symdl compiles and how long it takes (-vv: every "
                        "compile, however short)")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress messages, errors only")
    common.add_argument("--traceback", action="store_true",
                        help="on an error, show the whole Python traceback")
    return common


@contextlib.contextmanager
def _logging(verbose: int, quiet: bool) -> Iterator[None]:
    """The ``symdl`` logger for one command: INFO (-v) or DEBUG (-vv) records to stderr, or
    nothing below WARNING (-q); restored afterwards (``main`` may run inside a program)."""
    logger = logging.getLogger("symdl")
    saved = logger.level, logger.propagate
    handler = None
    if quiet:
        logger.setLevel(logging.WARNING)
    elif verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("symdl: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        if handler is not None:
            logger.removeHandler(handler)


def _cmd_list(args: argparse.Namespace) -> int:
    if args.json:
        _print_json({e.name: {"title": e.title, "file": e.module.__file__} for e in entries()})
        return 0
    rows = [(e.name, e.title) for e in entries()]
    width = max(len(n) for n, _ in rows)
    for name, title in rows:
        print(f"{name:<{width}}  {title}")
    return 0


def _cmd_derive(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    entry, der = _load_and_derive(args.derivation)
    print_derivation(entry.name, entry.title, der, args.hessian, sys.stdout)
    if args.timing:
        print(f"derived and printed in {time.perf_counter() - start:.2f} s")
    return 0


def _cmd_latex(args: argparse.Namespace) -> int:
    from symdl.printing import latex

    out = Path(args.output)
    _check_writable(out)
    entry, der = _load_and_derive(args.derivation)
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
    out.write_text(latex.document(der, title=entry.title, check_report=report), encoding="utf-8")
    written = [str(out)]
    if args.pdf:
        written.append(str(latex.compile_pdf(out.read_text(encoding="utf-8"),
                                             out.with_suffix(".pdf"))))
    print(f"wrote {', '.join(written)}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from symdl.catalog import names
    from symdl.verify.check import check

    targets = list(dict.fromkeys(list(args.derivations) + (names() if args.all else [])))
    if not targets:
        raise UsageError("check: name a derivation (see `symdl list`) or pass --all")
    if args.plot:
        for target in targets:
            _check_writable(Path(args.plot if len(targets) == 1 else _suffixed(args.plot,
                                                                             target)))
    failed = errors = False
    results = {}
    progress = targets if args.quiet else _progress(targets)
    for target in progress:
        try:
            entry, der = _load_and_derive(target)
            report = check(der, seed=args.seed, dtype=args.dtype,
                           sample_inputs=getattr(entry.module, "sample_inputs", None),
                           curves=bool(args.plot))
        except SymdlError as exc:
            errors = True
            message = _one_line(str(exc))
            if target not in message:
                message = f"{target}: {message}"
            results[target] = {"error": message}
            print(f"symdl check: error: {message}", file=sys.stderr)
            continue
        failed = failed or not report.ok
        results[target] = report.to_dict()
        if args.plot:
            path = args.plot if len(targets) == 1 else _suffixed(args.plot, entry.name)
            report.plot(path)
        if not args.json:
            print(f"{entry.title}  ({entry.name})\n{report}\n")
    if args.json:
        # One shape whatever the number of names: reports keyed by the name as given.
        _print_json(results)
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
    p = Path(path)
    return str(p.with_name(f"{p.stem}_{Path(name).stem}{p.suffix or '.png'}"))


def _cmd_demo(args: argparse.Namespace) -> int:
    from symdl.report.demo import run

    start = time.perf_counter()
    _check_writable_folder(Path(args.out))
    metrics = run(args.out, newton=args.newton, epochs=args.epochs, pdf=not args.no_pdf,
                  progress=not args.quiet, curvature=not args.no_curvature,
                  cnn=not args.no_cnn, dtype=args.dtype, rnn=not args.no_rnn,
                  cnn_epochs=args.cnn_epochs, rnn_epochs=args.rnn_epochs)
    out = args.out
    print(f"held-out test accuracy: {metrics['final_test_accuracy']:.4f} "
          f"({metrics['data']['test']} images); finite-difference check of the training-step "
          f"kernel: {'passed' if metrics['check']['ok'] else 'FAILED'} "
          f"(max relative error {metrics['check']['max_rel_error']:.1e})")
    if "cnn" in metrics:
        print(f"convolutional network: held-out test accuracy "
              f"{metrics['cnn']['final_test_accuracy']:.4f}")
    if "rnn" in metrics:
        rnn = metrics["rnn"]
        print(f"recurrent network (the digits read row by row): held-out test accuracy "
              f"{rnn['final_test_accuracy']:.4f}; finite-difference check of its training "
              f"step: {'passed' if rnn['check']['ok'] else 'FAILED'} "
              f"(max relative error {rnn['check']['max_rel_error']:.1e})")
    if "newton" in metrics:
        newton = metrics["newton"]
        print(f"Newton's method: optimum in {newton['newton_iterations']} iterations; gradient "
              f"descent needed {newton['gd_iterations_to_match']} to get within 1e-6 of it")
    for point, spectrum in metrics.get("curvature", {}).items():
        print(f"Hessian at {point}: {spectrum['summary']}")
    written = ["metrics.json", "kernels.py", "training.png"] + (
        ["curvature.png"] if "curvature" in metrics else []) + (
        [] if args.no_pdf else ["report.pdf"])
    print(f"wrote {', '.join(f'{out}/{name}' for name in written)} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0 if metrics["check"]["ok"] and metrics.get("rnn", {}).get("check", {}).get(
        "ok", True) else 1


def _dimension(text: str) -> tuple[str, int]:
    name, sep, size = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"must be NAME=SIZE (e.g. n=64), got {text!r}")
    return name.strip(), _positive_int(size)


def _cmd_curvature(args: argparse.Namespace) -> int:
    from symdl.verify.check import draw_inputs
    from symdl.verify.curvature import analyze, hessian_operator

    if args.output:
        _check_writable(Path(args.output))
    entry, der = _load_and_derive(args.derivation)
    if not der.is_scalar:
        raise UsageError(f"{entry.name}: a Hessian spectrum needs a scalar loss; this "
                         "derivation's value is a matrix")
    by_name = {str(s): s for s in der.dims}
    unknown = sorted(name for name, _ in args.dim if name not in by_name)
    if unknown:
        raise UsageError(f"--dim names {unknown}, which {entry.name} does not have; its "
                         f"dimensions are {sorted(by_name)}")
    dims = {by_name[name]: size for name, size in args.dim}
    kernel = der.compile(hvp=True, outputs=[f"hvp:{getattr(p, 'name', p)}" for p in der.wrt])
    values, bound = draw_inputs(der, kernel, seed=args.seed, dims=dims,
                                sample_inputs=getattr(entry.module, "sample_inputs", None))
    op = hessian_operator(kernel, values)
    report = analyze(op, iterations=args.iterations, density_probes=args.probes,
                     trace_probes=args.trace_probes, seed=args.seed)
    sizes = {str(s): int(v) for s, v in sorted(bound.items(), key=lambda kv: str(kv[0]))}
    if args.output:
        report.plot(args.output, title=f"{entry.name}: Hessian spectral density")
    if args.json:
        _print_json({"name": entry.name, "dims": sizes, "seed": args.seed,
                     **report.to_dict()})
    else:
        shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
        print(f"{entry.title}  ({entry.name})\nseeded inputs (seed {args.seed}), {shown}\n"
              f"{report}")
        if args.output:
            print(f"wrote {args.output}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from symdl.kernels.jit import cache_info, clear_cache

    if args.action == "clear":
        print(f"removed {clear_cache()} files from {cache_info()['folder']}")
        return 0
    info = cache_info()
    print(f"folder:  {info['folder']}\nkernels: {info['kernels']}\nbytes:   {info['bytes']}")
    return 0


def _one_derivation() -> argparse.ArgumentParser:
    """The positional argument of the commands that take one derivation."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("derivation", metavar="NAME", help="a name from `symdl list`, or a .py "
                        "file that defines derivation() returning a symdl.Derivation")
    return parent


def _add_list_command(commands, common: argparse.ArgumentParser) -> None:
    """The ``symdl list`` subcommand."""
    listing = commands.add_parser("list", help="list the shipped derivations", parents=[common])
    listing.add_argument("--json", action="store_true",
                         help="print {name: {title, file}} as JSON")
    listing.set_defaults(run=_cmd_list)


def _add_derive_command(commands, common: argparse.ArgumentParser) -> None:
    """The ``symdl derive`` subcommand."""
    derive = commands.add_parser(
        "derive", help="print the forward and backprop equations of a derivation",
        description="Print the forward definitions, the reverse-mode (backprop) equations and "
        "the gradients of a derivation, with the shape of each.",
        parents=[common, _one_derivation()],
    )
    derive.add_argument("--hessian", action="store_true", help="also print the Hessian blocks")
    derive.add_argument("--timing", action="store_true", help="print how long it took")
    derive.set_defaults(run=_cmd_derive)


def _add_cache_command(commands, common: argparse.ArgumentParser) -> None:
    """The ``symdl cache`` subcommand."""
    cache = commands.add_parser("cache", help="show or clear the compiled-kernel cache",
                                parents=[common])
    cache.add_argument("action", choices=["info", "clear"],
                       help="info: folder, kernels, bytes; clear: remove symdl's files only")
    cache.set_defaults(run=_cmd_cache)


def _add_latex_command(commands, common: argparse.ArgumentParser) -> None:
    """The ``symdl latex`` subcommand."""
    tex = commands.add_parser(
        "latex", help="write a derivation as a LaTeX document (optionally a PDF)",
        description="Write a standalone LaTeX document: the definition, each backprop step as "
        "the chain rule and in matrix form, the gradients (and Hessians), with shapes.",
        parents=[common, _one_derivation()],
    )
    tex.add_argument("-o", "--output", required=True, help="the .tex file to write")
    tex.add_argument("--pdf", action="store_true", help="also compile it with pdflatex (the PDF "
                     "goes next to the .tex)")
    tex.add_argument("--hessian", action="store_true", help="also the Hessian blocks")
    tex.add_argument("--check", action="store_true", help="run symdl.check and include its "
                     "finite-difference table")
    tex.set_defaults(run=_cmd_latex)


def _add_demo_command(commands, common: argparse.ArgumentParser) -> None:
    """The ``symdl demo`` subcommand."""
    demo = commands.add_parser(
        "demo", help="train a network on scikit-learn's digits with generated kernels",
        description="Derive a 2-layer network (tanh, softmax cross-entropy, weight decay), "
        "generate one fused training-step kernel (forward, backward, Adam), check it against "
        "finite differences, train it on the digits scikit-learn ships and write a report.",
        parents=[common],
    )
    demo.add_argument("-o", "--out", default="out", help="output folder (default: out)")
    demo.add_argument("--epochs", type=_positive_int, default=40,
                      help="training epochs of the 2-layer network (default 40)")
    demo.add_argument("--cnn-epochs", type=_positive_int, default=30,
                      help="training epochs of the convolutional network (default 30)")
    demo.add_argument("--rnn-epochs", type=_positive_int, default=30,
                      help="training epochs of the recurrent network (default 30)")
    demo.add_argument("--newton", action="store_true",
                      help="also run Newton's method on logistic regression (Hessian kernel)")
    demo.add_argument("--no-pdf", action="store_true", help="skip report.pdf (no pdflatex)")
    demo.add_argument("--no-curvature", action="store_true",
                      help="skip the Hessian spectrum at initialisation and after training")
    demo.add_argument("--no-cnn", action="store_true",
                      help="skip the convolutional network (trained on the digits as images)")
    demo.add_argument("--no-rnn", action="store_true",
                      help="skip the recurrent network (trained on the digits read row by row)")

    demo.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                      help="precision of the training: parameters, optimizer states and every "
                      "kernel's arithmetic (default float64)")
    demo.set_defaults(run=_cmd_demo)


def _add_check_command(commands, common: argparse.ArgumentParser) -> None:
    """The ``symdl check`` subcommand."""
    checking = commands.add_parser(
        "check", help="check derivations' kernels against finite differences",
        description="Compile each derivation, draw seeded inputs and check every output "
        "(gradients, Hessian blocks, Hessian-vector products) against Richardson-extrapolated "
        "central differences, the complex step and SymPy's own evaluation. Exit status: 0 "
        "when every check passes, 1 when one fails, 2 on a usage or definition error.",
        parents=[common],
    )
    checking.add_argument("derivations", nargs="*", metavar="NAME",
                          help="names from `symdl list` or .py files defining derivation()")
    checking.add_argument("--all", action="store_true", help="every shipped derivation")
    checking.add_argument("--json", action="store_true",
                          help="print the reports as JSON: {name: report}, whatever the "
                          "number of names (an entry that could not be checked: {name: "
                          "{\"error\": message}})")
    checking.add_argument("--plot", metavar="PNG", help="draw the finite-difference error "
                          "against the step (needs matplotlib); with several derivations "
                          "the file name gets each name as a suffix")
    checking.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                          help="precision the kernels run in (default float64)")
    checking.add_argument("--seed", type=_non_negative_int, default=0,
                          help="seed of the inputs (default 0)")
    checking.set_defaults(run=_cmd_check)


def _add_curvature_command(commands, common: argparse.ArgumentParser) -> None:
    """The ``symdl curvature`` subcommand."""
    curv = commands.add_parser(
        "curvature", help="the Hessian spectrum of a derivation's loss (Lanczos, density)",
        description="The Hessian of a scalar loss with respect to all its parameters jointly, "
        "at seeded inputs, from Hessian-vector products alone: the top and bottom eigenvalues "
        "(Lanczos with full reorthogonalisation), a spectral density (stochastic Lanczos "
        "quadrature), the trace (Hutchinson) and the reading: negative eigenvalues (a "
        "saddle point), singular, or the condition number. Exit status: 0 on success, 2 on a "
        "usage or definition error.",
        parents=[common, _one_derivation()],
    )
    curv.add_argument("--json", action="store_true", help="print the analysis as JSON")
    curv.add_argument("-o", "--output", metavar="PNG",
                      help="plot the density with the extreme eigenvalues marked (needs "
                      "matplotlib)")
    curv.add_argument("--seed", type=_non_negative_int, default=0,
                      help="seed of the inputs and of the random probes (default 0)")
    curv.add_argument("--dim", type=_dimension, action="append", default=[],
                      metavar="NAME=SIZE", help="bind a dimension (repeatable; the others "
                      "get small drawn sizes, as in `symdl check`)")
    curv.add_argument("--iterations", type=_positive_int, default=80,
                      help="Lanczos steps at most for the extreme eigenvalues (default 80)")
    curv.add_argument("--probes", type=_positive_int, default=8,
                      help="random probes of the density estimate (default 8)")
    curv.add_argument("--trace-probes", type=_positive_int, default=30,
                      help="Rademacher probes of the trace estimate (default 30)")
    curv.set_defaults(run=_cmd_curvature)


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _Parser(
        prog="symdl",
        description="Exact derivatives of deep-learning math written in SymPy, for symbolic "
        "shapes: gradients, Hessians and backprop equations in matrix form.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_list_command(commands, common)
    _add_derive_command(commands, common)
    _add_cache_command(commands, common)
    _add_latex_command(commands, common)
    _add_demo_command(commands, common)
    _add_check_command(commands, common)
    _add_curvature_command(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (see the module's docstring)."""
    try:
        status = _run(argv)
        # Flushed here, not at interpreter exit, so that a reader gone away is caught below.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # `symdl list | head -1`: the reader has what it wanted. Point stdout at /dev/null so
        # that Python's own flush at exit does not raise again, and exit as a killed writer.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:  # stdout itself failed at the last flush (a full disk)
        print(f"symdl: error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _run(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with _logging(args.verbose, args.quiet):
            return args.run(args)
    except (SymdlError, OSError) as exc:
        if args.traceback or isinstance(exc, BrokenPipeError):
            raise
        print(f"symdl: error: {_one_line(_message(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print("symdl: interrupted", file=sys.stderr)
        return 130


def _message(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)
