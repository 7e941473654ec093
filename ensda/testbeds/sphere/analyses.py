"""Ensembles of sphere states as zarr stores: the WeatherBench 2 layout with a ``member`` dim.

An analysis store (written by ``ensda run --analyses PATH`` and ``ensda assimilate``) is a
nature-run store (``store.py``) with one more dim:

- zarr format 3, unconsolidated; dims ``time, member, level, latitude, longitude``;
- coordinates ``time`` (datetime64[ns], the valid time of each analysis), ``member``
  (int32, 0..N-1), ``level`` (int32, hPa), ``latitude`` (float64, degrees north, ascending,
  no poles), ``longitude`` (float64, degrees east, from 0) — the analysis grid
  (``LatLonGrid``);
- variables float32, named and with units as in ERA5 / WeatherBench 2, the state's variables
  on the state's levels only: ``geopotential``, ``temperature``, ``u_component_of_wind``,
  ``v_component_of_wind`` on ``(time, member, level, latitude, longitude)``;
  ``surface_pressure`` on ``(time, member, latitude, longitude)``;
- chunks: ``time_chunk`` times (default 1) × all members × the whole grid and all levels;
- attributes: ``ensda_analyses`` (JSON: what wrote it — method, settings, config, ...).

A store is appendable by time (``write`` creates it on the first call and appends later
times; ``n_written`` says how many are there, so an interrupted ``ensda assimilate``
continues where it stopped). A deterministic analysis (3D-Var) is an ensemble of one.

``read`` gives the ensembles back as flat states ``(time, member, n_state)`` (the
``FlatSphere`` form, channel order ``Channels``) through the testbed's store reader
(``testbed.StoreReader``): any store in the WeatherBench 2 layout with a ``member`` dim
reads, in either latitude order or dim order, extra variables ignored, a finer grid
regridded; a missing variable, a coarser grid or NaNs are refused with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from ensda.testbeds.sphere import store as zstore
from ensda.testbeds.sphere.grid import LatLonGrid
from ensda.testbeds.sphere.testbed import Channels, StoreReader

#: the attribute that marks a store as written here (and says by what)
ATTR = "ensda_analyses"
#: the commit record: the number of times whose every array was written, set after each
#: append; anything beyond it (a writer killed mid-append) is cut off on the next open
COMMITTED = "ensda_committed_times"


@dataclasses.dataclass(frozen=True)
class Ensembles:
    """Ensembles read from a store: ``states (time, member, n_state)`` float32 (flat, C order
    of ``(channel, lat, lon)``), their valid ``times`` (datetime64[ns]), channels and grid.
    ``members`` is None for a deterministic store (no ``member`` dim; ``states`` then has one
    member)."""

    times: np.ndarray
    states: np.ndarray
    channels: Channels
    grid: LatLonGrid
    members: int | None


def n_written(path: str | Path) -> int:
    """Number of committed times in the store (0 when it does not exist or holds no data yet);
    a store from before the commit record counts the times it holds."""
    import zarr

    if not Path(path, "zarr.json").exists():
        return 0
    committed = zarr.open_group(str(path), mode="r").attrs.get(COMMITTED)
    return zstore.n_times(path) if committed is None else int(committed)


def recover(path: str | Path) -> int:
    """Cut the store back to its committed times (``COMMITTED``): the arrays a writer killed
    mid-append left longer (or half-created) are truncated, so the store opens and every
    array has the same times. Returns the committed count. A consistent store is only read
    (it may be read-only)."""
    import zarr

    committed = n_written(path)
    root = zarr.open_group(str(path), mode="r") if Path(path, "zarr.json").exists() else None
    if root is None or COMMITTED not in root.attrs:
        return committed
    if committed == 0 and list(root.array_keys()):  # drop whatever a first write had begun
        writable = zarr.open_group(str(path), mode="a")
        for name in list(writable.array_keys()):
            del writable[name]
    elif any(zstore.n_times_of(root[n]) > committed for n in root.array_keys()):
        zstore.truncate(path, committed)
    return committed


def _commit(path: str | Path, n: int) -> None:
    import zarr

    zarr.open_group(str(path), mode="a").attrs[COMMITTED] = int(n)


def is_analysis_store(path: str | Path) -> bool:
    """Whether ``path`` is a zarr store written by this module."""
    import zarr

    if not Path(path, "zarr.json").exists():
        return False
    return ATTR in zarr.open_group(str(path), mode="r").attrs


def start(path: str | Path, info: dict) -> None:
    """An empty store at ``path`` remembering ``info`` (JSON-able): replaces an analysis store
    there; refuses to replace anything else."""
    import zarr

    path = Path(path)
    if path.exists():
        if not is_analysis_store(path):
            raise ValueError(
                f"{path} exists and is not an analysis store written by ensda: not overwriting it"
            )
        shutil.rmtree(path)
    zarr.open_group(str(path), mode="w").attrs.update(
        {ATTR: json.dumps(info, default=str), COMMITTED: 0}
    )


def write(
    path: str | Path,
    states,
    times,
    channels: Channels,
    grid: LatLonGrid,
    info: dict | None = None,
    time_chunk: int = 1,
) -> None:
    """Append ensembles ``states`` — flat ``(time, member, n_state)`` or ``(time, member, n, lat,
    lon)`` — valid at ``times`` to the store (created on the first call; ``info`` is stored as
    the ``ensda_analyses`` attribute when it is created). Times must come after those written.
    The new times count once every array holds them (``COMMITTED``, set last): a writer killed
    at any moment leaves the previous times, which the next write or read recovers to."""
    states = np.asarray(states, np.float32)
    times = np.asarray(times, "datetime64[ns]")
    shape = (channels.n,) + grid.shape
    if states.ndim == 3:
        states = states.reshape(states.shape[:2] + shape)
    if states.ndim != 5 or states.shape[2:] != shape or states.shape[0] != times.shape[0]:
        raise ValueError(
            f"expected ensembles (time={times.shape[0]}, member, {channels.n * grid.n}) or "
            f"(time, member, {', '.join(map(str, shape))}), got {states.shape}"
        )
    done = recover(path)
    if done:
        last = zstore.open_store(path)["time"].values[-1]
        if not (times > last).all() or (np.diff(times) <= np.timedelta64(0)).any():
            raise ValueError(
                f"{path}: times must increase after the last written {str(last)[:19]}, "
                f"got {str(times[0])[:19]} .. {str(times[-1])[:19]}"
            )
    import zarr

    if not Path(path, "zarr.json").exists():
        zarr.open_group(str(path), mode="w").attrs[COMMITTED] = 0
    # xarray replaces the group's attributes at each write: pass on those there (``start``'s)
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    attrs.setdefault(ATTR, json.dumps(info or {}, default=str))
    attrs[COMMITTED] = done  # the new times are not committed until every array holds them
    ds = zstore.to_dataset(
        channels.unstack(states),
        times,
        grid.latitudes,
        grid.longitudes,
        channels.levels,
        attrs,
        members=np.arange(states.shape[1]),
    )
    zstore.append(path, ds, time_chunk)
    _commit(path, done + times.shape[0])


def read(
    path: str | Path, channels: Channels | None = None, grid: LatLonGrid | None = None, index=None
) -> Ensembles:
    """The ensembles of a store (its times ``index``; None: all) as flat states on ``grid``
    in ``channels`` (None: the store's own variables, levels and equiangular grid); a store
    that a killed writer left torn is first cut back to its committed times (``recover``)."""
    recover(path)
    if channels is None or grid is None:
        ds = zstore.open_store(path)
        channels = Channels.of_dataset(ds) if channels is None else channels
        grid = LatLonGrid(ds.sizes["longitude"], ds.sizes["latitude"]) if grid is None else grid
    reader = StoreReader(str(path), grid, channels)
    index = np.arange(reader.dataset.sizes["time"]) if index is None else np.asarray(index)
    states = reader.read(index)
    members = reader.members
    if members is None:
        states = states[:, None]
    times = reader.dataset["time"].values[index]
    return Ensembles(times, states.reshape(states.shape[:2] + (-1,)), channels, grid, members)
