"""The loss, regulariser and model derivations (derivations/loss_*, reg_*, model_*).

Every file is derived and compiled; the kernel's value and gradients are checked against
central finite differences of the kernel's own value, against a NumPy implementation of the
value and of the hand-derived gradient written here, and, where PyTorch 2.13.0 has the loss
(torch.nn.functional, torch.distributions, torch.optim), against PyTorch's value and autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from symdl import catalog as registry
from symdl.ir.assumptions import conform

DIMS = {"n": 5, "k": 3, "d": 4, "m": 6, "p": 7}
_KERNELS: dict[str, tuple] = {}


def _kernel(name: str):
    """(module, derivation, compiled kernel), compiled once per test session."""
    if name not in _KERNELS:
        entry = registry.load(name)
        der = entry.derive()
        _KERNELS[name] = (entry.module, der, der.compile())
    return _KERNELS[name]


def _inputs(name: str, seed: int = 0) -> dict[str, np.ndarray | float]:
    module, der, _ = _kernel(name)
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray | float] = {}
    for leaf_name, leaf in der.leaves.items():
        shape = tuple(int(s.subs({sym: DIMS[str(sym)] for sym in s.free_symbols}))
                      if hasattr(s, "subs") else int(s) for s in leaf.shape)
        # Declared assumptions hold (lambda > 0): kernels refuse values that break them.
        values[leaf_name] = conform(leaf.symbol, rng.normal(size=shape))
    if name in ("model_logistic_newton",):
        values["y"] = rng.integers(0, 2, values["y"].shape).astype(float)
    hook = getattr(module, "sample_inputs", None)
    if hook is not None:
        values.update(hook(rng, DIMS))
    return {key: (float(v) if np.ndim(v) == 0 else np.ascontiguousarray(v, dtype=float))
            for key, v in values.items()}


def _scalar_name(p) -> str:
    return str(getattr(p, "name", p))


# ---------------------------------------------------------------------------------------------
# Independent NumPy implementations: value and hand-derived gradients.


def _lse(z):
    m = z.max(axis=1, keepdims=True)
    return m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z):
    return 0.5 * (1 + np.tanh(z / 2))


def np_mse(P, T):  # noqa: N803
    r = P - T
    return np.mean(r**2), {"P": 2 * r / r.size, "T": -2 * r / r.size}


def np_mae(P, T):  # noqa: N803
    r = P - T
    return np.mean(np.abs(r)), {"P": np.sign(r) / r.size, "T": -np.sign(r) / r.size}


def np_huber(P, T, delta):  # noqa: N803
    r = P - T
    a = np.abs(r)
    value = np.mean(np.where(a <= delta, r**2 / 2, delta * (a - delta / 2)))
    g = np.clip(r, -delta, delta) / r.size
    return value, {"P": g, "T": -g, "delta": np.mean(np.maximum(a - delta, 0))}


def np_bce_logits(Z, Y):  # noqa: N803
    value = np.mean(np.logaddexp(0, Z) - Y * Z)
    return value, {"Z": (_sigmoid(Z) - Y) / Z.size, "Y": -Z / Z.size}


def np_cross_entropy(Z, Y):  # noqa: N803
    n = Z.shape[0]
    value = -np.sum(Y * (Z - _lse(Z))) / n
    return value, {"Z": (_softmax(Z) - Y) / n}


def np_hinge(Z, Y):  # noqa: N803
    s = 1 - Y * Z
    return np.mean(np.maximum(s, 0)), {"Z": -Y * (s > 0) / Z.size}


def np_squared_hinge(Z, Y):  # noqa: N803
    h = np.maximum(1 - Y * Z, 0)
    return np.mean(h**2), {"Z": -2 * Y * h / Z.size}


def np_entropy(P):  # noqa: N803
    n = P.shape[0]
    return -np.sum(P * np.log(P)) / n, {"P": -(np.log(P) + 1) / n}


def np_entropy_logits(Z):  # noqa: N803
    n = Z.shape[0]
    p = _softmax(Z)
    logp = Z - _lse(Z)
    value = -np.sum(p * logp) / n
    return value, {"Z": -p * (logp - np.sum(p * logp, axis=1, keepdims=True)) / n}


def np_kl_categorical(Z, T):  # noqa: N803
    n = Z.shape[0]
    p, q = _softmax(T), _softmax(Z)
    diff = (T - _lse(T)) - (Z - _lse(Z))
    value = np.sum(p * diff) / n
    return value, {"Z": (q - p) / n,
                   "T": p * (diff - np.sum(p * diff, axis=1, keepdims=True)) / n}


def np_kl_gaussian(mu, s, m, t):
    n = mu.shape[0]
    value = np.sum(t - s + (np.exp(s) + (mu - m) ** 2) / np.exp(t) - 1) / (2 * n)
    g_mu = (mu - m) / np.exp(t) / n
    return value, {"mu": g_mu, "m": -g_mu, "s": (np.exp(s - t) - 1) / (2 * n),
                   "t": (1 - (np.exp(s) + (mu - m) ** 2) / np.exp(t)) / (2 * n)}


def np_gaussian_nll(mu, v, T):  # noqa: N803
    r = mu - T
    size = r.size
    value = np.mean(np.log(v) + r**2 / v + np.log(2 * np.pi)) / 2
    return value, {"mu": r / v / size, "T": -r / v / size,
                   "v": (1 / v - r**2 / v**2) / (2 * size)}


def np_l1(W, lam):  # noqa: N803
    return lam * np.abs(W).sum(), {"W": lam * np.sign(W), "lambda": np.abs(W).sum()}


def np_l2(W, lam):  # noqa: N803
    return lam / 2 * np.sum(W**2), {"W": lam * W, "lambda": np.sum(W**2) / 2}


def np_elastic_net(W, lam, alpha):  # noqa: N803
    l1, l2 = np.abs(W).sum(), np.sum(W**2) / 2
    value = lam * (alpha * l1 + (1 - alpha) * l2)
    return value, {"W": lam * (alpha * np.sign(W) + (1 - alpha) * W),
                   "lambda": alpha * l1 + (1 - alpha) * l2, "alpha": lam * (l1 - l2)}


def np_normal_equations(X, y, w):  # noqa: N803
    r = X @ w - y
    return np.sum(r**2) / 2, {"w": X.T @ r}


def np_logistic_newton(X, y, w, lam):  # noqa: N803
    z = X @ w
    n = X.shape[0]
    value = np.mean(np.logaddexp(0, z) - y * z) + lam / 2 * np.sum(w**2)
    return value, {"w": X.T @ (_sigmoid(z) - y) / n + lam * w}


def np_map_gaussian_prior(X, y, w, sigma, tau):  # noqa: N803
    r = X @ w - y
    n, d = X.shape
    value = (np.sum(r**2) / (2 * sigma**2) + np.sum(w**2) / (2 * tau**2) + n * np.log(sigma)
             + d * np.log(tau) + (n + d) * np.log(2 * np.pi) / 2)
    return value, {"w": X.T @ r / sigma**2 + w / tau**2,
                   "sigma": n / sigma - np.sum(r**2) / sigma**3,
                   "tau": d / tau - np.sum(w**2) / tau**3}


def np_gaussian_mvn_nll(X, mu, S):  # noqa: N803
    n, d = X.shape
    r = X - mu
    s_inv = np.linalg.inv(S)
    value = (np.linalg.slogdet(S)[1] + np.trace(s_inv @ r.T @ r) / n + d * np.log(2 * np.pi)) / 2
    return value, {"mu": -(r.sum(axis=0, keepdims=True) @ (s_inv + s_inv.T)) / (2 * n),
                   "S": (s_inv.T - s_inv.T @ r.T @ r @ s_inv.T / n) / 2}


def np_ridge_closed_form(X, y, Xv, yv, lam):  # noqa: N803
    a = X.T @ X + lam * np.eye(X.shape[1])
    w = np.linalg.solve(a, X.T @ y)
    r = Xv @ w - yv
    m = Xv.shape[0]
    g = np.linalg.solve(a, Xv.T @ r / m)  # A is symmetric: A^{-T} = A^{-1}
    return np.sum(r**2) / (2 * m), {"lambda": -float((g.T @ w)[0, 0]),
                                    "X": (y - X @ w) @ g.T - X @ g @ w.T}


def np_matrix_factorization(R, M, U, V, nnz, lam):  # noqa: N803
    e = M * (U @ V.T - R)
    value = np.sum(e**2) / nnz + lam * (np.sum(U**2) + np.sum(V**2))
    return value, {"U": 2 * e @ V / nnz + 2 * lam * U, "V": 2 * e.T @ U / nnz + 2 * lam * V}


def np_pca(X, W):  # noqa: N803
    e = X @ W @ W.T - X
    n = X.shape[0]
    return np.sum(e**2) / n, {"W": 2 * (X.T @ e @ W + e.T @ X @ W) / n}


def np_nuclear_norm(W, lam):  # noqa: N803
    u, s, vt = np.linalg.svd(W, full_matrices=False)
    return lam * np.sum(s), {"W": lam * u @ vt, "lambda": float(np.sum(s))}


NUMPY_ORACLES: dict[str, Callable] = {
    "loss_mse": np_mse, "loss_mae": np_mae, "loss_huber": np_huber,
    "loss_bce_logits": np_bce_logits, "loss_cross_entropy": np_cross_entropy,
    "loss_hinge": np_hinge, "loss_squared_hinge": np_squared_hinge,
    "loss_entropy": np_entropy, "loss_entropy_logits": np_entropy_logits,
    "loss_kl_categorical": np_kl_categorical, "loss_kl_gaussian": np_kl_gaussian,
    "loss_gaussian_nll": np_gaussian_nll,
    "reg_l1": np_l1, "reg_l2": np_l2, "reg_elastic_net": np_elastic_net,
    "model_normal_equations": np_normal_equations,
    "model_logistic_newton": np_logistic_newton,
    "model_map_gaussian_prior": np_map_gaussian_prior,
    "loss_gaussian_mvn_nll": np_gaussian_mvn_nll,
    "model_ridge_closed_form": np_ridge_closed_form,
    "model_matrix_factorization": np_matrix_factorization,
    "model_pca": np_pca,
    "reg_nuclear_norm": np_nuclear_norm,
}
NAMES = sorted(NUMPY_ORACLES)
# Models whose oracle is torch, in a file of their own.
COVERED_ELSEWHERE = {"model_cnn": "test_cnn.py", "model_transformer_block":
                     "test_transformer_block.py"}


def test_every_loss_regulariser_and_model_file_is_covered_here() -> None:
    mine = [name for name in registry.names()
            if name.startswith(("loss_", "reg_", "model_"))]
    assert sorted(mine) == sorted([*NAMES, *COVERED_ELSEWHERE])
    here = Path(__file__).parent
    for name, test_file in COVERED_ELSEWHERE.items():
        assert f'"{name}"' in (here / test_file).read_text()


def _call_oracle(name: str, values: dict):
    oracle = NUMPY_ORACLES[name]
    args = oracle.__code__.co_varnames[: oracle.__code__.co_argcount]
    return oracle(*[values["lambda" if a == "lam" else a] for a in args])


@pytest.mark.parametrize("name", NAMES)
def test_kernel_matches_numpy_oracle_and_finite_differences(name: str) -> None:
    _, der, kernel = _kernel(name)
    values = _inputs(name)
    out = kernel(**values)
    value, grads = _call_oracle(name, values)
    np.testing.assert_allclose(out.value, value, rtol=1e-12, atol=1e-12)
    assert {_scalar_name(p) for p in der.wrt} == set(grads)
    for pname, expected in grads.items():
        np.testing.assert_allclose(out.grad[pname], expected, rtol=1e-10, atol=1e-12,
                                   err_msg=f"{name}: gradient of {pname}")
        x0 = np.asarray(values[pname], dtype=float)
        numeric = np.zeros_like(x0)
        for idx in np.ndindex(x0.shape):
            step = 1e-6 * max(1.0, abs(x0[idx]))
            up, down = x0.copy(), x0.copy()
            up[idx] += step
            down[idx] -= step
            f_up = kernel(**{**values, pname: up if x0.ndim else float(up)}).value
            f_down = kernel(**{**values, pname: down if x0.ndim else float(down)}).value
            numeric[idx] = (f_up - f_down) / (2 * step)
        np.testing.assert_allclose(out.grad[pname], numeric, rtol=1e-6, atol=1e-8,
                                   err_msg=f"{name}: finite differences of {pname}")


# ---------------------------------------------------------------------------------------------
# PyTorch 2.13.0 as a second oracle: value and autograd gradients.


def _torch_kl_gaussian(mu, s, m, t):
    q = torch.distributions.Normal(mu, torch.exp(s / 2))
    p = torch.distributions.Normal(m, torch.exp(t / 2))
    return torch.distributions.kl_divergence(q, p).sum() / mu.shape[0]


def _torch_ridge(X, y, Xv, yv, lam):  # noqa: N803
    eye = torch.eye(X.shape[1], dtype=torch.float64)
    w = torch.linalg.inv(X.T @ X + lam * eye) @ X.T @ y
    return (Xv @ w - yv).pow(2).sum() / (2 * Xv.shape[0])


TORCH_ORACLES: dict[str, tuple[tuple[str, ...], Callable]] = {
    "loss_mse": (("P", "T"), lambda P, T: F.mse_loss(P, T)),
    "loss_mae": (("P", "T"), lambda P, T: F.l1_loss(P, T)),
    "loss_huber": (("P", "T", "delta"),
                   lambda P, T, delta: F.huber_loss(P, T, delta=delta.item())),
    "loss_bce_logits": (("Z", "Y"), lambda Z, Y: F.binary_cross_entropy_with_logits(Z, Y)),
    "loss_cross_entropy": (("Z", "Y"), lambda Z, Y: F.cross_entropy(Z, Y)),
    "loss_hinge": (("Z", "Y"), lambda Z, Y: torch.clamp(1 - Y * Z, min=0).mean()),
    "loss_squared_hinge": (("Z", "Y"), lambda Z, Y: (torch.clamp(1 - Y * Z, min=0) ** 2).mean()),
    "loss_entropy": (("P",), lambda P: -(P * torch.log(P)).sum() / P.shape[0]),
    "loss_entropy_logits": (
        ("Z",), lambda Z: torch.distributions.Categorical(logits=Z).entropy().mean()),
    "loss_kl_categorical": (("Z", "T"), lambda Z, T: F.kl_div(
        F.log_softmax(Z, dim=1), F.log_softmax(T, dim=1), reduction="batchmean",
        log_target=True)),
    "loss_kl_gaussian": (("mu", "s", "m", "t"), _torch_kl_gaussian),
    "loss_gaussian_nll": (("mu", "T", "v"), lambda mu, T, v: F.gaussian_nll_loss(
        mu, T, v, full=True, eps=1e-300)),
    "reg_l1": (("W", "lambda"), lambda W, lam: lam * W.abs().sum()),
    "reg_l2": (("W", "lambda"), lambda W, lam: lam / 2 * (W**2).sum()),
    "reg_elastic_net": (("W", "lambda", "alpha"), lambda W, lam, alpha: lam * (
        alpha * W.abs().sum() + (1 - alpha) / 2 * (W**2).sum())),
    "loss_gaussian_mvn_nll": (("X", "mu", "S"), lambda X, mu, S: (
        torch.linalg.slogdet(S)[1]
        + torch.trace(torch.linalg.solve(S, (X - mu).T @ (X - mu))) / X.shape[0]
        + X.shape[1] * np.log(2 * np.pi)) / 2),
    "model_ridge_closed_form": (("X", "y", "Xv", "yv", "lambda"), _torch_ridge),
    "model_matrix_factorization": (("R", "M", "U", "V", "nnz", "lambda"), lambda R, M, U, V,
                                   nnz, lam: (M * (U @ V.T - R)).pow(2).sum() / nnz
                                   + lam * (U.pow(2).sum() + V.pow(2).sum())),
    "model_pca": (("X", "W"), lambda X, W: (X @ W @ W.T - X).pow(2).sum() / X.shape[0]),
    "reg_nuclear_norm": (("W", "lambda"),
                         lambda W, lam: lam * torch.linalg.matrix_norm(W, "nuc")),
}


def _against_torch(kernel, values: dict, argnames, loss_fn) -> tuple[dict, object]:
    """The kernel's value against the torch oracle's (float64, 1e-12); returns the oracle's
    tensors (their ``.grad`` filled by backward) and the kernel's result."""
    tensors = {a: torch.tensor(values[a], dtype=torch.float64, requires_grad=True)
               for a in argnames}
    loss = loss_fn(*tensors.values())
    loss.backward()
    out = kernel(**values)
    np.testing.assert_allclose(out.value, loss.item(), rtol=1e-12)
    return tensors, out


