r"""Training the increment denoiser of method ``diffusion`` (``train.target: increment``):
make training data, train it with EDM, save a checkpoint.

Data (``ensda.diffusion.data``): backgrounds from one-cycle forecasts of perturbed truths
and from cycled classic methods, on truth runs seeded by ``train.seed`` (never the
evaluation seeds). Each step draws a batch of examples and, per example, a random
observation network (every k-th site with a random phase, or a random density), the
observations y = t + r ε of it, and with probability ``p_uncond`` no observation
channels at all (so one network is both the amortised conditional model and the prior
for guidance).

Optimisation: AdamW (Loshchilov & Hutter 2019) with global-norm clipping, a linear
warm-up then cosine decay of the learning rate, and an exponential moving average of the
weights (decay min(ema, (1 + t)/(10 + t))) that is what the checkpoint stores. The EDM
loss (Karras et al. 2022, eq. 2 with λ(σ) = (σ² + σ_d²)/(σ σ_d)²) is minimised; the
validation loss uses the EMA weights, fixed noise and fixed networks.

The checkpoint (``ensda.diffusion.checkpoint``) holds the EMA weights.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ensda import experiment
from ensda.config import ExperimentConfig, TrainConfig, validate
from ensda.diffusion.checkpoint import save_checkpoint, testbed_record
from ensda.diffusion.data import (
    Normalisation,
    Pairs,
    anomaly_perturbed_pairs,
    cycled_pairs,
    perturbed_truth_pairs,
)
from ensda.diffusion.edm import EDM
from ensda.diffusion.model import (
    ModelSpec,
    SphereMesh,
    build_network,
    condition_features,
    network_fn,
)
from ensda.nn import GNNConfig


def model_spec(cfg: ExperimentConfig) -> ModelSpec:
    t = cfg.train
    gnn = GNNConfig(
        latent=t.latent,
        steps=t.message_steps,
        hidden_layers=t.hidden_layers,
        n_frequencies=t.frequencies,
    )
    edm = EDM(
        sigma_data=1.0, sigma_min=t.sigma_min, sigma_max=t.sigma_max, p_mean=t.p_mean, p_std=t.p_std
    )
    geo = cfg.testbed_kind.training_geometry(cfg)
    return ModelSpec(
        n=geo.n_state,
        gnn=gnn,
        edm=edm,
        obs_r_std=geo.channel_r_std,
        sphere=None if geo.lat_lon is None else SphereMesh(*geo.lat_lon, t.refinement),
        elementwise=t.elementwise,
        elementwise_observed_only=t.elementwise_observed_only,
    )


# ---------------------------------------------------------------------------- data


def make_pairs(cfg: ExperimentConfig, report: Callable[[str], None] = lambda _: None) -> Pairs:
    """All training examples of ``cfg.train`` (perturbed truths, then each cycled source).

    On a store-backed testbed (the sphere) the perturbed truths and the cycled sources come
    from the testbed's training window of the store (``TestbedKind.training_window``), with
    the experiment's forecast model (the emulator); elsewhere from nature runs of their own.
    """
    t = cfg.train
    parts = []
    window = cfg.testbed_kind.training_window(cfg)
    if t.perturbed_samples and window is not None:
        parts.append(store_pairs(cfg, window, report))
    elif t.perturbed_samples:
        report(f"perturbed truths: {t.perturbed_samples} examples")
        testbed = experiment.make_testbed(cfg)
        truth = testbed.nature_run(jax.random.key(t.seed), t.perturbed_samples)
        parts.append(
            perturbed_truth_pairs(
                testbed, truth, jax.random.key(t.seed + 1), t.members, t.error_min, t.error_max
            )
        )
    base = cfg.model_dump(exclude={"sweep", "train"})
    for i, src in enumerate(t.sources):
        report(f"cycled {src.method} on {_describe(src.obs.model_dump())}: {src.cycles} cycles")
        seed = t.seed + 10 * (i + 1)
        data = base | {
            "obs": src.obs.model_dump(),
            "cycles": src.cycles,
            "burn_in": 0,
            "ensemble": base["ensemble"] | {"size": t.members},
            "seeds": {
                "truth": seed,
                "obs": seed + 1,
                "ensemble": seed + 2,
                "assimilator": seed + 3,
            },
            "method": src.method,
            "assimilator": {},
            "methods": {src.method: src.settings},
            "lead_time": base["lead_time"] | {"enabled": False},
        }
        if window is not None:
            if src.cycles > window.n_cycles:
                raise ValueError(
                    f"train.sources[{i}].cycles is {src.cycles}; the training truths "
                    f"(train.store_times) hold {window.n_cycles} cycles"
                )
            data["testbed"] = base["testbed"] | {"truth_start": window.first}
        sub = validate(data)
        osse = experiment.make_osse(sub)
        assim = experiment.build_assimilator(sub, osse, src.method)
        x0 = experiment.initial_ensemble(sub, osse, t.members)
        pairs = cycled_pairs(
            osse.forecast_model, assim, osse.truth, osse.obs, x0, jax.random.key(seed + 3)
        )
        skip = min(100, len(pairs) // 10)  # the spin-up of the cycled filter
        parts.append(Pairs(pairs.mean[skip:], pairs.spread[skip:], pairs.truth[skip:]))
    return Pairs.concat(parts)


def store_pairs(
    cfg: ExperimentConfig, window, report: Callable[[str], None] = lambda _: None
) -> Pairs:
    """Training examples of a store-backed testbed: store truths of its training ``window``,
    perturbed by climatological anomalies of the same window and forecast one cycle with the
    experiment's forecast model (``anomaly_perturbed_pairs``)."""
    t = cfg.train
    model = experiment.make_forecast_model(cfg)
    tb = model.testbed
    first, n_cycles = window.first, window.n_cycles
    report(f"sphere truths: from store time {first}, {n_cycles + 1} states one cycle apart")
    states = tb.truth(first, n_cycles).reshape(n_cycles + 1, -1)
    key = jax.random.key(t.seed)
    starts = jax.random.randint(jax.random.fold_in(key, 0), (t.perturbed_samples,), 0, n_cycles)
    report(
        f"perturbed truths: {t.perturbed_samples} examples, {t.members} members, "
        f"{'emulator' if tb.emulator is not None else 'dycore'} forecasts"
    )
    return anomaly_perturbed_pairs(
        model.cycle_forecast,
        states,
        starts,
        jax.random.fold_in(key, 1),
        t.members,
        t.error_min,
        t.error_max,
    )


