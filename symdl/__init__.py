"""symdl: deep-learning math in SymPy -> exact derivatives, for symbolic shapes.

The package is laid out by the pipeline's stages; a module imports only from its own stage
or an earlier one (``tests/test_layout.py`` reads the import graph and holds this)::

    errors       typed errors, used by every stage
    primitives/  1. scalar functions (sigmoid, relu, ...): one entry each
    ir/          2. the tensor IR and the passes over it (rewrites, naming, NumPy evaluation)
    define/      3. SymPy definitions -> IR, and the vocabulary that writes them
    derive/      4. derivatives on the IR: reverse and forward mode
    printing/    5. IR -> SymPy, plain text, LaTeX
    kernels/     6. IR -> plan -> Numba source -> cached, jitted Kernel
    derivation   7. ``derive`` and ``Derivation``: the public face over stages 1-6
    training     7. fused training steps over a Derivation
    scale/       7. data-parallel evaluation and training over row chunks (Dask, when used)
    bridges/     7. a derivation's loss as a PyTorch or JAX function (imports its framework
                    only when used: ``symdl.bridges.torch``, ``symdl.bridges.jax``)
    verify/      8. every kernel against finite differences and a reference
    report/      9. the demo and its LaTeX report
    catalog, cli 10. the shipped derivations by name, the ``symdl`` command
"""

import sys as _sys

from symdl.define import optimizers, schedules, vocabulary
from symdl.define.recurrence import Recurrence, scan
from symdl.define.vocabulary import (
    Det,
    LogDet,
    LogSumExp,
    Norm,
    PseudoInverse,
    Softmax,
    Spectrum,
    Total,
    absolute,
    avg_pool2d,
    bias,
    binary_cross_entropy_with_logits,
    broadcast,
    channel_bias,
    cholesky,
    conv1d,
    conv2d,
    det,
    eigh,
    eigvalsh,
    elu,
    embedding,
    exp,
    expm1,
    flatten,
    floor,
    gelu,
    huber,
    leaky_relu,
    log,
    log1p,
    log_softmax,
    logdet,
    logsumexp,
    max_along,
    max_pool2d,
    mean,
    mse,
    norm,
    pinv,
    relu,
    rsqrt,
    sigmoid,
    silu,
    softmax,
    softmax_cross_entropy,
    softplus,
    softsign,
    sqrt,
    sum,
    svdvals,
    tanh,
    total,
    trace,
    unflatten,
    variance,
)
from symdl.derivation import Derivation, Equation, compile_expressions, derive, evaluate
from symdl.errors import (
    DefinitionError,
    DerivationError,
    EvaluationError,
    KernelArgumentError,
    ShapeMismatchError,
    SymdlError,
    UnsupportedError,
)
from symdl.kernels.kernel import Kernel
from symdl.printing import latex  # the module: symdl.latex.document, compile_pdf
from symdl.printing.to_sympy import IndexForm
from symdl.training import TrainingStateError, TrainingStep
from symdl.verify.check import check
from symdl.verify.report import CheckReport, GradientCheckError

__version__ = "0.1.0"

# The public module paths users import (``import symdl.optimizers``, ``from symdl.latex import
# document``) name the modules in their stage packages.
for _name, _module in {"optimizers": optimizers, "schedules": schedules,
                       "vocabulary": vocabulary, "latex": latex}.items():
    _sys.modules.setdefault(f"{__name__}.{_name}", _module)
del _name, _module


def __getattr__(name: str) -> object:
    # ``symdl.bridges`` on first use, so that ``import symdl`` imports neither torch nor jax.
    if name == "bridges":
        import importlib

        return importlib.import_module("symdl.bridges")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "latex", "optimizers", "schedules", "vocabulary",
    "CheckReport", "GradientCheckError", "check",
    "DefinitionError", "Derivation", "DerivationError", "Equation", "EvaluationError",
    "Kernel", "KernelArgumentError", "TrainingStateError", "TrainingStep", "compile_expressions",
    "IndexForm", "LogSumExp", "ShapeMismatchError", "Softmax", "SymdlError", "Total",
    "UnsupportedError", "bias", "binary_cross_entropy_with_logits", "derive", "evaluate", "exp",
    "log", "log_softmax", "logsumexp", "mean", "mse", "relu", "sigmoid", "softmax",
    "softmax_cross_entropy", "softplus", "sum", "tanh", "total",
    "broadcast", "floor", "gelu", "leaky_relu", "rsqrt", "sqrt", "variance",
    "absolute", "huber", "elu", "expm1", "log1p", "silu", "softsign",
    "Det", "LogDet", "PseudoInverse", "det", "logdet", "pinv", "trace",
    "Norm", "Spectrum", "cholesky", "eigh", "eigvalsh", "norm", "svdvals",

    "avg_pool2d", "channel_bias", "conv1d", "conv2d", "embedding", "flatten", "max_along",
    "max_pool2d", "unflatten",
]
__all__ += ["Recurrence", "scan"]
