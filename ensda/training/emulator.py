"""``ensda train-emulator``: train the sphere forecast emulator on the config's nature-run
store and score its rollouts on the held-out part (the ``emulator:`` section).

The store's states one cycle apart (``testbed.cycle_hours``) are split in time: the first
``1 − eval_fraction`` are trained on (``ensda.testbeds.sphere.emulator.train_emulator``),
the rest held out. From held-out start times the emulator's 6..48-h rollouts are scored
(cos-latitude weighted RMSE per channel) against persistence and climatology (the mean of
the training states), optionally with long rollouts (error, global-mean bias, variance
ratio). The checkpoint records the trained-on store times (``meta.json``:
``training.train_times``), so experiments that use it as ``testbed.forecast.emulator``
can draw their truth from the held-out times; ``evaluation.json`` beside it holds the
scores.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from ensda.config import ExperimentConfig
from ensda.nn import GNNConfig
from ensda.testbeds.sphere import store as zstore
from ensda.testbeds.sphere.emulator import (
    EmulatorTrainConfig,
    evaluate,
    load_emulator,
    long_rollout,
    n_train_times,
    save_emulator,
    summary_table,
    train_emulator,
)
from ensda.testbeds.sphere.testbed import from_config

#: leads (cycles) of the held-out evaluation
EVAL_LEADS = tuple(range(1, 9))


@dataclasses.dataclass(frozen=True)
class EmulatorRun:
    checkpoint: Path
    evaluation: dict  # what ``evaluation.json`` holds (``table_48h``: the headline rows)
    trained: dict | None  # the training summary (None with ``eval_only``)


def train_and_evaluate(
    cfg: ExperimentConfig,
    eval_only: bool = False,
    report: Callable[[str], None] = lambda _: None,
    progress: bool = True,
) -> EmulatorRun:
    """Train the emulator of ``cfg.emulator`` (or, with ``eval_only``, load its checkpoint),
    save it and score it on the held-out store times (module docstring)."""
    e = cfg.emulator
    if e is None:
        raise ValueError("the config has no 'emulator' section: nothing to train")
    store = cfg.testbed.nature.store
    tb = from_config(cfg.testbed, store=store)
    n_store = zstore.n_times(store) if e.times is None else min(e.times, zstore.n_times(store))
    times = tb.dataset["time"].values[: n_store : tb.stride]
    t0 = time.perf_counter()
    states = np.asarray(tb.truth(0, (n_store - 1) // tb.stride))
    report(f"read {states.shape} from {store} in {time.perf_counter() - t0:.1f} s")

    def label(i: int) -> str:
        return str(times[i])[:16]

    out = Path(e.checkpoint)
    trained = None
    if eval_only:
        emulator = load_emulator(out)
        emulator.check_matches(tb.channels, tb.grid, cfg.testbed.cycle_hours, where=str(out))
        training = emulator.meta["training"]
        n_train = training["train_times"][1] + 1
        if n_train >= states.shape[0] - 1:
            raise ValueError(
                f"{out} was trained on cycles 0..{n_train - 1}: no held-out times among the "
                f"{states.shape[0]} read"
            )
    else:
        train_cfg = EmulatorTrainConfig(
            steps=e.steps,
            batch=e.batch,
            lr=e.lr,
            warmup=min(e.warmup, e.steps - 1),
            weight_decay=e.weight_decay,
            log_every=min(e.log_every, e.steps),
            eval_fraction=e.eval_fraction,
            loss_weights=tuple(e.loss_weights.items()),
            refinement=e.refinement,
            rollout=e.rollout,
            gnn=GNNConfig(latent=e.latent, steps=e.message_steps, hidden_layers=e.hidden_layers),
            hours_per_cycle=cfg.testbed.cycle_hours,
        )
        n_train = n_train_times(states.shape[0], e.eval_fraction)
        last = states.shape[0] - 1
        report(
            f"training on cycles 0..{n_train - 1} ({label(0)} .. {label(n_train - 1)}), holding "
            f"out {n_train}..{last} ({label(n_train)} .. {label(last)}) on {jax.default_backend()}"
        )
        init = None if e.init is None else load_emulator(e.init)
        result = train_emulator(
            states, tb.channels, train_cfg, jax.random.key(e.seed), progress=progress, init=init
        )
        emulator = result.emulator
        training = {
            "store": str(store),
            "stride": tb.stride,
            "train_times": [0, n_train - 1],
            "train_dates": [label(0), label(n_train - 1)],
            "eval_times": [n_train, last],
            "eval_dates": [label(n_train), label(last)],
            "config": e.model_dump(mode="json"),
            "summary": result.summary,
            "history": {
                "steps": result.steps.tolist(),
                "loss": result.loss.tolist(),
                "val_loss": result.val_loss.tolist(),
            },
        }
        save_emulator(out, emulator, training)
        trained = result.summary | {"n_params": result.n_params, "step_s": result.step_s}
        report(
            f"{result.n_params} parameters, {result.step_s * 1e3:.1f} ms/step, loss "
            f"{result.initial_loss:.4f} -> {result.loss[-1]:.4f} (held-out "
            f"{result.val_loss[-1]:.4f}); checkpoint {out}"
        )
    held = states[n_train:]
    climatology = states[:n_train].mean(0)
    starts = np.arange(held.shape[0] - EVAL_LEADS[-1])
    if starts.size < 1:
        raise ValueError(
            f"the held-out window ({held.shape[0]} states) is shorter than the evaluation's "
            f"{EVAL_LEADS[-1]} cycles: read more store times or hold out more (eval_fraction)"
        )
    if e.max_starts is not None and e.max_starts < starts.size:
        starts = np.unique(np.linspace(0, starts[-1], e.max_starts).round().astype(int))
    t0 = time.perf_counter()
    res = evaluate(emulator, held, EVAL_LEADS, climatology=climatology, starts=starts)
    res["eval_s"] = time.perf_counter() - t0
    res["start_times"] = (starts + n_train).tolist()
    keys = ("store", "train_times", "train_dates", "eval_times", "eval_dates", "summary")
    res["training"] = {k: training.get(k) for k in keys}
    if e.long_days > 0:
        res["long_rollout"] = long_rollout(
            emulator, held, climatology, states[:n_train], e.long_days
        )
    res["table_48h"] = summary_table(res)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(res, indent=1))
    return EmulatorRun(out, res, trained)
