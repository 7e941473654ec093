r"""Training data for the diffusion analysis model (docs/design.md §4).

A training example is a background ensemble summary and the truth it should be moved to:

    background mean  x̄_b (n,),   background spread  σ_b (n,) (member std, ddof 1),   truth  t (n,).

The model learns p(t | x̄_b, σ_b, y) in the normalised increment z = (t − x̄_b)/s, so its
samples form an analysis ensemble. Two sources make the errors the model will meet:

* **perturbed truths** (``perturbed_truth_pairs``): an "analysis" ensemble around the truth
  one cycle earlier, mean error and member spread of the same size e (e log-uniform in a
  range), forecast over one cycle;
* **cycled baselines** (``cycled_pairs``): the forecast ensembles of a cycled classic method
  (e.g. LETKF on a sparse network), so backgrounds have the flow-dependent errors and
  spreads of a cycled system.

All sources use truth runs whose seeds differ from the evaluation seeds. ``Normalisation``
holds the statistics that map states to network inputs and back; it is saved with the
checkpoint.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ensda.pytree import pytree_dataclass


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Training examples: background mean, background spread and truth, each ``(M, n)``."""

    mean: np.ndarray
    spread: np.ndarray
    truth: np.ndarray

    def __post_init__(self):
        shapes = {self.mean.shape, self.spread.shape, self.truth.shape}
        if len(shapes) != 1 or self.mean.ndim != 2:
            raise ValueError(
                f"Pairs: mean, spread and truth must share one (M, n) shape, got {sorted(shapes)}"
            )

    def __len__(self) -> int:
        return self.mean.shape[0]

    @staticmethod
    def concat(parts: list[Pairs]) -> Pairs:
        return Pairs(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("mean", "spread", "truth"))
        )

    def split(self, n_valid: int, key: jax.Array) -> tuple[Pairs, Pairs]:
        """A random (train, validation) split with ``n_valid`` validation examples."""
        if not 0 < n_valid < len(self):
            raise ValueError(f"validation size must be in (0, {len(self)}), got {n_valid}")
        perm = np.asarray(jax.random.permutation(key, len(self)))
        pick = lambda idx: Pairs(self.mean[idx], self.spread[idx], self.truth[idx])
        return pick(perm[n_valid:]), pick(perm[:n_valid])


