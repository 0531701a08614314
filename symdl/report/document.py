"""The demo's report: the derivation, the finite-difference check, the training curves, the
second-order comparison and the Hessian spectrum, as one LaTeX document compiled with
pdflatex."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from symdl.derivation import Derivation
from symdl.printing.latex import LatexError, compile_pdf, document, escape_text

_SAFE_PATH = re.compile(r"^[A-Za-z0-9._-]+$")


def _figure(path: Path, caption: str) -> str:
    # By its name alone: the report compiles beside its figures (pdflatex reads no file by an
    # absolute path, see compile_pdf), and the figure is copied next to it.
    if not _SAFE_PATH.match(path.name):
        raise LatexError(
            f"the figure name {path.name!r} has characters LaTeX cannot take in a file "
            "name; use only letters, digits, '.', '_' and '-'")
    return ("\\begin{figure}[h]\n\\centering\n"
            f"\\includegraphics[width=0.95\\linewidth]{{{path.name}}}\n"
            f"\\caption{{{escape_text(caption)}}}\n\\end{{figure}}")


def _training_section(metrics: Mapping, figure: Path) -> str:
    data, timings = metrics["data"], metrics["timings"]
    rows = [
        ("data", f"{data['name']}: {data['train']} training, {data['test']} held-out images"),
        ("held-out accuracy", f"{metrics['final_test_accuracy']:.4f}"),
        ("training accuracy", f"{metrics['final_train_accuracy']:.4f}"),
        ("final training loss", f"{metrics['final_train_loss']:.4f}"),
        ("training steps", f"{timings['steps']} in {timings['train_s']:.1f} s "
                           "(first calls compile the kernel)"),
    ]
    table = "\n".join(f"{escape_text(k)} & {escape_text(v)} \\\\" for k, v in rows)
    return ("\\section*{Training}\n"
            "Every derivative below came from the derivation above: one generated kernel "
            "computes the loss, the gradients and the Adam update of each mini-batch.\n\n"
            "\\begin{center}\n\\begin{tabular}{ll}\n\\toprule\n" + table
            + "\n\\bottomrule\n\\end{tabular}\n\\end{center}\n\n"
            + _figure(figure, "Training loss and accuracy per epoch."))


def _newton_section(metrics: Mapping, figure: Path) -> str:
    newton = metrics["newton"]
    matched = newton["gd_iterations_to_match"]
    gd = (f"gradient descent at step 1/L needed {matched} iterations to come within "
          "1e-6 (relative) of that optimum" if matched is not None else
          "gradient descent at step 1/L did not come within 1e-6 of it in 2000 iterations")
    text = (f"Logistic regression (digits 0-4 against 5-9) with an L2 penalty: Newton's method "
            f"with the generated Hessian kernel reached the optimum "
            f"(loss {newton['optimum_loss']:.10f}) in {newton['newton_iterations']} "
            f"iterations; {gd}.")
    return ("\\section*{A second-order method}\n" + escape_text(text) + "\n\n"
            + _figure(figure, "Distance to the optimum against the iteration."))


def _curvature_section(metrics: Mapping, figure: Path) -> str:
    spectra = metrics["curvature"]

    def condition(c: Mapping) -> str:
        if c["condition_number"] is not None:
            return f"{c['condition_number']:.3g}"
        return {"indefinite": "none (indefinite)", "singular": "infinite (singular)"}.get(
            c["reading"], f"none ({c['reading']})")

    names = list(spectra)
    rows = [
        ("parameters", [f"{spectra[n]['dim']}" for n in names]),
        ("top eigenvalue", [f"{spectra[n]['top']:.6g}" for n in names]),
        ("bottom eigenvalue", [f"{spectra[n]['bottom']:.6g}" for n in names]),
        ("negative eigenvalues", ["yes (a saddle)" if spectra[n]["negative_eigenvalues"]
                                  else "no" for n in names]),
        ("condition number", [condition(spectra[n]) for n in names]),
        ("trace (Hutchinson)", [f"{spectra[n]['trace']['trace']:.4g} "
                                f"+/- {spectra[n]['trace']['standard_error']:.2g}"
                                for n in names]),
        ("Lanczos steps", [f"{spectra[n]['lanczos_iterations']}" for n in names]),
    ]
    table = "\n".join(escape_text(label) + " & " + " & ".join(escape_text(v) for v in values)
                      + " \\\\" for label, values in rows)
    readings = " ".join(escape_text(f"{n.capitalize()}: {spectra[n]['summary']}.")
                        for n in names)
    header = "quantity & " + " & ".join(escape_text(n) for n in names) + " \\\\"
    return ("\\section*{The curvature of the loss}\n"
            "The Hessian of the training loss with respect to all the parameters jointly, "
            "never formed: each product with a vector is one call of the generated "
            "Hessian-vector-product kernel. The extreme eigenvalues come from Lanczos "
            "iterations (full reorthogonalisation), the density from stochastic Lanczos "
            "quadrature, the trace from Hutchinson's estimator. A negative eigenvalue means "
            "that the loss curves downward along some direction: no minimum (at a "
            "stationary point, a saddle point); a large ratio of the extreme eigenvalues of a "
            "positive definite Hessian means ill-conditioning (gradient descent needs a step "
            "below 2 over the top eigenvalue and then crawls along the flattest "
            "directions).\n\n" + readings + "\n\n"
            "\\begin{center}\n\\begin{tabular}{l" + "r" * len(names) + "}\n\\toprule\n"
            + header + "\n\\midrule\n" + table
            + "\n\\bottomrule\n\\end{tabular}\n\\end{center}\n\n"
            + _figure(figure, "Hessian spectral density (log scale), extreme eigenvalues "
                      "dashed."))


def write_report(tex_path: str | Path, der: Derivation, check_report, metrics: Mapping,
                 figures: Sequence[str], compile_pdf_too: bool = True,
                 cnn: Derivation | None = None, rnn: Derivation | None = None) -> Path:
    """Writes ``report.tex`` (and ``report.pdf`` next to it with ``compile_pdf_too``);
    ``cnn``: the convolutional network's derivation, shown after the MLP's training;
    ``rnn``: the recurrent network's (backprop through time), shown after that."""
    tex_path = Path(tex_path)
    folder = tex_path.parent
    source = document(der, title="symdl demo: a 2-layer network trained with generated kernels",
                      check_report=check_report)
    sections = [_training_section(metrics, folder / "training.pdf")]
    used = [folder / "training.pdf"]
    if cnn is not None and "cnn" in metrics and "training_cnn.pdf" in figures:
        sections.append(_cnn_section(cnn, metrics, folder / "training_cnn.pdf"))
        used.append(folder / "training_cnn.pdf")
    if rnn is not None and "rnn" in metrics and "training_rnn.pdf" in figures:
        sections.append(_rnn_section(rnn, metrics, folder / "training_rnn.pdf"))
        used.append(folder / "training_rnn.pdf")
    if "newton" in metrics and "newton.pdf" in figures:
        sections.append(_newton_section(metrics, folder / "newton.pdf"))
        used.append(folder / "newton.pdf")
    if "curvature" in metrics and "curvature.pdf" in figures:
        sections.append(_curvature_section(metrics, folder / "curvature.pdf"))
        used.append(folder / "curvature.pdf")
    source = source.replace("\\end{document}", "\n\n".join(sections) + "\n\\end{document}")
    tex_path.write_text(source, encoding="utf-8")
    if compile_pdf_too:
        compile_pdf(source, tex_path.with_suffix(".pdf"), files=used)
    return tex_path