def _describe(obs: dict) -> str:
    if obs.get("density") is not None:
        return f"density {obs['density']}" + (" (redrawn)" if obs.get("redraw") else "")
    if obs.get("sites") is not None:
        return f"{len(obs['sites'])} fixed sites"
    return f"every {obs.get('every', 1)}"


def random_networks(key: jax.Array, batch: int, n: int, t: TrainConfig) -> jax.Array:
    """Observation masks ``(batch, n)`` of random networks (see the module docstring)."""
    k_kind, k_every, k_phase, k_density, k_sites, k_drop = jax.random.split(key, 6)
    every = jnp.asarray(t.every_choices)[
        jax.random.randint(k_every, (batch,), 0, len(t.every_choices))
    ]
    phase = jax.random.randint(k_phase, (batch,), 0, 1 << 20) % every
    sites = jnp.arange(n)
    regular = ((sites[None, :] - phase[:, None]) % every[:, None]) == 0
    density = jax.random.uniform(k_density, (batch, 1), minval=t.density_min, maxval=t.density_max)
    scattered = jax.random.uniform(k_sites, (batch, n)) < density
    use_regular = jax.random.uniform(k_kind, (batch, 1)) < t.p_regular
    keep = jax.random.uniform(k_drop, (batch, 1)) >= t.p_uncond
    return (jnp.where(use_regular, regular, scattered) & keep).astype(jnp.float32)


def random_columns(
    key: jax.Array, batch: int, n_columns: int, n_channels: int, t: TrainConfig
) -> jax.Array:
    """Observation masks ``(batch, n_channels · n_columns)`` of random column networks (the
    sphere): a density log-uniform in [density_min, density_max], every channel of an
    observed column observed; no observations with probability ``p_uncond``."""
    k_density, k_cols, k_drop = jax.random.split(key, 3)
    log_d = jax.random.uniform(
        k_density, (batch, 1), minval=jnp.log(t.density_min), maxval=jnp.log(t.density_max)
    )
    cols = jax.random.uniform(k_cols, (batch, n_columns)) < jnp.exp(log_d)
    keep = jax.random.uniform(k_drop, (batch, 1)) >= t.p_uncond
    return jnp.tile(cols & keep, (1, n_channels)).astype(jnp.float32)


def batch_condition(key, norm: Normalisation, mean, spread, z, t: TrainConfig, spec: ModelSpec):
    """Conditioning channels of a batch with random networks and observation noise."""
    k_net, k_obs = jax.random.split(key)
    if spec.sphere is None:
        mask = random_networks(k_net, mean.shape[0], mean.shape[-1], t)
    else:
        mask = random_columns(k_net, mean.shape[0], spec.n_nodes, spec.n_channels, t)
    innovation = z + spec.element_r_std() * jax.random.normal(k_obs, z.shape) / norm.scale(spread)
    return condition_features(norm, mean, spread, innovation, mask)


