r"""Lorenz-96 (Lorenz 1996; Lorenz & Emanuel 1998).

.. math:: \frac{dx_i}{dt} = (x_{i+1} - x_{i-2})\, x_{i-1} - x_i + F,\quad i = 1..n \ (\text{cyclic})

integrated with classic fourth-order Runge–Kutta. Standard set-up: n = 40, F = 8,
dt = 0.05. Convention: 0.05 model time units = 6 hours.

All functions are pure and act on the last axis, so a state ``(n,)``, an ensemble
``(N, n)`` or a batch of ensembles work alike without ``vmap``.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from ensda.testbeds.lorenz96.config import checkpoint_record

HOURS_PER_TIME_UNIT = 6.0 / 0.05  # 0.05 model time units = 6 h


def tendency(x: jax.Array, forcing: float) -> jax.Array:
    """dx/dt of Lorenz-96 along the last axis."""
    xp1 = jnp.roll(x, -1, axis=-1)
    xm1 = jnp.roll(x, 1, axis=-1)
    xm2 = jnp.roll(x, 2, axis=-1)
    return (xp1 - xm2) * xm1 - x + forcing


def rk4_step(f, x: jax.Array, dt: float) -> jax.Array:
    """One classic Runge–Kutta step of dx/dt = f(x)."""
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@dataclasses.dataclass(frozen=True)
class RingGrid:
    """Geometry of a periodic 1-D domain of ``n`` sites (unit spacing)."""

    n: int

    @property
    def weights(self) -> jax.Array:
        """Area weights (all ones on a ring)."""
        return jnp.ones((self.n,), jnp.float32)

    def distance(self, a: jax.Array, b: jax.Array) -> jax.Array:
        """Cyclic distance between site indices (broadcasting)."""
        d = jnp.abs(a - b) % self.n
        return jnp.minimum(d, self.n - d).astype(jnp.float32)

    def max_sites_within(self, radius: float) -> int:
        """Upper bound on the number of sites at distance <= radius from any site."""
        return int(min(self.n, 2 * int(radius) + 1))


@dataclasses.dataclass(frozen=True)
class Lorenz96:
    """The Lorenz-96 testbed: dynamics, grid and climatology.

    ``steps_per_cycle`` model steps of ``dt`` make one assimilation cycle.
    """

    n: int = 40
    forcing: float = 8.0
    dt: float = 0.05
    steps_per_cycle: int = 1
    spinup_steps: int = 1000

    def __post_init__(self):
        if self.n < 4:
            raise ValueError(f"Lorenz96.n must be >= 4, got {self.n}")
        if not self.dt > 0:
            raise ValueError(f"Lorenz96.dt must be > 0, got {self.dt}")
        if self.steps_per_cycle < 1:
            raise ValueError(f"Lorenz96.steps_per_cycle must be >= 1, got {self.steps_per_cycle}")

    @property
    def grid(self) -> RingGrid:
        return RingGrid(self.n)

    @property
    def hours_per_cycle(self) -> float:
        return self.steps_per_cycle * self.dt * HOURS_PER_TIME_UNIT

    def checkpoint_record(self) -> dict:
        """What a trained model is specific to (``ensda.diffusion.checkpoint``)."""
        return checkpoint_record(self)

    def step(self, x: jax.Array) -> jax.Array:
        """One RK4 model step of length ``dt``."""
        return rk4_step(partial(tendency, forcing=self.forcing), x, self.dt)

    def forecast(self, x: jax.Array, n_steps: int) -> jax.Array:
        """Integrate ``n_steps`` model steps (``lax.fori_loop``; n_steps static or traced)."""
        return jax.lax.fori_loop(0, n_steps, lambda _, s: self.step(s), x)

    def cycle_forecast(self, x: jax.Array) -> jax.Array:
        """Forecast over one assimilation cycle."""
        return self.forecast(x, self.steps_per_cycle)

    def initial_state(self, key: jax.Array) -> jax.Array:
        """A state on the attractor: F plus a small perturbation, spun up."""
        x0 = self.forcing + 0.01 * jax.random.normal(key, (self.n,), jnp.float32)
        return self.forecast(x0, self.spinup_steps)

    def nature_run(self, key: jax.Array, n_cycles: int) -> jax.Array:
        """Truth at cycles 0..n_cycles, shape ``(n_cycles + 1, n)``, after spin-up."""
        return trajectory(self, self.initial_state(key), n_cycles)

    def climatology_samples(self, key: jax.Array, n_samples: int = 20_000) -> jax.Array:
        """``n_samples`` attractor states one cycle apart, shape ``(n_samples, n)``."""
        return self.nature_run(key, n_samples - 1)

    def climatology(self, key: jax.Array, n_samples: int = 20_000) -> tuple[jax.Array, jax.Array]:
        """Climatological mean and standard deviation per variable."""
        xs = self.climatology_samples(key, n_samples)
        return xs.mean(0), xs.std(0)


@partial(jax.jit, static_argnums=(0, 2))
def trajectory(testbed: Lorenz96, x0: jax.Array, n_cycles: int) -> jax.Array:
    """States at cycles 0..n_cycles from ``x0`` (one ``lax.scan``), shape
    ``(n_cycles+1, *x0.shape)``."""

    def body(x, _):
        x = testbed.cycle_forecast(x)
        return x, x

    _, xs = jax.lax.scan(body, x0, None, length=n_cycles)
    return jnp.concatenate([x0[None], xs], axis=0)
