r"""A learned one-cycle forecast model of the sphere testbed.

**Model.** On lat–lon states ``x (..., C, n_lat, n_lon)`` (``testbed.Channels`` order, SI
units) one cycle (6 h) is the residual step

.. math::
    x_{t+1} = x_t + s \odot F\big((x_t - \mu) / \sigma\big),

with μ, σ the per-channel mean and standard deviation of the training states and s the
per-channel standard deviation of their one-cycle differences (GraphCast's normalisation
of the inputs and of the residual target; Lam et al. 2023). F is an unconditional
:class:`~ensda.nn.sphere_gnn.SphereGraphNetwork` (grid → icosahedral multi-mesh → grid):
its inputs per grid point are the C normalised channels, and the static features cos φ,
sin λ, cos λ are already the graph's grid node features. F is zero at initialisation, so
an untrained emulator is persistence exactly. The Held–Suarez forcing does not depend on
time (no seasons, no diurnal cycle), so no time features are needed.

Rollouts are one ``lax.scan`` over cycles; leading (member) axes are ``vmap``-ped.
The pure functions take the network as ``(graphdef, params)`` (``nnx.split``), the graphs
and the normalisation as arrays: ``step``, ``forecast``, ``trajectory``. ``Emulator`` bundles
them with its spec; it has the testbed's forecast interface (``forecast(x, n_cycles)``,
``cycle_forecast``), so ``SphereTestbed`` can use it as its forecast model
(``testbed.forecast.emulator: PATH`` in a config).

**Training** (``train_emulator``): random minibatches of consecutive pairs (t, t + 1) from
the *first* ``1 − eval_fraction`` of the states (default: the first 80 % of the store's
times; the last 20 % are held out for ``evaluate``). Loss: the mean over channels of
λ_c × the cos-latitude weighted MSE of the normalised residual (x_{t+1} − x_t)/s − F, with
per-variable / per-channel weights λ (default 1); with ``rollout`` K > 1 the mean over the
first K cycles of the emulator's own rollout of the same error, (x̂_k − x_k)/s (``loss_fn``),
and training can start from a trained emulator (fine-tuning). AdamW with global-norm clipping,
linear warm-up then cosine decay of the learning rate. The training window is written into the
checkpoint (``meta["training"]["train_times"]``, store time indices and dates): the
assimilation experiments draw their truth windows from the same store, so an honest
imperfect-model experiment puts ``testbed.truth_start`` in the held-out part.

**Evaluation** (``evaluate``): forecasts from many start times to leads 1..8 cycles
(6..48 h), cos-latitude weighted RMSE per channel, :math:`\sqrt{\overline{\mathrm{MSE}}}`
with the MSE averaged over start times (WeatherBench 2's convention), next to persistence
(x_t) and climatology (the time mean of the training states, per grid point); the
aggregate is the RMSE of the standardised state, :math:`\sqrt{\mathrm{mean}_c\,
\mathrm{MSE}_c / \sigma_c^2}`.

**Checkpoint** (``save_emulator`` / ``load_emulator``): a directory with ``params.npz`` and
``meta.json`` (format, spec: channels, grid, mesh refinement, network size, cycle length;
normalisation; training window and summary), written atomically as the diffusion
checkpoints (``ensda.diffusion.checkpoint``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ensda.checkpoint import CheckpointError, read_meta, read_params, write_checkpoint
from ensda.nn import GNNConfig, SphereGraphNetwork
from ensda.nn.grid_mesh import GridMeshGraphs
from ensda.pytree import pytree_dataclass
from ensda.testbeds.sphere.channels import Channels
from ensda.testbeds.sphere.grid import LatLonGrid, mesh_graphs

FORMAT = 1
KIND = "sphere_emulator"
#: channels the evaluation table reports by name (those the state has)
HEADLINE = (
    "geopotential_500",
    "temperature_850",
    "u_component_of_wind_250",
    "v_component_of_wind_250",
    "temperature_500",
    "u_component_of_wind_850",
    "surface_pressure",
)


# --------------------------------------------------------------------------- spec and normalisation


@dataclasses.dataclass(frozen=True)
class EmulatorSpec:
    """What rebuilds an emulator's network: its state (channels, grid), mesh and size."""

    channels: Channels
    grid: LatLonGrid
    refinement: int = 3
    gnn: GNNConfig = dataclasses.field(default_factory=GNNConfig)
    hours_per_cycle: int = 6

    @property
    def n_channels(self) -> int:
        return self.channels.n

    def graphs(self) -> GridMeshGraphs:
        return mesh_graphs(self.grid.n_lon, self.grid.n_lat, self.refinement)

    def network(self, key: int | jax.Array = 0) -> SphereGraphNetwork:
        c = self.n_channels
        return SphereGraphNetwork(
            c, c, self.graphs(), self.gnn, conditional=False, rngs=nnx.Rngs(key)
        )

    def to_dict(self) -> dict:
        ch = self.channels
        return {
            "channels": {
                "variables": list(ch.variables),
                "levels": list(ch.levels),
                "surface": list(ch.surface),
                "names": list(ch.names),
            },
            "grid": {"n_lon": self.grid.n_lon, "n_lat": self.grid.n_lat, "name": self.grid.name},
            "refinement": self.refinement,
            "gnn": dataclasses.asdict(self.gnn),
            "hours_per_cycle": self.hours_per_cycle,
        }

    @staticmethod
    def from_dict(d: dict) -> EmulatorSpec:
        ch = d["channels"]
        channels = Channels(
            tuple(ch["variables"]), tuple(int(v) for v in ch["levels"]), tuple(ch["surface"])
        )
        return EmulatorSpec(
            channels,
            LatLonGrid(int(d["grid"]["n_lon"]), int(d["grid"]["n_lat"])),
            int(d["refinement"]),
            GNNConfig(**d["gnn"]),
            int(d["hours_per_cycle"]),
        )