def _cnn_section(der: Derivation, metrics: Mapping, figure: Path) -> str:
    """The convolutional network: its derivation (backprop in convolution notation, next to
    the MLP's above) and its training."""
    from symdl.printing.latex import _Builder, _section_latex

    cnn = metrics["cnn"]
    timings = cnn["timings"]
    text = (f"The same digits as 8 x 8 x 1 images through a convolutional network; one "
            f"generated kernel computes the loss, the backprop through the pooling and the "
            f"convolution and the Adam update. Held-out accuracy "
            f"{cnn['final_test_accuracy']:.4f} (training {cnn['final_train_accuracy']:.4f}) "
            f"after {timings['steps']} steps in {timings['train_s']:.1f} s.")
    parts = ["\\section*{A convolutional network}\n" + escape_text(text)]
    for section in _Builder(der).sections():
        section.title = f"CNN: {section.title}"
        parts.append(_section_latex(section))
    parts.append(_figure(figure, "The CNN's training loss and accuracy per epoch."))
    return "\n\n".join(parts)


def _rnn_section(der: Derivation, metrics: Mapping, figure: Path) -> str:
    """The recurrent network: its derivation (the adjoint recurrence run backwards over t,
    the parameter gradients as sums over t) and its training."""
    from symdl.printing.latex import _Builder, _section_latex

    rnn = metrics["rnn"]
    timings, check = rnn["timings"], rnn["check"]
    text = (f"The same digits read row by row: a sequence of T = 8 rows of 8 pixels through an "
            f"Elman recurrent network (h_t = tanh(x_t W + h_(t-1) U + b), h_0 = 0, "
            f"{rnn['hidden']} hidden units), whose last state goes through a dense layer and "
            f"softmax cross-entropy. T is a symbol: the derivation holds for every length, and "
            f"one generated kernel loops over t for the forward pass, then backwards for the "
            f"adjoint recurrence (backpropagation through time), sums the parameter gradients "
            f"over t and applies the Adam update; nothing is unrolled. Held-out accuracy "
            f"{rnn['final_test_accuracy']:.4f} (training {rnn['final_train_accuracy']:.4f}) "
            f"after {timings['steps']} steps in {timings['train_s']:.1f} s (compiled in "
            f"{timings['compile_s']:.1f} s); finite-difference check of the step "
            f"{'passed' if check['ok'] else 'FAILED'} (max relative error "
            f"{check['max_rel_error']:.1e}).")
    parts = ["\\section*{A recurrent network}\n" + escape_text(text)]
    for section in _Builder(der).sections():
        section.title = f"RNN: {section.title}"
        parts.append(_section_latex(section))
    parts.append(_figure(figure, "The recurrent network's training loss and accuracy per "
                         "epoch."))
    return "\n\n".join(parts)

