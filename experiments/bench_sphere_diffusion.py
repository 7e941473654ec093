"""Benchmark: diffusion DA on the sphere (issue 7 item 7) — one analysis and training throughput.

On ``experiments/configs/sphere_diffusion.yaml`` (64 × 32 grid, 53 channels, the sphere
forecast emulator as forecast model) and its nature-run store, two measurements:

1. **One analysis of N = ``--members`` (32)**: ``analyse(background, obs, key)`` (jitted) of
   the diffusion assimilator (``DiffusionDA``, built with ``build_assimilator``), the
   background the N-member one-cycle forecast of ``initial_ensemble``, the observations
   those of cycle 1 (1 % random columns, 1,060 observations), the OSSE from ``make_osse``
   (``cycles=3 burn_in=1``). Rows, on top of the config's ``methods.diffusion``:

   - ``forecast``: the N-member one-cycle forecast of the config's forecast model — the
     **reference** (``x forecast`` = time / its time, measured in the same process and
     rounds: these machines are shared and noisy),
   - ``obs_channels``: the config's settings (amortised observation channels, Heun, the
     config's steps),
   - ``dpm2s``: the same with DPM-Solver++(2S) (``sampler=dpm2s``),
   - ``guidance``: likelihood guidance instead of the observation channels
     (``obs_channels=false guidance_strength=1``; one backward pass per network call).

   Each with compile and run time, NFE (network calls per member), seconds per network
   call and member, and peak memory: XLA's ``memory_analysis()`` of the compiled analysis
   (temp = the scratch buffers, and temp + argument + output bytes) and the growth of the
   process's peak RSS (``ru_maxrss``; on a GPU the device's peak bytes in use) over its
   first run — a high-water mark, so a run that stays under an earlier peak (of
   compilation, or of another row) shows 0.

2. **Training throughput** of the denoiser at the config's ``train.batch``: the training
   step as ``ensda train`` scans it (``train.training_step``: loss and gradient on a batch
   with random networks, AdamW, EMA), ``--train-steps`` (3) steps per timed run, in
   steps/s and examples/s; next to its forward + backward alone and the **reference**, the
   forward + backward of the forecast emulator's training loss at the same batch
   (``emulator.loss_fn``; its training step less the optimiser update). Each runs once
   untimed first (the first run pays for allocations; these runs take seconds).

Neither needs a trained denoiser: the cost of an analysis does not depend on the weights,
so the benchmark writes an untrained checkpoint (``build_network(model_spec(cfg), ...)``,
normalisation fitted on climatology states of the store) to a temporary directory and
points ``methods.diffusion.checkpoint`` at it. Without the emulator checkpoint
(``testbed.forecast.emulator``) the dycore is the forecast model
(``testbed.forecast.emulator=null``, said in the output) and the training reference is an
untrained emulator of the denoiser's network size.

Compile time is measured apart from run time (``lower().compile()``); the compiled
functions then run up to ``--repeats`` (3) times, the jobs of a part interleaved, no
further run of a job once its runs took ``--budget`` (60 s); the best run counts. The
backend and device are printed and written to the JSON (``device``): a GPU run is a
separate result, and the time targets are for the 2-core CPU.

Targets (PASS/FAIL printed; ``--check`` exits 1 on FAIL), set from the first measurement
on the 2-core CPU with a margin of about 2 (27.7 s, 20.5x, 1.63 GiB, 1.96 steps/s at a load
average of 3-5; experiments/README.md, "Sphere: diffusion benchmark"):

1. Diffusion analysis for N = 32 (obs_channels, Heun 10 steps: 19 network calls per
   member) ≤ 60 s.
2. That analysis ≤ 40x the N-member one-cycle emulator forecast (without the emulator
   checkpoint: the dycore's, a far costlier reference).
3. Its XLA memory (temp + argument + output) ≤ 4 GiB.
4. Denoiser training ≥ 1 step/s at batch 4.

Without the store (CI) the benchmark prints a SKIP line and exits 0 (1 with ``--check``).

Usage::

    python experiments/bench_sphere_diffusion.py                  # the tables (make bench)
    python experiments/bench_sphere_diffusion.py --repeats 1 --json bench_sphere_diffusion.json
    python experiments/bench_sphere_diffusion.py --members 8 --variants obs_channels --set
    methods.diffusion.steps=5

Several minutes on 2 CPU cores (the guidance row dominates).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ensda.assimilator import network_calls
from ensda.benchmark import (
    analyse_jit,
    compile_timed,
    environment,
    finish,
    forecast_only,
    judge_targets,
    parse_common,
    print_targets,
    runs_text,
    skip_missing_store,
    timed_rounds,
)
from ensda.config import load
from ensda.diffusion.checkpoint import save_checkpoint, testbed_record
from ensda.diffusion.data import Normalisation, Pairs
from ensda.diffusion.model import build_network
from ensda.experiment import build_assimilator, initial_ensemble, make_osse
from ensda.testbeds.sphere import store as zstore
from ensda.testbeds.sphere.emulator import Emulator, EmulatorNorm, EmulatorSpec
from ensda.testbeds.sphere.emulator import loss_fn as emulator_loss
from ensda.training.increment import (
    loss_weights,
    model_spec,
    normalisation_groups,
    optimiser,
    training_arrays,
    training_step,
)

CONFIG = "experiments/configs/sphere_diffusion.yaml"
METHOD = "diffusion"
REFERENCE = "forecast"
TRAIN_REFERENCE = "emulator fwd+bwd"
OSSE_OVERRIDES = ("cycles=3", "burn_in=1", "tracking.enabled=false", "lead_time.enabled=false")
#: analysis rows: settings over the config's methods.diffusion
VARIANTS = {
    "obs_channels": {},
    "dpm2s": {"sampler": "dpm2s"},
    "guidance": {"obs_channels": False, "guidance_strength": 1.0},
}
#: climatology states the untrained checkpoint's normalisation and the training batches come from
NORM_STATES = 32
GIB = 2.0**30
SHOWN_SETTINGS = ("sampler", "steps", "obs_channels", "guidance_strength")
TARGETS = (
    # (name, row, quantity, limit, direction): "ge" passes when value >= limit, "le" when <=
    (
        "diffusion analysis N={members} (obs_channels, Heun) <= 60 s",
        "obs_channels",
        "run_s",
        60.0,
        "le",
    ),
    (
        "diffusion analysis <= 40x the N-member one-cycle forecast",
        "obs_channels",
        "x_reference",
        40.0,
        "le",
    ),
    (
        "diffusion analysis XLA memory (temp + args + output) <= 4 GiB",
        "obs_channels",
        "xla_gib",
        4.0,
        "le",
    ),
    ("denoiser training >= 1 step/s at train.batch", "train step", "steps_per_s", 1.0, "ge"),
)


def peak_memory() -> tuple[int, str]:
    """The high-water mark of memory in bytes and what it is: the device's peak bytes in use
    where the backend reports them (GPU), else the process's peak RSS (``ru_maxrss``: kB on
    Linux, bytes on macOS)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024
    ), "RSS"


