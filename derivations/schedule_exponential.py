"""Exponential decay: the learning rate lr gamma^t, multiplied by gamma every step.

Learning-rate schedules lower the step size as training proceeds (seed article 4.4,
"reducing it over epochs"). Exponential decay (torch.optim.lr_scheduler.ExponentialLR)
shrinks it by the same factor each step; its derivative with respect to the step,
lr gamma^t log(gamma), is the continuous-time rate of decay.

The schedule is written once in symdl.schedules, for a scalar step (this derivation) or a
column of steps (a kernel that fills the rates of a whole run).
"""

import numpy as np
import sympy as sp

import symdl
from symdl.schedules import exponential_decay

t = sp.Symbol("t", nonnegative=True)  # the step, counted from 0
lr, gamma = sp.symbols("lr gamma", positive=True)

SCHEDULE = exponential_decay
PARAMETERS = (lr, gamma)
RATE = SCHEDULE(t, *PARAMETERS)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """A step and a decay factor in (0, 1)."""
    return {"t": np.asarray(rng.uniform(0, 50)), "gamma": np.asarray(rng.uniform(0.8, 0.99))}


def derivation() -> symdl.Derivation:
    return symdl.derive(RATE, wrt=[lr, gamma, t])
