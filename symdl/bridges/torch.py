"""A derivation's loss as a PyTorch function: the forward and backward passes are symdl kernels.

::

    loss_fn = symdl.bridges.torch.function(der)      # der = symdl.derive(loss, wrt=[w, ...])
    loss = loss_fn(X=X, w=w, y=y)                    # tensors by the symbols' names
    loss.backward()                                  # w.grad from the derived gradient

The forward pass runs the compiled value-and-gradient kernel once and keeps the gradients;
the backward pass multiplies them by the incoming gradient. Inputs that require grad must be
parameters of the derivation (its ``wrt``); the others get ``None``. Tensors live on the CPU,
all in float64 or all in float32. Second derivatives (``backward(create_graph=True)`` then a
second ``backward``: Hessian-vector products, gradient penalties, ``gradgradcheck``) run the
Hessian-vector-product kernel, compiled on first use; third derivatives, and
``torch.autograd.functional.hvp``/``hessian`` (which differentiate a double backward once
more), raise ``BridgeError``.
"""

from __future__ import annotations

import numpy as np
import torch

from symdl.bridges import BridgeError
from symdl.bridges.common import Bridge, BridgeFunction, bridge
from symdl.derivation import Derivation

_DTYPES = (torch.float64, torch.float32)


class SymdlFunction(BridgeFunction):
    """A derivation's scalar loss as a differentiable function of torch tensors.

    Call it with every input by the name of its symbol: ``f(X=X, w=w, y=y)``. It returns a
    0-d tensor of the inputs' dtype. Build it with ``symdl.bridges.torch.function``.
    """

    framework = "torch"

    def __call__(self, **tensors: object) -> torch.Tensor:
        args = self._bridge.ordered(tensors)
        for name, value in zip(self.input_names, args, strict=True):
            _check_tensor(name, value)
        return _KernelFunction.apply(self._bridge, *args)


def function(der: Derivation) -> SymdlFunction:
    """A PyTorch function of the derivation's inputs whose backward is the derived gradient.

    Args:
        der: a derivation of a scalar loss (``symdl.derive(loss, wrt=[...])``).

    Returns:
        A callable taking torch tensors (or numbers for scalar symbols) by name and returning
        the loss as a 0-d tensor that ``backward()`` differentiates.

    Raises:
        BridgeError: ``der`` is not a derivation of a scalar.

    Example:
        >>> loss_fn = symdl.bridges.torch.function(der)   # doctest: +SKIP
        >>> loss_fn(X=X, w=w, y=y).backward()             # doctest: +SKIP
    """
    return SymdlFunction(bridge(der, framework="torch"))


def _check_tensor(name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor):
        return  # NumPy arrays and numbers: the kernel validates them (never differentiated)
    if value.device.type != "cpu":
        raise BridgeError(
            f"{name} is on {value.device}; symdl kernels run on the CPU: pass {name}.cpu() "
            "(and move the loss back with .to(device) if needed)")
    if value.dtype not in _DTYPES:
        raise BridgeError(
            f"{name} has dtype {value.dtype}; symdl kernels take float64 or float32 tensors: "
            f"convert it with {name}.double() or {name}.float()")