@pytest.mark.parametrize("name", sorted(TORCH_ORACLES))
def test_value_and_gradients_match_pytorch(name: str) -> None:
    _, der, kernel = _kernel(name)
    values = _inputs(name, seed=3)
    tensors, out = _against_torch(kernel, values, *TORCH_ORACLES[name])
    wrt = {_scalar_name(p) for p in der.wrt}
    for a, tensor in tensors.items():
        if a in wrt and not (name == "loss_huber" and a == "delta"):
            np.testing.assert_allclose(out.grad[a], tensor.grad.numpy(), rtol=1e-10,
                                       atol=1e-13, err_msg=f"{name}: gradient of {a}")


def test_entropy_of_probabilities_matches_torch_categorical() -> None:
    _, _, kernel = _kernel("loss_entropy")
    values = _inputs("loss_entropy", seed=5)
    expected = torch.distributions.Categorical(probs=torch.tensor(values["P"])).entropy().mean()
    np.testing.assert_allclose(kernel(**values).value, expected.item(), rtol=1e-12)


def test_kl_gaussian_against_the_standard_normal_is_the_vae_term() -> None:
    _, _, kernel = _kernel("loss_kl_gaussian")
    values = _inputs("loss_kl_gaussian", seed=6)
    values["m"] = np.zeros_like(values["mu"])
    values["t"] = np.zeros_like(values["mu"])
    mu, s = values["mu"], values["s"]
    vae = -0.5 * np.sum(1 + s - mu**2 - np.exp(s)) / mu.shape[0]
    out = kernel(**values)
    np.testing.assert_allclose(out.value, vae, rtol=1e-12)
    np.testing.assert_allclose(out.grad["mu"], mu / mu.shape[0], rtol=1e-12)
    np.testing.assert_allclose(out.grad["s"], (np.exp(s) - 1) / (2 * mu.shape[0]), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Kinks: the stated subgradient conventions, where finite differences do not apply.


@pytest.mark.parametrize("name", ["reg_l1", "reg_elastic_net"])
def test_l1_subgradient_at_zero_is_zero_like_torch(name: str) -> None:
    _, _, kernel = _kernel(name)
    values = _inputs(name, seed=8)
    values["W"][0, :] = 0.0
    values["W"][:, 1] = 0.0
    out = kernel(**values)
    argnames, loss_fn = TORCH_ORACLES[name]
    tensors = {a: torch.tensor(values[a], dtype=torch.float64, requires_grad=True)
               for a in argnames}
    loss_fn(*tensors.values()).backward()
    np.testing.assert_array_equal(out.grad["W"][values["W"] == 0], 0.0)
    np.testing.assert_allclose(out.grad["W"], tensors["W"].grad.numpy(), rtol=1e-13)


def test_mae_subgradient_at_a_tie_is_zero() -> None:
    _, _, kernel = _kernel("loss_mae")
    values = _inputs("loss_mae", seed=9)
    values["T"][1] = values["P"][1]
    out = kernel(**values)
    np.testing.assert_array_equal(out.grad["P"][1], 0.0)
    p = torch.tensor(values["P"], requires_grad=True)
    F.l1_loss(p, torch.tensor(values["T"])).backward()
    np.testing.assert_allclose(out.grad["P"], p.grad.numpy(), rtol=1e-13)


def test_huber_gradient_is_the_clipped_residual_on_both_branches() -> None:
    _, _, kernel = _kernel("loss_huber")
    p = np.array([[-3.0, -0.5, 0.0], [0.25, 2.0, 0.99]])
    t = np.zeros_like(p)
    out = kernel(P=p, T=t, delta=1.0)
    np.testing.assert_allclose(out.grad["P"] * p.size, np.clip(p, -1, 1), rtol=1e-14)
    np.testing.assert_allclose(
        out.value, np.mean(np.where(np.abs(p) <= 1, p**2 / 2, np.abs(p) - 0.5)), rtol=1e-14)


@pytest.mark.parametrize("name", ["loss_hinge", "loss_squared_hinge"])
def test_hinge_losses_match_torch_multi_margin_for_two_classes(name: str) -> None:
    # For two classes with scores (-z/2, z/2), multi_margin_loss(p=1 or 2) is the binary
    # (squared) hinge of z with label y in {-1, 1}, per example.
    _, _, kernel = _kernel(name)
    rng = np.random.default_rng(10)
    z = rng.normal(size=(7, 1)) * 2
    y = rng.choice([-1.0, 1.0], (7, 1))
    scores = torch.tensor(np.hstack([-z / 2, z / 2]), requires_grad=True)
    target = torch.tensor(((y[:, 0] + 1) / 2).astype(np.int64))
    power = 1 if name == "loss_hinge" else 2
    loss = F.multi_margin_loss(scores, target, p=power) * 2  # it divides by the class count
    loss.backward()
    out = kernel(Z=z, Y=y)
    np.testing.assert_allclose(out.value, loss.item(), rtol=1e-12)
    dz = (scores.grad[:, 1] - scores.grad[:, 0]).numpy()[:, None] / 2
    np.testing.assert_allclose(out.grad["Z"], dz, rtol=1e-12, atol=1e-15)


def test_l2_gradient_step_is_torch_sgd_weight_decay() -> None:
    _, _, kernel = _kernel("reg_l2")
    values = _inputs("reg_l2", seed=11)
    lr = 0.1
    w = torch.tensor(values["W"].copy(), requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=lr, weight_decay=values["lambda"])
    w.grad = torch.zeros_like(w)
    optimizer.step()
    stepped = values["W"] - lr * kernel(**values).grad["W"]
    np.testing.assert_allclose(stepped, w.detach().numpy(), rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Models: Hessians, the normal equations, Newton's method and the MAP estimate.


@pytest.mark.parametrize("name", ["model_normal_equations", "model_logistic_newton",
                                  "model_map_gaussian_prior"])
def test_model_hessian_matches_torch_autograd(name: str) -> None:
    _, der, kernel = _kernel(name)
    values = _inputs(name, seed=12)
    argnames = [a for a in NUMPY_ORACLES[name].__code__.co_varnames[
        : NUMPY_ORACLES[name].__code__.co_argcount]]
    constants = {a: torch.tensor(values["lambda" if a == "lam" else a], dtype=torch.float64)
                 for a in argnames}

    def torch_value(w):
        args = {**constants, "w": w}
        X, y = args["X"], args["y"]  # noqa: N806
        r = X @ w
        if name == "model_normal_equations":
            return ((r - y) ** 2).sum() / 2
        if name == "model_logistic_newton":
            return (F.binary_cross_entropy_with_logits(r, y)
                    + args["lam"] / 2 * (w**2).sum())
        likelihood = torch.distributions.Normal(r, args["sigma"]).log_prob(y).sum()
        prior = torch.distributions.Normal(0.0, args["tau"]).log_prob(w).sum()
        return -(likelihood + prior)

    w0 = torch.tensor(values["w"])
    expected = torch.autograd.functional.hessian(torch_value, w0).reshape(4, 4).numpy()
    out = kernel(**values)
    np.testing.assert_allclose(out.value, torch_value(w0).item(), rtol=1e-12)
    np.testing.assert_allclose(out.hessian["w", "w"].reshape(4, 4), expected, rtol=1e-10,
                               atol=1e-13)


def test_normal_equations_solve_matches_lstsq_and_the_pseudo_inverse() -> None:
    module, _, kernel = _kernel("model_normal_equations")
    rng = np.random.default_rng(13)
    X, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 1))  # noqa: N806
    w = module.solve(kernel, X, y)
    np.testing.assert_allclose(w, np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-10)
    assert np.linalg.norm(X.T @ (X @ w - y)) < 1e-10
    # The closed form (X^T X)^{-1} X^T y as a kernel of its own (a linear solve inside).
    closed = module.solution_kernel()(X=X, y=y).outputs["w"]
    np.testing.assert_allclose(closed, np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-10)
    # Fewer examples than features: X^T X is singular; the least-norm solution is X^+ y.
    X, y = rng.normal(size=(3, 4)), rng.normal(size=(3, 1))  # noqa: N806
    w = module.solve(kernel, X, y)
    np.testing.assert_allclose(w, np.linalg.pinv(X) @ y, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(X @ w, y, rtol=1e-9, atol=1e-12)


def test_newton_converges_in_at_most_ten_steps_to_the_gradient_descent_optimum() -> None:
    module, der, _ = _kernel("model_logistic_newton")
    kernel = module.newton_step_kernel(der)
    rng = np.random.default_rng(14)
    X = rng.normal(size=(60, 4))  # noqa: N806
    y = (X @ np.array([[1.5], [-2.0], [0.5], [0.0]]) + 0.3 * rng.normal(size=(60, 1)) > 0)
    y = y.astype(float)
    lam = 0.05
    iterates = module.newton(kernel, X, y, lam, iterations=10)
    assert len(iterates) <= 11
    w_newton = iterates[-1]
    _, grads = np_logistic_newton(X, y, w_newton, lam)
    assert np.linalg.norm(grads["w"]) < 1e-12
    w = np.zeros((4, 1))  # plain gradient descent, NumPy only
    for _ in range(3000):
        w -= 1.0 * np_logistic_newton(X, y, w, lam)[1]["w"]
    np.testing.assert_allclose(w_newton, w, rtol=1e-6, atol=1e-8)


def test_map_estimate_is_ridge_regression_with_lambda_sigma2_over_tau2() -> None:
    _, _, kernel = _kernel("model_map_gaussian_prior")
    rng = np.random.default_rng(15)
    X, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 1))  # noqa: N806
    sigma, tau = 0.7, 0.4
    w0 = np.zeros((4, 1))
    out = kernel(X=X, y=y, w=w0, sigma=sigma, tau=tau)
    w_map = w0 - np.linalg.solve(out.hessian["w", "w"].reshape(4, 4), out.grad["w"])
    ridge = np.linalg.solve(X.T @ X + sigma**2 / tau**2 * np.eye(4), X.T @ y)
    np.testing.assert_allclose(w_map, ridge, rtol=1e-10)
    assert np.linalg.norm(kernel(X=X, y=y, w=w_map, sigma=sigma, tau=tau).grad["w"]) < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_derive_prints_every_step(name: str) -> None:
    from symdl.cli import main

    assert main(["derive", name]) == 0


