"""The main job: train a network on a real data set with kernels symdl generated.

``symdl demo`` (and ``make demo``):

1. derives a 2-layer network (dense + tanh, dense + softmax cross-entropy, L2 weight decay);
2. generates one fused training-step kernel (forward, backward and the Adam update);
3. checks that kernel's loss and gradients against finite differences;
4. trains it on the handwritten digits that scikit-learn ships (1,797 8x8 images, nothing is
   downloaded) and evaluates it on a held-out split with ``step.predict`` (the forward pass
   of the same derivation, no model typed twice);
5. takes the Hessian spectrum of the training loss (all 4,810 parameters jointly, from the
   generated HVP kernel: top and bottom eigenvalues, density, trace, condition number) at
   initialisation and after training (``symdl demo --no-curvature`` skips it);
6. writes ``out/``: ``report.pdf`` (the derivation, the check table, the curves, the
   spectrum), ``kernels.py`` (the exported standalone kernels) and ``metrics.json``.

It also trains a CNN on the digits as images (``--no-cnn`` skips it) and a recurrent
network on the digits read row by row (``symdl.report.sequence_demo``: backprop through time
in one generated step; ``--no-rnn`` skips it).

``symdl demo --newton`` adds the second-order demo: Newton's method on (L2-regularised)
logistic regression with the generated Hessian kernel, against gradient descent.

Needs the ``demo`` extra (scikit-learn, matplotlib, tqdm) and pdflatex for the PDF.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import sympy as sp

import symdl
from symdl.ir.keys import Gradient, Value
from symdl.report.training_run import (  # noqa: F401 (DemoDependencyError: re-exported)
    DemoDependencyError,
    History,
    Split,
    _plot_training,
    _Progress,
    _pyplot,
    _require,
    accuracy,
    compile_phase,
    run_epochs,
)
from symdl.training import TrainingStep

# -- the model ------------------------------------------------------------------------------

n, d, h, k = sp.symbols("n d h k", integer=True, positive=True)
X, Y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("Y", n, k)
W1, b1 = sp.MatrixSymbol("W1", d, h), sp.MatrixSymbol("b1", 1, h)
W2, b2 = sp.MatrixSymbol("W2", h, k), sp.MatrixSymbol("b2", 1, k)
Z1, A1, Z2 = (sp.MatrixSymbol("Z1", n, h), sp.MatrixSymbol("A1", n, h),
              sp.MatrixSymbol("Z2", n, k))
lam = sp.Symbol("lambda", nonnegative=True)
L = sp.Symbol("L")

NETWORK = [
    (Z1, X * W1 + symdl.bias(b1, n)),
    (A1, symdl.tanh(Z1)),
    (Z2, A1 * W2 + symdl.bias(b2, n)),
    (L, symdl.softmax_cross_entropy(Z2, Y)
     + lam / 2 * (symdl.total(sp.hadamard_product(W1, W1))
                  + symdl.total(sp.hadamard_product(W2, W2)))),
]
PARAMETERS = [W1, b1, W2, b2]


def network_derivation() -> symdl.Derivation:
    """The demo network's loss: softmax cross-entropy plus weight decay λ/2 (‖W1‖² + ‖W2‖²)."""
    return symdl.derive(NETWORK, wrt=PARAMETERS)


# -- data -----------------------------------------------------------------------------------

def digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's handwritten digits, pixels scaled to [0, 1], one-hot labels, a
    stratified held-out split."""
    datasets = _require("sklearn.datasets")
    selection = _require("sklearn.model_selection")
    data = datasets.load_digits()
    features = data.data / 16.0
    labels = np.eye(10)[data.target]
    X_train, X_test, Y_train, Y_test = selection.train_test_split(
        features, labels, test_size=test_fraction, random_state=seed, stratify=data.target)
    return Split(*(np.ascontiguousarray(a) for a in (X_train, Y_train, X_test, Y_test)))


# -- training -------------------------------------------------------------------------------

def train(split: Split, hidden: int = 64, epochs: int = 40, batch: int = 64,
          lr: float = 0.01, weight_decay: float = 1e-4, seed: int = 0,
          progress: bool = True, dtype: type | str = np.float64):
    """Trains the network with the fused Adam step; returns (step, history, timings).

    ``dtype`` (``np.float64`` or ``np.float32``) is the precision of the parameters, the
    optimizer's states and every kernel's arithmetic; the images are converted to it once,
    here, not at every step. The initial parameters are drawn in float64 and rounded, so both
    precisions start from the same network."""
    from symdl.define.optimizers import Adam

    rng = np.random.default_rng(seed)
    init = _draw_initial(rng, split, hidden)
    timings = {}
    start = time.perf_counter()
    der = network_derivation()
    timings["derive_s"] = time.perf_counter() - start
    start = time.perf_counter()
    # output=Z2: the same derivation's forward pass gives the predictions (step.predict).
    step = TrainingStep(der, Adam(lr=lr), init, dtype=dtype,
                        hyperparameters={"lambda": weight_decay}, output=Z2)
    split = Split(*(np.ascontiguousarray(a, dtype=step.dtype) for a in (
        split.X_train, split.Y_train, split.X_test, split.Y_test)))
    step.forward_kernel()  # generated here, counted with the training step
    timings["generate_s"] = time.perf_counter() - start
    timings["compile_s"] = _compile_phase(step, split, batch, progress)
    history, trained = run_epochs(
        step, epochs, split.X_train.shape[0], batch,
        lambda chosen: {"X": split.X_train[chosen], "Y": split.Y_train[chosen]},
        (split.X_train, split.Y_train), (split.X_test, split.Y_test), rng, progress)
    timings.update(trained)
    return step, der, history, timings


def _compile_phase(step: TrainingStep, split: Split, batch: int, progress: bool) -> float:
    return compile_phase(step, "the training step and the forward pass",
                         {"X": split.X_train[:batch], "Y": split.Y_train[:batch]},
                         [(split.X_train, split.Y_train), (split.X_test, split.Y_test)],
                         progress)


def _draw_initial(rng: np.random.Generator, split: Split, hidden: int) -> dict[str, np.ndarray]:
    features, classes = split.X_train.shape[1], split.Y_train.shape[1]
    return {
        "W1": rng.normal(size=(features, hidden)) / np.sqrt(features),
        "b1": np.zeros((1, hidden)),
        "W2": rng.normal(size=(hidden, classes)) / np.sqrt(hidden),
        "b2": np.zeros((1, classes)),
    }


def initial_parameters(split: Split, hidden: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """The parameters ``train(split, hidden=hidden, seed=seed)`` starts from (its generator's
    first draws)."""
    return _draw_initial(np.random.default_rng(seed), split, hidden)


# -- the second-order demo --------------------------------------------------------------------

w = sp.MatrixSymbol("w", d, 1)
y = sp.MatrixSymbol("y", n, 1)
LOGISTIC_MAP = (symdl.binary_cross_entropy_with_logits(X * w, y)
                + lam / 2 * symdl.total(sp.hadamard_product(w, w)))


@dataclass
class NewtonResult:
    newton_loss: list[float]
    gd_loss: list[float]
    newton_iterations: int
    gd_iterations_to_match: int | None
    optimum_loss: float


def newton_vs_gradient_descent(split: Split, weight_decay: float = 1e-2,
                               max_newton: int = 10, gd_steps: int = 2000,
                               tolerance: float = 1e-10) -> NewtonResult:
    """Logistic regression (digit < 5 against digit >= 5, with a bias column), L2-regularised
    so that the optimum is finite: Newton's method with the generated Hessian kernel, and
    gradient descent with the generated gradient kernel at step 1/L (L bounds the Hessian)."""
    features = np.hstack([split.X_train, np.ones((split.X_train.shape[0], 1))])
    labels = (np.argmax(split.Y_train, axis=1) >= 5).astype(float).reshape(-1, 1)
    der = symdl.derive(LOGISTIC_MAP, wrt=[w], hessian=True)
    kernel = der.compile()
    values = {"X": features, "y": labels, "lambda": weight_decay}
    weights = np.zeros((features.shape[1], 1))
    newton_loss = []
    for _ in range(max_newton):
        result = kernel(w=weights, **values)
        newton_loss.append(result.value)
        gradient = result.grad["w"]
        if np.linalg.norm(gradient) < tolerance:
            break
        weights = weights - np.linalg.solve(result.hessian["w", "w"], gradient)
    optimum = kernel(w=weights, **values).value
    newton_loss.append(optimum)
    # Gradient descent at step 1/L, L = λ_max(X^T X)/(4n) + λ, the Hessian's bound.
    lipschitz = np.linalg.eigvalsh(features.T @ features).max() / (4 * len(features)) \
        + weight_decay
    gradient_only = der.compile(outputs=[Value(), Gradient("w")])
    weights = np.zeros_like(weights)
    gd_loss, matched = [], None
    for iteration in range(gd_steps):
        result = gradient_only(w=weights, **values)
        gd_loss.append(result.value)
        if matched is None and result.value - optimum <= 1e-6 * max(abs(optimum), 1.0):
            matched = iteration
        weights = weights - result.grad["w"] / lipschitz
    return NewtonResult(newton_loss, gd_loss, len(newton_loss) - 1, matched, optimum)


# -- the Hessian spectrum ---------------------------------------------------------------------

def hessian_spectra(der: symdl.Derivation, points: Mapping[str, Mapping[str, np.ndarray]],
                    features: np.ndarray, labels: np.ndarray, weight_decay: float, *,
                    seed: int = 0, jit: bool = True, **options) -> dict:
    """The Hessian spectrum of the training loss (all parameters jointly, the whole training
    set) at each named point, from the network's HVP kernel (compiled once).

    Args:
        der: the network's derivation.
        points: parameters by name, for each point (``{"initialisation": {...}, ...}``).
        features, labels: the data the loss is taken over.
        weight_decay: the loss's ``lambda``.
        seed: the seed of the Lanczos start and the probes.
        jit: ``False`` runs the kernel as plain Python (for tests on small networks).
        **options: passed to ``symdl.verify.curvature.analyze``.

    Returns:
        ``{point: CurvatureReport}``.
    """
    from symdl.verify.curvature import analyze, hessian_operator

    kernel = der.compile(hvp=True, outputs=[f"hvp:{p.name}" for p in der.wrt], jit=jit)
    return {name: analyze(hessian_operator(kernel, {**params, "X": features, "Y": labels,
                                                    "lambda": weight_decay}),
                          seed=seed, **options)
            for name, params in points.items()}


def add_curvature(out: Path, metrics: dict, figures: list[str], reports: Mapping) -> None:
    """Puts the spectra into the metrics (numbers, not the density grid) and draws the
    density figure (``curvature.pdf`` and ``.png``)."""
    from symdl.verify.curvature import plot_density

    metrics["curvature"] = {}
    for name, report in reports.items():
        summary = report.to_dict()
        summary.pop("density")
        metrics["curvature"][name] = summary
    panels = [(f"{name}: Hessian spectral density", r) for name, r in reports.items()]
    _pyplot()  # the demo extra's error when matplotlib is missing
    plot_density(panels, str(out / "curvature.pdf"))
    plot_density(panels, str(out / "curvature.png"))
    figures.append("curvature.pdf")


# -- the convolutional network ---------------------------------------------------------------

CNN_CHANNELS = 16
IMAGES = sp.IndexedBase("X", shape=(n, 8, 8, 1))  # the digits as 8 x 8 x 1 images
CK1 = sp.IndexedBase("K1", shape=(3, 3, 1, CNN_CHANNELS))  # kh x kw x in x out
CB1 = sp.IndexedBase("b1", shape=(CNN_CHANNELS,))
CW2 = sp.MatrixSymbol("W2", 16 * CNN_CHANNELS, 10)
CB2 = sp.MatrixSymbol("b2", 1, 10)
CZ1 = sp.IndexedBase("Z1", shape=(n, 8, 8, CNN_CHANNELS))
CA1 = sp.IndexedBase("A1", shape=(n, 8, 8, CNN_CHANNELS))
CP1 = sp.IndexedBase("P1", shape=(n, 4, 4, CNN_CHANNELS))
CZ2 = sp.MatrixSymbol("Z2", n, 10)
CLASSES = sp.MatrixSymbol("Y", n, 10)

CNN = [
    (CZ1, symdl.channel_bias(symdl.conv2d(IMAGES, CK1, padding=1), CB1)),
    (CA1, symdl.relu(CZ1)),
    (CP1, symdl.max_pool2d(CA1, 2)),
    (CZ2, symdl.flatten(CP1) * CW2 + symdl.bias(CB2, n)),
    (L, symdl.softmax_cross_entropy(CZ2, CLASSES)
     + lam / 2 * symdl.total(sp.hadamard_product(CW2, CW2))),
]
CNN_PARAMETERS = [CK1, CB1, CW2, CB2]


def cnn_derivation() -> symdl.Derivation:
    """The demo's convolutional network: 16 kernels 3 x 3 (padding 1), relu, 2 x 2 max
    pooling, a dense layer and softmax cross-entropy, with weight decay on the dense layer."""
    return symdl.derive(CNN, wrt=CNN_PARAMETERS)


def train_cnn(split: Split, epochs: int = 30, batch: int = 32, lr: float = 0.01,
              weight_decay: float = 1e-4, seed: int = 0, progress: bool = True):
    """Trains the CNN on the digits as 8 x 8 x 1 images with one fused Adam step (forward,
    backprop through the pooling and the convolution, update); returns (step, der, history,
    timings)."""
    from symdl.define.optimizers import Adam

    rng = np.random.default_rng(seed)
    features = 16 * CNN_CHANNELS
    init = {"K1": rng.normal(size=(3, 3, 1, CNN_CHANNELS)) / 3,
            "b1": np.zeros(CNN_CHANNELS),
            "W2": rng.normal(size=(features, 10)) / np.sqrt(features),
            "b2": np.zeros((1, 10))}
    images = {"train": split.X_train.reshape(-1, 8, 8, 1),
              "test": split.X_test.reshape(-1, 8, 8, 1)}
    timings = {}
    start = time.perf_counter()
    der = cnn_derivation()
    timings["derive_s"] = time.perf_counter() - start
    start = time.perf_counter()
    step = TrainingStep(der, Adam(lr=lr), init, hyperparameters={"lambda": weight_decay},
                        output=CZ2)
    step.forward_kernel()
    timings["generate_s"] = time.perf_counter() - start
    timings["compile_s"] = compile_phase(
        step, "the convolutional network's training step and its forward pass",
        {"X": images["train"][:batch], "Y": split.Y_train[:batch]},
        [(images["train"], split.Y_train), (images["test"], split.Y_test)], progress)
    history, trained = run_epochs(
        step, epochs, images["train"].shape[0], batch,
        lambda chosen: {"X": images["train"][chosen], "Y": split.Y_train[chosen]},
        (images["train"], split.Y_train), (images["test"], split.Y_test), rng, progress)
    timings.update(trained)
    return step, der, history, timings


# -- outputs --------------------------------------------------------------------------------

def _plot_newton(result: NewtonResult, path: Path) -> None:
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(8, 3))
    gap = lambda losses: np.maximum(np.array(losses) - result.optimum_loss, 1e-16)  # noqa: E731
    axis.semilogy(gap(result.gd_loss), label="gradient descent (step 1/L)")
    axis.semilogy(gap(result.newton_loss), "o-", label="Newton (generated Hessian)")
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss - optimum")
    axis.set_xscale("symlog", linthresh=10)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(out_dir: str | Path = "out", newton: bool = False, epochs: int = 40,
        pdf: bool = True, progress: bool = True, curvature: bool = True,
        cnn: bool = True, cnn_epochs: int = 30, dtype: type | str = np.float64,
        rnn: bool = True, rnn_epochs: int = 30) -> dict:
    """The whole demo; returns the metrics it writes to ``out_dir/metrics.json``.

    ``cnn`` also trains the convolutional network (``train_cnn``, ``cnn_epochs`` epochs) on
    the same split and puts its derivation (backprop in convolution notation) in the report.

    ``rnn`` also trains the recurrent network (``symdl.report.sequence_demo``: the digits read
    row by row, ``rnn_epochs`` epochs, in ``dtype``) and puts its backprop through time in
    the report.

    ``dtype``: the training's precision (``np.float32`` or ``np.float64``, see ``train``);
    the finite-difference check and the curvature run in float64 at the trained parameters.

    ``curvature`` adds the Hessian spectrum of the training loss at initialisation and after
    training (a few hundred Hessian-vector products over the training set at each point).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = digits()
    initial = initial_parameters(split)
    step, der, history, timings = train(split, epochs=epochs, progress=progress, dtype=dtype)
    check_report = _check_step(step, split)
    step.kernel.export(out / "kernels.py")
    metrics = {
        "data": {"name": "scikit-learn digits", "train": int(split.X_train.shape[0]),
                 "test": int(split.X_test.shape[0])},
        "dtype": str(step.dtype),
        "final_test_accuracy": history.test_accuracy[-1],
        "final_train_accuracy": history.train_accuracy[-1],
        "final_train_loss": history.train_loss[-1],
        "history": asdict(history),
        "timings": timings,
        "check": {"ok": bool(check_report.ok), "max_rel_error": float(check_report.max_rel_error)},
    }
    _plot_training(history, out / "training.pdf")
    _plot_training(history, out / "training.png")
    figures = ["training.pdf"]
    if newton:
        result = newton_vs_gradient_descent(split)
        metrics["newton"] = {
            "newton_iterations": result.newton_iterations,
            "gd_iterations_to_match": result.gd_iterations_to_match,
            "optimum_loss": result.optimum_loss,
        }
        _plot_newton(result, out / "newton.pdf")
        _plot_newton(result, out / "newton.png")
        figures.append("newton.pdf")
    if curvature:
        start = time.perf_counter()
        trained = {name: np.asarray(p, dtype=np.float64) for name, p in step.params.items()}
        reports = hessian_spectra(der, {"initialisation": initial, "trained": trained},
                                  split.X_train, split.Y_train,
                                  step.hyperparameters.get("lambda", 0.0))
        add_curvature(out, metrics, figures, reports)
        timings["curvature_s"] = time.perf_counter() - start
    cnn_der = None
    if cnn:
        cnn_step, cnn_der, cnn_history, cnn_timings = train_cnn(split, epochs=cnn_epochs,
                                                                progress=progress)
        metrics["cnn"] = {"final_test_accuracy": cnn_history.test_accuracy[-1],
                          "final_train_accuracy": cnn_history.train_accuracy[-1],
                          "final_train_loss": cnn_history.train_loss[-1],
                          "history": asdict(cnn_history), "timings": cnn_timings}
        _plot_training(cnn_history, out / "training_cnn.pdf")
        _plot_training(cnn_history, out / "training_cnn.png")
        figures.append("training_cnn.pdf")
    rnn_der = None
    if rnn:
        from symdl.report.sequence_demo import add_rnn

        rnn_der = add_rnn(out, metrics, figures, split, rnn_epochs, progress, dtype)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if pdf:
        from symdl.report.document import write_report

        write_report(out / "report.tex", der, check_report, metrics, figures, cnn=cnn_der,
                     rnn=rnn_der)
    return metrics


def _check_step(step: TrainingStep, split: Split):
    """The fused kernel's loss and gradients against finite differences (its ``grad:``
    outputs against differences of its ``value``), on a batch of 16 training images at the
    trained parameters."""
    arrays = {"X": split.X_train[:16], "Y": split.Y_train[:16], "t": 1.0,
              "lambda": step.hyperparameters.get("lambda", 0.0)}
    arrays.update(step.params)
    arrays.update(step.state)
    # In float64 whatever the training's precision: differences of a float32 value are noise.
    arrays = {k: np.asarray(v, dtype=np.float64) if isinstance(v, np.ndarray) else v
              for k, v in arrays.items()}
    return symdl.check(step.kernel, **{k: v for k, v in arrays.items()
                                       if k in step.kernel.input_names})