@pytree_dataclass
class EmulatorNorm:
    """Per-channel statistics of the training states ``(C,)`` float32: mean μ, std σ, and
    the std s of the one-cycle differences x_{t+1} − x_t."""

    mean: jax.Array
    std: jax.Array
    diff_std: jax.Array

    @staticmethod
    def fit(states: np.ndarray) -> EmulatorNorm:
        """From states ``(T, C, n_lat, n_lon)`` one cycle apart: mean and (population) std
        over times and grid points, and the std of ``states[1:] − states[:-1]`` (float64
        sums, one channel at a time). A constant channel gets σ = 1 (s = 1), so it passes."""
        states = np.asarray(states)
        if states.ndim != 4 or states.shape[0] < 2:
            raise ValueError(
                f"EmulatorNorm.fit: states must be (T >= 2, C, n_lat, n_lon), got {states.shape}"
            )
        stats = []
        for c in range(states.shape[1]):
            x = states[:, c].astype(np.float64)
            d = x[1:] - x[:-1]
            stats.append((x.mean(), x.std(), d.std()))
        mean, std, diff_std = (np.asarray(s) for s in zip(*stats, strict=True))
        std = np.where(std > 0, std, 1.0)
        diff_std = np.where(diff_std > 0, diff_std, 1.0)
        return EmulatorNorm(*(jnp.asarray(s, jnp.float32) for s in (mean, std, diff_std)))

    def to_dict(self) -> dict:
        return {
            f.name: np.asarray(getattr(self, f.name)).tolist() for f in dataclasses.fields(self)
        }

    @staticmethod
    def from_dict(d: dict) -> EmulatorNorm:
        return EmulatorNorm(
            *(jnp.asarray(d[f.name], jnp.float32) for f in dataclasses.fields(EmulatorNorm))
        )


def _col(v: jax.Array) -> jax.Array:
    """(C,) → (C, 1, 1), to broadcast over a state's grid."""
    return v[:, None, None]


# -------------------------------------------------------------------------- pure forecast functions


def residual(
    graphdef, params, graphs: GridMeshGraphs, norm: EmulatorNorm, x: jax.Array
) -> jax.Array:
    """The network's normalised residual F((x − μ)/σ) of one state ``(C, n_lat, n_lon)``."""
    c, n_lat, n_lon = x.shape
    nodes = ((x - _col(norm.mean)) / _col(norm.std)).reshape(c, n_lat * n_lon).T
    out = nnx.merge(graphdef, params)(graphs, nodes)
    return out.T.reshape(c, n_lat, n_lon)