def loss_weights(cfg: ExperimentConfig) -> jax.Array | None:
    """Per-element loss weights of the testbed (on the sphere cos φ × ``train.variable_weights``,
    mean 1); None: uniform (Lorenz-96)."""
    return cfg.testbed_kind.training_geometry(cfg).loss_weights


def normalisation_groups(cfg: ExperimentConfig) -> np.ndarray | None:
    """Pooling groups of the normalisation: one (None, Lorenz-96), or on the sphere each
    channel × latitude."""
    return cfg.testbed_kind.training_geometry(cfg).groups


# ---------------------------------------------------------------------------- training


def optimiser(
    t: TrainConfig, n_steps: int | None = None
) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """The learning-rate schedule (linear warm-up, cosine decay over ``n_steps``, default
    ``t.steps``) and AdamW with clipping."""
    n_steps = t.steps if n_steps is None else n_steps
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, t.lr, min(t.warmup, n_steps - 1), n_steps, end_value=0.01 * t.lr
    )
    return schedule, optax.chain(
        optax.clip_by_global_norm(t.clip), optax.adamw(schedule, weight_decay=t.weight_decay)
    )


def training_arrays(pairs: Pairs, norm: Normalisation) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Background mean, spread and normalised increment z = (t − β − x̄_b)/s of ``pairs`` (β: the
    normalisation's ``increment_bias``, 0 without), on device."""
    bias = 0.0 if norm.increment_bias is None else np.asarray(norm.increment_bias)
    z = (pairs.truth - bias - pairs.mean) / np.asarray(norm.scale(jnp.asarray(pairs.spread)))
    return jnp.asarray(pairs.mean), jnp.asarray(pairs.spread), jnp.asarray(z, jnp.float32)


def training_loss(
    spec: ModelSpec,
    graph,
    graphdef,
    rest,
    norm: Normalisation,
    t: TrainConfig,
    weights: jax.Array | None,
):
    """``loss_of(params, key, mean, spread, z)``: the EDM loss of the denoiser
    ``nnx.merge(graphdef, params, rest)`` on a batch with random networks and observation
    noise (``batch_condition``)."""

    def loss_of(params, key, mean, spread, z):
        k_cond, k_loss = jax.random.split(key)
        cond = batch_condition(k_cond, norm, mean, spread, z, t, spec)
        net = network_fn(nnx.merge(graphdef, params, rest), graph, cond, spec.n_channels)
        return spec.edm.loss(net, k_loss, z, weights)

    return loss_of


def update_step(loss_of, t: TrainConfig, tx: optax.GradientTransformation):
    """``step(carry, step, key, data) -> (carry, loss)`` with ``carry = (params, opt_state,
    ema)``: the loss ``loss_of(params, key, *batch)`` and its gradient on ``t.batch`` random
    examples of ``data`` (a tuple of arrays with a leading example axis), an update by ``tx``
    and the EMA update, all keyed by ``fold_in(key, step)`` (a ``lax.scan`` body over step
    numbers, as ``fit`` runs it)."""

    def step(carry, step, key, data):
        params, opt_state, ema = carry
        k = jax.random.fold_in(key, step)
        idx = jax.random.randint(jax.random.fold_in(k, 1), (t.batch,), 0, data[0].shape[0])
        loss, grads = jax.value_and_grad(loss_of)(params, k, *(a[idx] for a in data))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        decay = jnp.minimum(t.ema, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        return (params, opt_state, ema), loss

    return step


def training_step(
    spec: ModelSpec,
    graph,
    graphdef,
    rest,
    norm: Normalisation,
    t: TrainConfig,
    tx: optax.GradientTransformation,
    weights: jax.Array | None,
):
    """``(loss_of, step)`` of the increment denoiser: ``training_loss`` and its ``update_step``."""
    loss_of = training_loss(spec, graph, graphdef, rest, norm, t, weights)
    return loss_of, update_step(loss_of, t, tx)


@dataclasses.dataclass(frozen=True)
class Fitted:
    ema: object  # the EMA parameters
    steps: list[int]
    loss: list[float]  # training loss, mean over each logging interval
    val_loss: list[float]  # validation loss (EMA weights) at the same steps
    train_s: float


def fit(
    loss_of,
    params,
    data: tuple,
    valid: tuple,
    t: TrainConfig,
    n_steps: int,
    progress: Callable[[int, float, float], None] | None = None,
    log: Callable[[int, dict], None] | None = None,
    first_step: int = 0,
    seed_offset: int = 0,
) -> Fitted:
    """Minimise ``loss_of(params, key, *batch)`` over ``data`` for ``n_steps`` steps (AdamW with
    the schedule of ``optimiser``, EMA of the weights), in jitted ``lax.scan`` chunks of
    ``t.log_every`` steps; after each chunk the validation loss of the EMA weights on ``valid``
    (fixed key) is computed and ``progress(step, loss, val)`` / ``log(step, metrics)`` called
    (steps counted from ``first_step``). A non-finite loss stops with ``FloatingPointError``."""
    schedule, tx = optimiser(t, n_steps)
    train_step = update_step(loss_of, t, tx)
    opt_state = tx.init(params)
    ema = params

    @jax.jit
    def chunk(params, opt_state, ema, start, key):
        steps = start + jnp.arange(t.log_every)
        (params, opt_state, ema), losses = jax.lax.scan(
            lambda carry, step: train_step(carry, step, key, data), (params, opt_state, ema), steps
        )
        return params, opt_state, ema, losses.mean()

    val_key = jax.random.key(t.seed + 3 + seed_offset)
    validation = jax.jit(lambda ema: loss_of(ema, val_key, *valid))
    key = jax.random.key(t.seed + 4 + seed_offset)
    steps, losses, val_losses = [], [], []
    t1 = time.perf_counter()
    done = 0
    while done < n_steps:
        params, opt_state, ema, loss = chunk(params, opt_state, ema, done, key)
        done += t.log_every
        loss, val = float(loss), float(validation(ema))
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"training loss became non-finite near step {first_step + done}; "
                "lower train.lr or raise train.clip"
            )
        steps.append(first_step + min(done, n_steps))
        losses.append(loss)
        val_losses.append(val)
        if progress is not None:
            progress(steps[-1], loss, val)
        if log is not None:
            log(
                steps[-1],
                {"train/loss": loss, "train/val_loss": val, "train/lr": float(schedule(done))},
            )
    return Fitted(ema, steps, losses, val_losses, time.perf_counter() - t1)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    steps: np.ndarray
    loss: np.ndarray  # training loss, mean over each logging interval
    val_loss: np.ndarray  # validation loss (EMA weights) at the same steps
    n_train: int
    n_params: int
    data_s: float
    train_s: float


def train_increment(
    cfg: ExperimentConfig,
    progress: Callable[[int, float, float], None] | None = None,
    report: Callable[[str], None] = lambda _: None,
    log: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train the denoiser of ``cfg.train`` and save its checkpoint.

    ``progress(step, loss, val_loss)`` and ``log(step, metrics)`` are called every
    ``train.log_every`` steps.
    """
    if cfg.train is None:
        raise ValueError("the config has no 'train' section: nothing to train")
    t = cfg.train
    t0 = time.perf_counter()
    pairs = make_pairs(cfg, report)
    data_s = time.perf_counter() - t0
    if not np.isfinite(pairs.mean).all():
        raise FloatingPointError("non-finite training backgrounds")
    train_pairs, valid_pairs = pairs.split(
        min(t.validation, len(pairs) // 5), jax.random.key(t.seed + 2)
    )
    norm = Normalisation.fit(
        train_pairs,
        normalisation_groups(cfg),
        spread_scaled=t.target_scale == "spread",
        debias=t.debias,
    )
    report(
        f"{len(train_pairs)} training and {len(valid_pairs)} validation examples; increment std "
        f"{float(norm.increment_std.mean()):.3f}"
    )

    spec = model_spec(cfg)
    graph = spec.graph()
    model = build_network(spec, graph, t.seed)
    weights = loss_weights(cfg)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

    data = training_arrays(train_pairs, norm)
    valid = training_arrays(valid_pairs, norm)
    loss_of = training_loss(spec, graph, graphdef, rest, norm, t, weights)
    fitted = fit(loss_of, params, data, valid, t, t.steps, progress, log)
    ema, steps, losses, val_losses, train_s = (
        fitted.ema,
        fitted.steps,
        fitted.loss,
        fitted.val_loss,
        fitted.train_s,
    )

    result = TrainResult(
        Path(t.checkpoint),
        np.asarray(steps),
        np.asarray(losses),
        np.asarray(val_losses),
        len(train_pairs),
        n_params,
        data_s,
        train_s,
    )
    summary = {
        "steps": int(steps[-1]),
        "final_loss": losses[-1],
        "final_val_loss": val_losses[-1],
        "n_train": len(train_pairs),
        "n_params": n_params,
        "data_s": data_s,
        "train_s": train_s,
    }
    if (window := cfg.testbed_kind.training_window(cfg)) is not None:
        summary["store_times"] = [window.first, window.stop]  # where the training truths came from
    save_checkpoint(
        Path(t.checkpoint),
        ema,
        spec,
        norm,
        testbed_record(cfg.testbed),
        cfg.model_dump(mode="json"),
        summary,
    )
    return result
