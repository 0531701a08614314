"""The scalar helpers every generated kernel carries (symdl/primitives/numba_impl.py, imported
and jitted here as a kernel module jits them): the vectorisable exp and tanh against NumPy's
(libm), in ulps, over the whole range and at the special values."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from symdl.kernels.scalar_code import jitted_helpers

_NAMESPACE = jitted_helpers(cache=False)


def _vectorised(name: str):
    helper = _NAMESPACE[name]

    @numba.njit(error_model="numpy", fastmath={"reassoc", "contract"})
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = helper(x[i])

    def run(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        apply(x, out)
        return out

    return run


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.abs(got - want) / np.spacing(np.abs(want))


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-300, -1e-300, 5e-324, 709.78,
                    709.79, -745.1, -745.2, -746.0, 20.0, -20.0, 1000.0, -1000.0])


def test_exp_within_3_ulp() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-708, 709.7, 200_000), rng.uniform(-1, 1, 100_000),
                        np.linspace(-0.35, 0.35, 10_001)])
    got, want = _vectorised("_exp")(x), np.exp(x)
    assert _ulps(got, want).max() <= 3
    with np.errstate(over="ignore"):
        want = np.exp(SPECIAL)
    got = _vectorised("_exp")(SPECIAL)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got, want, rtol=7e-16, atol=0)  # 3 ulp; inf, 0, NaN exact


def test_exp_subnormal_results() -> None:
    x = np.linspace(-745.0, -708.5, 10_001)
    got, want = _vectorised("_exp")(x), np.exp(x)
    # A subnormal has fewer significant bits: compare in units of the smallest subnormal.
    assert np.max(np.abs(got - want) / 5e-324) <= 2


@pytest.mark.parametrize("scale", [1e-8, 1e-3, 0.5, 3.0, 30.0])
def test_tanh_within_10_ulp(scale: float) -> None:
    x = np.random.default_rng(1).uniform(-scale, scale, 200_000)
    got, want = _vectorised("_tanh")(x), np.tanh(x)
    assert _ulps(got, want).max() <= 10


def test_tanh_special_values() -> None:
    got = _vectorised("_tanh")(SPECIAL)
    want = np.tanh(SPECIAL)
    np.testing.assert_allclose(got, want, rtol=2.3e-15, atol=0)  # 10 ulp; ±1, ±0, NaN exact
    assert np.signbit(got[1])  # tanh(-0) = -0


def test_log1p_unit_within_2_ulp() -> None:
    """``_log1p_unit`` serves softplus on [0, 1] (its argument is exp(-|x|))."""
    rng = np.random.default_rng(3)
    u = np.concatenate([rng.uniform(0, 1, 300_000), np.linspace(0.49, 0.51, 10_001),
                        10.0 ** rng.uniform(-320, 0, 50_000),
                        [0.0, 5e-324, 1e-300, 1e-17, 0.5, np.nextafter(0.5, 0), 1.0]])
    got, want = _vectorised("_log1p_unit")(u), np.log1p(u)
    assert got[u == 0.0].tolist() == [0.0]
    nonzero = want != 0
    assert _ulps(got[nonzero], want[nonzero]).max() <= 2


def _longdouble_softplus(x: np.ndarray) -> np.ndarray:
    xl = x.astype(np.longdouble)
    return np.maximum(xl, 0) + np.log1p(np.exp(-np.abs(xl)))


def _longdouble_sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x.astype(np.longdouble)))
    return np.where(x >= 0, 1, e) / (1 + e)


@pytest.mark.parametrize("name, reference, ulps", [
    ("_softplus", _longdouble_softplus, 5), ("_sigmoid", _longdouble_sigmoid, 4)])
def test_softplus_and_sigmoid_against_extended_precision(name, reference, ulps) -> None:
    """Against 80-bit long double. Where softplus(x) ~ exp(x) (x << 0) exp's own 3 ulp pass
    through: 4.1 ulp at worst here (with libm's log1p in place of _log1p_unit: 3.4)."""
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.uniform(-40, 40, 200_000), rng.uniform(-745, 709, 50_000),
                        np.linspace(-1e-3, 1e-3, 2_001)])
    want = reference(x)
    got = _vectorised(name)(x).astype(np.longdouble)
    spacing = np.spacing(np.abs(want.astype(np.float64)))
    tiny = want == 0
    assert np.all(got[tiny] == 0)
    assert (np.abs(got - want)[~tiny] / spacing[~tiny]).max() <= ulps
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1000.0, -1000.0])
    with np.errstate(over="ignore"):
        expected = reference(special).astype(np.float64)
    np.testing.assert_array_equal(_vectorised(name)(special), expected)
