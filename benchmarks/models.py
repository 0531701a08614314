"""Benchmark models the plan was not tuned on (issue 16), added before any tuning.

- M1  deeper ReLU MLP 256-512-512-512-10, softmax CE, value + 8 gradients, batch 256
- M2  LayerNorm (gain, shift) -> dense 256-1024 -> GELU (tanh form) -> dense 1024-256, MSE,
      value + 6 gradients, batch 1024
- M3  logistic-regression Hessian-vector product, X 20,000 x 1,000
- TM1, TM2, TM3  one Adam step of M1, of M2 and of logistic regression (X 4096 x 1000)

Each model is written once per framework (NumPy by hand, JAX ``jit``, PyTorch autograd, symdl)
and the same factory signature as ``peers.py``: ``factory(data) -> run``. Every array keeps
the dtype of ``data`` (float64 or float32): the runner converts the data, nothing here
hard-codes a precision. Training steps start from zero Adam states at step 1 and update the
parameters in place; ``run()`` returns the loss before the update and the parameters after.
"""

from __future__ import annotations

import math

import numpy as np

ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
LN_EPS = 1e-5
GELU_C = math.sqrt(2.0 / math.pi)

# --------------------------------------------------------------------------- data


def _rng(seed):
    return np.random.default_rng(seed)


def _onehot(rng, n, k):
    Y = np.zeros((n, k))
    Y[np.arange(n), rng.integers(0, k, n)] = 1.0
    return Y


MLP_WIDTHS = (256, 512, 512, 512, 10)
MLP_PARAMS = tuple(f"{p}{i}" for i in range(1, len(MLP_WIDTHS)) for p in ("W", "b"))
LN_PARAMS = ("gamma", "beta", "W1", "b1", "W2", "b2")
LOGREG_PARAMS = ("w",)


def setup_mlp(n, widths=MLP_WIDTHS):
    def setup():
        r = _rng(11)
        data = {"X": r.standard_normal((n, widths[0])), "Y": _onehot(r, n, widths[-1])}
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
            data[f"W{i}"] = r.standard_normal((a, b)) * math.sqrt(2.0 / a)
            data[f"b{i}"] = 0.1 * r.standard_normal((1, b))
        return data

    return setup


def setup_ln(n, d=256, h=1024):
    def setup():
        r = _rng(12)
        return {"X": 2.0 * r.standard_normal((n, d)) + 0.5, "Y": r.standard_normal((n, d)),
                "gamma": 1.0 + 0.1 * r.standard_normal((1, d)),
                "beta": 0.1 * r.standard_normal((1, d)),
                "W1": r.standard_normal((d, h)) / math.sqrt(d),
                "b1": 0.1 * r.standard_normal((1, h)),
                "W2": r.standard_normal((h, d)) / math.sqrt(h),
                "b2": 0.1 * r.standard_normal((1, d))}

    return setup


def setup_logreg(n, d, hvp):
    def setup():
        r = _rng(13)
        data = {"X": r.standard_normal((n, d)), "w": r.standard_normal((d, 1)) / math.sqrt(d),
                "y": (r.random((n, 1)) < 0.5).astype(np.float64)}
        if hvp:
            data["v"] = r.standard_normal((d, 1))
        return data

    return setup


# --------------------------------------------------------------------------- NumPy by hand


def _np_softmax_ce(Z, Y):
    n = Z.shape[0]
    m = Z.max(axis=1, keepdims=True)
    E = np.exp(Z - m)
    s = E.sum(axis=1, keepdims=True)
    value = np.mean(m[:, 0] + np.log(s[:, 0]) - np.einsum("ij,ij->i", Y, Z))
    E /= s
    E -= Y
    E /= n
    return value, E


