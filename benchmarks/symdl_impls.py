"""symdl's column of the kernel benchmark: each workload derived symbolically and compiled.

Same interface as ``peers.py``: ``factory(data) -> run``. Every factory derives its
definition, compiles it (not timed: compile time is reported separately by the runner through
the first call) and preallocates the result buffers, so ``run()`` allocates no results.
"""

from __future__ import annotations

import models
import sympy as sp

import symdl
from symdl import catalog as registry

N, n, d, k = sp.symbols("N n d k", integer=True, positive=True)


def symdl_w1(data):
    import numpy as np

    p, t = sp.MatrixSymbol("p", N, 1), sp.MatrixSymbol("t", N, 1)
    kernel = symdl.derive(symdl.mse(p, t), wrt=[p]).compile()
    arrays = {"p": data["p"].reshape(-1, 1), "t": data["t"].reshape(-1, 1)}
    out = {"value": np.empty(1, data["p"].dtype), "grad:p": np.empty_like(arrays["p"])}

    def run():
        r = kernel(out=out, **arrays)
        return r.value, r.grad["p"]

    return run


def _logistic(hessian: bool):
    X, w, y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
    loss = symdl.binary_cross_entropy_with_logits(X * w, y)
    return symdl.derive(loss, wrt=[w], hessian=hessian)


def _logistic_arrays(data):
    return {"X": data["X"], "w": data["w"].reshape(-1, 1), "y": data["y"].reshape(-1, 1)}


def symdl_w2(data):
    import numpy as np

    kernel = _logistic(False).compile()
    arrays = _logistic_arrays(data)
    out = {"value": np.empty(1, data["X"].dtype), "grad:w": np.empty_like(arrays["w"])}

    def run():
        r = kernel(out=out, **arrays)
        return r.value, r.grad["w"]

    return run


def symdl_w3(data):
    import numpy as np

    Z, Y = sp.MatrixSymbol("Z", n, k), sp.MatrixSymbol("Y", n, k)
    kernel = symdl.derive(symdl.softmax_cross_entropy(Z, Y), wrt=[Z]).compile()
    arrays = {"Z": data["Z"], "Y": data["Y"]}
    out = {"value": np.empty(1, data["Z"].dtype), "grad:Z": np.empty_like(data["Z"])}

    def run():
        r = kernel(out=out, **arrays)
        return r.value, r.grad["Z"]

    return run


def symdl_w4(data):
    import numpy as np

    kernel = registry.load("two_layer_mlp").derive().compile()
    arrays = {"X": data["X"], "Y": data["Y"], "W1": data["W1"], "W2": data["W2"],
              "b1": data["b1"].reshape(1, -1), "b2": data["b2"].reshape(1, -1)}
    out = {"value": np.empty(1, data["X"].dtype)}
    out.update({f"grad:{p}": np.empty_like(arrays[p]) for p in ("W1", "b1", "W2", "b2")})

    def run():
        r = kernel(out=out, **arrays)
        return r.value, r.grad["W1"], r.grad["b1"], r.grad["W2"], r.grad["b2"]

    return run


def symdl_w5(data):
    import numpy as np

    kernel = _logistic(True).compile(outputs=["hessian:w,w"])
    arrays = _logistic_arrays(data)
    arrays.pop("y")  # the Hessian does not depend on the labels
    size = data["X"].shape[1]
    out = {"hessian:w,w": np.empty((size, size), data["X"].dtype)}

    def run():
        r = kernel(out=out, **arrays)
        return (r.hessian["w", "w"],)

    return run


def symdl_w6(data):
    p, g, m, v = (sp.MatrixSymbol(name, N, 1) for name in ("p", "g", "m", "v"))
    b1, b2, lr, eps, bc1, bc2 = sp.symbols("beta1 beta2 lr eps bc1 bc2", positive=True)
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * sp.hadamard_product(g, g)
    denominator = (v_new / bc2).applyfunc(sp.sqrt) + eps * sp.OneMatrix(N, 1)
    p_new = p - lr / bc1 * sp.hadamard_product(m_new, sp.HadamardPower(denominator, -1))
    kernel = symdl.compile_expressions({"p": p_new, "m": m_new, "v": v_new}, "Adam update")
    b1v, b2v, t = data["beta1"], data["beta2"], data["step"]
    arrays = {"p": data["param"].reshape(-1, 1), "g": data["grad"].reshape(-1, 1),
              "m": data["m"].reshape(-1, 1), "v": data["v"].reshape(-1, 1),
              "beta1": b1v, "beta2": b2v, "lr": data["lr"], "eps": data["eps"],
              "bc1": 1.0 - b1v**t, "bc2": 1.0 - b2v**t}
    # In place: one fused loop reads each entry of p, m and v before it writes it.
    out = {"p": arrays["p"], "m": arrays["m"], "v": arrays["v"]}

    def run():
        kernel(out=out, **arrays)
        return data["param"], data["m"], data["v"]

    return run


def symdl_train(data):
    """The demo's fused training step (forward, backward, Adam) on the benchmark's data."""
    from peers import TRAIN_HYPER

    from symdl.define.optimizers import Adam
    from symdl.report.demo import network_derivation
    from symdl.training import TrainingStep

    hp = TRAIN_HYPER
    params = {"W1": data["W1"], "b1": data["b1"].reshape(1, -1), "W2": data["W2"],
              "b2": data["b2"].reshape(1, -1)}

    def build():
        return TrainingStep(network_derivation(),
                            Adam(lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"],
                                 eps=hp["eps"]),
                            params, hyperparameters={"lambda": hp["lambda"]})

    X, Y = data["X"], data["Y"]
    warm = build()  # compiles the kernel's loops and its one-function form (setup, not timed)
    warm(X=X, Y=Y)
    warm(X=X, Y=Y)
    step = build()

    def run():
        loss = step(X=X, Y=Y)
        return (loss, *step.params.values())

    return run


IMPLEMENTATIONS = {
    "W1": symdl_w1, "W2": symdl_w2, "W3": symdl_w3, "W4": symdl_w4, "W5": symdl_w5,
    "W6": symdl_w6, "T": symdl_train,
    **models.SYMDL,  # issue 16: M1-M3, TM1-TM3
}