def memory_of(compiled) -> dict:
    """XLA's memory analysis of a compiled function (bytes; what the backend reports)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    fields = ("temp", "argument", "output", "alias", "generated_code")
    out = {f: int(getattr(stats, f"{f}_size_in_bytes", 0)) for f in fields}
    # as the backend reports it (on the CPU below temp: not a peak of the whole run; JSON only)
    out["peak"] = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    out["total"] = out["temp"] + out["argument"] + out["output"]
    return out


def peak_recorded(job: dict):
    """``job["call"]`` that records the growth of ``peak_memory`` over its first run in
    ``job["peak_growth"]`` (and the peak after its last run in ``job["peak"]``)."""
    call = job["call"]

    def run():
        before, _ = peak_memory()
        out = jax.block_until_ready(call())
        after, job["peak_of"] = peak_memory()
        job.setdefault("peak_growth", after - before)
        job["peak"] = after
        return out

    return run


def new_job(row: str, call, compiled, compile_s: float, **info) -> dict:
    job = {
        "row": row,
        "call": call,
        "compile_s": compile_s,
        "memory": memory_of(compiled),
        "runs": [],
        "result": None,
    } | info
    job["call"] = peak_recorded(job)
    return job


def climatology_pairs(states: jax.Array) -> Pairs:
    """Stand-in training examples from climatology states ``(S, n)``: truth state s + 1,
    background mean state s, spread the states' std (their values do not change costs)."""
    s = np.asarray(states)
    spread = np.broadcast_to(s.std(0), s[1:].shape)
    return Pairs(s[:-1], np.ascontiguousarray(spread), s[1:])