def np_mlp(P, data):
    """Value and gradients (in ``MLP_PARAMS`` order) of the ReLU MLP."""
    layers = len(P) // 2
    A, Zs = [data["X"]], []
    for i in range(1, layers + 1):
        Z = A[-1] @ P[f"W{i}"] + P[f"b{i}"]
        Zs.append(Z)
        if i < layers:
            A.append(np.maximum(Z, 0))
    value, dZ = _np_softmax_ce(Zs[-1], data["Y"])
    grads = {}
    for i in range(layers, 0, -1):
        grads[f"W{i}"] = A[i - 1].T @ dZ
        grads[f"b{i}"] = dZ.sum(axis=0, keepdims=True)
        if i > 1:
            dZ = (dZ @ P[f"W{i}"].T) * (Zs[i - 2] > 0)
    return value, [grads[k] for k in MLP_PARAMS]


def np_ln(P, data):
    X, Y = data["X"], data["Y"]
    mu = X.mean(axis=1, keepdims=True)
    C = X - mu
    r = 1.0 / np.sqrt((C * C).mean(axis=1, keepdims=True) + LN_EPS)
    Xh = C * r
    Xn = Xh * P["gamma"] + P["beta"]
    Z1 = Xn @ P["W1"] + P["b1"]
    u = GELU_C * (Z1 + 0.044715 * Z1**3)
    t = np.tanh(u)
    A1 = 0.5 * Z1 * (1.0 + t)
    Z2 = A1 @ P["W2"] + P["b2"]
    D = Z2 - Y
    value = np.mean(D * D)
    dZ2 = (2.0 / D.size) * D
    dA1 = dZ2 @ P["W2"].T
    dZ1 = dA1 * (0.5 * (1.0 + t) + 0.5 * Z1 * (1.0 - t * t) * GELU_C
                 * (1.0 + 3 * 0.044715 * Z1 * Z1))
    dXn = dZ1 @ P["W1"].T
    grads = {"gamma": (dXn * Xh).sum(axis=0, keepdims=True),
             "beta": dXn.sum(axis=0, keepdims=True),
             "W1": Xn.T @ dZ1, "b1": dZ1.sum(axis=0, keepdims=True),
             "W2": A1.T @ dZ2, "b2": dZ2.sum(axis=0, keepdims=True)}
    return value, [grads[k] for k in LN_PARAMS]


def np_logreg(P, data):
    X, y = data["X"], data["y"]
    z = X @ P["w"]
    value = np.mean(np.logaddexp(0.0, z) - y * z)
    s = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
    return value, [X.T @ ((s - y) / X.shape[0])]


def numpy_grad(model):
    value_grad, names = {"M1": (np_mlp, MLP_PARAMS), "M2": (np_ln, LN_PARAMS)}[model]

    def factory(data):
        P = {k: data[k] for k in names}

        def run():
            value, grads = value_grad(P, data)
            return (value, *grads)

        return run

    return factory


def numpy_hvp(data):
    X, w, v = data["X"], data["w"], data["v"]

    def run():
        s = 0.5 * (1.0 + np.tanh(0.5 * (X @ w)))
        return (X.T @ ((s * (1.0 - s)) * (X @ v) / X.shape[0]),)

    return run


def numpy_train(model):
    value_grad, names = {"TM1": (np_mlp, MLP_PARAMS), "TM2": (np_ln, LN_PARAMS),
                         "TM3": (np_logreg, LOGREG_PARAMS)}[model]

    def factory(data):
        P = {k: data[k] for k in names}
        M = {k: np.zeros_like(P[k]) for k in names}
        V = {k: np.zeros_like(P[k]) for k in names}
        t = [0]
        b1, b2, lr, eps = ADAM["beta1"], ADAM["beta2"], ADAM["lr"], ADAM["eps"]

        def run():
            t[0] += 1
            value, grads = value_grad(P, data)
            c1, c2 = 1.0 - b1 ** t[0], 1.0 - b2 ** t[0]
            for k, g in zip(names, grads, strict=True):
                M[k] *= b1
                M[k] += (1.0 - b1) * g
                V[k] *= b2
                V[k] += (1.0 - b2) * g * g
                P[k] -= (lr / c1) * M[k] / (np.sqrt(V[k] / c2) + eps)
            return (value, *(P[k] for k in names))

        return run

    return factory