def test_huber_and_absolute_vocabulary() -> None:
    import sympy as sp

    import symdl

    n, k = sp.symbols("n k", integer=True, positive=True)
    r = sp.MatrixSymbol("R", n, k)
    delta = sp.Symbol("delta", positive=True)
    der = symdl.derive(symdl.mean(symdl.huber(r, delta)) + symdl.total(symdl.absolute(r)),
                       wrt=[r, delta])
    x = np.array([[-2.5, -0.3, 0.7], [1.2, 0.1, -0.9]])
    result = der.evaluate({"R": x, "delta": 0.8}, {n: 2, k: 3})
    huber = np.where(np.abs(x) <= 0.8, x**2 / 2, 0.8 * (np.abs(x) - 0.4))
    np.testing.assert_allclose(result["value"], huber.mean() + np.abs(x).sum(), rtol=1e-14)
    np.testing.assert_allclose(result["grad:R"], np.clip(x, -0.8, 0.8) / 6 + np.sign(x),
                               rtol=1e-14)
    np.testing.assert_allclose(result["grad:delta"], np.maximum(np.abs(x) - 0.8, 0).mean(),
                               rtol=1e-14)
    assert symdl.huber(sp.Symbol("x"), 2).subs(sp.Symbol("x"), 3) == 4  # 2 (3 - 1)