def write_untrained_checkpoint(cfg, path: Path, pairs: Pairs) -> None:
    """The denoiser of ``cfg.train`` at initialisation, normalised by ``pairs``, as a checkpoint
    at ``path``."""
    spec = model_spec(cfg)
    _, params, _ = nnx.split(build_network(spec, spec.graph(), cfg.train.seed), nnx.Param, ...)
    norm = Normalisation.fit(pairs, normalisation_groups(cfg))
    save_checkpoint(
        path,
        params,
        spec,
        norm,
        testbed_record(cfg.testbed),
        cfg.model_dump(mode="json"),
        {"untrained": "bench_sphere_diffusion"},
    )


def bench_analysis(
    cfg, osse, variants: list[str], repeats: int, budget_s: float, console: Console
) -> list[dict]:
    """The N-member one-cycle forecast (reference) and one diffusion analysis per variant."""
    model = osse.forecast_model
    members = cfg.ensemble.size
    x0 = initial_ensemble(cfg, osse, members)
    forecast, compile_s = compile_timed(forecast_only, model, x0, 1)
    background = jax.block_until_ready(forecast(x0))
    obs = osse.obs.at(
        0
    )  # the observations of cycle 1, analysed with fold_in(key, 1) as in run_cycles
    key = jax.random.fold_in(jax.random.key(cfg.seeds.assimilator), 1)
    jobs = [
        new_job(
            REFERENCE, lambda: forecast(x0), forecast, compile_s, settings={}, nfe=0, build_s=0.0
        )
    ]
    base = cfg.method_settings(METHOD)
    for name in variants:
        settings = base | VARIANTS[name]
        t0 = time.perf_counter()
        assim = jax.block_until_ready(build_assimilator(cfg, osse, METHOD, settings))
        build_s = time.perf_counter() - t0
        compiled, c_s = compile_timed(analyse_jit, assim, background, obs, key)
        jobs.append(
            new_job(
                name,
                partial(compiled, assim, background, obs, key),
                compiled,
                c_s,
                settings={k: settings[k] for k in SHOWN_SETTINGS},
                nfe=network_calls(assim),
                build_s=build_s,
            )
        )
    console.print(
        f"N = {members}, {int(obs.y.shape[0])} observations in cycle 1; built + compiled: "
        + ", ".join(f"{j['row']} {j['build_s']:.1f} + {j['compile_s']:.1f} s" for j in jobs)
    )
    rows = measure(jobs, repeats, budget_s, console)
    for row, job in zip(rows, jobs, strict=True):
        row |= {
            "settings": job["settings"],
            "members": members,
            "n_obs": int(obs.y.shape[0]),
            "nfe": job["nfe"],
            "build_s": job["build_s"],
            "finite": bool(np.isfinite(np.asarray(job["result"])).all()),
            "s_per_call_member": row["run_s"] / (job["nfe"] * members) if job["nfe"] else None,
        }
    return rows