def step(graphdef, params, graphs: GridMeshGraphs, norm: EmulatorNorm, x: jax.Array) -> jax.Array:
    """One cycle of one state ``(C, n_lat, n_lon)``: x + s ⊙ F((x − μ)/σ)."""
    return x + _col(norm.diff_std) * residual(graphdef, params, graphs, norm, x)


def _batched_step(graphdef, params, graphs, norm):
    one = partial(step, graphdef, params, graphs, norm)
    return jax.vmap(one)


@partial(jax.jit, static_argnames=("graphdef", "n_cycles"))
def trajectory(
    graphdef, params, graphs: GridMeshGraphs, norm: EmulatorNorm, x: jax.Array, n_cycles: int
) -> jax.Array:
    """The states after 1..n_cycles cycles from ``x (..., C, n_lat, n_lon)``:
    ``(..., n_cycles, C, n_lat, n_lon)`` (a ``lax.scan``, leading axes vmapped)."""
    lead, shape = x.shape[:-3], x.shape[-3:]
    advance = _batched_step(graphdef, params, graphs, norm)

    def body(xb, _):
        xb = advance(xb)
        return xb, xb

    _, traj = jax.lax.scan(body, x.reshape((-1,) + shape), None, length=n_cycles)
    return jnp.moveaxis(traj, 0, 1).reshape(lead + (n_cycles,) + shape)