# --------------------------------------------------------------------------- JAX


def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _jax_loss(model):
    jax = _jax()
    jnp = jax.numpy

    def mlp(params, X, Y):
        A = X
        for i in range(0, len(params), 2):
            Z = A @ params[i] + params[i + 1]
            A = jnp.maximum(Z, 0) if i + 2 < len(params) else Z
        return jnp.mean(jax.nn.logsumexp(A, axis=1) - jnp.sum(Y * A, axis=1))

    def ln(params, X, Y):
        gamma, beta, W1, b1, W2, b2 = params
        mu = jnp.mean(X, axis=1, keepdims=True)
        C = X - mu
        Xn = C * jax.lax.rsqrt(jnp.mean(C * C, axis=1, keepdims=True) + LN_EPS) * gamma + beta
        A1 = jax.nn.gelu(Xn @ W1 + b1, approximate=True)
        D = A1 @ W2 + b2 - Y
        return jnp.mean(D * D)

    def logreg(params, X, y):
        z = X @ params[0]
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z)

    name = model[-2:]
    return {"M1": mlp, "M2": ln, "M3": logreg}[name], {
        "M1": MLP_PARAMS, "M2": LN_PARAMS, "M3": LOGREG_PARAMS}[name], {
        "M1": ("X", "Y"), "M2": ("X", "Y"), "M3": ("X", "y")}[name]


def jax_grad(model):
    def factory(data):
        jax = _jax()
        jnp = jax.numpy
        loss, names, inputs = _jax_loss(model)
        f = jax.jit(jax.value_and_grad(loss))
        params = tuple(jnp.asarray(data[k]) for k in names)
        args = [jnp.asarray(data[k]) for k in inputs]

        def run():
            value, grads = jax.block_until_ready(f(params, *args))
            return (value, *grads)

        return run

    return factory


def jax_hvp(data):
    jax = _jax()
    jnp = jax.numpy
    loss, _, _ = _jax_loss("M3")
    X, y, w, v = (jnp.asarray(data[k]) for k in ("X", "y", "w", "v"))

    def hvp(w, v, X, y):  # forward over reverse
        return jax.jvp(lambda u: jax.grad(loss)((u,), X, y)[0], (w,), (v,))[1]

    f = jax.jit(hvp)

    def run():
        return (jax.block_until_ready(f(w, v, X, y)),)

    return run


def jax_adam_step(loss):
    """One jitted Adam step (``ADAM``) of ``loss(params, *args)``, ``params`` a tuple:
    ``step(params, m, v, t, *args) -> (loss, params, m, v)``, the states donated."""
    jax = _jax()
    jnp = jax.numpy
    b1, b2, lr, eps = ADAM["beta1"], ADAM["beta2"], ADAM["lr"], ADAM["eps"]

    def step(params, m, v, t, *args):
        value, grads = jax.value_and_grad(loss)(params, *args)
        m = tuple(b1 * a + (1.0 - b1) * g for a, g in zip(m, grads, strict=True))
        v = tuple(b2 * a + (1.0 - b2) * g * g for a, g in zip(v, grads, strict=True))
        scale, c2 = lr / (1.0 - b1**t), 1.0 - b2**t
        params = tuple(p - scale * a / (jnp.sqrt(b / c2) + eps)
                       for p, a, b in zip(params, m, v, strict=True))
        return value, params, m, v

    return jax.jit(step, donate_argnums=(0, 1, 2))


