r"""Training of the LETKF-anchored residual denoiser (``ens-diffusion``;
``train.target: anchored``).

Data: for each ``train.sources`` network, ``train.runs`` cycled runs on their own training
truths (seeds from ``train.seed``, never the evaluation seeds), all runs of a network in
one ``vmap``-ped ``lax.scan``. Each run draws its anchor LETKF settings at random (inflation
U``train.anchor_inflation``, RTPS U``train.anchor_rtps``, radius U of the source's
``anchor_radius`` or ``train.anchor_radius``), so the model meets over- and under-confident
backgrounds and anchors. The ranges must be ones where the LETKF keeps track: with
inflation up to 1.1 and radii up to 20, half of the every-4th-site cycles and 80 % of the
random-25 % ones had lost track (error > 1.5), the residuals z had std 1.9–2.5 against 0.9
where it kept track, and the model learnt to widen every analysis ×1.6 (experiments/README).
``train.max_anchor_rmse`` leaves out the cycles in which the anchor has lost track (round 0
only: in the later rounds those states are what the model must learn to leave). Every cycle gives
one example: the ``AnchorSummary`` (features) and the truth (target z = (t − x̄_a)/s_a);
with ``train.spread_scale`` a second one, the anchor analysis of the same background with
its anomalies scaled by a random κ (an over- or under-confident background with the same
error), so the model learns to read the innovation consistency as the need for more or less
spread, which its own cycles demand.

Round 0 cycles the anchor LETKF itself. Each of ``train.rounds`` later rounds (DAgger,
Ross et al. 2011) cycles the current ``ens-diffusion`` model on new truths, with the
features recomputed on its own backgrounds, adds those examples (repeated up to
``ROUND_SHARE`` of the round-0 examples per source, so that a few hundred cycles count) and
fine-tunes for ``train.round_steps`` steps. Each round reports its cycled analysis CRPS
and spread-skill ratio on its training truths (``train.round_runs`` runs of
``train.round_cycles`` cycles).

Optimisation: ``ensda.training.increment.fit`` (AdamW, cosine schedule, EMA), the EDM loss.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensda import experiment, metrics
from ensda.assimilator import SetupContext
from ensda.config import ExperimentConfig, validate
from ensda.diffusion.anchored import (
    AnchoredDiffusionDA,
    AnchoredSpec,
    AnchorNormalisation,
    AnchorSummary,
    features,
    load,
    make_anchor,
    network_fn,
    save,
    site_distances,
    summarise,
    target,
    with_radius,
)
from ensda.diffusion.checkpoint import testbed_record
from ensda.diffusion.edm import EDM
from ensda.nn import GNNConfig
from ensda.training.increment import TrainResult, fit

#: cycles at the start of each training run left out (the filter's spin-up)
SKIP_CYCLES = 50
#: cycles before a diverged run's first non-finite state that are left out too
DIVERGENCE_MARGIN = 50
#: each source's examples of a self-cycled round are repeated up to this share of round 0's
ROUND_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class Examples:
    """Training examples: summaries ``(M, n)`` each and truths ``(M, n)``."""

    summary: AnchorSummary
    truth: np.ndarray

    def __len__(self) -> int:
        return self.truth.shape[0]

    @staticmethod
    def concat(parts: list[Examples]) -> Examples:
        return Examples(
            jax.tree.map(lambda *a: np.concatenate(a), *(p.summary for p in parts)),
            np.concatenate([p.truth for p in parts]),
        )

    @staticmethod
    def of(summary: AnchorSummary, truth, where) -> Examples:
        """The examples of the cycles selected by ``where`` (a mask or indices)."""
        return Examples(jax.tree.map(lambda a: np.asarray(a)[where], summary), truth[where])

    def take(self, idx) -> Examples:
        return Examples.of(self.summary, self.truth, idx)


@dataclasses.dataclass(frozen=True)
class RoundScore:
    """Cycled analysis scores of one data round, over its runs and cycles after the spin-up."""

    round: int
    crps_a: float
    rmse_a: float
    ssr_a: float
    runs_kept: int  # runs that never diverged
    runs: int


def _setup(cfg: ExperimentConfig, src_index: int, round_index: int):
    """The OSSE pieces of one source network and round: forecast model, truths ``(R, K+1, n)``,
    stacked observations, initial ensembles, anchors, site distances and keys."""
    t = cfg.train
    src = t.sources[src_index]
    cycles = src.cycles if round_index == 0 else t.round_cycles
    seed = t.seed + 1000 * round_index + 10 * (src_index + 1)
    # the network from the source, the operator and error from the experiment's obs (the model is
    # for those)
    obs_cfg = src.obs.model_dump(exclude_unset=True)
    for k in ("operator", "r_std"):
        if obs_cfg.setdefault(k, getattr(cfg.obs, k)) != getattr(cfg.obs, k):
            raise ValueError(
                f"train.sources[{src_index}].obs.{k} must equal obs.{k} ({getattr(cfg.obs, k)!r}): "
                "the anchored model is trained for the experiment's observation operator and error"
            )
    sub = validate(
        cfg.model_dump(exclude={"sweep", "train"})
        | {"obs": obs_cfg, "cycles": cycles, "burn_in": 0}
    )
    model = experiment.make_forecast_model(sub)
    network = experiment.make_network(sub)
    key = jax.random.key(seed)
    n_runs = t.runs if round_index == 0 else t.round_runs
    run_keys = jax.random.split(key, n_runs)
    truths = jax.vmap(lambda k: model.nature_run(k, cycles))(run_keys)
    obs_list = [
        network.observe_run(truths[r, 1:], jax.random.fold_in(run_keys[r], 1))
        for r in range(n_runs)
    ]
    obs = jax.tree.map(lambda *a: jnp.stack(a), *obs_list)
    noise = jax.vmap(
        lambda k: jax.random.normal(jax.random.fold_in(k, 2), (t.members, truths.shape[-1]))
    )(run_keys)
    x0 = truths[:, :1] + cfg.ensemble.init_std * noise
    ctx = SetupContext(model, network, jnp.zeros((1, truths.shape[-1])), key)
    (lo_f, hi_f), (lo_a, hi_a) = t.anchor_inflation, t.anchor_rtps
    lo_r, hi_r = src.anchor_radius or t.anchor_radius
    u = jax.random.uniform(jax.random.fold_in(key, 3), (3, n_runs))
    base = make_anchor(ctx, hi_r, 1.0, 0.0)
    anchors = jax.vmap(
        lambda r, f, a: dataclasses.replace(with_radius(base, r), inflation=f, rtps=a)
    )(lo_r + (hi_r - lo_r) * u[0], lo_f + (hi_f - lo_f) * u[1], lo_a + (hi_a - lo_a) * u[2])
    distance = site_distances(model.grid)
    return (
        model,
        truths,
        obs,
        x0,
        anchors,
        distance,
        jax.random.split(jax.random.fold_in(key, 4), n_runs),
    )


def cycled_examples(
    cfg: ExperimentConfig, src_index: int, round_index: int, method: AnchoredDiffusionDA | None
) -> tuple[Examples, RoundScore]:
    """Examples of one source network: its ``train.runs`` runs cycled with their anchors
    (``method`` None) or with ``method`` on their anchors; diverged runs are left out."""
    model, truths, obs, x0, anchors, distance, keys = _setup(cfg, src_index, round_index)

    scale_range = cfg.train.spread_scale

    def step(anchor, xf, y, key):
        if method is None:
            xa = anchor.analyse(xf, y, key)
            return xa, summarise(xf, xa, y, distance)
        return dataclasses.replace(method, anchor=anchor, distance=distance).analyse_with_summary(
            xf, y, key
        )

    def rescaled(anchor, xf, y, key):
        """The summary of the anchor analysis of ``xf`` with its anomalies scaled by κ."""
        lo, hi = np.log(scale_range[0]), np.log(scale_range[1])
        kappa = jnp.exp(jax.random.uniform(jax.random.fold_in(key, 7), (), minval=lo, maxval=hi))
        xs = xf.mean(0) + kappa * (xf - xf.mean(0))
        return summarise(xs, anchor.analyse(xs, y, jax.random.fold_in(key, 8)), y, distance)

    def one(anchor, truth, obs, x0, key):
        def body(x, inputs):
            k, y, t = inputs
            xf, kk = model.cycle_forecast(x), jax.random.fold_in(key, k)
            xa, summary = step(anchor, xf, y, kk)
            extra = None if scale_range is None else rescaled(anchor, xf, y, kk)
            w = jnp.ones_like(t)
            score = (
                metrics.ensemble_mean_mse(xa, t, w),
                metrics.squared_spread(xa, w),
                metrics.crps(xa, t, w, estimator="fair"),
            )
            return xa, (summary, extra, score)

        ks = 1 + jnp.arange(truth.shape[0] - 1)
        return jax.lax.scan(body, x0, (ks, obs, truth[1:]))[1]

    summary, extra, (mse, spread2, crps) = jax.jit(jax.vmap(one))(anchors, truths, obs, x0, keys)
    keep = kept_cycles(
        np.isfinite(np.asarray(summary.spread_a)).all(-1) & np.isfinite(np.asarray(crps))
    )
    score_keep = keep.copy()
    if cfg.train.max_anchor_rmse is not None and method is None:
        anchor_rmse = np.sqrt(
            np.mean((np.asarray(summary.mean_a) - np.asarray(truths[:, 1:])) ** 2, axis=-1)
        )
        keep &= ~(anchor_rmse > cfg.train.max_anchor_rmse)
    if not keep.any():
        raise FloatingPointError(
            f"every training run of train.sources[{src_index}] diverged before cycle "
            f"{SKIP_CYCLES + DIVERGENCE_MARGIN} (round {round_index})"
        )
    mse, spread2 = (
        np.asarray(mse, np.float64)[score_keep],
        np.asarray(spread2, np.float64)[score_keep],
    )
    score = RoundScore(
        round_index,
        float(np.asarray(crps)[score_keep].mean()),
        float(np.sqrt(mse).mean()),
        float(metrics.spread_skill_ratio(spread2.mean(), mse.mean(), cfg.train.members)),
        int(score_keep[:, -1].sum()),
        keep.shape[0],
    )
    truth = np.asarray(truths[:, 1:])
    examples = Examples.of(summary, truth, keep)
    if extra is not None:  # the rescaled backgrounds of the same kept cycles
        finite = np.isfinite(np.asarray(extra.spread_a)).all(-1) & keep
        examples = Examples.concat([examples, Examples.of(extra, truth, finite)])
    return examples, score


def kept_cycles(finite: np.ndarray) -> np.ndarray:
    """Which cycles ``(R, K)`` of the runs become examples: after the first ``SKIP_CYCLES``
    (spin-up) and, in a run that diverged, before ``DIVERGENCE_MARGIN`` cycles ahead of its first
    non-finite cycle (a filter that has lost track is an example; the blow-up is not)."""
    k = np.arange(finite.shape[1])
    first_bad = np.where(
        finite.all(1), finite.shape[1] + DIVERGENCE_MARGIN, np.argmin(finite, axis=1)
    )
    return (k[None, :] >= SKIP_CYCLES) & (k[None, :] < first_bad[:, None] - DIVERGENCE_MARGIN)


def _arrays(norm: AnchorNormalisation, ex: Examples) -> tuple[jax.Array, jax.Array]:
    s = jax.tree.map(jnp.asarray, ex.summary)
    return features(norm, s), target(norm, s, jnp.asarray(ex.truth))


def _cycling_settings(cfg: ExperimentConfig) -> dict:
    """How the self-cycled rounds relate members to the anchor: the experiment's own
    ``methods.ens-diffusion`` ``coupling`` and ``spread``, so the rounds meet the backgrounds
    that the evaluated method makes (the method's defaults where the config names none)."""
    settings = cfg.methods.get(AnchoredDiffusionDA.name, {})
    return {k: settings[k] for k in ("coupling", "spread") if k in settings}


def train_anchored(
    cfg: ExperimentConfig,
    progress: Callable[[int, float, float], None] | None = None,
    report: Callable[[str], None] = lambda _: None,
    log: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Make the data, train the anchored denoiser over ``1 + train.rounds`` rounds and save it."""
    t = cfg.train
    spec = AnchoredSpec(
        cfg.testbed.n,
        GNNConfig(
            latent=t.latent,
            steps=t.message_steps,
            hidden_layers=t.hidden_layers,
            n_frequencies=t.frequencies,
        ),
        EDM(
            sigma_data=1.0,
            sigma_min=t.sigma_min,
            sigma_max=t.sigma_max,
            p_mean=t.p_mean,
            p_std=t.p_std,
        ),
    )
    graph = spec.graph()
    graphdef, params = nnx.split(spec.build(t.seed))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

    def loss_of(params, key, cond, z):
        return spec.edm.loss(network_fn(nnx.merge(graphdef, params), graph, cond), key, z)

    data_s = train_s = 0.0
    parts, scores, steps, losses, val_losses = [], [], [], [], []
    norm, valid, method, n_first = None, None, None, 0
    if t.init is not None:  # a trained model: its weights and normalisation, rounds from 1
        start = load(t.init, testbed_record(cfg.testbed))
        if start.spec != spec:
            raise ValueError(f"train.init: {t.init} has network {start.spec}, this config {spec}")
        params, norm = start.params, start.norm
        report(f"starting from {t.init} (residual std u = {float(norm.residual_std):.4f})")
    for rnd in range(1 + t.rounds):
        t0 = time.perf_counter()
        for i, src in enumerate(t.sources):
            ex, score = cycled_examples(cfg, i, rnd, method)
            if (
                rnd > 0
            ):  # oversampled to a ROUND_SHARE of the round-0 examples, or it would not count
                ex = ex.take(
                    np.resize(np.arange(len(ex)), max(len(ex), int(ROUND_SHARE * n_first)))
                )
            parts.append(ex)
            scores.append(score)
            what = "LETKF anchor" if method is None else "ens-diffusion"
            report(
                f"round {rnd}, source {i} ({what}, {score.runs_kept}/{score.runs} runs finite): "
                f"{len(ex)} examples; cycled crps_a {score.crps_a:.4f}, rmse_a {score.rmse_a:.4f}, "
                f"ssr_a {score.ssr_a:.3f}"
            )
            if log is not None:
                log(
                    rnd,
                    {
                        f"train/round_crps_a.src{i}": score.crps_a,
                        f"train/round_ssr_a.src{i}": score.ssr_a,
                    },
                )
        data = Examples.concat(parts)
        n_first = n_first or len(data)
        data_s += time.perf_counter() - t0
        if valid is None:  # the validation set (and the normalisation) come from round 0
            perm = np.asarray(jax.random.permutation(jax.random.key(t.seed + 2), len(data)))
            n_valid = min(t.validation, len(data) // 5)
            valid_ex, parts = data.take(perm[:n_valid]), [data.take(perm[n_valid:])]
            data = parts[0]
            norm = AnchorNormalisation.fit(data.summary, data.truth) if norm is None else norm
            valid = _arrays(norm, valid_ex)
            report(
                f"{len(data)} training and {n_valid} validation examples; residual std u = "
                f"{float(norm.residual_std):.4f}"
            )
        n_steps = t.steps if rnd == 0 else t.round_steps
        if rnd == 0 and t.init is not None:
            n_steps = 0
        if n_steps:
            fitted = fit(
                loss_of,
                params,
                _arrays(norm, data),
                valid,
                t,
                n_steps,
                progress,
                log,
                first_step=steps[-1] if steps else 0,
                seed_offset=100 * rnd,
            )
            params = fitted.ema
            train_s += fitted.train_s
            steps += fitted.steps
            losses += fitted.loss
            val_losses += fitted.val_loss
        if rnd < t.rounds:  # the next round cycles this model
            method = AnchoredDiffusionDA(
                params=params,
                graph=graph,
                norm=norm,
                anchor=None,
                distance=None,
                graphdef=graphdef,
                edm=spec.edm,
                sampler=t.round_sampler,
                steps=t.round_sampler_steps,
                **_cycling_settings(cfg),
            )

    summary = {
        "steps": int(steps[-1]),
        "final_loss": losses[-1],
        "final_val_loss": val_losses[-1],
        "n_train": len(data),
        "n_params": n_params,
        "data_s": data_s,
        "train_s": train_s,
        "rounds": [dataclasses.asdict(s) for s in scores],
    }
    obs = {"operator": cfg.obs.operator, "r_std": float(cfg.obs.r_std)}
    save(
        Path(t.checkpoint),
        params,
        spec,
        norm,
        testbed_record(cfg.testbed),
        obs,
        cfg.model_dump(mode="json"),
        summary,
    )
    return TrainResult(
        Path(t.checkpoint),
        np.asarray(steps),
        np.asarray(losses),
        np.asarray(val_losses),
        len(data),
        n_params,
        data_s,
        train_s,
    )
