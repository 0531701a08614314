"""The V curve of a finite-difference check: error against step size, on log-log axes.

Large steps: truncation error (falls as h^2). Small steps: rounding error (grows as eps/h).
The bottom of the V is where a central difference is most accurate; matplotlib is optional
(``pip install symdl[plot]``).
"""

from __future__ import annotations

from symdl.errors import SymdlError


class MissingExtraError(SymdlError, ImportError):
    """An optional dependency is not installed."""


def plot_curves(curves: dict[str, tuple[list[float], list[float]]], path: str,
                title: str = "finite-difference error") -> None:
    """Writes one line per output: relative error of the central difference against h."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError(
            "--plot needs matplotlib: pip install 'symdl[plot]' (or pip install matplotlib)"
        ) from exc
    if not curves:
        raise SymdlError("nothing to plot: the kernel has no gradient or Hessian outputs")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, (steps, errors) in curves.items():
        ax.loglog(steps, [max(e, 1e-17) for e in errors], marker=".", label=name)
    ax.set_xlabel("step h")
    ax.set_ylabel("relative error of the central difference")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
