"""Step decay: the learning rate lr gamma^floor(t / s), multiplied by gamma every s steps.

Learning-rate schedules lower the step size as training proceeds (seed article 4.4,
"reducing it over epochs"): large steps early to make progress, small ones late to settle.
Step decay (torch.optim.lr_scheduler.StepLR) holds the rate for s steps at a time. floor is
piecewise constant, so its derivative is taken as 0 (there is none at the jumps).

The schedule is written once in symdl.schedules, for a scalar step (this derivation: how the
rate responds to lr and gamma) or a column of steps (a kernel that fills the rates of a whole
run: ``symdl.compile_expressions({"lr": step_decay(steps, ...)})``).
"""

import numpy as np
import sympy as sp

import symdl
from symdl.schedules import step_decay

t = sp.Symbol("t", nonnegative=True)  # the step, counted from 0
lr, gamma, s = sp.symbols("lr gamma s", positive=True)

SCHEDULE = step_decay
PARAMETERS = (lr, gamma, s)
RATE = SCHEDULE(t, *PARAMETERS)


def sample_inputs(rng: np.random.Generator, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """A step, a decay factor in (0, 1) and a step size, away from the jumps of floor."""
    return {"t": np.asarray(float(rng.integers(0, 50)) + 0.5), "gamma": np.asarray(
        rng.uniform(0.1, 0.9)), "s": np.asarray(float(rng.integers(2, 10)))}


def derivation() -> symdl.Derivation:
    return symdl.derive(RATE, wrt=[lr, gamma])