@partial(jax.jit, static_argnames=("graphdef", "n_cycles"))
def forecast(
    graphdef, params, graphs: GridMeshGraphs, norm: EmulatorNorm, x: jax.Array, n_cycles: int
) -> jax.Array:
    """The state ``n_cycles`` cycles after ``x (..., C, n_lat, n_lon)`` (same shape)."""
    shape = x.shape[-3:]
    advance = _batched_step(graphdef, params, graphs, norm)
    out = jax.lax.fori_loop(0, n_cycles, lambda _, xb: advance(xb), x.reshape((-1,) + shape))
    return out.reshape(x.shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Emulator:
    """A trained (or initial) emulator: spec, normalisation and network (graphdef, params).

    Compares and hashes by identity (it holds arrays), so a testbed holding it stays
    hashable. ``meta`` carries the training window and summary of a loaded checkpoint.
    """

    spec: EmulatorSpec
    norm: EmulatorNorm
    graphdef: nnx.GraphDef
    params: nnx.State
    meta: dict = dataclasses.field(default_factory=dict)

    @staticmethod
    def init(spec: EmulatorSpec, norm: EmulatorNorm, key: int | jax.Array = 0) -> Emulator:
        graphdef, params, rest = nnx.split(spec.network(key), nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ValueError(
                "the emulator network has non-parameter state, which its checkpoints do not store"
            )
        return Emulator(spec, norm, graphdef, params)

    def replace(self, **changes) -> Emulator:
        return dataclasses.replace(self, **changes)

    @functools.cached_property
    def graphs(self) -> GridMeshGraphs:
        return self.spec.graphs()

    @property
    def hours_per_cycle(self) -> float:
        return float(self.spec.hours_per_cycle)

    def _check(self, x) -> None:
        want = (self.spec.n_channels,) + self.spec.grid.shape
        if tuple(x.shape[-3:]) != want:
            raise ValueError(
                f"emulator states must be (..., {want[0]}, {want[1]}, {want[2]}) (channels "
                f"{self.spec.channels.names[:2]}..., grid {self.spec.grid.name}), got {x.shape}"
            )

    def forecast(self, x: jax.Array, n_cycles: int) -> jax.Array:
        """The states ``n_cycles`` cycles after ``x (..., C, n_lat, n_lon)``."""
        self._check(x)
        if n_cycles == 0:
            return jnp.asarray(x)
        return forecast(self.graphdef, self.params, self.graphs, self.norm, x, n_cycles)

    def trajectory(self, x: jax.Array, n_cycles: int) -> jax.Array:
        """The states after 1..n_cycles cycles: ``(..., n_cycles, C, n_lat, n_lon)``."""
        self._check(x)
        return trajectory(self.graphdef, self.params, self.graphs, self.norm, x, n_cycles)

    def cycle_forecast(self, x: jax.Array) -> jax.Array:
        return self.forecast(x, 1)

    def check_matches(
        self, channels: Channels, grid: LatLonGrid, hours_per_cycle: int, where: str = ""
    ) -> None:
        """Raise ``ValueError`` unless the emulator was made for this state and cycle."""
        s = self.spec
        problems = []
        if s.channels.names != channels.names:
            problems.append(
                f"channels {len(s.channels.names)} ({s.channels.names[:2]}...), the state has "
                f"{len(channels.names)} ({channels.names[:2]}...)"
            )
        if s.grid != grid:
            problems.append(f"grid {s.grid.name}, the state's is {grid.name}")
        if s.hours_per_cycle != hours_per_cycle:
            problems.append(f"cycle {s.hours_per_cycle} h, the experiment's is {hours_per_cycle} h")
        if problems:
            raise ValueError(f"emulator {where}: made for another state: {'; '.join(problems)}")


# ---------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class EmulatorTrainConfig:
    """Network size and optimisation of ``train_emulator``.

    ``loss_weights``: ``(name, λ)`` pairs, ``name`` a variable (``"geopotential"``) or a
    channel (``"temperature_850"``; wins over its variable's weight); other channels 1.
    ``eval_fraction``: the last part of the states held out from training.
    """

    steps: int = 20_000
    batch: int = 4
    lr: float = 1e-3
    warmup: int = 500
    weight_decay: float = 0.1
    clip: float = 1.0
    log_every: int = 100
    eval_fraction: float = 0.2
    #: held-out pairs of the validation loss (evenly spaced in the held-out window)
    n_validation: int = 16
    loss_weights: tuple[tuple[str, float], ...] = ()
    #: cycles K of the rollout loss (1: the one-step residual loss)
    rollout: int = 1
    refinement: int = 3
    gnn: GNNConfig = dataclasses.field(default_factory=GNNConfig)
    hours_per_cycle: int = 6

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1 or self.log_every < 1:
            raise ValueError(
                f"steps, batch and log_every must be >= 1, got {self.steps}, {self.batch}, "
                f"{self.log_every}"
            )
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {self.eval_fraction}")
        if self.lr <= 0 or self.warmup < 0:
            raise ValueError(f"lr must be > 0 and warmup >= 0, got {self.lr}, {self.warmup}")
        if self.rollout < 1:
            raise ValueError(f"rollout must be >= 1 cycle, got {self.rollout}")


def n_train_times(n_times: int, eval_fraction: float) -> int:
    """How many leading times of ``n_times`` are trained on (the rest are held out)."""
    n = round(n_times * (1.0 - eval_fraction))
    if n < 2 or n_times - n < 2:
        raise ValueError(
            f"{n_times} times with eval_fraction {eval_fraction}: need >= 2 training and >= 2 "
            "held-out times"
        )
    return n


def channel_weights(channels: Channels, weights: Sequence[tuple[str, float]]) -> np.ndarray:
    """λ per channel ``(C,)`` from ``(name, λ)`` pairs (``EmulatorTrainConfig.loss_weights``)."""
    given = dict(weights)
    names = channels.names
    known = set(names) | set(channels.variables) | set(channels.surface)
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(
            f"loss_weights: {unknown} are neither variables "
            f"{channels.variables + channels.surface} nor channels of the state"
        )
    lam = [given.get(n, given.get(channels.variable(c), 1.0)) for c, n in enumerate(names)]
    lam = np.asarray(lam, np.float32)
    if (lam < 0).any() or lam.sum() <= 0:
        raise ValueError(f"loss_weights must be >= 0 and not all 0, got {dict(weights)}")
    return lam


def loss_fn(
    graphdef, params, graphs, norm: EmulatorNorm, area: jax.Array, lam: jax.Array, window: jax.Array
) -> jax.Array:
    r"""The rollout loss of windows ``(B, K + 1, C, n_lat, n_lon)`` of consecutive states:

    .. math::
        L = \frac{1}{K} \sum_{k=1}^{K} \mathrm{mean}_c\, λ_c\, \mathrm{mean}_{B,\,grid}
            \big(w ⊙ ((\hat x_k − x_k)/s)^2\big),
            \quad \hat x_0 = x_0,\ \hat x_k = \mathrm{step}(\hat x_{k−1}),

    ``area`` w the cos-latitude weights normalised to mean 1 ``(n_lat, n_lon)``. For K = 1,
    (x̂₁ − x₁)/s = F − (x₁ − x₀)/s: the one-step residual loss. K > 1 backpropagates through
    the emulator's own rollout, so errors that grow over several cycles are penalised.
    """
    advance = jax.vmap(partial(step, graphdef, params, graphs, norm))

    def body(x, target):
        x = advance(x)
        err = (x - target) / _col(norm.diff_std)
        return x, (lam * (area * err**2).mean(axis=(0, 2, 3))).mean()

    _, per_step = jax.lax.scan(body, window[:, 0], jnp.moveaxis(window[:, 1:], 1, 0))
    return per_step.mean()


@dataclasses.dataclass(frozen=True)
class TrainedEmulator:
    emulator: Emulator
    steps: np.ndarray
    loss: np.ndarray  # mean training loss over each logging interval
    val_loss: np.ndarray  # loss on held-out pairs at the same steps
    #: training-batch loss at step 0 (= 1 per channel for persistence on standardised residuals)
    initial_loss: float
    n_train: int  # states[:n_train] trained on
    n_params: int
    train_s: float
    step_s: float  # wall seconds per training step (after compilation)

    @property
    def summary(self) -> dict:
        return {
            "steps": int(self.steps[-1]),
            "initial_loss": self.initial_loss,
            "final_loss": float(self.loss[-1]),
            "final_val_loss": float(self.val_loss[-1]),
            "n_train_times": self.n_train,
            "n_params": self.n_params,
            "train_s": self.train_s,
            "step_s": self.step_s,
        }


def train_emulator(
    states: np.ndarray,
    channels: Channels,
    config: EmulatorTrainConfig,
    key: jax.Array,
    progress: bool = True,
    init: Emulator | None = None,
) -> TrainedEmulator:
    """Train an emulator on states ``(T, C, n_lat, n_lon)`` one cycle apart (module docstring).

    Windows (t, .., t + K) with t + K < n_train, n_train = ``n_train_times(T, eval_fraction)``,
    K = ``config.rollout``; the normalisation is fitted on ``states[:n_train]``; the
    validation loss uses windows from ``states[n_train:]``. ``init``: fine-tune this
    emulator (its normalisation, network and weights; ``config.refinement`` and
    ``config.gnn`` are then ignored).
    """
    states = np.asarray(states, np.float32)
    if states.ndim != 4 or states.shape[1] != channels.n:
        raise ValueError(
            f"states must be (T, {channels.n}, n_lat, n_lon) for these channels, got {states.shape}"
        )
    t = config
    n_lat, n_lon = states.shape[-2:]
    grid = LatLonGrid(n_lon, n_lat)
    n_train = n_train_times(states.shape[0], t.eval_fraction)
    k_init, k_train = jax.random.split(key)
    if init is None:
        norm = EmulatorNorm.fit(states[:n_train])
        emu = Emulator.init(
            EmulatorSpec(channels, grid, t.refinement, t.gnn, t.hours_per_cycle), norm, k_init
        )
    else:
        init.check_matches(channels, grid, t.hours_per_cycle, where="to fine-tune")
        emu, norm = init, init.norm
    if n_train <= t.rollout or states.shape[0] - n_train <= t.rollout:
        raise ValueError(
            f"rollout {t.rollout}: needs more than {t.rollout} training and held-out states "
            f"(have {n_train} and {states.shape[0] - n_train})"
        )
    graphdef, params, graphs = emu.graphdef, emu.params, emu.graphs
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    area = grid.weights
    lam = jnp.asarray(channel_weights(channels, t.loss_weights))

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, t.lr, min(t.warmup, t.steps - 1), t.steps, end_value=0.01 * t.lr
    )
    tx = optax.chain(
        optax.clip_by_global_norm(t.clip), optax.adamw(schedule, weight_decay=t.weight_decay)
    )
    opt_state = tx.init(params)
    loss_of = partial(loss_fn, graphdef)

    data = jnp.asarray(states[:n_train])
    held = states[n_train:]
    offsets = np.arange(t.rollout + 1)
    last = held.shape[0] - 1 - t.rollout
    vt = np.unique(np.linspace(0, last, min(t.n_validation, last + 1)).round().astype(int))
    val_windows = jnp.asarray(held[vt[:, None] + offsets])

    # the graphs enter as arguments: closed over, the network's index checks would trace
    @partial(jax.jit, static_argnames="n")
    def chunk(params, opt_state, graphs, data, start, n):
        def one(carry, i):
            params, opt_state = carry
            idx = jax.random.randint(
                jax.random.fold_in(k_train, i), (t.batch,), 0, data.shape[0] - t.rollout
            )
            window = data[idx[:, None] + jnp.asarray(offsets)]
            loss, grads = jax.value_and_grad(loss_of)(params, graphs, norm, area, lam, window)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(one, (params, opt_state), start + jnp.arange(n))
        return params, opt_state, losses.mean()

    validation = jax.jit(lambda p, g: loss_of(p, g, norm, area, lam, val_windows))
    idx0 = np.asarray(
        jax.random.randint(jax.random.fold_in(k_train, 0), (t.batch,), 0, n_train - t.rollout)
    )
    initial = float(
        jax.jit(loss_of)(params, graphs, norm, area, lam, data[idx0[:, None] + offsets])
    )

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=t.steps, unit="step", desc="emulator")
    steps, losses, val_losses = [], [], []
    done, t0, t_compiled = 0, time.perf_counter(), None
    try:
        while done < t.steps:
            n = min(t.log_every, t.steps - done)
            params, opt_state, loss = chunk(params, opt_state, graphs, data, done, n)
            loss = float(loss)
            if t_compiled is None:
                t_compiled, first_n = time.perf_counter(), n
            done += n
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"emulator training loss became non-finite near step {done}; lower the "
                    "learning rate"
                )
            val = float(validation(params, graphs))
            steps.append(done)
            losses.append(loss)
            val_losses.append(val)
            if bar is not None:
                bar.update(n)
                bar.set_postfix(loss=f"{loss:.4f}", val=f"{val:.4f}")
    finally:
        if bar is not None:
            bar.close()
    t_end = time.perf_counter()
    step_s = (t_end - t_compiled) / (done - first_n) if done > first_n else float("nan")
    return TrainedEmulator(
        emu.replace(params=params),
        np.asarray(steps),
        np.asarray(losses),
        np.asarray(val_losses),
        initial,
        n_train,
        n_params,
        t_end - t0,
        step_s,
    )


