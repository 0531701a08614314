"""Cosine annealing: lr_min + (lr - lr_min)(1 + cos(pi t / T_max)) / 2.

Learning-rate schedules lower the step size as training proceeds (seed article 4.4,
"reducing it over epochs"). Cosine annealing (torch.optim.lr_scheduler.CosineAnnealingLR,
in its closed form) follows half a cosine from lr at step 0 to lr_min at step T_max: flat at
both ends, steepest in the middle, where its slope with respect to t is
-pi (lr - lr_min) / (2 T_max).

The schedule is written once in symdl.schedules, for a scalar step (this derivation) or a
column of steps (a kernel that fills the rates of a whole run).
"""

import numpy as np
import sympy as sp

import symdl
from symdl.schedules import cosine_annealing

t = sp.Symbol("t", nonnegative=True)  # the step, counted from 0
lr, lr_min, t_max = sp.symbols("lr lr_min T_max", positive=True)

SCHEDULE = cosine_annealing
PARAMETERS = (lr, t_max, lr_min)
RATE = SCHEDULE(t, *PARAMETERS)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """A run of T_max steps and a step within it."""
    t_max = float(rng.integers(10, 100))
    return {"T_max": np.asarray(t_max), "t": np.asarray(rng.uniform(0, t_max)),
            "lr_min": np.asarray(rng.uniform(0, 1e-3))}


def derivation() -> symdl.Derivation:
    return symdl.derive(RATE, wrt=[lr, lr_min, t])
