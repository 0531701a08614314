"""Adagrad: s = s + grad^2, W - lr grad / (sqrt(s) + eps), and its backward pass.

Adagrad accumulates every squared gradient, so coordinates that have moved a lot get small
steps and rarely updated ones keep large steps (seed article 4.4, adaptive optimizers). This
is torch.optim.Adagrad with no learning-rate decay and a zero initial accumulator; eps
(1e-10 there) keeps the first division finite.

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
lr, eps = sp.symbols("lr eps", positive=True)

OPTIMIZER = symdl.optimizers.Adagrad(lr=lr, eps=eps)
STEPS, ARRAYS = symdl.optimizers.update_step_definition(OPTIMIZER, W)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Hyperparameters in their usual ranges; the accumulated squares s_W positive."""
    values = {"lr": 10.0 ** rng.uniform(-3, -1), "eps": 1e-3}
    values["s_W"] = rng.uniform(0.5, 1.5, (dims["n"], dims["d"]))
    return {k: np.asarray(v, dtype=float) for k, v in values.items()}


def derivation() -> symdl.Derivation:
    return symdl.derive(STEPS, wrt=[*ARRAYS, lr])
