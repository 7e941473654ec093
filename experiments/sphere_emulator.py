"""Train and evaluate the sphere forecast emulator on a nature run (issue 7 item 3a).

Trains ``ensda.testbeds.sphere.emulator`` (one 6-h residual step, a GraphCast-style
grid -> multi-mesh -> grid GNN) on the first 80 % of the store's times, then scores 6..48-h
rollouts from start times in the held-out last 20 % (cos-latitude weighted RMSE per
channel) against persistence and climatology (the mean of the training states), and writes
the checkpoint (``--out``; usable as ``testbed.forecast.emulator: PATH`` in a config) and
the evaluation table as JSON (``OUT/evaluation.json``; the headline rows at 48 h are also
printed as the last line of stdout).

The trained-on store times are recorded in the checkpoint (``meta.json``:
``training.train_times`` / ``train_dates``): experiments that use the emulator as their
forecast model should draw their truth from the held-out times (``testbed.truth_start``
>= the first held-out index, ``training.eval_times``).

    # full training (0.235 s/step at batch 4 on 2 idle CPU cores, 0.76 s when busy; 1,200 steps already beat
    # persistence and climatology at 48 h: experiments/README.md)
    .venv/bin/python experiments/sphere_emulator.py data/sphere/nature.zarr \\
        --steps 20000 --batch 4 --latent 64 --mesh-level 3 --lr 1e-3 --out checkpoints/sphere_emulator
    # evaluate a checkpoint again (same store, its recorded held-out window)
    .venv/bin/python experiments/sphere_emulator.py data/sphere/nature.zarr --eval-only --out checkpoints/sphere_emulator
    # fine-tune a checkpoint with a 4-cycle rollout loss (long rollouts drift less)
    .venv/bin/python experiments/sphere_emulator.py data/sphere/nature.zarr --init checkpoints/sphere_emulator_cpu3000 \
        --rollout 4 --steps 600 --lr 3e-4 --warmup 50 --max-starts 40 --out checkpoints/sphere_emulator_r4
    # end-to-end smoke check in seconds
    .venv/bin/python experiments/sphere_emulator.py data/sphere/nature.zarr --times 60 --steps 10 \\
        --latent 16 --message-steps 1 --log-every 5 --max-starts 2 --out /tmp/emu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from ensda.nn import GNNConfig
from ensda.testbeds.sphere import store as zstore
from ensda.testbeds.sphere.config import SphereTestbedConfig
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


def parse_weight(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError(
            f"--loss-weight takes NAME=WEIGHT (a variable or channel), got {text!r}"
        )
    return name, float(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "store",
        nargs="?",
        default="data/sphere/nature.zarr",
        help="nature-run store (ensda data nature)",
    )
    p.add_argument("--out", default="checkpoints/sphere_emulator", help="checkpoint directory")
    p.add_argument(
        "--eval-only", action="store_true", help="evaluate the checkpoint at --out, no training"
    )
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--message-steps", type=int, default=4, help="processor message-passing steps")
    p.add_argument("--hidden-layers", type=int, default=1)
    p.add_argument(
        "--mesh-level", type=int, default=3, help="multi-mesh refinement (64x32 grid: <= 3)"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument(
        "--eval-fraction", type=float, default=0.2, help="last part of the store held out"
    )
    p.add_argument(
        "--loss-weight",
        type=parse_weight,
        action="append",
        default=[],
        metavar="NAME=W",
        help="loss weight of a variable or channel (repeatable; others 1)",
    )
    p.add_argument(
        "--rollout", type=int, default=1, help="cycles of the rollout loss (1: one-step)"
    )
    p.add_argument(
        "--init",
        default=None,
        help="fine-tune this emulator checkpoint (its network and normalisation)",
    )
    p.add_argument(
        "--long-days",
        type=float,
        default=40.0,
        help="also roll out this many days from held-out starts: error, global-mean bias and variance ratio",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--times", type=int, default=None, help="read only the first N store times (quick checks)"
    )
    p.add_argument(
        "--max-starts",
        type=int,
        default=None,
        help="evaluation start times, evenly spaced in the held-out window (default: all that fit)",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()

    cfg = SphereTestbedConfig.model_validate(zstore.read_restart(args.store).config)
    tb = from_config(cfg, store=args.store)
    n_store = (
        zstore.n_times(args.store)
        if args.times is None
        else min(args.times, zstore.n_times(args.store))
    )
    n_cycles_read = (n_store - 1) // tb.stride
    times = tb.dataset["time"].values[: n_store : tb.stride]
    t0 = time.perf_counter()
    states = np.asarray(tb.truth(0, n_cycles_read))
    print(f"read {states.shape} from {args.store} in {time.perf_counter() - t0:.1f} s", flush=True)

    def label(i: int) -> str:
        return str(times[i])[:16]

    out = Path(args.out)
    if args.eval_only:
        emulator = load_emulator(out)
        emulator.check_matches(tb.channels, tb.grid, cfg.cycle_hours, where=str(out))
        training = emulator.meta["training"]
        n_train = training["train_times"][1] + 1
        if n_train >= states.shape[0] - 1:
            raise SystemExit(
                f"{out} was trained on cycles 0..{n_train - 1}: no held-out times among the {states.shape[0]} read"
            )
    else:
        train_cfg = EmulatorTrainConfig(
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            warmup=min(args.warmup, args.steps - 1),
            weight_decay=args.weight_decay,
            log_every=min(args.log_every, args.steps),
            eval_fraction=args.eval_fraction,
            loss_weights=tuple(args.loss_weight),
            refinement=args.mesh_level,
            rollout=args.rollout,
            gnn=GNNConfig(
                latent=args.latent, steps=args.message_steps, hidden_layers=args.hidden_layers
            ),
            hours_per_cycle=cfg.cycle_hours,
        )
        n_train = n_train_times(states.shape[0], args.eval_fraction)
        print(
            f"training on cycles 0..{n_train - 1} ({label(0)} .. {label(n_train - 1)}), "
            f"holding out {n_train}..{states.shape[0] - 1} ({label(n_train)} .. {label(states.shape[0] - 1)}) "
            f"on {jax.default_backend()}",
            flush=True,
        )
        init = None if args.init is None else load_emulator(args.init)
        result = train_emulator(
            states,
            tb.channels,
            train_cfg,
            jax.random.key(args.seed),
            progress=not args.no_progress,
            init=init,
        )
        assert result.n_train == n_train
        emulator = result.emulator
        training = {
            "store": str(args.store),
            "stride": tb.stride,
            "train_times": [0, n_train - 1],
            "train_dates": [label(0), label(n_train - 1)],
            "eval_times": [n_train, states.shape[0] - 1],
            "eval_dates": [label(n_train), label(states.shape[0] - 1)],
            "config": {
                k: v for k, v in vars(args).items() if k not in ("eval_only", "no_progress")
            },
            "summary": result.summary,
            "history": {
                "steps": result.steps.tolist(),
                "loss": result.loss.tolist(),
                "val_loss": result.val_loss.tolist(),
            },
        }
        save_emulator(out, emulator, training)
        print(
            f"{result.n_params} parameters, {result.step_s * 1e3:.1f} ms/step, loss {result.initial_loss:.4f} -> "
            f"{result.loss[-1]:.4f} (held-out {result.val_loss[-1]:.4f}); checkpoint {out}",
            flush=True,
        )

    held = states[n_train:]
    climatology = states[:n_train].mean(0)
    leads = tuple(range(1, 9))
    starts = np.arange(held.shape[0] - leads[-1])
    if args.max_starts is not None and args.max_starts < starts.size:
        starts = np.unique(np.linspace(0, starts[-1], args.max_starts).round().astype(int))
    t0 = time.perf_counter()
    res = evaluate(emulator, held, leads, climatology=climatology, starts=starts)
    res["eval_s"] = time.perf_counter() - t0
    res["start_times"] = (starts + n_train).tolist()
    res["training"] = {
        k: training.get(k)
        for k in ("store", "train_times", "train_dates", "eval_times", "eval_dates", "summary")
    }
    if args.long_days > 0:
        res["long_rollout"] = long_rollout(
            emulator, held, climatology, states[:n_train], args.long_days
        )
    table = summary_table(res)
    res["table_48h"] = table
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(res, indent=1))
    print(
        f"{res['n_starts']} forecasts from the held-out window, {res['eval_s']:.1f} s; "
        f"RMSE at {table['lead_hours']} h (emulator / persistence / climatology):"
    )
    for name, row in table["rows"].items():
        print(
            f"  {name:28s} {row['emulator']:10.4g} {row['persistence']:10.4g} {row['climatology']:10.4g}"
            f"  {'beats both' if row['beats_both'] else 'does NOT beat both'}"
        )
    print(
        f"  channels beating both: {table['channels_beating_both']}; full table: {out / 'evaluation.json'}"
    )
    if "long_rollout" in res:
        lr = res["long_rollout"]
        print(
            f"long rollouts from {lr['n_starts']} held-out starts (day: standardised rmse / mean |global-mean bias| "
            f"/ variance ratio):"
        )
        print(
            "  "
            + "  ".join(
                f"{d:g}: {r:.2f} / {b:.2f} / {v:.2f}"
                for d, r, b, v in zip(
                    lr["days"], lr["rmse"], lr["abs_bias"], lr["variance_ratio"], strict=True
                )
            )
        )
    print(json.dumps(table))


if __name__ == "__main__":
    main()
