"""Nature runs: spin-up from rest, then output every ``output_hours`` to a zarr store.

``generate(config)`` (``ensda data nature CONFIG``) writes ``config.nature.days`` of model
time after ``config.spinup_days`` of spin-up. Time axis: ``time[k] = nature.start +
k · output_hours``; the spin-up ends one output interval before ``nature.start``.

Resumable: the model state is saved in the store after each block of ``time_chunk``
outputs (and every ``SPINUP_BLOCK_DAYS`` during the spin-up). Run the same command again
after an interruption and it continues from the last saved state; data written after it
(a block cut short) is dropped first. Blocks always start at the same model steps, so a
resumed run produces the same numbers as one uninterrupted run. A larger ``nature.days``
extends a finished store, and experiment settings (``cycle_hours``, ``forecast``) may change;
any other config change is refused (it would mix two runs).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ensda.testbeds.sphere import store as zstore
from ensda.testbeds.sphere.config import SphereTestbedConfig
from ensda.testbeds.sphere.dycore import Output, integrate, make_model
from ensda.testbeds.sphere.grid import LatLonGrid

SPINUP_BLOCK_DAYS = 10.0
#: config keys (or key prefixes) that may differ when continuing a store: the length and place
#: of the run, and the experiment settings that do not shape the nature run
RESUMABLE_CHANGES = (
    "nature.days",
    "nature.store",
    "cycle_hours",
    "forecast.",
    "truth_start",
    "climatology_samples",
)


def build(cfg: SphereTestbedConfig):
    """The dycore and the output (grid, levels) of a sphere testbed config."""
    model = make_model(cfg.model, cfg.resolution, cfg.dt_minutes, cfg.layers)
    return model, Output(
        LatLonGrid(cfg.grid.n_lon, cfg.grid.n_lat), tuple(int(v) for v in cfg.state_levels)
    )


def state_arrays(state) -> dict[str, np.ndarray]:
    """The array fields of a dycore state (a dataclass), as NumPy."""
    out = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, (jax.Array, np.ndarray)):
            out[f.name] = np.asarray(value)
    return out


def restore_state(model, arrays: dict[str, np.ndarray]):
    """A dycore state with the saved ``arrays`` (fields not saved keep their defaults)."""
    template = model.initial_state(jax.random.key(0))
    return dataclasses.replace(template, **{k: jnp.asarray(v) for k, v in arrays.items()})


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_run(saved: dict, current: dict, path: Path) -> None:
    a, b = _flat(saved), _flat(current)
    differ = sorted(
        k for k in set(a) | set(b) if not k.startswith(RESUMABLE_CHANGES) and a.get(k) != b.get(k)
    )
    if differ:
        detail = ", ".join(f"{k}: store {a.get(k)!r} vs config {b.get(k)!r}" for k in differ)
        raise ValueError(
            f"{path} was started with another testbed config ({detail}); "
            "use a new store path or restore those settings"
        )


def _attrs(cfg: SphereTestbedConfig, model, out: Output) -> dict:
    import dinosaur

    trunc = model.output_truncation(out.grid)
    what = (
        f"Held-Suarez primitive equations {cfg.resolution} L{cfg.layers}"
        if cfg.model == "held_suarez"
        else f"shallow water (barotropic instability) {cfg.resolution}"
    )
    return {
        "source": f"ensda nature run: dinosaur {getattr(dinosaur, '__version__', '?')} {what}, dt "
        f"{cfg.dt_minutes} min",
        "grid": f"{out.grid.name} (WeatherBench 2 convention: cell-centred latitudes, no poles, "
        "south to north)",
        "truncation": f"T{trunc}",
        "regridding": f"triangular spectral truncation at T{trunc}, exact evaluation of the "
        "series at the grid points",
        "vertical_interpolation": (
            "sigma to pressure levels linear in ln p; T, u, v constant beyond the end layers; "
            "geopotential hydrostatic above the top layer and below the surface"
        ),
        "spinup_days": cfg.spinup_days,
        "ensda_testbed": json.dumps(cfg.model_dump(mode="json")),
    }


def generate(
    cfg: SphereTestbedConfig,
    store: str | Path | None = None,
    progress: bool = True,
    max_blocks: int | None = None,
) -> dict:
    """Spin up (or resume) and write the nature run; returns a summary with timings.

    ``max_blocks`` stops after that many output blocks (for tests of resumption).
    """
    from tqdm.auto import tqdm

    path = Path(store or cfg.nature.store)
    model, out = build(cfg)
    config = cfg.model_dump(mode="json")
    restart = zstore.read_restart(path)
    if restart is None:
        if path.exists() and any(path.iterdir()):
            raise ValueError(
                f"{path} exists and is not an ensda nature store (no restart group): choose "
                "another path"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        zstore.init_store(path, config)
        state, spun, written = model.initial_state(jax.random.key(cfg.nature.seed)), 0, 0
    else:
        _check_same_run(restart.config, config, path)
        spun, written = restart.spinup_steps, restart.n_written
        state = (
            restore_state(model, restart.arrays)
            if restart.arrays
            else model.initial_state(jax.random.key(cfg.nature.seed))
        )
        zstore.truncate(path, written)

    steps_per_day = model.steps_per(24)
    spin_total = round(cfg.spinup_days * steps_per_day)
    block = int(SPINUP_BLOCK_DAYS * steps_per_day)
    t0 = time.perf_counter()
    with tqdm(
        total=spin_total / steps_per_day,
        initial=spun / steps_per_day,
        unit="day",
        desc="spin-up",
        disable=not progress or spun >= spin_total,
        leave=False,
    ) as bar:
        while spun < spin_total:
            n = min(block, spin_total - spun)
            state, _ = integrate(model, state, 1, n, None)
            spun += n
            zstore.write_restart(path, state_arrays(state), spun, written)
            bar.update(n / steps_per_day)
    spinup_s = time.perf_counter() - t0

    per_out = model.steps_per(cfg.nature.output_hours)
    total = round(cfg.nature.days * 24 / cfg.nature.output_hours)
    chunk = cfg.nature.time_chunk
    start = np.datetime64(cfg.nature.start.replace(tzinfo=None), "ns")
    step = np.timedelta64(cfg.nature.output_hours, "h")
    attrs = _attrs(cfg, model, out)
    timings, blocks = [], 0
    days_per_out = cfg.nature.output_hours / 24
    with tqdm(
        total=total * days_per_out,
        initial=written * days_per_out,
        unit="day",
        desc="nature run",
        disable=not progress,
        leave=False,
    ) as bar:
        while written < total and (max_blocks is None or blocks < max_blocks):
            c = min(chunk, total - written)
            tb = time.perf_counter()
            state, fields = integrate(model, state, c, per_out, out)
            fields = jax.device_get(fields)
            times = start + (written + np.arange(c)) * step
            ds = zstore.to_dataset(
                fields, times, out.grid.latitudes, out.grid.longitudes, out.levels, attrs
            )
            zstore.append(path, ds, chunk)
            written += c
            zstore.write_restart(path, state_arrays(state), spun, written)
            timings.append((time.perf_counter() - tb, c * days_per_out))
            blocks += 1
            bar.update(c * days_per_out)
    steady = timings[1:] or timings  # the first block includes compilation
    s_per_day = round(sum(t for t, _ in steady) / sum(d for _, d in steady), 3) if steady else None
    return {
        "store": str(path),
        "n_times": written,
        "complete": written >= total,
        "model": cfg.model,
        "resolution": cfg.resolution,
        "spinup_s": round(spinup_s, 2),
        "nature_s": round(sum(t for t, _ in timings), 2),
        "s_per_model_day": s_per_day,
    }


def twin_divergence(
    cfg: SphereTestbedConfig,
    state,
    days: float,
    amplitude: float,
    key: jax.Array,
    variables: dict[str, int | None],
    output_hours: int | None = None,
) -> dict:
    """Error growth between a run from ``state`` and one from ``state`` plus a tiny perturbation.

    The perturbation is ``model.perturb(state, key, amplitude)`` (K of temperature for
    Held–Suarez, m of depth for shallow water). Both runs are integrated together (vmapped)
    for ``days`` and written every ``output_hours`` (default ``nature.output_hours``).
    ``variables`` maps a name to a level (hPa; None for a surface variable), e.g.
    ``{"geopotential": 500, "temperature": 850}``.

    Returns, per variable, the area-weighted RMS difference of the twins at each output
    time (``rmse``), and the *climatological distance* ``clim`` = √2 × the area-weighted RMS
    over the grid of the control run's standard deviation in time — the expected RMS
    difference of two independent states of the climate; and the control run's
    area-weighted global mean at each output time (``mean``).
    """
    model, out = build(cfg)
    hours = output_hours or cfg.nature.output_hours
    n_out = round(days * 24 / hours)
    pair = jax.tree.map(lambda a, b: jnp.stack([a, b]), state, model.perturb(state, key, amplitude))
    run = jax.jit(jax.vmap(lambda s: integrate(model, s, n_out, model.steps_per(hours), out)[1]))
    fields = jax.device_get(run(pair))
    w = np.asarray(out.grid.weights, np.float64)
    result = {"hours": (np.arange(n_out) + 1) * hours}
    for name, level in variables.items():
        f = np.asarray(fields[name], np.float64)
        if level is not None:
            f = f[:, :, out.levels.index(level)]
        diff = np.sqrt((w * (f[0] - f[1]) ** 2).mean(axis=(-2, -1)))
        clim = np.sqrt(2.0 * (w * f[0].var(axis=0)).mean())
        mean = (w * f[0]).mean(axis=(-2, -1))
        result[name if level is None else f"{name}{level}"] = {
            "rmse": diff,
            "clim": float(clim),
            "mean": mean,
        }
    return result


def doubling_time_hours(
    hours: np.ndarray, rmse: np.ndarray, clim: float, low: float = 1e-3, high: float = 0.25
) -> float:
    """Error-doubling time from the exponential phase: a least-squares line through
    log₂ rmse against time where low·clim < rmse < high·clim (NaN if fewer than 3 points)."""
    sel = (rmse > low * clim) & (rmse < high * clim)
    if sel.sum() < 3:
        return float("nan")
    slope = np.polyfit(hours[sel], np.log2(rmse[sel]), 1)[0]
    return float(1.0 / slope) if slope > 0 else float("inf")