def ensemble_summary(ensemble: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and member std (ddof 1) over the member axis 0."""
    return ensemble.mean(0), ensemble.std(0, ddof=1)


def perturbed_truth_pairs(
    testbed, truth: jax.Array, key: jax.Array, n_members: int, error_min: float, error_max: float
) -> Pairs:
    """Backgrounds from one-cycle forecasts of perturbed truths.

    For each start t_{k-1} (``truth[:-1]``): e ~ logU(error_min, error_max), an analysis
    mean m = t_{k-1} + e ε₀ and members m + e εⱼ; the forecast ensemble over one cycle gives
    (x̄_b, σ_b), paired with t_k.
    """
    if not 0 < error_min <= error_max:
        raise ValueError(f"need 0 < error_min <= error_max, got {error_min}, {error_max}")
    if n_members < 2:
        raise ValueError(f"n_members must be >= 2, got {n_members}")
    starts, targets = truth[:-1], truth[1:]
    m = starts.shape[0]
    k_e, k_m, k_x = jax.random.split(key, 3)
    log_e = jax.random.uniform(k_e, (m, 1), minval=np.log(error_min), maxval=np.log(error_max))
    e = jnp.exp(log_e)
    centre = starts + e * jax.random.normal(k_m, starts.shape)
    members = centre[:, None, :] + e[:, None, :] * jax.random.normal(
        k_x, (m, n_members, starts.shape[-1])
    )
    forecast = jax.jit(testbed.cycle_forecast)(members)
    mean, spread = jax.vmap(ensemble_summary)(forecast)
    return Pairs(np.asarray(mean), np.asarray(spread), np.asarray(targets))


def anomaly_perturbed_pairs(
    forecast,
    states: jax.Array,
    starts: jax.Array,
    key: jax.Array,
    n_members: int,
    error_min: float,
    error_max: float,
) -> Pairs:
    r"""Backgrounds from one-cycle forecasts of truths perturbed by climatological anomalies.

    ``states (T, n)`` are truths one cycle apart; for each start index k (``starts``),
    e ~ logU(error_min, error_max), an analysis mean m = t_k + e d₀ and members
    m + e dⱼ, where each d = (x_a − x_b)/√2 is the difference of two random ``states``: a
    perturbation with the spatial and multivariate structure of the climate's variability
    and, per element, the climatological variance (so e is the error in units of the
    climatological std). ``forecast`` maps ``(N, n)`` one cycle; the forecast ensemble's
    mean and spread are paired with t_{k+1}. One example at a time (``lax.map``).
    """
    if not 0 < error_min <= error_max:
        raise ValueError(f"need 0 < error_min <= error_max, got {error_min}, {error_max}")
    if n_members < 2:
        raise ValueError(f"n_members must be >= 2, got {n_members}")
    states = jnp.asarray(states)
    if int(jnp.max(starts)) + 1 >= states.shape[0]:
        raise ValueError(f"starts must be below {states.shape[0] - 1} (each needs the next state)")

    def one(inputs):
        k, key = inputs
        k_e, k_pick = jax.random.split(key)
        e = jnp.exp(jax.random.uniform(k_e, (), minval=np.log(error_min), maxval=np.log(error_max)))
        pick = jax.random.randint(k_pick, (2, n_members + 1), 0, states.shape[0])
        d = (states[pick[0]] - states[pick[1]]) / np.sqrt(2.0)  # (N + 1, n)
        members = states[k] + e * (d[0] + d[1:])
        return ensemble_summary(forecast(members))

    keys = jax.random.split(key, starts.shape[0])
    mean, spread = jax.jit(lambda s, ks: jax.lax.map(one, (s, ks)))(starts, keys)
    return Pairs(np.asarray(mean), np.asarray(spread), np.asarray(states[starts + 1]))


def cycled_pairs(
    testbed, assimilator, truth: jax.Array, obs, x0: jax.Array, key: jax.Array
) -> Pairs:
    """The forecast ensembles of ``assimilator`` cycled over ``obs`` (one ``lax.scan``).

    ``truth`` is ``(K+1, n)`` with cycle 0 the initial time; returns K pairs.
    """

    @jax.jit
    def run(assim, truth, obs, x0):
        def body(xa, inputs):
            k, y = inputs
            xf = testbed.cycle_forecast(xa)
            mean, spread = ensemble_summary(xf)
            return assim.analyse(xf, y, jax.random.fold_in(key, k)), (mean, spread)

        ks = 1 + jnp.arange(truth.shape[0] - 1)
        _, (mean, spread) = jax.lax.scan(body, x0, (ks, obs))
        return mean, spread

    mean, spread = run(assimilator, truth, obs, x0)
    mean, spread = np.asarray(mean), np.asarray(spread)
    bad = ~np.isfinite(mean).all(-1)
    if bad.any():
        raise FloatingPointError(
            f"cycled training source {assimilator.name!r} diverged at cycle "
            f"{int(np.flatnonzero(bad)[0]) + 1}; "
            "check its settings (inflation, localisation) for this network"
        )
    return Pairs(mean, spread, np.asarray(truth[1:]))


#: the floor f of the spread-scaled increment scale, as a fraction of the climatological one
SPREAD_FLOOR = 0.05


@pytree_dataclass
class Normalisation:
    r"""Statistics that map states to network inputs and back (saved with the model; a pytree).

    background input  (x̄_b − μ)/σ_clim,   spread input  σ_b / s,   target  z = (t − x̄_b)/s,

    with μ, σ_clim the climatological mean and std of the truth and s the scale of the
    increments (``scale``): either their root-mean-square over the training set (the
    *climatological* scale, ``increment_std``), or, with ``spread_gain`` g, the
    *spread-scaled* s = √((g σ_b)² + (f · increment_std)²) of each background, where
    g² = ⟨(t − x̄_b)²⟩ / ⟨σ_b²⟩ over the training set and f = ``SPREAD_FLOOR``. With the
    spread-scaled target z has unit variance whatever the size of the background error, and
    the untrained network (F = 0, z ~ N(0, 1)) already gives analysis members of the
    background's spread: the model learns the structure and the observations' pull, not the
    error size. Statistics are pooled over the elements of a group: all sites for a
    homogeneous testbed such as Lorenz-96 (one group), the longitudes of one channel and
    latitude on the sphere (``groups``: the group of every element).

    ``increment_bias`` β (optional, ``fit(debias=True)``): the pooled mean of t − x̄_b over
    the training set. Training then targets t − β (``train.training_arrays``): the model
    learns increments of zero mean and no systematic correction of the backgrounds. Use it
    when the training backgrounds carry an offset that cycled backgrounds do not (measured
    with the sphere emulator's forecasts of perturbed truths: a global +0.28 σ_c in surface
    pressure that, learned, became a drift of the cycled analysis; experiments/README).
    """

    clim_mean: np.ndarray  # (n,)
    clim_std: np.ndarray  # (n,)
    increment_std: np.ndarray  # (n,)
    spread_gain: np.ndarray | None = None  # (n,) g; None: the climatological scale
    increment_bias: np.ndarray | None = None  # (n,) β removed from the training targets; None: 0

    def scale(self, spread: jax.Array) -> jax.Array:
        """The increment scale s ``(..., n)`` of backgrounds with member spread σ_b."""
        if self.spread_gain is None:
            return jnp.broadcast_to(jnp.asarray(self.increment_std), jnp.shape(spread))
        return jnp.sqrt(
            jnp.square(self.spread_gain * spread) + jnp.square(SPREAD_FLOOR * self.increment_std)
        )

    @staticmethod
    def fit(
        pairs: Pairs,
        groups: np.ndarray | None = None,
        spread_scaled: bool = False,
        debias: bool = False,
    ) -> Normalisation:
        """Statistics of ``pairs``, pooled within ``groups`` (an int per element; None: one
        group of all elements); ``spread_scaled``: fit the spread gain g too; ``debias``:
        the increment bias β too."""
        n = pairs.mean.shape[-1]
        groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(
                f"Normalisation.fit: groups must have shape ({n},), got {groups.shape}"
            )
        count = np.bincount(groups) * len(pairs)

        def pooled(values):  # mean over pairs and over the elements of each group
            return (np.bincount(groups, values.sum(0, dtype=np.float64)) / count)[groups]

        mean = pooled(pairs.truth)
        std = np.sqrt(pooled(np.square(pairs.truth - mean)))
        inc2 = pooled(np.square(pairs.truth - pairs.mean))
        gain = np.sqrt(inc2 / pooled(np.square(pairs.spread))) if spread_scaled else None
        bias = pooled(pairs.truth - pairs.mean) if debias else None
        stats = [np.asarray(s, np.float32) for s in (mean, std, np.sqrt(inc2))]
        return Normalisation(
            *stats, *(None if v is None else np.asarray(v, np.float32) for v in (gain, bias))
        )

    def to_dict(self) -> dict:
        return {
            f.name: None
            if getattr(self, f.name) is None
            else np.asarray(getattr(self, f.name)).tolist()
            for f in dataclasses.fields(self)
        }

    @staticmethod
    def from_dict(data: dict) -> Normalisation:
        return Normalisation(
            *(
                None if data.get(f.name) is None else jnp.asarray(data[f.name], jnp.float32)
                for f in dataclasses.fields(Normalisation)
            )
        )