# ---------------------------------------------------------------------------------------------
# The linear solve (A^{-1} B) primitive: derivatives against PyTorch and finite differences.


def test_derivatives_through_a_linear_solve_match_torch_linalg_solve() -> None:
    import sympy as sp

    import symdl

    n, m = sp.symbols("n m", integer=True, positive=True)
    A, B = sp.MatrixSymbol("A", n, n), sp.MatrixSymbol("B", n, m)  # noqa: N806
    G = sp.MatrixSymbol("G", n, m)  # noqa: N806
    der = symdl.derive(symdl.total(sp.hadamard_product(G, A.inv() * B))
                       + symdl.total(sp.HadamardPower(B.T * A.inv(), 2)), wrt=[A, B])
    kernel = der.compile()
    rng = np.random.default_rng(16)
    a = rng.normal(size=(4, 4)) + 3 * np.eye(4)
    b, g = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    out = kernel(A=a, B=b, G=g)
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    loss = ((torch.tensor(g) * torch.linalg.solve(ta, tb)).sum()
            + (tb.T @ torch.linalg.inv(ta)).pow(2).sum())
    loss.backward()
    np.testing.assert_allclose(out.value, loss.item(), rtol=1e-12)
    np.testing.assert_allclose(out.grad["A"], ta.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.grad["B"], tb.grad.numpy(), rtol=1e-10, atol=1e-12)
    # Hessian-vector product through the solve (forward over reverse) against torch.
    v = rng.normal(size=(4, 4))
    printed = symdl.evaluate(der.hvp(A, {A: sp.MatrixSymbol("V", n, n)}),
                             {"A": a, "B": b, "G": g, "V": v}, {n: 4, m: 2})

    def grad_a(x):
        xa = x.clone().requires_grad_(True)
        value = ((torch.tensor(g) * torch.linalg.solve(xa, torch.tensor(b))).sum()
                 + (torch.tensor(b).T @ torch.linalg.inv(xa)).pow(2).sum())
        return torch.autograd.grad(value, xa, create_graph=True)[0]

    _, expected = torch.autograd.functional.jvp(grad_a, torch.tensor(a), torch.tensor(v))
    np.testing.assert_allclose(np.asarray(printed).reshape(4, 4), expected.numpy(), rtol=1e-9,
                               atol=1e-11)


