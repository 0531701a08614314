"""AdamW: Adam with decoupled weight decay, W (1 - lr lambda) before the Adam step.

AdamW (Loshchilov and Hutter) decouples the weight decay from the gradient: instead of
adding lambda W to the gradient, where Adam's per-coordinate scaling would distort it, the
parameter shrinks by the factor 1 - lr lambda and then takes the Adam step of the plain
gradient (regularisation, seed article 4.3; adaptive optimizers, 4.4). This is
torch.optim.AdamW; t is the 1-based step number.

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
lr, beta1, beta2, eps = sp.symbols("lr beta1 beta2 eps", positive=True)
lam = sp.Symbol("lambda", nonnegative=True)

OPTIMIZER = symdl.optimizers.AdamW(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=lam)
STEPS, ARRAYS = symdl.optimizers.update_step_definition(OPTIMIZER, W)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Hyperparameters in their usual ranges; the accumulated squares v_W positive."""
    values = {"lr": 10.0 ** rng.uniform(-3, -1), "beta1": rng.uniform(0.5, 0.95),
              "beta2": rng.uniform(0.9, 0.999), "eps": 1e-3, "lambda": rng.uniform(0, 0.1),
              "t": float(rng.integers(1, 10))}
    values["v_W"] = rng.uniform(0.5, 1.5, (dims["n"], dims["d"]))
    return {k: np.asarray(v, dtype=float) for k, v in values.items()}


def derivation() -> symdl.Derivation:
    return symdl.derive(STEPS, wrt=[*ARRAYS, lr])
