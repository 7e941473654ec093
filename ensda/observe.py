r"""Observation networks, operators and draws.

An observation network says *where* (which sites) and *how* (operator, error std) the
truth is observed each cycle. The number of observations ``p`` is the same every cycle,
so a whole run of observations stacks into arrays and scans.

Networks (``ObsNetwork``):
  - every ``every``-th site (``every=1``: all sites);
  - a random fraction ``density`` of the sites, ``round(density * n)`` of them, drawn once
    (``redraw=False``) or anew each cycle (``redraw=True``);
  - an explicit ``sites`` list.

Operators: ``identity`` (linear, H = index selection), ``square`` (y = x²), ``abs``
(y = |x|) and ``arctan`` (y = arctan x, the saturating operator of Bao, Zhang & Zhang 2024),
applied site-wise after selection. Errors are Gaussian with diagonal
R = diag(r_std²):  y = h(x[idx]) + r_std · ε,  ε ~ N(0, I).

Testbeds with other geometries define their own networks with the same interface
(``n_obs``, ``site_indices``, ``observe``, ``observe_run``); the sphere's column networks
are in ``ensda.testbeds.sphere.observe``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp

from ensda.pytree import pytree_dataclass, static

OPERATORS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "square": jnp.square,
    "abs": jnp.abs,
    "arctan": jnp.arctan,
}


@pytree_dataclass
class Observations:
    """Observations of one cycle (or, with a leading axis, of many).

    y: values ``(p,)``; idx: observed state indices ``(p,)``; r_std: error std ``(p,)``;
    operator: name in ``OPERATORS`` (static).

    On a grid with several variables per site (the sphere: states ``(n_var, n_lat, n_lon)``),
    ``idx`` indexes the flattened state (C order: ``channel · n_columns + column``),
    ``site`` is each observation's grid column (for localisation) and ``state_shape`` the
    shape of one state; on a 1-D testbed both are None and ``idx`` is the site.
    """

    y: jax.Array
    idx: jax.Array
    r_std: jax.Array
    operator: str = static("identity")
    site: jax.Array | None = None
    state_shape: tuple[int, ...] | None = static(None)

    @property
    def linear(self) -> bool:
        return self.operator == "identity"

    @property
    def sites(self) -> jax.Array:
        """The grid site (column) of each observation."""
        return self.idx if self.site is None else self.site

    def flat(self, x: jax.Array) -> jax.Array:
        """States ``(..., *state_shape)`` as flat vectors ``(..., n)``; flat states and states
        of 1-D testbeds are returned unchanged."""
        lead = x.ndim - len(self.state_shape or ())
        if self.state_shape is None or lead < 0 or x.shape[lead:] != self.state_shape:
            return x
        return x.reshape(x.shape[:lead] + (-1,))

    def h(self, x: jax.Array) -> jax.Array:
        """Observation operator H(x): ``(..., n) -> (..., p)``, or
        ``(..., *state_shape) -> (..., p)``."""
        return OPERATORS[self.operator](jnp.take(self.flat(x), self.idx, axis=-1))

    def at(self, k) -> Observations:
        """Observations of cycle ``k`` from a stacked run."""
        return jax.tree_util.tree_map(lambda a: a[k], self)


@dataclasses.dataclass(frozen=True)
class ObsNetwork:
    """Where and how a state of ``n_state`` sites is observed. See the module docstring."""

    #: how states and observations are laid out, for the methods that localise: ``sites`` (one
    #: value per site, the grid's ``distance``), or ``columns`` (channels × lat–lon columns)
    layout: ClassVar[str] = "sites"

    n_state: int
    every: int = 1
    density: float | None = None
    sites: tuple[int, ...] | None = None
    redraw: bool = False
    r_std: float = 1.0
    operator: str = "identity"

    def __post_init__(self):
        chosen = [self.every != 1, self.density is not None, self.sites is not None]
        if sum(chosen) > 1:
            raise ValueError("obs: give only one of 'every', 'density' or 'sites'")
        if self.every < 1:
            raise ValueError(f"obs.every must be >= 1, got {self.every}")
        if self.density is not None and not (0.0 < self.density <= 1.0):
            raise ValueError(f"obs.density must be in (0, 1], got {self.density}")
        if self.sites is not None:
            if len(self.sites) == 0:
                raise ValueError("obs.sites must not be empty")
            bad = [s for s in self.sites if not 0 <= s < self.n_state]
            if bad:
                raise ValueError(f"obs.sites out of range [0, {self.n_state}): {bad}")
        if not self.r_std > 0:
            raise ValueError(f"obs.r_std must be > 0, got {self.r_std}")
        if self.operator not in OPERATORS:
            raise ValueError(
                f"obs.operator must be one of {sorted(OPERATORS)}, got {self.operator!r}"
            )
        if self.redraw and self.density is None:
            raise ValueError("obs.redraw needs obs.density (only random networks are redrawn)")

    @property
    def n_obs(self) -> int:
        """Number of observations per cycle, p."""
        if self.sites is not None:
            return len(self.sites)
        if self.density is not None:
            return max(1, round(self.density * self.n_state))
        return len(range(0, self.n_state, self.every))

    @property
    def fixed_sites(self) -> tuple[int, ...] | None:
        """The observed sites when they follow from the network alone (``sites`` or
        ``every``), the same every cycle; None for random networks (drawn from a key)."""
        if self.sites is not None:
            return tuple(self.sites)
        if self.density is None:
            return tuple(range(0, self.n_state, self.every))
        return None

    @property
    def fraction(self) -> float:
        """Fraction of sites observed per cycle."""
        return self.n_obs / self.n_state

    def site_indices(self, key: jax.Array, cycle: jax.Array | int) -> jax.Array:
        """Observed sites at ``cycle``, shape ``(p,)``: sorted, or as listed in ``sites``."""
        if self.sites is not None:
            return jnp.asarray(self.sites, jnp.int32)
        if self.density is None:
            return jnp.arange(0, self.n_state, self.every, dtype=jnp.int32)
        k = jax.random.fold_in(key, cycle) if self.redraw else key
        perm = jax.random.permutation(k, self.n_state)
        return jnp.sort(perm[: self.n_obs]).astype(jnp.int32)

    def observe(self, truth: jax.Array, key: jax.Array, cycle: jax.Array | int) -> Observations:
        """Draw the observations of one truth state ``(n,)`` at ``cycle``."""
        site_key, noise_key = jax.random.split(jax.random.fold_in(key, 0x0B5))
        idx = self.site_indices(site_key, cycle)
        r_std = jnp.full((self.n_obs,), self.r_std, jnp.float32)
        clean = OPERATORS[self.operator](truth[idx])
        eps = jax.random.normal(jax.random.fold_in(noise_key, cycle), clean.shape, clean.dtype)
        return Observations(y=clean + r_std * eps, idx=idx, r_std=r_std, operator=self.operator)

    def observe_run(self, truths: jax.Array, key: jax.Array) -> Observations:
        """Observations of every cycle of a run: ``truths (K, n)`` -> stacked ``Observations``."""
        cycles = jnp.arange(truths.shape[0])
        return jax.vmap(lambda t, c: self.observe(t, key, c))(truths, cycles)