def jax_train(model):
    def factory(data):
        jax = _jax()
        jnp = jax.numpy
        loss, names, inputs = _jax_loss(model)
        f = jax_adam_step(loss)
        state = {"p": tuple(jnp.asarray(data[k]) for k in names),
                 "m": tuple(jnp.zeros_like(jnp.asarray(data[k])) for k in names),
                 "v": tuple(jnp.zeros_like(jnp.asarray(data[k])) for k in names), "t": 0}
        args = [jnp.asarray(data[k]) for k in inputs]

        def run():
            state["t"] += 1
            value, state["p"], state["m"], state["v"] = jax.block_until_ready(
                f(state["p"], state["m"], state["v"], float(state["t"]), *args))
            return (value, *state["p"])

        return run

    return factory


# --------------------------------------------------------------------------- PyTorch


def _torch_loss(model):
    import torch

    F = torch.nn.functional

    def mlp(P, data):
        A = data["X"]
        layers = len(P) // 2
        for i in range(1, layers + 1):
            A = torch.addmm(P[f"b{i}"], A, P[f"W{i}"])
            if i < layers:
                A = torch.relu(A)
        return F.cross_entropy(A, data["Y"])

    def ln(P, data):
        X = data["X"]
        Xn = F.layer_norm(X, (X.shape[1],), P["gamma"][0], P["beta"][0], eps=LN_EPS)
        A1 = F.gelu(torch.addmm(P["b1"], Xn, P["W1"]), approximate="tanh")
        return F.mse_loss(torch.addmm(P["b2"], A1, P["W2"]), data["Y"])

    def logreg(P, data):
        return F.binary_cross_entropy_with_logits(data["X"] @ P["w"], data["y"])

    name = model[-2:]
    return {"M1": mlp, "M2": ln, "M3": logreg}[name], {
        "M1": MLP_PARAMS, "M2": LN_PARAMS, "M3": LOGREG_PARAMS}[name]


def _tensors(data, names, grad):
    import torch

    return {k: torch.from_numpy(data[k]).requires_grad_(grad) for k in names}


def torch_grad(model):
    def factory(data):
        import torch

        loss, names = _torch_loss(model)
        P = _tensors(data, names, True)
        D = _tensors(data, [k for k in data if k not in names], False)
        params = [P[k] for k in names]

        def run():
            value = loss(P, D)
            return (value.detach(), *torch.autograd.grad(value, params))

        return run

    return factory


def torch_hvp(data):
    import torch

    loss, _ = _torch_loss("M3")
    P = _tensors(data, ["w"], True)
    D = _tensors(data, ["X", "y"], False)
    v = torch.from_numpy(data["v"])

    def run():  # reverse over reverse (double backward)
        (g,) = torch.autograd.grad(loss(P, D), [P["w"]], create_graph=True)
        return torch.autograd.grad(g, [P["w"]], grad_outputs=v)

    return run


def torch_train(model):
    def factory(data):
        import torch

        loss, names = _torch_loss(model)
        P = _tensors(data, names, True)
        D = _tensors(data, [k for k in data if k not in names], False)
        optimizer = torch.optim.Adam([P[k] for k in names], lr=ADAM["lr"],
                                     betas=(ADAM["beta1"], ADAM["beta2"]), eps=ADAM["eps"])

        def run():
            optimizer.zero_grad(set_to_none=True)
            value = loss(P, D)
            value.backward()
            optimizer.step()
            return (value.detach(), *(P[k].detach() for k in names))

        return run

    return factory


# --------------------------------------------------------------------------- symdl


