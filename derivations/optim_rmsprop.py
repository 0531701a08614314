"""RMSprop: v = alpha v + (1 - alpha) grad^2, W - lr grad / (sqrt(v) + eps).

RMSprop divides each coordinate's step by a running root-mean-square of its gradients, so
every parameter gets its own effective learning rate (seed article 4.4: "adapt the learning
rate for each parameter individually", from "moving averages of squared gradients"). The
square root and the division are elementwise; eps keeps the quotient finite where v is 0.

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
lr, alpha, eps = sp.symbols("lr alpha eps", positive=True)

OPTIMIZER = symdl.optimizers.RMSprop(lr=lr, alpha=alpha, eps=eps)
STEPS, ARRAYS = symdl.optimizers.update_step_definition(OPTIMIZER, W)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Hyperparameters in their usual ranges; the accumulated squares v_W positive."""
    values = {"lr": 10.0 ** rng.uniform(-3, -1), "alpha": rng.uniform(0.8, 0.99), "eps": 1e-3}
    values["v_W"] = rng.uniform(0.5, 1.5, (dims["n"], dims["d"]))
    return {k: np.asarray(v, dtype=float) for k, v in values.items()}


def derivation() -> symdl.Derivation:
    return symdl.derive(STEPS, wrt=[*ARRAYS, lr])
