"""symdl: deep-learning math in SymPy -> exact derivatives, for symbolic shapes."""

from symdl import latex  # the module: symdl.latex.document, compile_pdf
from symdl.check import CheckReport, GradientCheckError, check
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
from symdl.to_sympy import IndexForm
from symdl.vocabulary import (
    LogSumExp,
    Softmax,
    Total,
    absolute,
    bias,
    binary_cross_entropy_with_logits,
    broadcast,
    exp,
    floor,
    gelu,
    huber,
    leaky_relu,
    log,
    log_softmax,
    logsumexp,
    mean,
    mse,
    relu,
    rsqrt,
    sigmoid,
    softmax,
    softmax_cross_entropy,
    softplus,
    sqrt,
    sum,
    tanh,
    total,
    variance,
)

__version__ = "0.1.0"

__all__ = [
    "latex",
    "CheckReport", "GradientCheckError", "check",
    "DefinitionError", "Derivation", "DerivationError", "Equation", "EvaluationError",
    "KernelArgumentError", "compile_expressions",
    "IndexForm", "LogSumExp", "ShapeMismatchError", "Softmax", "SymdlError", "Total",
    "UnsupportedError", "bias", "binary_cross_entropy_with_logits", "derive", "evaluate", "exp",
    "log", "log_softmax", "logsumexp", "mean", "mse", "relu", "sigmoid", "softmax",
    "softmax_cross_entropy", "softplus", "sum", "tanh", "total",
    "broadcast", "floor", "gelu", "leaky_relu", "rsqrt", "sqrt", "variance",
    "absolute", "huber",
]
