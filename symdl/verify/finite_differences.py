"""Central finite differences of a function of named arrays: entry by entry, or along random
directions, sharpened by Richardson extrapolation."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np


def _richardson(g: Callable[[float], np.ndarray], h: float) -> np.ndarray:
    """d/dt g at 0 by central differences at h and h/2, Richardson-extrapolated."""
    d1 = (g(h) - g(-h)) / (2 * h)
    d2 = (g(h / 2) - g(-h / 2)) / h
    return (4 * d2 - d1) / 3


def fd_entrywise(f: Callable[[dict], np.ndarray], values: dict, name: str,
                  limit: float = math.inf, power: float = 1 / 3) -> np.ndarray:
    """∂f/∂values[name] entry by entry: shape f.shape + shape of the parameter; steps at most
    ``limit`` (probes stay inside the input's declared sign, which kernels enforce)."""
    x = np.asarray(values[name], dtype=np.float64)
    eps = np.finfo(np.float64).eps
    columns = []
    for idx in np.ndindex(*x.shape):
        def g(t, idx=idx):
            moved = x.copy()
            moved[idx] += t
            return np.asarray(f({**values, name: moved if x.shape else float(moved)}),
                              dtype=np.float64)
        columns.append(_richardson(g, min(eps ** power * max(1.0, abs(float(x[idx]))),
                                          limit)))
    out = np.stack(columns, axis=-1) if columns else np.zeros(0)
    return out.reshape(out.shape[:-1] + x.shape)


def fd_directional(f: Callable[[dict], np.ndarray], values: dict,
                    directions: Mapping[str, np.ndarray], step: float | None = None,
                    limits: Mapping[str, float] | None = None,
                    power: float = 1 / 3) -> np.ndarray:
    """The derivative of f along ``directions`` (by input name), all inputs moved at once;
    no input moves by more than its ``limits`` entry."""
    eps = np.finfo(np.float64).eps
    # The step moves every input in ``directions`` at once: scaled to the smallest of them,
    # so that a small input next to a large one (a decay factor next to a step count) is not
    # moved by a step sized for the large one.
    scale = min([max(1.0, float(np.max(np.abs(values[k])))) for k in directions], default=1.0)
    if step is None:
        step = eps ** power * scale
        for k, u in directions.items():
            reach = float(np.max(np.abs(u))) if np.size(u) else 0.0
            if limits and k in limits and reach > 0:
                step = min(step, limits[k] / reach)

    def g(t):
        moved = {k: np.asarray(values[k], dtype=np.float64) + t * u
                 for k, u in directions.items()}
        moved = {k: (float(v) if np.ndim(values[k]) == 0 else v) for k, v in moved.items()}
        return np.asarray(f({**values, **moved}), dtype=np.float64)

    return _richardson(g, step)