def reference_emulator(cfg, osse, states: jax.Array) -> tuple[Emulator, bool]:
    """The forecast emulator, or (dycore forecasts) an untrained one of the denoiser's size;
    whether it is the configured one."""
    tb = osse.forecast_model.testbed
    if tb.emulator is not None:
        return tb.emulator, True
    t = cfg.train
    gnn = model_spec(cfg).gnn
    spec = EmulatorSpec(tb.channels, tb.grid, t.refinement, gnn, int(tb.hours_per_cycle))
    return Emulator.init(spec, EmulatorNorm.fit(np.asarray(osse.testbed.unflatten(states)))), False


def bench_training(
    cfg,
    osse,
    states: jax.Array,
    pairs: Pairs,
    n_steps: int,
    repeats: int,
    budget_s: float,
    console: Console,
) -> list[dict]:
    """Forward + backward of the emulator's loss (reference), of the denoiser's loss, and
    ``n_steps`` denoiser training steps, each at ``train.batch``."""
    t = cfg.train
    batch = t.batch
    spec = model_spec(cfg)
    graph = spec.graph()
    graphdef, params, rest = nnx.split(build_network(spec, graph, t.seed), nnx.Param, ...)
    norm = Normalisation.fit(pairs, normalisation_groups(cfg))
    _, tx = optimiser(t)
    loss_of, step = training_step(spec, graph, graphdef, rest, norm, t, tx, loss_weights(cfg))
    data = training_arrays(pairs, norm)
    key = jax.random.key(t.seed + 4)
    opt_state = tx.init(params)

    @partial(jax.jit, static_argnums=5)
    def steps_of(params, opt_state, ema, key, data, n):
        carry, losses = jax.lax.scan(
            lambda c, s: step(c, s, key, data), (params, opt_state, ema), jnp.arange(n)
        )
        return carry, losses

    emu, configured = reference_emulator(cfg, osse, states)
    area = emu.spec.grid.weights
    lam = jnp.ones((emu.spec.n_channels,), jnp.float32)
    x = osse.testbed.unflatten(states)
    emu_grad = jax.jit(jax.value_and_grad(partial(emulator_loss, emu.graphdef), argnums=0))
    emu_args = (emu.params, emu.graphs, emu.norm, area, lam, x[:batch], x[1 : batch + 1])
    den_grad = jax.jit(jax.value_and_grad(loss_of))
    den_args = (params, key, *(a[:batch] for a in data))

    jobs = []
    for row, fn, args, steps, what in (
        (
            TRAIN_REFERENCE,
            emu_grad,
            emu_args,
            1,
            f"{'the forecast emulator' if configured else 'an untrained emulator'}: loss_fn "
            "value_and_grad",
        ),
        ("denoiser fwd+bwd", den_grad, den_args, 1, "EDM loss value_and_grad (random networks)"),
        (
            "train step",
            steps_of,
            (params, opt_state, params, key, data, n_steps),
            n_steps,
            f"training_step x {n_steps} (lax.scan): + AdamW + EMA",
        ),
    ):
        compiled, c_s = compile_timed(fn, *args)
        dynamic = args[:-1] if fn is steps_of else args  # n_steps is static
        jobs.append(
            new_job(row, partial(compiled, *dynamic), compiled, c_s, steps=steps, what=what)
        )
    console.print(
        f"training at batch {batch}: compiled "
        + ", ".join(f"{j['row']} {j['compile_s']:.1f} s" for j in jobs)
    )
    for job in (
        jobs
    ):  # one untimed run each (seconds): the first run pays for allocations and thread start-up
        job["call"]()
    rows = measure(jobs, repeats, budget_s, console)
    for row, job in zip(rows, jobs, strict=True):
        step_s = row["run_s"] / job["steps"]
        loss = job["result"][1] if job["row"] == "train step" else job["result"][0]
        row |= {
            "what": job["what"],
            "batch": batch,
            "steps": job["steps"],
            "s_per_step": step_s,
            "steps_per_s": 1.0 / step_s,
            "examples_per_s": batch / step_s,
            "x_reference": row["x_reference"]
            / job["steps"],  # per step (the reference is one step)
            "finite": bool(np.isfinite(np.asarray(loss)).all()),
        }
    return rows