def test_ridge_hypergradient_and_its_second_derivative_match_torch() -> None:
    # The validation loss of the ridge solution w(lam) = (X^T X + lam I)^{-1} X^T y, and its
    # first and second derivatives in lam: derivatives through the inverse.
    import sympy as sp

    import symdl

    n, m, d = sp.symbols("n m d", integer=True, positive=True)
    X, Xv = sp.MatrixSymbol("X", n, d), sp.MatrixSymbol("Xv", m, d)  # noqa: N806
    y, yv = sp.MatrixSymbol("y", n, 1), sp.MatrixSymbol("yv", m, 1)
    lam = sp.Symbol("lambda", positive=True)
    w, r = sp.MatrixSymbol("w", d, 1), sp.MatrixSymbol("r", m, 1)
    der = symdl.derive([(w, (X.T * X + lam * sp.Identity(d)).inv() * X.T * y),
                        (r, Xv * w - yv),
                        (sp.Symbol("L"), symdl.total(sp.HadamardPower(r, 2)) / 2)],
                       wrt=[lam], hessian=True)
    kernel = der.compile()
    rng = np.random.default_rng(17)
    values = {"X": rng.normal(size=(5, 4)), "y": rng.normal(size=(5, 1)),
              "Xv": rng.normal(size=(6, 4)), "yv": rng.normal(size=(6, 1)), "lambda": 0.8}
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}

    def validation_loss(lam):
        a = t["X"].T @ t["X"] + lam * torch.eye(4, dtype=torch.float64)
        w = torch.linalg.solve(a, t["X"].T @ t["y"])
        return ((t["Xv"] @ w - t["yv"]) ** 2).sum() / 2

    lam_t = t["lambda"].clone().requires_grad_(True)
    (first,) = torch.autograd.grad(validation_loss(lam_t), lam_t, create_graph=True)
    (second,) = torch.autograd.grad(first, lam_t)
    out = kernel(**values)
    np.testing.assert_allclose(out.value, validation_loss(t["lambda"]).item(), rtol=1e-12)
    np.testing.assert_allclose(out.grad["lambda"], first.item(), rtol=1e-10)
    np.testing.assert_allclose(out.hessian["lambda", "lambda"], second.item(), rtol=1e-9)
    # The printed derivative -(A^{-T} Xv^T r)^T w evaluates to the same number.
    printed = symdl.evaluate(der.gradient(lam), values, {n: 5, m: 6, d: 4})
    np.testing.assert_allclose(printed, first.item(), rtol=1e-10)
    step = 1e-5
    numeric = (kernel(**{**values, "lambda": 0.8 + step}).value
               - kernel(**{**values, "lambda": 0.8 - step}).value) / (2 * step)
    np.testing.assert_allclose(out.grad["lambda"], numeric, rtol=1e-7)