# ---------------------------------------------------------------------------- evaluation


def weighted_mse(a: jax.Array, b: jax.Array, area: jax.Array) -> jax.Array:
    """Cos-latitude weighted MSE over the grid, ``(..., C, n_lat, n_lon)`` → ``(..., C)``."""
    return (area * (a - b) ** 2).sum(axis=(-2, -1)) / area.sum()


def evaluate(
    emulator: Emulator,
    states: np.ndarray,
    leads: Sequence[int] = tuple(range(1, 9)),
    climatology: np.ndarray | None = None,
    starts: Sequence[int] | None = None,
    batch: int = 16,
) -> dict:
    """Rollout RMSE per channel of the emulator, persistence and climatology.

    ``states (T, C, n_lat, n_lon)`` one cycle apart (e.g. the held-out window); forecasts
    start at ``starts`` (default: every t with t + max(leads) < T) and verify against
    ``states[t + lead]``. ``climatology (C, n_lat, n_lon)``: the climatological forecast
    (default: the time mean of ``states``, which is not independent of them). RMSE =
    sqrt(mean over starts of the cos-latitude weighted MSE). Returns a dict of lists:
    ``leads``, ``lead_hours``, ``channels``, ``n_starts``, ``rmse`` and ``aggregate``
    (per forecast: emulator, persistence, climatology; ``rmse[f]`` is ``(lead, channel)``,
    ``aggregate[f]`` ``(lead,)``, the RMSE of the state standardised by the emulator's σ).
    """
    states = np.asarray(states, np.float32)
    leads = sorted(int(v) for v in leads)
    if not leads or leads[0] < 1:
        raise ValueError(f"leads must be >= 1 cycle, got {leads}")
    max_lead = leads[-1]
    if starts is None:
        starts = np.arange(states.shape[0] - max_lead)
    starts = np.asarray(starts, int)
    if starts.size == 0:
        raise ValueError(f"{states.shape[0]} states: no start time leaves room for lead {max_lead}")
    if starts.min() < 0 or starts.max() + max_lead >= states.shape[0]:
        raise ValueError(
            f"{states.shape[0]} states: start times {starts.min()}..{starts.max()} with lead "
            f"{max_lead} do not fit"
        )
    clim = jnp.asarray(states.mean(0) if climatology is None else climatology, jnp.float32)
    area = emulator.spec.grid.weights
    li = np.asarray(leads) - 1
    sums = {
        f: np.zeros((len(leads), states.shape[1]))
        for f in ("emulator", "persistence", "climatology")
    }
    for i in range(0, starts.size, batch):
        s = starts[i : i + batch]
        x0 = jnp.asarray(states[s])
        truth = jnp.asarray(states[s[:, None] + np.asarray(leads)[None, :]])  # (b, L, C, lat, lon)
        fc = emulator.trajectory(x0, max_lead)[:, li]
        sums["emulator"] += np.asarray(weighted_mse(fc, truth, area), np.float64).sum(0)
        sums["persistence"] += np.asarray(weighted_mse(x0[:, None], truth, area), np.float64).sum(0)
        sums["climatology"] += np.asarray(weighted_mse(clim, truth, area), np.float64).sum(0)
    var = np.asarray(emulator.norm.std, np.float64) ** 2
    mse = {f: v / starts.size for f, v in sums.items()}
    hours = emulator.spec.hours_per_cycle
    return {
        "leads": leads,
        "lead_hours": [lead * hours for lead in leads],
        "channels": list(emulator.spec.channels.names),
        "n_starts": int(starts.size),
        "rmse": {f: np.sqrt(m).tolist() for f, m in mse.items()},
        "aggregate": {f: np.sqrt((m / var).mean(axis=1)).tolist() for f, m in mse.items()},
    }


