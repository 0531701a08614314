"""Nesterov momentum: b = mu b + grad, W - lr (grad + mu b), and its backward pass.

Nesterov's accelerated gradient evaluates the gradient after the momentum step; written on
the current gradient, as torch.optim.SGD(momentum=mu, nesterov=True) does, the parameter
moves by grad + mu b with the updated buffer b = mu b + grad (seed article 4.4, moving
averages of past gradients). The buffer starts at zero.

The update rule itself lives in symdl.optimizers (one definition, shared with the fused
training step); this file derives the backward pass through one step:
L = sum(G_W ⊙ W_new) + one such term per new state, with upstream gradients G. Its gradient
with respect to lr is the hypergradient (how the loss after the step changes with the
learning rate), and its gradients with respect to W, grad_W and the state are what unrolled
meta-learning backpropagates. ``symdl.optimizers.update_kernel_outputs(OPTIMIZER, W)`` gives
the stand-alone update kernel.
"""

import numpy as np
import sympy as sp

import symdl
import symdl.optimizers

n, d = sp.symbols("n d", integer=True, positive=True)
W = sp.MatrixSymbol("W", n, d)  # any parameter; every entry is updated alike
lr, mu = sp.Symbol("lr", positive=True), sp.Symbol("mu", positive=True)

OPTIMIZER = symdl.optimizers.Nesterov(lr=lr, momentum=mu)
STEPS, ARRAYS = symdl.optimizers.update_step_definition(OPTIMIZER, W)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Hyperparameters in their usual ranges."""
    values = {"lr": 10.0 ** rng.uniform(-3, -1), "mu": rng.uniform(0.5, 0.95)}
    return {k: np.asarray(v, dtype=float) for k, v in values.items()}


def derivation() -> symdl.Derivation:
    return symdl.derive(STEPS, wrt=[*ARRAYS, lr])