def test_inverse_errors_are_typed() -> None:
    import sympy as sp

    import symdl

    n, d = sp.symbols("n d", integer=True, positive=True)
    X = sp.MatrixSymbol("X", n, d)  # noqa: N806
    w = sp.MatrixSymbol("w", d, 1)
    with pytest.raises(symdl.ShapeMismatchError, match="square"):
        symdl.derive(symdl.total(sp.Inverse(X)), wrt=[X])
    A = sp.MatrixSymbol("A", d, d)  # noqa: N806
    der = symdl.derive(symdl.total(A.inv() * w), wrt=[w])
    with pytest.raises(symdl.EvaluationError, match="singular"):
        der.evaluate({"A": np.zeros((2, 2)), "w": np.ones((2, 1))}, {d: 2})


# ---------------------------------------------------------------------------------------------
# The models that predate this file, against PyTorch too.


def _torch_two_layer(X, Y, W1, b1, W2, b2):  # noqa: N803
    return F.cross_entropy(torch.tanh(X @ W1 + b1) @ W2 + b2, Y)


EXISTING_MODELS = {
    "linear_regression": (("X", "y", "w"), lambda X, y, w: ((X @ w - y) ** 2).sum()),
    "logistic_regression": (("X", "y", "w"),
                            lambda X, y, w: F.binary_cross_entropy_with_logits(X @ w, y)),
    "softmax_regression": (("X", "Y", "W", "b", "lambda"), lambda X, Y, W, b, lam: (
        F.cross_entropy(X @ W + b, Y) + lam / 2 * (W**2).sum())),
    "two_layer_mlp": (("X", "Y", "W1", "b1", "W2", "b2"), _torch_two_layer),
}