def summary_table(
    result: dict, channels: Sequence[str] | None = None, lead_hours: int | None = None
) -> dict:
    """The evaluation at one lead (default the longest) for the headline channels (default
    ``HEADLINE`` where present) and the aggregate: ``{name: {emulator, persistence,
    climatology, beats_both}}``, plus how many of all channels beat both."""
    hours = result["lead_hours"]
    k = len(hours) - 1 if lead_hours is None else hours.index(lead_hours)
    names = result["channels"]
    channels = [c for c in (HEADLINE if channels is None else channels) if c in names]
    forecasts = ("emulator", "persistence", "climatology")

    def row(values: dict) -> dict:
        out = {f: values[f] for f in forecasts}
        out["beats_both"] = bool(out["emulator"] < min(out["persistence"], out["climatology"]))
        return out

    table = {c: row({f: result["rmse"][f][k][names.index(c)] for f in forecasts}) for c in channels}
    table["aggregate (standardised)"] = row({f: result["aggregate"][f][k] for f in forecasts})
    rm = {f: np.asarray(result["rmse"][f][k]) for f in forecasts}
    n_beat = int((rm["emulator"] < np.minimum(rm["persistence"], rm["climatology"])).sum())
    return {
        "lead_hours": hours[k],
        "rows": table,
        "channels_beating_both": f"{n_beat}/{len(names)}",
    }


