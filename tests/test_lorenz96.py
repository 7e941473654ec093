"""Lorenz-96 testbed against independent references.

References: the defining equation written as a plain loop over indices; the exact RK4
amplification polynomial for a linear ODE; RK4's fourth-order global error against a
fine-step solution; literature climate statistics (Lorenz & Emanuel 1998: mean 2.3,
std 3.6 for F = 8) and leading Lyapunov exponent (≈ 1.68 per time unit, n = 40, F = 8;
Lorenz & Emanuel 1998 doubling time 0.42, Karimi & Paul 2010).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensda.testbeds import Lorenz96, RingGrid
from ensda.testbeds.lorenz96 import rk4_step, tendency, trajectory


def loop_tendency(x, forcing):
    """dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, indices cyclic, one at a time."""
    n = len(x)
    out = np.empty(n)
    for i in range(n):
        out[i] = (x[(i + 1) % n] - x[(i - 2) % n]) * x[(i - 1) % n] - x[i] + forcing
    return out


@pytest.mark.parametrize("n,forcing", [(40, 8.0), (7, 3.5)])
def test_tendency_matches_index_loop(n, forcing):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, n)
    got = np.asarray(tendency(jnp.asarray(x, jnp.float32), forcing))
    np.testing.assert_allclose(got, loop_tendency(x, forcing), rtol=1e-5, atol=1e-4)


def test_tendency_acts_on_last_axis_of_batches():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 3.0, (3, 2, 10))
    got = np.asarray(tendency(jnp.asarray(x, jnp.float32), 8.0))
    for idx in np.ndindex(3, 2):
        np.testing.assert_allclose(got[idx], loop_tendency(x[idx], 8.0), rtol=1e-5, atol=1e-4)


def test_fixed_point_has_zero_tendency_and_is_stationary():
    tb = Lorenz96(n=40, forcing=8.0)
    x = jnp.full((40,), 8.0, jnp.float32)
    np.testing.assert_array_equal(np.asarray(tendency(x, 8.0)), 0.0)
    np.testing.assert_allclose(np.asarray(tb.forecast(x, 50)), 8.0, atol=1e-5)


def test_rk4_step_is_the_fourth_order_taylor_polynomial_for_linear_ode():
    # dx/dt = a x: one classic RK4 step multiplies x by 1 + z + z²/2 + z³/6 + z⁴/24, z = a dt.
    a = jnp.asarray([-1.3, 0.7, 2.0], jnp.float32)
    x = jnp.asarray([1.0, -2.0, 0.5], jnp.float32)
    dt = 0.3
    got = np.asarray(rk4_step(lambda s: a * s, x, dt))
    z = np.asarray(a, np.float64) * dt
    amp = 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24
    np.testing.assert_allclose(got, amp * np.asarray(x, np.float64), rtol=1e-6)


def test_rk4_global_error_is_fourth_order():
    t_end = 0.4
    with jax.enable_x64(True):
        x0 = jnp.asarray(Lorenz96().initial_state(jax.random.key(0)), jnp.float64)

        def solve(n_steps):
            tb = Lorenz96(dt=t_end / n_steps)
            return np.asarray(tb.forecast(x0, n_steps))

        ref = solve(640)
        errors = [np.linalg.norm(solve(m) - ref) for m in (8, 16, 32)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    for r in ratios:
        assert 12.0 < r < 20.0, (errors, ratios)  # 2⁴ = 16


def test_step_equals_one_rk4_step_of_the_index_loop():
    # A brute-force RK4 step built on the index-loop tendency (float64 NumPy).
    tb = Lorenz96(n=12, forcing=8.0, dt=0.05)
    rng = np.random.default_rng(2)
    x = rng.normal(2.0, 3.0, 12)
    f = lambda s: loop_tendency(s, 8.0)  # noqa: E731
    k1 = f(x)
    k2 = f(x + 0.025 * k1)
    k3 = f(x + 0.025 * k2)
    k4 = f(x + 0.05 * k3)
    ref = x + 0.05 / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    np.testing.assert_allclose(
        np.asarray(tb.step(jnp.asarray(x, jnp.float32))), ref, rtol=1e-5, atol=1e-5
    )


def test_ensemble_shape_equals_vmap_over_members():
    tb = Lorenz96(n=40, steps_per_cycle=3)
    ens = jnp.asarray(np.random.default_rng(3).normal(2.3, 3.6, (5, 40)), jnp.float32)
    batched = np.asarray(tb.cycle_forecast(ens))
    mapped = np.asarray(jax.vmap(tb.cycle_forecast)(ens))
    assert batched.shape == (5, 40)
    np.testing.assert_allclose(batched, mapped, rtol=1e-6, atol=1e-6)
    # and each member alone
    np.testing.assert_allclose(
        batched[2], np.asarray(tb.cycle_forecast(ens[2])), rtol=1e-6, atol=1e-6
    )


def test_trajectory_is_repeated_cycle_forecasts():
    tb = Lorenz96(n=10, steps_per_cycle=2)
    x0 = jnp.asarray(np.random.default_rng(5).normal(3.0, 2.0, 10), jnp.float32)
    traj = np.asarray(trajectory(tb, x0, 4))
    assert traj.shape == (5, 10)
    np.testing.assert_array_equal(traj[0], np.asarray(x0))
    x = x0
    for k in range(1, 5):
        x = tb.step(tb.step(x))
        np.testing.assert_allclose(traj[k], np.asarray(x), rtol=1e-5, atol=1e-5)


def test_hours_per_cycle_convention():
    # 0.05 model time units = 6 h (Lorenz 1996)
    assert Lorenz96(dt=0.05, steps_per_cycle=1).hours_per_cycle == pytest.approx(6.0)
    assert Lorenz96(dt=0.01, steps_per_cycle=10).hours_per_cycle == pytest.approx(12.0)


@pytest.mark.parametrize("kwargs", [dict(n=3), dict(dt=0.0), dict(steps_per_cycle=0)])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Lorenz96(**kwargs)


def test_climatology_matches_literature():
    # Lorenz & Emanuel (1998): for F = 8 the variables have mean ≈ 2.3, std ≈ 3.6.
    tb = Lorenz96()
    xs = np.asarray(tb.climatology_samples(jax.random.key(6), 4000))
    assert xs.shape == (4000, 40)
    assert abs(xs.mean() - 2.3) < 0.15
    assert abs(xs.std() - 3.6) < 0.15
    mean, std = tb.climatology(jax.random.key(6), 4000)
    np.testing.assert_allclose(np.asarray(std), xs.std(0), rtol=1e-4)


def test_leading_lyapunov_exponent_matches_literature():
    # Two trajectories, separation renormalised to d0 every step (Benettin et al. 1980).
    tb = Lorenz96()
    x0 = tb.initial_state(jax.random.key(7))
    d0 = 1e-3
    v = jax.random.normal(jax.random.key(8), x0.shape)
    v = d0 * v / jnp.linalg.norm(v)
    n_steps, transient = 3000, 100

    @jax.jit
    def growth(x, xp):
        def body(carry, _):
            x, xp = carry
            x1, xp1 = tb.step(x), tb.step(xp)
            d = jnp.linalg.norm(xp1 - x1)
            return (x1, x1 + (xp1 - x1) * (d0 / d)), jnp.log(d / d0)

        _, logs = jax.lax.scan(body, (x, xp), None, length=n_steps)
        return logs

    logs = np.asarray(growth(x0, x0 + v), np.float64)
    lam = logs[transient:].sum() / ((n_steps - transient) * tb.dt)
    assert abs(lam - 1.68) < 0.15 * 1.68, lam


def test_ring_grid_distance_and_weights():
    g = RingGrid(10)
    a = np.arange(10)
    d = np.asarray(g.distance(a[:, None], a[None, :]))
    ref = np.array([[min(abs(i - j), 10 - abs(i - j)) for j in range(10)] for i in range(10)])
    np.testing.assert_array_equal(d, ref)
    np.testing.assert_array_equal(np.asarray(g.weights), np.ones(10))
    # sites within distance r of any site: 2⌊r⌋ + 1, capped at n
    for r in (0.3, 1.0, 2.5, 4.0, 7.0):
        count = int((ref[0] <= r).sum())
        assert g.max_sites_within(r) == count