def symdl_derivation(model):
    import sympy as sp

    import symdl

    n, d, h, k = sp.symbols("n d h k", integer=True, positive=True)
    name = model[-2:]
    if name == "M1":
        widths = [sp.Symbol(f"h{i}", integer=True, positive=True)
                  for i in range(len(MLP_WIDTHS))]
        X = sp.MatrixSymbol("X", n, widths[0])
        Y = sp.MatrixSymbol("Y", n, widths[-1])
        steps, params, A = [], [], X
        layers = len(widths) - 1
        for i in range(1, layers + 1):
            W = sp.MatrixSymbol(f"W{i}", widths[i - 1], widths[i])
            b = sp.MatrixSymbol(f"b{i}", 1, widths[i])
            Z = sp.MatrixSymbol(f"Z{i}", n, widths[i])
            steps.append((Z, A * W + symdl.bias(b, n)))
            params += [W, b]
            if i < layers:
                A = sp.MatrixSymbol(f"A{i}", n, widths[i])
                steps.append((A, symdl.relu(Z)))
        steps.append((sp.Symbol("L"), symdl.softmax_cross_entropy(Z, Y)))
        return symdl.derive(steps, wrt=params)
    if name == "M2":
        X, Y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("Y", n, d)
        gamma, beta = sp.MatrixSymbol("gamma", 1, d), sp.MatrixSymbol("beta", 1, d)
        W1, b1 = sp.MatrixSymbol("W1", d, h), sp.MatrixSymbol("b1", 1, h)
        W2, b2 = sp.MatrixSymbol("W2", h, d), sp.MatrixSymbol("b2", 1, d)
        eps = sp.Symbol("ln_eps", positive=True)
        mu, C = sp.MatrixSymbol("mu", n, 1), sp.MatrixSymbol("C", n, d)
        var, r = sp.MatrixSymbol("var", n, 1), sp.MatrixSymbol("r", n, 1)
        Xn, Z1 = sp.MatrixSymbol("Xn", n, d), sp.MatrixSymbol("Z1", n, h)
        A1, Z2 = sp.MatrixSymbol("A1", n, h), sp.MatrixSymbol("Z2", n, d)
        steps = [
            (mu, symdl.mean(X, axis=1)),
            (C, X - symdl.broadcast(mu, n, d)),
            (var, symdl.mean(sp.HadamardPower(C, 2), axis=1)),
            (r, symdl.rsqrt(var + eps * sp.OneMatrix(n, 1))),
            (Xn, sp.hadamard_product(sp.hadamard_product(C, symdl.broadcast(r, n, d)),
                                     symdl.bias(gamma, n)) + symdl.bias(beta, n)),
            (Z1, Xn * W1 + symdl.bias(b1, n)),
            (A1, symdl.gelu(Z1)),
            (Z2, A1 * W2 + symdl.bias(b2, n)),
            (sp.Symbol("L"), symdl.mse(Z2, Y)),
        ]
        return symdl.derive(steps, wrt=[gamma, beta, W1, b1, W2, b2])
    X, w, y = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("y", n, 1)
    return symdl.derive(symdl.binary_cross_entropy_with_logits(X * w, y), wrt=[w])


def _inputs(kernel, data, extra=()):
    arrays = {k: v for k, v in data.items() if k in kernel.input_names}
    arrays.update({k: v for k, v in extra if k in kernel.input_names})
    return arrays


def symdl_grad(model):
    names = {"M1": MLP_PARAMS, "M2": LN_PARAMS}[model]

    def factory(data):
        kernel = symdl_derivation(model).compile()
        arrays = _inputs(kernel, data, [("ln_eps", LN_EPS)])
        dtype = data["X"].dtype
        out = {"value": np.empty(1, dtype)}
        out.update({f"grad:{p}": np.empty_like(data[p]) for p in names})

        def run():
            r = kernel(out=out, **arrays)
            return (r.value, *(r.grad[p] for p in names))

        return run

    return factory


def symdl_hvp(data):
    kernel = symdl_derivation("M3").compile(hvp=True, outputs=["hvp:w"])
    direction = kernel.hvp_inputs["w"]
    arrays = _inputs(kernel, data, [(direction, data["v"])])
    out = {"hvp:w": np.empty_like(data["w"])}

    def run():
        r = kernel(out=out, **arrays)
        return (r.hvp["w"],)

    return run