# ---------------------------------------------------------------------------- checkpoints


def save_emulator(path: str | Path, emulator: Emulator, training: dict | None = None) -> None:
    """Write the emulator to the directory ``path`` (``params.npz`` + ``meta.json``, atomically).
    ``training``: the training window, config and summary (JSON-able)."""
    meta = {
        "format": FORMAT,
        "kind": KIND,
        "spec": emulator.spec.to_dict(),
        "normalisation": emulator.norm.to_dict(),
        "training": training if training is not None else emulator.meta.get("training", {}),
    }
    write_checkpoint(Path(path), emulator.params, meta)


def load_emulator(path: str | Path) -> Emulator:
    """The emulator saved at ``path`` (``CheckpointError`` if missing or not an emulator)."""
    path = Path(path)
    meta = read_meta(
        path,
        FORMAT,
        f"no emulator checkpoint at {path} (expected meta.json and params.npz); "
        "train one with `ensda train-emulator CONFIG`",
    )
    if meta.get("kind") != KIND:
        raise CheckpointError(
            f"{path}: a {meta.get('kind', 'diffusion')!r} checkpoint, not a sphere emulator"
        )
    spec = EmulatorSpec.from_dict(meta["spec"])
    norm = EmulatorNorm.from_dict(meta["normalisation"])
    abstract = nnx.eval_shape(lambda: spec.network(0))
    graphdef, template, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise CheckpointError(
            f"{path}: the network has non-parameter state, which checkpoints do not store"
        )
    return Emulator(spec, norm, graphdef, read_params(path, template), meta)


