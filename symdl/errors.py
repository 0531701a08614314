"""Typed errors raised by symdl. Every message says what is wrong and how to fix it."""

from __future__ import annotations


class SymdlError(Exception):
    """Base class of every error symdl raises on purpose."""


class DefinitionError(SymdlError, ValueError):
    """A definition cannot be turned into symdl's representation (malformed input)."""


class UnsupportedError(DefinitionError):
    """A SymPy construct or function that symdl does not differentiate (yet)."""


class ShapeMismatchError(DefinitionError):
    """Two shapes that must agree do not."""

    def __init__(self, message: str, left: tuple = (), right: tuple = ()):
        super().__init__(message)
        self.left = left
        self.right = right


class MissingRuleError(SymdlError, NotImplementedError):
    """An interpreter of the IR has no rule for a node kind (a kind added to the IR without a
    rule in every table: see ``symdl.ir.rules``)."""

    def __init__(self, kind: str, interpreter: str):
        super().__init__(
            f"{interpreter} has no rule for the node kind {kind}; register one in its table "
            f"(@TABLE.register({kind}) next to the other rules of that interpreter)")
        self.kind = kind
        self.interpreter = interpreter


class DerivationError(SymdlError):
    """A derivative was asked for something the derivation cannot provide."""


class ClosedFormTooLargeError(DerivationError):
    """A result written out as one SymPy expression would exceed ``WRITTEN_OUT_LIMIT``
    IR nodes; the kernels and ``Derivation.evaluate`` still compute it."""


class EvaluationError(SymdlError, ValueError):
    """Numeric evaluation was given missing or inconsistent values."""


class KernelArgumentError(SymdlError, ValueError):
    """A kernel was called with a missing, unexpected or malformed argument."""

    def __init__(self, message: str, argument: str = "", expected: object = None,
                 actual: object = None):
        super().__init__(message)
        self.argument = argument
        self.expected = expected
        self.actual = actual


class CacheWarning(UserWarning):
    """The kernel cache folder is unusable; kernels go to a temporary folder instead."""


class PerformanceWarning(UserWarning):
    """symdl runs correctly but slower than it should, for a reason the user can change."""