def symdl_train(model):
    names = {"TM1": MLP_PARAMS, "TM2": LN_PARAMS, "TM3": LOGREG_PARAMS}[model]

    def factory(data):
        from symdl.define.optimizers import Adam
        from symdl.training import TrainingStep

        der = symdl_derivation(model)
        optimizer = Adam(lr=ADAM["lr"], beta1=ADAM["beta1"], beta2=ADAM["beta2"],
                         eps=ADAM["eps"])
        params = {k: data[k] for k in names}
        hyper = {"ln_eps": LN_EPS} if model == "TM2" else None
        inputs = {k: v for k, v in data.items() if k not in names}
        warm = TrainingStep(der, optimizer, params, hyperparameters=hyper)
        warm(**inputs)  # compiles the kernel and its one-function driver (not timed)
        warm(**inputs)
        step = TrainingStep(der, optimizer, params, hyperparameters=hyper)

        def run():
            loss = step(**inputs)
            return (loss, *(step.params[k] for k in names))

        return run

    return factory


# --------------------------------------------------------------------------- tables


def workloads(Workload, quick: bool) -> list:
    """The models as ``peers.Workload``s (float64; the runner adds the float32 copies)."""
    n1 = 32 if quick else 256
    n2, d2, h2 = (64, 64, 256) if quick else (1024, 256, 1024)
    n3, d3 = (2000, 200) if quick else (20_000, 1000)
    nt3 = 512 if quick else 4096
    w = MLP_WIDTHS
    mlp_flops = 2.0 * n1 * 3 * sum(a * b for a, b in zip(w[:-1], w[1:], strict=True))
    ln_flops = 2.0 * n2 * 3 * 2 * d2 * h2
    return [
        Workload("M1", "M1", "ReLU MLP 256-512-512-512-10, softmax CE, value + 8 gradients",
                 {"n": n1}, setup_mlp(n1), atol_rel=1e-10, flops=mlp_flops),
        Workload("M2", "M2", f"LayerNorm -> dense {d2}-{h2} -> GELU(tanh) -> dense "
                 f"{h2}-{d2}, MSE, value + 6 gradients", {"n": n2, "d": d2, "h": h2},
                 setup_ln(n2, d2, h2), atol_rel=1e-10, flops=ln_flops),
        Workload("M3", "M3", "logistic-regression Hessian-vector product",
                 {"n": n3, "d": d3}, setup_logreg(n3, d3, True), atol_rel=1e-10,
                 bytes_moved=2 * 8 * n3 * d3, flops=4.0 * n3 * d3),
        Workload("TM1", "TM1", "Adam step of M1", {"n": n1}, setup_mlp(n1), rtol=1e-8,
                 atol_rel=1e-10, inplace=True, flops=mlp_flops),
        Workload("TM2", "TM2", "Adam step of M2", {"n": n2, "d": d2, "h": h2},
                 setup_ln(n2, d2, h2), rtol=1e-8, atol_rel=1e-10, inplace=True,
                 flops=ln_flops),
        Workload("TM3", "TM3", "Adam step of logistic regression", {"n": nt3, "d": d3},
                 setup_logreg(nt3, d3, False), rtol=1e-8, atol_rel=1e-10, inplace=True,
                 bytes_moved=2 * 8 * nt3 * d3, flops=4.0 * nt3 * d3),
    ]


IMPLS = {
    "numpy": {"M1": numpy_grad("M1"), "M2": numpy_grad("M2"), "M3": numpy_hvp,
              **{m: numpy_train(m) for m in ("TM1", "TM2", "TM3")}},
    "jax": {"M1": jax_grad("M1"), "M2": jax_grad("M2"), "M3": jax_hvp,
            **{m: jax_train(m) for m in ("TM1", "TM2", "TM3")}},
    "torch": {"M1": torch_grad("M1"), "M2": torch_grad("M2"), "M3": torch_hvp,
              **{m: torch_train(m) for m in ("TM1", "TM2", "TM3")}},
}

SYMDL = {"M1": symdl_grad("M1"), "M2": symdl_grad("M2"), "M3": symdl_hvp,
         **{m: symdl_train(m) for m in ("TM1", "TM2", "TM3")}}