def _numpy(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach().numpy()
    return value


class _KernelFunction(torch.autograd.Function):
    """Forward: the kernel's value, its gradients kept; backward: them times ``grad_output``."""

    @staticmethod
    def forward(ctx, bridge_: Bridge, *args: object) -> torch.Tensor:
        wanted = [isinstance(a, torch.Tensor) and a.requires_grad for a in args]
        for name, want in zip(bridge_.names, wanted, strict=True):
            if want and name not in bridge_.parameters:
                raise BridgeError(
                    f"{name} requires grad, but the derivation has no gradient for it (its "
                    f"parameters are {sorted(bridge_.parameters)}): derive with {name} in "
                    f"wrt=[...], or pass {name}.detach()")
        arrays = {name: _numpy(a) for name, a in zip(bridge_.names, args, strict=True)}
        value, grads = bridge_.run(arrays)
        ctx.grads = [torch.from_numpy(grads[name]) if want else None
                     for name, want in zip(bridge_.names, wanted, strict=True)]
        ctx.save_for_backward(*[a if w else None for a, w in zip(args, wanted, strict=True)])
        ctx.bridge, ctx.arrays = bridge_, arrays  # for a second derivative (HVP kernel)
        return torch.from_numpy(value)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if not torch.is_grad_enabled():
            return (None, *[None if g is None else g * grad_output for g in ctx.grads])
        # backward(create_graph=True): the gradients must themselves be differentiable in
        # the parameters, through the Hessian-vector-product kernel.
        present = [g is not None for g in ctx.grads]
        inputs = [x for x, p in zip(ctx.saved_tensors, present, strict=True) if p]
        names = [n for n, p in zip(ctx.bridge.names, present, strict=True) if p]
        scaled = _Gradients.apply(ctx.bridge, ctx.arrays, names,
                                  [g for g in ctx.grads if g is not None], grad_output, *inputs)
        scaled = iter(scaled)
        return (None, *[next(scaled) if p else None for p in present])


class _Gradients(torch.autograd.Function):
    """The scaled gradients ``grad_output * g_p`` as a function of ``grad_output`` and the
    parameters: its backward is ``Σ_p <g_p, v_p>`` for ``grad_output`` and the
    Hessian-vector products ``grad_output * Σ_q H[p, q] v_q`` for the parameters."""

    @staticmethod
    def forward(ctx, bridge_: Bridge, arrays: dict, names: list[str],
                grads: list[torch.Tensor], grad_output: torch.Tensor, *inputs: torch.Tensor):
        ctx.bridge, ctx.arrays, ctx.names = bridge_, arrays, names
        ctx.save_for_backward(grad_output, *grads, *inputs)
        return tuple(g * grad_output for g in grads)

    @staticmethod
    def backward(ctx, *directions: torch.Tensor):
        saved = ctx.saved_tensors
        grad_output, grads = saved[0], saved[1:1 + len(ctx.names)]
        inputs = saved[1 + len(ctx.names):]
        bridge_: Bridge = ctx.bridge
        by_name = {n: v.detach().numpy() for n, v in zip(ctx.names, directions, strict=True)}
        dtype = grads[0].numpy().dtype
        v = {p: by_name.get(p, np.zeros(np.shape(ctx.arrays[p]), dtype=dtype))
             for p in bridge_.parameters}
        hvp = bridge_.hvp(ctx.arrays, v)
        d_output = sum((g * d.detach()).sum() for g, d in zip(grads, directions, strict=True))
        d_output = d_output.reshape(grad_output.shape)
        d_inputs = [torch.from_numpy(hvp[n]) * grad_output.detach() for n in ctx.names]
        if torch.is_grad_enabled():
            # A third derivative would differentiate numbers: refuse rather than give 0.
            d_output, *d_inputs = _ThirdOrderRefused.apply(
                [d_output, *d_inputs], grad_output, *directions, *inputs)
        return (None, None, None, None, d_output, *d_inputs)


class _ThirdOrderRefused(torch.autograd.Function):
    """Second derivatives, as a function of what they depend on, that refuses to be
    differentiated again (there are no third-order kernels)."""

    @staticmethod
    def forward(ctx, results: list[torch.Tensor], *depends_on: torch.Tensor):
        return tuple(r.clone() for r in results)

    @staticmethod
    def backward(ctx, *_):
        raise BridgeError(
            "third derivatives through symdl.bridges.torch are not supported: the second "
            "derivatives come from the Hessian-vector-product kernel, which is not "
            "differentiated again. torch.autograd.functional.hvp and .hessian differentiate "
            "a double backward once more (the double-backward trick); compute a "
            "Hessian-vector product as torch.autograd.grad(torch.autograd.grad(loss, w, "
            "create_graph=True), w, grad_outputs=v) instead")


__all__ = ["SymdlFunction", "function"]