#: days at which ``long_rollout`` reports (those within its length)
LONG_DAYS = (1, 5, 10, 15, 20, 30, 40, 60)


def long_rollout(
    emulator: Emulator,
    held: np.ndarray,
    climatology: np.ndarray,
    train_states: np.ndarray,
    days: float,
    n_starts: int = 3,
) -> dict:
    r"""Whether long free rollouts stay in the climate: from ``n_starts`` starts evenly spaced
    in the first part of ``held (T, C, n_lat, n_lon)`` (each with ``days`` of truth after it),
    at each of ``LONG_DAYS`` within ``days``, averaged over the starts:

    * ``rmse``: the RMSE of the standardised state against the truth, √(mean_c MSE_c / σ_c²)
      (σ_c = ``emulator.norm.std``; two independent climate states differ by √2);
    * ``abs_bias``: mean_c |⟨x̂⟩ − ⟨x_clim⟩| / σ_c, ⟨·⟩ the cos-latitude weighted global mean;
    * ``variance_ratio``: mean_c of the weighted spatial variance of x̂ over that of the
      ``train_states`` (time mean): 1 for a forecast with the climate's variability.
    """
    per_day = round(24 / emulator.hours_per_cycle)
    n_cycles = int(round(days * per_day))
    if n_cycles < 1 or held.shape[0] <= n_cycles:
        raise ValueError(
            f"long_rollout: {days} days need more than {n_cycles} held-out states, have "
            f"{held.shape[0]}"
        )
    starts = np.unique(np.linspace(0, held.shape[0] - 1 - n_cycles, n_starts).round().astype(int))
    traj = np.asarray(
        emulator.trajectory(jnp.asarray(held[starts]), n_cycles)
    )  # (S, K, C, lat, lon)
    truth = held[starts[:, None] + 1 + np.arange(n_cycles)]
    area = np.asarray(emulator.spec.grid.weights, np.float64)
    area = area / area.mean()
    sigma = np.asarray(emulator.norm.std, np.float64)

    def global_mean(x):
        return (x * area).mean(axis=(-2, -1))

    def spatial_var(x):
        return global_mean((x - global_mean(x)[..., None, None]) ** 2)

    mse = weighted_mse(traj, truth, area) / sigma**2  # (S, K, C)
    bias = np.abs(global_mean(traj) - global_mean(climatology)) / sigma
    var_ratio = spatial_var(traj) / spatial_var(np.asarray(train_states, np.float64)).mean(0)
    report = [d for d in LONG_DAYS if d * per_day <= n_cycles]
    k = np.asarray([d * per_day - 1 for d in report])
    return {
        "days": report,
        "n_starts": int(starts.size),
        "start_times": starts.tolist(),
        "rmse": np.sqrt(mse[:, k].mean(-1)).mean(0).tolist(),
        "abs_bias": bias[:, k].mean(-1).mean(0).tolist(),
        "variance_ratio": var_ratio[:, k].mean(-1).mean(0).tolist(),
    }
