"""SGD: one gradient-descent step W - lr (grad + lambda W), and its backward pass.

Gradient descent (seed article 2.3) moves the parameter against its gradient, scaled by
the learning rate; the weight decay lambda adds the gradient of the L2 penalty lambda/2 |W|^2
(article 4.3). As an update kernel the step reads the parameter W and its gradient grad_W and
writes W_new; the fused training step substitutes the derived gradient for grad_W.

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
lr, lam = sp.Symbol("lr", positive=True), sp.Symbol("lambda", nonnegative=True)

OPTIMIZER = symdl.optimizers.SGD(lr=lr, weight_decay=lam)
STEPS, ARRAYS = symdl.optimizers.update_step_definition(OPTIMIZER, W)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Hyperparameters in their usual ranges."""
    values = {"lr": 10.0 ** rng.uniform(-3, -1), "lambda": rng.uniform(0, 0.1)}
    return {k: np.asarray(v, dtype=float) for k, v in values.items()}


def derivation() -> symdl.Derivation:
    return symdl.derive(STEPS, wrt=[*ARRAYS, lr])
