"""One-shot assimilation of stores on disk (``ensda assimilate``): no cycling, no truth.

    ensda assimilate CONFIG --background BG.zarr --observations OBS.zarr --out AN.zarr
                     [--method letkf]

For every time of the background store, one analysis of that time's background ensemble
with that time's observations, written to an analysis store (``testbeds.sphere.analyses``).
This is how forecasts made elsewhere (ERA5-initialised ensemble forecasts, a WeatherBench 2
store) are assimilated.

- **Background**: a zarr store in the ERA5 / WeatherBench 2 layout with a ``member`` dim —
  ``(time, member, level, latitude, longitude)``, ERA5 variable names — read through the
  testbed's store reader (``testbed.StoreReader``, ``store.normalise``): either latitude
  order and dim order, extra variables ignored, a finer grid regridded conservatively to the
  config's analysis grid; a missing variable, a coarser grid or NaNs are refused with the
  reason. A deterministic store (no ``member`` dim) is a one-member background: accepted by
  deterministic methods (3D-Var), refused by ensemble methods.
- **Observations**: an ``observations.zarr`` as ``GlobalObsNetwork.dataset`` writes it (the
  artifact of every sphere run): dims ``(cycle, obs)``, values, errors, grid columns and
  channel names on the config's grid. A background time is matched to the cycle with the
  same valid time (coordinate ``time``; for a file without it, ``obs_start`` gives the time
  of cycle 0 and cycle k is k · ``cycle_hours`` later); a background time without
  observations is refused, naming it.
- **Method**: built as ``ensda run`` builds it (``experiment.build_assimilator``, the
  config's settings) on the config's testbed, with the network of the observations file
  (its variables, levels and number of columns); methods with a climatological B draw their
  samples from the config's nature-run store as ``make_osse`` does (same key, no window
  left out). The analysis of cycle k uses the key ``fold_in(key(seeds.assimilator), k)``, as
  in a cycled run: the same background and observations give the run's analysis.
- **Output**: appended time by time; run again, it continues after the last written time
  (the written times must be the background's first ones).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ensda import assimilator as registry
from ensda.experiment import (
    OSSE,
    build_assimilator,
    make_forecast_model,
    make_network,
    make_testbed,
)
from ensda.observe import Observations
from ensda.testbeds.sphere import analyses as an
from ensda.testbeds.sphere.observe import GlobalObsNetwork
from ensda.testbeds.sphere.store import open_store
from ensda.testbeds.sphere.testbed import StoreReader


@dataclasses.dataclass(frozen=True)
class ObservationFile:
    """The observations of an ``observations.zarr``: stacked over its cycles."""

    cycles: np.ndarray  # (K,) cycle numbers (1-based)
    times: np.ndarray  # (K,) valid times, datetime64[ns]
    obs: Observations  # stacked (K, p)
    network: GlobalObsNetwork  # the config's network with the file's variables, levels and columns


def _t(t) -> str:
    return str(np.datetime64(t, "s")).replace("T", " ")


def _times_text(times, most: int = 4) -> str:
    times = list(times)
    return ", ".join(_t(t) for t in times[:most]) + (
        f" ... ({len(times)} in all)" if len(times) > most else ""
    )


def read_observations(
    path: str | Path, network: GlobalObsNetwork, obs_start=None
) -> ObservationFile:
    """The observations of ``path`` (``GlobalObsNetwork.dataset`` layout) on ``network``'s grid
    and channels; ``obs_start`` (datetime) dates cycle 0 when the file has no ``time``."""
    import xarray as xr

    if not Path(path).exists():
        raise FileNotFoundError(f"no observations at {path}")
    ds = xr.open_zarr(str(path), consolidated=False)
    lacking = [
        v
        for v in ("value", "r_std", "column", "channel", "variable", "level")
        if v not in ds.variables
    ]
    if lacking or ds["value"].dims != ("cycle", "obs"):
        raise ValueError(
            f"{path}: not observations as GlobalObsNetwork.dataset writes them (dims (cycle, obs); "
            f"lacks {lacking})"
            if lacking
            else f"{path}: value has dims {ds['value'].dims}, not (cycle, obs)"
        )
    grid, ch = network.grid, network.channels
    if ds.attrs.get("grid", grid.name) != grid.name:
        raise ValueError(
            f"{path}: observations on the grid {ds.attrs['grid']}, the config's analysis grid is "
            f"{grid.name}"
        )
    col = np.asarray(ds["column"].values, np.int64)
    if col.size and (col.min() < 0 or col.max() >= grid.n):
        raise ValueError(f"{path}: grid columns outside 0..{grid.n - 1} of the {grid.name} grid")
    if "latitude" in ds and not np.allclose(
        ds["latitude"].values, grid.latitudes[col // grid.n_lon], atol=1e-3
    ):
        raise ValueError(
            f"{path}: the observations' latitudes are not those of their columns on {grid.name} "
            "(columns count from the south, latitude ascending)"
        )
    names = [str(c) for c in ds["channel"].values]
    unknown = sorted(set(names) - set(ch.names))
    if unknown:
        raise ValueError(
            f"{path}: observed channels {unknown} are not in the config's state {list(ch.names)}"
        )
    value = np.asarray(ds["value"].values, np.float32)
    bad = np.argwhere(~np.isfinite(value))
    if bad.size:
        raise ValueError(
            f"{path}: non-finite observation values at cycle {int(ds['cycle'].values[bad[0][0]])}"
        )

    variables = list(dict.fromkeys(str(v) for v in ds["variable"].values))
    levels = sorted({int(v) for v in ds["level"].values if np.isfinite(v)})
    r_first = np.asarray(ds["r_std"].values[0])
    r_std = tuple(
        (v, float(r_first[[str(x) for x in ds["variable"].values].index(v)])) for v in variables
    )
    n_channels = len(dict.fromkeys(names))
    n_columns = int(ds.attrs.get("n_columns", len(names) // max(n_channels, 1)))
    net = dataclasses.replace(
        network,
        kind=str(ds.attrs.get("kind", network.kind)),
        density=n_columns / grid.n,
        variables=tuple(variables),
        levels=tuple(levels) or None,
        r_std=tuple((dict(network.r_std) | dict(r_std)).items()),
    )
    layout = [ch.names[c] for c in net.observed_channels for _ in range(net.n_columns)]
    if layout != names:
        raise ValueError(
            f"{path}: {len(names)} observation slots in channels {list(dict.fromkeys(names))} are "
            f"not laid out as a GlobalObsNetwork observes them ({net.n_columns} columns in each "
            "observed channel, channel-major)"
        )

    cycles = np.asarray(ds["cycle"].values, np.int64)
    if "time" in ds.coords:
        times = np.asarray(ds["time"].values, "datetime64[ns]")
    elif obs_start is not None:
        hours = float(ds.attrs.get("cycle_hours", network.cycle_hours))
        times = np.datetime64(obs_start, "ns") + (cycles * hours * 3600e9).astype("timedelta64[ns]")
    else:
        raise ValueError(
            f"{path}: the observations have no time coordinate (cycles {cycles[0]}..{cycles[-1]} "
            "only): "
            "give the valid time of cycle 0 (--obs-start) to match them to the background times"
        )
    chan = np.asarray([ch.names.index(n) for n in names], np.int64)
    obs = Observations(
        y=jnp.asarray(value),
        idx=jnp.asarray(chan[None] * grid.n + col, jnp.int32),
        r_std=jnp.asarray(ds["r_std"].values, jnp.float32),
        site=jnp.asarray(col, jnp.int32),
        state_shape=(ch.n,) + grid.shape,
    )
    return ObservationFile(cycles, times, obs, net)


def _climatology(cfg, testbed):
    """``make_osse``'s climatology samples (flat) from the config's nature-run store, or None
    when that store does not exist."""
    store = cfg.testbed.nature.store
    if store is None or not Path(store).exists():
        return None
    clim_key = jax.random.fold_in(jax.random.key(cfg.seeds.truth), 1)
    n = cfg.testbed.climatology_samples
    return testbed.testbed.climatology_samples(clim_key, n).reshape(n, -1)


def _rms(d: jax.Array) -> float:
    return float(jnp.sqrt(jnp.mean(jnp.square(d))))


def assimilate(
    cfg,
    background: str | Path,
    observations: str | Path,
    out: str | Path,
    method: str | None = None,
    progress=None,
    obs_start=None,
) -> dict:
    """Analyse every time of ``background`` with ``observations``, writing to ``out`` (module
    docstring). ``progress(done, total)`` after each time. Returns a summary: times analysed,
    members, and the mean over times of the normalised observation-minus-background and
    observation-minus-analysis RMS, sqrt(mean(((y − H x̄) / σ_o)²))."""
    if not cfg.testbed_kind.lat_lon_stores:
        raise ValueError(
            "ensda assimilate works on sphere configs (testbed.kind: sphere): the stores are "
            "lat-lon fields"
        )
    method = method or cfg.method
    cls = registry.get(method)
    testbed = make_testbed(cfg)
    tb = testbed.testbed
    obsfile = read_observations(observations, make_network(cfg), obs_start)
    reader = StoreReader(str(background), tb.grid, tb.channels)
    bg_times = np.asarray(reader.dataset["time"].values, "datetime64[ns]")
    members = reader.members
    if members is None and cls.ensemble:
        raise ValueError(
            f"{background} is a deterministic store (no 'member' dim): the ensemble method "
            f"{method!r} needs a background ensemble (dims time, member, level, latitude, "
            "longitude); a one-member method such as 3dvar takes a deterministic background"
        )
    if members is not None and cls.ensemble and members < 2:
        raise ValueError(
            f"{background} has {members} member: the ensemble method {method!r} needs at least 2"
        )
    where = {t: j for j, t in enumerate(obsfile.times)}
    missing = [t for t in bg_times if t not in where]
    if missing:
        raise ValueError(
            f"no observations at the background time(s) {_times_text(missing)}: {observations} has "
            f"{obsfile.times.size} cycles at {_times_text(obsfile.times)}"
        )

    settings = cfg.method_settings(method)
    clim = _climatology(cfg, testbed)
    osse = OSSE(
        testbed,
        obsfile.network,
        jnp.zeros((0, testbed.n_state), jnp.float32),
        obsfile.obs,
        clim,
        model=make_forecast_model(cfg),
    )
    try:
        assim = build_assimilator(cfg, osse, method, settings)
    except (TypeError, AttributeError) as err:
        if clim is not None:
            raise
        raise ValueError(
            f"{method!r} needs climatological samples from the config's nature-run store "
            f"(testbed.nature.store = {cfg.testbed.nature.store}), which does not exist ({err})"
        ) from None

    done = an.recover(out)  # a store a killed run left torn: back to its committed times
    if done:
        written = _written_times(out)
        if written.size > bg_times.size or (written != bg_times[: written.size]).any():
            raise ValueError(
                f"{out} holds {written.size} analyses at {_times_text(written)}, not the first "
                f"times of {background} ({_times_text(bg_times)}): give another --out"
            )
    else:
        an.start(
            out,
            {
                "source": "ensda assimilate",
                "method": method,
                "settings": settings,
                "config": cfg.name,
                "background": str(background),
                "observations": str(observations),
            },
        )

    key = jax.random.key(cfg.seeds.assimilator)
    analyse = jax.jit(lambda a, xb, y, k: a.analyse(xb, y, k))
    omb, oma = [], []
    t0 = time.perf_counter()
    for i in range(done, bg_times.size):
        xb = reader.read(np.asarray([i]))[0]
        xb = jnp.asarray(xb.reshape(-1 if members is not None else 1, testbed.n_state))
        j = where[bg_times[i]]
        y = obsfile.obs.at(j)
        xa = analyse(assim, xb, y, jax.random.fold_in(key, int(obsfile.cycles[j])))
        if not bool(jnp.isfinite(xa).all()):
            raise ValueError(
                f"the {method} analysis at {_t(bg_times[i])} is not finite (NaN/Inf): nothing "
                "written for it"
            )
        an.write(out, np.asarray(xa)[None], bg_times[i : i + 1], tb.channels, tb.grid)
        omb.append(_rms((y.y - y.h(xb.mean(0))) / y.r_std))
        oma.append(_rms((y.y - y.h(xa.mean(0))) / y.r_std))
        if progress is not None:
            progress(i + 1, bg_times.size)
    return {
        "method": method,
        "out": str(out),
        "n_times": int(bg_times.size),
        "n_written": int(bg_times.size - done),
        "n_skipped": int(done),
        "n_members": int(members or 1),
        "n_obs": int(obsfile.obs.y.shape[-1]),
        "omb_rms": float(np.mean(omb)) if omb else None,
        "oma_rms": float(np.mean(oma)) if oma else None,
        "wall_s": round(time.perf_counter() - t0, 3),
    }


def _written_times(path) -> np.ndarray:
    return np.asarray(open_store(path)["time"].values, "datetime64[ns]")


def run_writer(cfg, osse, method: str, path: Path):
    """``run_method``'s ``analyses`` callback (``ensda run --analyses``): a fresh analysis store
    at ``path`` (an older one there is replaced; anything else is refused with a
    ``ValueError``), each chunk of cycles appended at the truth's valid times."""
    tb = osse.testbed.testbed
    times = osse.truth_times
    attrs = {
        "source": "ensda run",
        "method": method,
        "settings": cfg.method_settings(method),
        "config": cfg.name,
        "truth_store": str(tb.store),
        "truth_start": osse.truth_start,
        "seeds": cfg.seeds.model_dump(),
    }
    an.start(path, attrs)

    def write(first: int, ensembles) -> None:
        stop = first + 1 + ensembles.shape[0]
        an.write(path, ensembles, times[first + 1 : stop], tb.channels, tb.grid)

    return write
