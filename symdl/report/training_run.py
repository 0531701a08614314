"""What the demo's networks share: the data split, a run's history, the progress bar, the
held-out accuracy and the plot of the training curves (``symdl.report.demo`` trains the MLP
and the CNN with them, ``symdl.report.sequence_demo`` the recurrent network)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from symdl.errors import SymdlError
from symdl.training import TrainingStep


class DemoDependencyError(SymdlError):
    """An optional package the demo needs is not installed."""


def _require(module: str, extra: str = "demo"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DemoDependencyError(
            f"the demo needs {module!r}: install it with pip install 'symdl[{extra}]' "
            "(make demo does this)") from exc


@dataclass
class Split:
    X_train: np.ndarray
    Y_train: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray


@dataclass
class History:
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)


def accuracy(step: TrainingStep, features: np.ndarray, labels: np.ndarray) -> float:
    """The share of rows whose largest logit (``step.predict``: the network's ``Z2`` at the
    current parameters) is the labelled class."""
    logits = step.predict(X=features)
    return float(np.mean(np.argmax(logits, axis=1) == np.argmax(labels, axis=1)))


def compile_phase(step: TrainingStep, what: str, first_batch: dict[str, np.ndarray],
                  sets: list[tuple[np.ndarray, np.ndarray]], progress: bool) -> float:
    """Compiles every kernel the epochs run (the step on ``first_batch``, the forward pass on
    each of ``sets``) before the progress bar starts, announced as its own phase: a bar that
    started first would stand still through the compile with an ETA computed from it. Returns
    the seconds it took."""
    start = time.perf_counter()
    if progress:
        print(f"compiling {what} with Numba (once: later runs load them from the cache)...",
              flush=True)
    step.compile(**first_batch)
    for features, labels in sets:  # the forward pass at each size: a large set may run the
        accuracy(step, features, labels)  # parallel loops
    elapsed = time.perf_counter() - start
    if progress:
        print(f"compiled in {elapsed:.1f} s", flush=True)
    return elapsed


def run_epochs(step: TrainingStep, epochs: int, rows: int, batch: int,
               take: Callable[[np.ndarray], dict[str, np.ndarray]],
               train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
               rng: np.random.Generator, progress: bool) -> tuple[History, dict]:
    """Trains ``epochs`` passes over ``rows`` examples in shuffled batches (``take(chosen)``:
    the step's inputs for those rows), recording the mean loss and the accuracy on ``train``
    and ``test`` after each epoch under a progress bar. Returns the history and the timings
    (``epoch_s``, ``train_s``, ``steps``)."""
    history, timings = History(), {"epoch_s": []}
    bar = _Progress(epochs, progress)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        order = rng.permutation(rows)
        losses = [step(**take(order[first:first + batch])) for first in range(0, rows, batch)]
        history.epoch.append(epoch)
        history.train_loss.append(float(np.mean(losses)))
        history.train_accuracy.append(accuracy(step, *train))
        history.test_accuracy.append(accuracy(step, *test))
        timings["epoch_s"].append(time.perf_counter() - epoch_start)
        bar.update(loss=history.train_loss[-1], test=history.test_accuracy[-1])
    bar.close()
    timings["train_s"] = time.perf_counter() - start
    timings["steps"] = step.t - 1
    return history, timings


class _Progress:
    """A tqdm bar when tqdm is installed, else one line per tenth of the run."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.count, self.enabled = total, 0, enabled
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc="training", unit="epoch", mininterval=0.5)

    def update(self, **values: float) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()})
            self.bar.update(1)
        elif self.enabled and (self.count % max(self.total // 10, 1) == 0):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
            print(f"epoch {self.count}/{self.total}: {shown}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _plot_training(history: History, path: Path) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.plot(history.epoch, history.train_loss, color="tab:blue")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    left.set_yscale("log")
    right.plot(history.epoch, history.train_accuracy, label="train")
    right.plot(history.epoch, history.test_accuracy, label="held-out test")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pyplot():
    matplotlib = _require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