def measure(jobs: list[dict], repeats: int, budget_s: float, console: Console) -> list[dict]:
    """Time the compiled jobs (``timed_rounds``; the best run counts) and print their runs;
    a row of each job's times and memory, ``x_reference`` its time / that of the first job."""
    timed_rounds(jobs, repeats, budget_s)
    console.print("runs: " + ", ".join(f"{j['row']} {runs_text(j['runs'])}" for j in jobs))
    ref_s = min(jobs[0]["runs"])
    rows = []
    for job in jobs:
        run_s, mem = min(job["runs"]), job["memory"]
        rows.append(
            {
                "row": job["row"],
                "compile_s": job["compile_s"],
                "run_s": run_s,
                "runs_s": job["runs"],
                "x_reference": run_s / ref_s,
                "xla_bytes": mem,
                "xla_gib": mem["total"] / GIB if mem else math.nan,
                "peak_of": job["peak_of"],
                "peak_growth_bytes": job["peak_growth"],
                "peak_bytes": job["peak"],
            }
        )
    return rows


def _settings_text(settings: dict) -> str:
    if not settings:
        return "-"
    text = f"{settings['sampler']}, {settings['steps']} steps"
    if settings["obs_channels"]:
        text += ", obs channels"
    if settings["guidance_strength"] > 0:
        text += f", guidance {settings['guidance_strength']:g}"
    return text


def _gib(n: float | None) -> str:
    return "-" if n is None or not math.isfinite(n) else f"{n / GIB:.2f}"


