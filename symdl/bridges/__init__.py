"""Derived kernels inside PyTorch and JAX: a derivation's loss as a framework function.

``symdl.bridges.torch.function(der)`` is a function of torch tensors whose forward pass runs
the compiled value-and-gradient kernel once and whose backward pass scales the gradients it
saved, so a symdl loss drops into an ``nn.Module`` and ``loss.backward()``.
``symdl.bridges.jax.function(der)`` is a ``jax.custom_vjp`` function over the same kernel
(through ``jax.pure_callback``), usable under ``jax.jit`` and ``jax.grad``.

Neither framework is imported by ``import symdl`` nor by ``import symdl.bridges``: each
submodule imports its framework when it is first used (the extras ``torch`` and ``jax``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from symdl.errors import SymdlError


class BridgeError(SymdlError, ValueError):
    """A derivation or an argument that a PyTorch or JAX bridge cannot use."""


def __getattr__(name: str) -> ModuleType:
    # ``symdl.bridges.torch`` without a separate import, still importing torch only then.
    if name in ("torch", "jax"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BridgeError"]