@pytest.mark.parametrize("name", sorted(EXISTING_MODELS))
def test_existing_models_match_pytorch(name: str) -> None:
    _, der, kernel = _kernel(name)
    rng = np.random.default_rng(18)
    sizes = {"n": 6, "d": 4, "k": 3, "h": 5}
    values = {}
    for leaf_name, leaf in der.leaves.items():
        shape = tuple(int(s.subs({sym: sizes[str(sym)] for sym in s.free_symbols}))
                      for s in leaf.shape)
        values[leaf_name] = rng.normal(size=shape) if shape else float(rng.uniform(0.1, 1))
    if "Y" in values:
        values["Y"] = np.eye(3)[rng.integers(0, 3, 6)]
    if name == "logistic_regression":
        values["y"] = rng.integers(0, 2, (6, 1)).astype(float)
    tensors, out = _against_torch(kernel, values, *EXISTING_MODELS[name])
    for p in der.wrt:
        pname = _scalar_name(p)
        np.testing.assert_allclose(out.grad[pname], tensors[pname].grad.numpy().reshape(
            np.shape(out.grad[pname])), rtol=1e-10, atol=1e-13, err_msg=f"{name}: {pname}")


# ---------------------------------------------------------------------------------------------
# PCA: at the top eigenvectors the gradient vanishes and the loss is the discarded variance.


def test_pca_gradient_vanishes_at_the_top_eigenvectors() -> None:
    module, der, kernel = _kernel("model_pca")
    rng = np.random.default_rng(9)
    scales = np.array([3.0, 2.0, 1.0, 0.5])  # distinct eigenvalues: a unique top subspace
    x = rng.normal(size=(40, 4)) * scales
    x -= x.mean(axis=0)
    w, discarded = module.eigen_solution(x, 3)
    eigenvalues = np.linalg.eigvalsh(x.T @ x / 40)  # independent of eigen_solution's order
    np.testing.assert_allclose(discarded, eigenvalues[0], rtol=1e-12)
    out = kernel(X=x, W=np.ascontiguousarray(w))
    np.testing.assert_allclose(out.value, discarded, rtol=1e-10)
    np.testing.assert_allclose(out.grad["W"], 0.0, atol=1e-12)
    # Any other orthonormal W loses more variance, and is not stationary.
    q, _ = np.linalg.qr(rng.normal(size=(4, 3)))
    other = kernel(X=x, W=q)
    assert other.value > discarded + 1e-3 and np.abs(other.grad["W"]).max() > 1e-3