def render(
    analysis: list[dict],
    training: list[dict],
    targets: list[dict],
    repeats: int,
    forecast_model: str,
    console: Console,
) -> None:
    n_obs, members = analysis[0]["n_obs"], analysis[0]["members"]
    table = Table(
        title=f"One diffusion analysis, N = {members}, {n_obs} observations (best of up to "
        f"{repeats} "
        f"runs; x forecast = time / that of the N-member one-cycle forecast, {forecast_model})"
    )
    for col in (
        "row",
        "NFE",
        "build s",
        "compile s",
        "run s",
        "x forecast",
        "s/call/member",
        "XLA temp GiB",
        "XLA total GiB",
        f"{analysis[0]['peak_of']} growth GiB",
    ):
        table.add_column(col, justify="left" if col == "row" else "right", no_wrap=True)
    table.add_column("settings", justify="left", overflow="fold", max_width=34)
    for r in analysis:
        mem = r["xla_bytes"]
        table.add_row(
            r["row"] if r["finite"] else f"{r['row']} [red]non-finite[/]",
            str(r["nfe"] or "-"),
            f"{r['build_s']:.1f}",
            f"{r['compile_s']:.1f}",
            f"{r['run_s']:.2f}",
            f"{r['x_reference']:.3g}",
            "-" if r["s_per_call_member"] is None else f"{r['s_per_call_member'] * 1e3:.1f} ms",
            _gib(mem.get("temp")),
            _gib(mem.get("total")),
            _gib(r["peak_growth_bytes"]),
            _settings_text(r["settings"]),
        )
    console.print(table)
    console.print(
        "XLA total = temp + argument + output bytes of the compiled function (memory_analysis); "
        "growth: of "
        "the peak memory (the process's peak RSS on the CPU, the device's peak bytes in use on a "
        "GPU) over "
        "the first run, a high-water mark: 0 when the run stayed under an earlier peak. "
        "s/call/member = "
        "run s / (NFE x N); guidance calls include a backward pass."
    )

    batch = training[0]["batch"]
    table = Table(
        title=f"Training throughput at batch {batch} (best of up to {repeats} runs; "
        f"x ref = time per step / that of the {TRAIN_REFERENCE})"
    )
    for col in (
        "row",
        "steps/run",
        "compile s",
        "s/step",
        "steps/s",
        "examples/s",
        "x ref",
        "XLA temp GiB",
        "XLA total GiB",
    ):
        table.add_column(col, justify="left" if col == "row" else "right", no_wrap=True)
    table.add_column("what", justify="left", overflow="fold", max_width=56)
    for r in training:
        mem = r["xla_bytes"]
        table.add_row(
            r["row"] if r["finite"] else f"{r['row']} [red]non-finite[/]",
            str(r["steps"]),
            f"{r['compile_s']:.1f}",
            f"{r['s_per_step']:.3f}",
            f"{r['steps_per_s']:.2f}",
            f"{r['examples_per_s']:.2f}",
            f"{r['x_reference']:.3g}",
            _gib(mem.get("temp")),
            _gib(mem.get("total")),
            r["what"],
        )
    console.print(table)
    print_targets(targets, console)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"analysis rows, comma-separated, of {', '.join(VARIANTS)} (default all)",
    )
    ap.add_argument(
        "--train-steps",
        type=int,
        default=3,
        help="denoiser training steps per timed run (default 3)",
    )
    args = parse_common(
        ap, argv, CONFIG, 60.0, OSSE_OVERRIDES, "the diffusion analysis is an ensemble method"
    )
    variants = [v for v in args.variants.split(",") if v]
    if not variants or set(variants) - set(VARIANTS):
        ap.error(f"--variants takes some of {', '.join(VARIANTS)}, got {args.variants!r}")
    if args.train_steps < 1:
        ap.error("--train-steps must be >= 1")

    console = Console(width=max(Console().width, 150), stderr=args.json_out == "-")
    overrides = [*OSSE_OVERRIDES, f"ensemble.size={args.members}", *args.overrides]
    cfg = load(args.config, overrides)
    if cfg.testbed.kind != "sphere" or cfg.train is None:
        ap.error(f"{args.config} is not a sphere config with a train: section")
    store = cfg.testbed.nature.store
    if zstore.read_restart(store) is None:
        return skip_missing_store("sphere_diffusion", args, store, TARGETS, console)
    emulator = cfg.testbed.forecast.emulator
    note = f"forecast model: the emulator {emulator}"
    if emulator is not None and not Path(emulator).exists():
        overrides.append("testbed.forecast.emulator=null")
        note = (
            f"[yellow]no emulator checkpoint at {emulator}: forecast model the dycore "
            "(testbed.forecast.emulator=null)[/]"
        )
    elif emulator is None:
        note = "forecast model: the dycore"

    env = environment(console, f"store {store}")
    console.print(note)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_diffusion_") as tmp:
        overrides.append(f"methods.{METHOD}.checkpoint={tmp}")
        cfg = load(args.config, overrides)
        t0 = time.perf_counter()
        osse = make_osse(cfg)
        states = osse.climatology[:NORM_STATES]
        pairs = climatology_pairs(states)
        write_untrained_checkpoint(cfg, Path(tmp), pairs)
        console.print(
            f"OSSE built and untrained checkpoint written in {time.perf_counter() - t0:.1f} s"
        )
        analysis = bench_analysis(cfg, osse, variants, args.repeats, args.budget, console)
    training = bench_training(
        cfg, osse, states, pairs, args.train_steps, args.repeats, args.budget, console
    )
    targets = judge_targets(TARGETS, {r["row"]: r for r in analysis + training}, args.members)
    tb = osse.forecast_model.testbed
    forecast_model = "emulator" if tb.emulator is not None else "dycore"
    render(analysis, training, targets, args.repeats, forecast_model, console)
    report = {
        "bench": "sphere_diffusion",
        "config": args.config,
        "overrides": [o for o in overrides if not o.startswith(f"methods.{METHOD}.checkpoint=")],
        "members": args.members,
        "variants": variants,
        "train_steps": args.train_steps,
        "repeats": args.repeats,
        "budget_s": args.budget,
        "reference": REFERENCE,
        "train_reference": TRAIN_REFERENCE,
        "forecast_model": forecast_model,
        "store": str(store),
        **env,
        "analysis": analysis,
        "training": training,
        "targets": targets,
    }
    return finish(report, t_start, args, console)


if __name__ == "__main__":
    main()
