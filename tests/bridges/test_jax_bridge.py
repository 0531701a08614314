"""The JAX bridge: a derived loss as a ``jax.custom_vjp`` function (issue 17, item 1).

The oracle is ``jax.grad`` of the same model written in ``jax.numpy``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import symdl
from symdl import catalog
from symdl.bridges import BridgeError
from symdl.bridges import jax as symdl_jax


def _x64():
    """float64 within a block (``jax.enable_x64`` from JAX 0.8, experimental before)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64()


@pytest.fixture(scope="module")
def mlp_loss():
    return symdl_jax.function(catalog.load("two_layer_mlp").derive())


def _jax_mlp(params, X, Y):
    Z2 = jnp.tanh(X @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]
    return -jnp.sum(Y * jax.nn.log_softmax(Z2, axis=1)) / X.shape[0]


def _problem(dtype, n: int = 7, d: int = 5, h: int = 4, k: int = 3):
    rng = np.random.default_rng(0)
    params = {"W1": rng.normal(size=(d, h)) / d ** 0.5, "b1": rng.normal(size=(1, h)),
              "W2": rng.normal(size=(h, k)) / h ** 0.5, "b2": rng.normal(size=(1, k))}
    X, Y = rng.normal(size=(n, d)), np.eye(k)[rng.integers(0, k, n)]
    as_jax = {name: jnp.asarray(a, dtype) for name, a in params.items()}
    return as_jax, jnp.asarray(X, dtype), jnp.asarray(Y, dtype)


def test_jit_grad_matches_jax_grad_of_the_same_model(mlp_loss) -> None:
    params, X, Y = _problem(jnp.float32)

    @jax.jit
    def train_step(params, X, Y):
        loss, grads = jax.value_and_grad(lambda p: mlp_loss(X=X, Y=Y, **p))(params)
        return loss, grads, jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads)

    want_loss, want = jax.value_and_grad(_jax_mlp)(params, X, Y)
    loss, grads, updated = train_step(params, X, Y)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6)
    for name in params:
        np.testing.assert_allclose(grads[name], want[name], rtol=2e-5, atol=2e-6,
                                   err_msg=name)
    losses = [float(loss)]
    for _ in range(4):
        params = updated
        loss, _, updated = train_step(params, X, Y)
        losses.append(float(loss))
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


def test_float64_and_a_scaled_cotangent() -> None:
    # (float64 on the small model: each dtype is a Numba compile of its own.)
    loss_fn = symdl_jax.function(catalog.load("logistic_regression").derive())
    rng = np.random.default_rng(3)
    with _x64():
        X = jnp.asarray(rng.normal(size=(6, 3)))
        y = jnp.asarray(rng.uniform(size=(6, 1)))
        w = jnp.asarray(rng.normal(size=(3, 1)))

        def model(w):
            z = X @ w
            return jnp.mean(jax.nn.softplus(z) - y * z)

        got = jax.grad(lambda w: 3.0 * loss_fn(X=X, w=w, y=y))(w)
        want = jax.grad(lambda w: 3.0 * model(w))(w)
        assert got.dtype == jnp.float64 and got.shape == (3, 1)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_gradient_of_data_and_bad_arguments_raise_typed_errors(mlp_loss) -> None:
    params, X, Y = _problem(jnp.float32)
    with pytest.raises(BridgeError, match="gradient with respect to X.*wrt"):
        jax.grad(lambda X: mlp_loss(X=X, Y=Y, **params))(X)
    with pytest.raises(BridgeError, match="float32 or all float64"):
        mlp_loss(X=X.astype(jnp.float16), Y=Y, **params)
    with pytest.raises(symdl.KernelArgumentError, match="Y has n = 3 .* X has n = 7"):
        mlp_loss(X=X, Y=Y[:3], **params)
    with pytest.raises(symdl.KernelArgumentError, match="missing arguments \\['Y'\\]"):
        mlp_loss(X=X, **params)
    with pytest.raises(BridgeError, match="scalar definition"):
        A = catalog.load("two_layer_mlp").module.X
        symdl_jax.function(symdl.derive(symdl.tanh(A), wrt=[A]))
