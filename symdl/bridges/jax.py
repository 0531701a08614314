"""A derivation's loss as a JAX function: ``jax.custom_vjp`` over symdl's compiled kernels.

::

    loss_fn = symdl.bridges.jax.function(der)        # der = symdl.derive(loss, wrt=[w, ...])
    grad_w = jax.jit(jax.grad(lambda w: loss_fn(X=X, w=w, y=y)))(w)

The kernels run on the host through ``jax.pure_callback``; the result shapes and dtypes come
from the symbolic shapes bound to the inputs' shapes, so the function traces under
``jax.jit``. Its forward pass for differentiation runs the value-and-gradient kernel once and
keeps the gradients as residuals; the backward pass scales them by the cotangent.
Differentiating with respect to an input that is not a parameter of the derivation (not in
its ``wrt``) raises ``BridgeError`` when the function is traced, rather than give a zero.
Arrays are all float32 (JAX's default) or all float64 (``jax_enable_x64``). Second
derivatives (``jax.hessian``, a grad of a grad) are not supported: JAX stops them with
"Pure callbacks do not support JVP" (the PyTorch bridge has them, through the HVP kernel).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from symdl.bridges import BridgeError
from symdl.bridges.common import Bridge, BridgeFunction, bridge
from symdl.derivation import Derivation


class SymdlFunction(BridgeFunction):
    """A derivation's scalar loss as a JAX function of its inputs, by name.

    Call it with every input by the name of its symbol: ``f(X=X, w=w, y=y)``; it returns a
    0-d array of the inputs' dtype and is differentiable (first order) in the parameters.
    Build it with ``symdl.bridges.jax.function``.
    """

    framework = "jax"

    def __init__(self, bridge_: Bridge):
        super().__init__(bridge_)
        self._function = _custom_vjp(bridge_)

    def __call__(self, **arrays: object) -> jax.Array:
        args = [jnp.asarray(a) for a in self._bridge.ordered(arrays)]
        return self._function(*args)


def function(der: Derivation) -> SymdlFunction:
    """A JAX function of the derivation's inputs whose VJP is the derived gradient.

    Args:
        der: a derivation of a scalar loss (``symdl.derive(loss, wrt=[...])``).

    Returns:
        A callable taking arrays (or numbers for scalar symbols) by name and returning the
        loss as a 0-d array; usable under ``jax.jit``, ``jax.grad`` and ``jax.value_and_grad``.

    Raises:
        BridgeError: ``der`` is not a derivation of a scalar.

    Example:
        >>> loss_fn = symdl.bridges.jax.function(der)                # doctest: +SKIP
        >>> jax.grad(lambda w: loss_fn(X=X, w=w, y=y))(w)            # doctest: +SKIP
    """
    return SymdlFunction(bridge(der, framework="jax"))


def _dtype(bridge_: Bridge, args: tuple) -> np.dtype:
    """The one float dtype of the array inputs (scalar symbols may be any real number)."""
    dtypes = {np.dtype(a.dtype) for name, a in zip(bridge_.names, args, strict=True)
              if bridge_.shapes[name]}
    if not dtypes:
        dtypes = {np.dtype(jnp.result_type(float))}
    if len(dtypes) > 1 or not dtypes <= {np.dtype(np.float32), np.dtype(np.float64)}:
        found = ", ".join(f"{n} {a.dtype}" for n, a in zip(bridge_.names, args, strict=True))
        raise BridgeError(
            f"symdl kernels take arrays all float32 or all float64; got {found}: convert them "
            "with .astype(jnp.float32) (or enable jax_enable_x64 for float64)")
    return dtypes.pop()


def _custom_vjp(bridge_: Bridge) -> Callable:
    names = bridge_.names
    parameters = [n for n in names if n in bridge_.parameters]

    def result_shapes(args: tuple, with_grads: bool):
        dtype = _dtype(bridge_, args)
        bridge_.dims({n: a.shape for n, a in zip(names, args, strict=True)})  # typed errors
        value = jax.ShapeDtypeStruct((), dtype)  # bridge() accepts scalar definitions only
        if not with_grads:
            return value
        grads = tuple(jax.ShapeDtypeStruct(a.shape, dtype)
                      for n, a in zip(names, args, strict=True) if n in bridge_.parameters)
        return value, grads

    def host(with_grads: bool):
        def run(*arrays):
            value, grads = bridge_.run(
                {n: np.asarray(a) for n, a in zip(names, arrays, strict=True)})
            if not with_grads:
                return value
            return value, tuple(grads[p] for p in parameters)
        return run

    @jax.custom_vjp
    def f(*args):
        return jax.pure_callback(host(False), result_shapes(args, False), *args,
                                 vmap_method="sequential")

    def forward(*primals):
        args = tuple(p.value for p in primals)
        for name, primal in zip(names, primals, strict=True):
            if primal.perturbed and name not in bridge_.parameters:
                raise BridgeError(
                    f"the gradient with respect to {name} was asked for, but the derivation "
                    f"has none (its parameters are {parameters}): derive with {name} in "
                    f"wrt=[...], or pass jax.lax.stop_gradient({name})")
        value, grads = jax.pure_callback(host(True), result_shapes(args, True), *args,
                                         vmap_method="sequential")
        return value, grads

    def backward(grads, cotangent):
        # None: a zero cotangent, for inputs that forward() proved are not differentiated.
        grads = iter(grads)
        return tuple(next(grads) * cotangent if n in bridge_.parameters else None
                     for n in names)

    f.defvjp(forward, backward, symbolic_zeros=True)
    return f


__all__ = ["SymdlFunction", "function"]
