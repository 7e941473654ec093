"""Nature-run stores: zarr (format 3, unconsolidated) in the ERA5 / WeatherBench 2 layout.

Layout of a store written here:

- dims ``time, level, latitude, longitude``; coordinates ``time`` (datetime64[ns]),
  ``level`` (int32, hPa), ``latitude`` (float64, degrees north, ascending, no poles),
  ``longitude`` (float64, degrees east, from 0);
- variables, float32, named and with units as in ERA5 / WeatherBench 2:
  ``geopotential`` (m² s⁻²), ``temperature`` (K), ``u_component_of_wind`` and
  ``v_component_of_wind`` (m s⁻¹) on ``(time, level, latitude, longitude)``;
  ``surface_pressure`` (Pa) on ``(time, latitude, longitude)`` (the shallow-water model
  writes geopotential and winds on one nominal level only);
- chunks: ``nature.time_chunk`` times × the whole grid and all levels;
- attributes: ``ensda_testbed`` (the testbed config as JSON), ``source``, ``truncation``,
  ``regridding``, ``vertical_interpolation``;
- a zarr subgroup ``_restart`` (invisible to xarray's dataset view) with the dycore state at
  the last written time, in two slots written alternately, so that an interrupted
  generation continues where it stopped (``ensda data nature`` again).

WeatherBench 2's own regridded stores order their dims ``(time, level, longitude,
latitude)``; ``open_store`` transposes any such order to the one above. Ensemble stores
(analysis ensembles, ``analyses.py``; background ensembles of ``ensda assimilate``) have one
more dim, ``member``, after ``time``; ``to_dataset(..., members=...)`` writes them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

VARIABLE_ATTRS = {
    "geopotential": {
        "units": "m**2 s**-2",
        "long_name": "Geopotential",
        "standard_name": "geopotential",
    },
    "temperature": {"units": "K", "long_name": "Temperature", "standard_name": "air_temperature"},
    "u_component_of_wind": {
        "units": "m s**-1",
        "long_name": "U component of wind",
        "standard_name": "eastward_wind",
    },
    "v_component_of_wind": {
        "units": "m s**-1",
        "long_name": "V component of wind",
        "standard_name": "northward_wind",
    },
    "surface_pressure": {
        "units": "Pa",
        "long_name": "Surface pressure",
        "standard_name": "surface_air_pressure",
    },
}
COORD_ATTRS = {
    "member": {"long_name": "ensemble member"},
    "level": {"units": "hPa", "long_name": "pressure_level", "positive": "down"},
    "latitude": {"units": "degrees_north", "long_name": "latitude", "standard_name": "latitude"},
    "longitude": {"units": "degrees_east", "long_name": "longitude", "standard_name": "longitude"},
}
DIMS_3D = ("time", "level", "latitude", "longitude")
DIMS_2D = ("time", "latitude", "longitude")
RESTART_GROUP = "_restart"


def to_dataset(
    fields: dict,
    times: np.ndarray,
    latitudes: np.ndarray,
    longitudes: np.ndarray,
    levels,
    attrs: dict | None = None,
    members=None,
):
    """An ``xarray.Dataset`` from stacked fields ``{name: (time, [level,] lat, lon)}``; with
    ``members`` (the ensemble's member labels) from ``{name: (time, member, [level,] lat, lon)}``
    with a ``member`` dim after ``time`` (ensemble stores: ``analyses.py``)."""
    import xarray as xr

    data = {}
    order = list(VARIABLE_ATTRS) + sorted(set(fields) - set(VARIABLE_ATTRS))
    extra = 0 if members is None else 1
    for name in (n for n in order if n in fields):
        value = fields[name]
        value = np.asarray(value, np.float32)
        dims = DIMS_3D if value.ndim == 4 + extra else DIMS_2D
        if members is not None:
            dims = dims[:1] + ("member",) + dims[1:]
        data[name] = xr.Variable(dims, value, attrs=VARIABLE_ATTRS.get(name, {}))
    coords = (
        {}
        if members is None
        else {"member": ("member", np.asarray(members, np.int32), COORD_ATTRS["member"])}
    )
    coords |= {
        "time": ("time", np.asarray(times, "datetime64[ns]")),
        "level": ("level", np.asarray(levels, np.int32), COORD_ATTRS["level"]),
        "latitude": ("latitude", np.asarray(latitudes, np.float64), COORD_ATTRS["latitude"]),
        "longitude": ("longitude", np.asarray(longitudes, np.float64), COORD_ATTRS["longitude"]),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs or {})


def n_times(path: str | Path) -> int:
    """Number of times written (0 for a store without data yet)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return int(root["time"].shape[0]) if "time" in root.array_keys() else 0


def append(path: str | Path, ds, time_chunk: int) -> None:
    """Write ``ds`` to the store: create the variables on the first call, then append by time."""
    if n_times(path) == 0:
        encoding = {name: {"chunks": (time_chunk,) + ds[name].shape[1:]} for name in ds.data_vars}
        encoding["time"] = {
            "chunks": (max(time_chunk, 1024),),
            "units": "hours since 1970-01-01",
            "dtype": "int64",
        }
        ds.to_zarr(str(path), mode="a", consolidated=False, encoding=encoding)
    else:
        ds.to_zarr(str(path), append_dim="time", consolidated=False)


def n_times_of(arr) -> int:
    """Length along time of a zarr array (0 for one without a time dim)."""
    return arr.shape[0] if _dims(arr)[:1] == ("time",) else 0


def truncate(path: str | Path, n: int) -> None:
    """Cut every time-dependent array of the store to its first ``n`` times."""
    import zarr

    root = zarr.open_group(str(path), mode="a")
    for name in root.array_keys():
        arr = root[name]
        if n_times_of(arr) > n:
            arr.resize((n,) + arr.shape[1:])


def _dims(arr) -> tuple:
    names = getattr(arr.metadata, "dimension_names", None)
    return tuple(names) if names else tuple(arr.attrs.get("_ARRAY_DIMENSIONS", ()))


@dataclasses.dataclass(frozen=True)
class Restart:
    """The dycore state at the last written time and where the generation stands."""

    arrays: dict  # field name -> np.ndarray (the dycore state's array fields)
    spinup_steps: int  # model steps of spin-up done
    n_written: int  # output times written after the spin-up
    config: dict  # the testbed config the store was started with


def init_store(path: str | Path, config: dict) -> None:
    """Create an empty store (a zarr group) that remembers ``config``."""
    import zarr

    root = zarr.open_group(str(path), mode="w")
    root.require_group(RESTART_GROUP).attrs.update({"slot": None, "config": config})


def write_restart(path: str | Path, arrays: dict, spinup_steps: int, n_written: int) -> None:
    """Save the state in the slot not in use, then point the group's attributes at it."""
    import zarr

    group = zarr.open_group(str(path), mode="a")[RESTART_GROUP]
    slot = "b" if group.attrs.get("slot") == "a" else "a"
    target = group.require_group(slot)
    for name, value in arrays.items():
        target.create_array(name, data=np.asarray(value), overwrite=True)
    group.attrs.update(
        {"slot": slot, "spinup_steps": int(spinup_steps), "n_written": int(n_written)}
    )


def read_restart(path: str | Path) -> Restart | None:
    """The saved restart state, or None when the store has none (or does not exist)."""
    import zarr

    if not Path(path, "zarr.json").exists():
        return None
    root = zarr.open_group(str(path), mode="r")
    if RESTART_GROUP not in root.group_keys():
        return None
    group = root[RESTART_GROUP]
    attrs = dict(group.attrs)
    if attrs.get("slot") is None:
        return Restart({}, 0, 0, attrs.get("config", {}))
    slot = group[attrs["slot"]]
    arrays = {name: slot[name][...] for name in slot.array_keys()}
    return Restart(arrays, attrs["spinup_steps"], attrs["n_written"], attrs.get("config", {}))


#: other spellings of the WeatherBench 2 dims (CDS netCDF, CF short names)
DIM_ALIASES = {
    "lat": "latitude",
    "lon": "longitude",
    "pressure_level": "level",
    "isobaricInhPa": "level",
    "plev": "level",
    "valid_time": "time",
}


def normalise(ds):
    """A dataset in this module's layout from any ERA5 / WeatherBench 2-like one.

    Renames dim aliases (``lat``, ``pressure_level``, ...), orders latitude south to north
    and longitude from 0 to 360 (WeatherBench 2's 0.25° ERA5 runs north to south; some
    tools use −180..180), transposes to ``time, [member,] level, latitude, longitude``
    (WeatherBench 2's regridded stores are ``time, level, longitude, latitude``; an ensemble
    store keeps its ``member`` dim after ``time``) and puts the ERA5
    variables first in a fixed order (zarr lists members in no fixed order). Extra
    variables are kept after them.
    """
    ds = ds.rename({k: v for k, v in DIM_ALIASES.items() if k in ds.dims or k in ds.coords})
    if (
        "latitude" in ds.coords
        and ds.sizes.get("latitude", 0) > 1
        and ds["latitude"].values[0] > ds["latitude"].values[-1]
    ):
        ds = ds.isel(latitude=slice(None, None, -1))
    if "longitude" in ds.coords and (ds["longitude"].values < 0).any():
        ds = ds.assign_coords(longitude=ds["longitude"] % 360.0).sortby("longitude")
    names = [n for n in VARIABLE_ATTRS if n in ds.data_vars] + sorted(
        n for n in ds.data_vars if n not in VARIABLE_ATTRS
    )
    order = [d for d in ("time", "member", "level", "latitude", "longitude") if d in ds.dims]
    return ds[names].transpose(*order, ...)


def open_store(path: str | Path):
    """Open a zarr store as an ``xarray.Dataset`` (lazy) in this module's layout (``normalise``)."""
    import xarray as xr

    if not Path(path).exists():
        raise FileNotFoundError(f"no store at {path}")
    return normalise(xr.open_zarr(str(path), consolidated=False))


def describe(path: str | Path) -> dict:
    """A JSON-able summary of a store: dims, times, grid, levels, variables, size, restart."""
    ds = open_store(path)
    out: dict = {"store": str(path), "dims": {k: int(v) for k, v in ds.sizes.items()}}
    if "time" in ds.coords and ds.sizes.get("time", 0):
        t = ds["time"].values
        out["time"] = {"first": str(t[0])[:19], "last": str(t[-1])[:19], "count": int(t.size)}
        if t.size > 1:
            out["time"]["step_hours"] = float((t[1] - t[0]) / np.timedelta64(1, "h"))
    if "latitude" in ds.coords:
        lat, lon = ds["latitude"].values, ds["longitude"].values
        out["grid"] = {
            "n_lon": int(lon.size),
            "n_lat": int(lat.size),
            "lat_first": float(lat[0]),
            "lat_last": float(lat[-1]),
            "lon_first": float(lon[0]),
            "lon_step": float(lon[1] - lon[0]) if lon.size > 1 else None,
        }
    if "level" in ds.coords:
        out["levels_hpa"] = [int(v) for v in ds["level"].values]
    out["variables"] = {
        name: {"dims": list(var.dims), "units": var.attrs.get("units"), "dtype": str(var.dtype)}
        for name, var in ds.data_vars.items()
    }
    out["size_mb"] = round(
        sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6, 3
    )
    restart = read_restart(path)
    if restart is not None:
        out["restart"] = {"spinup_steps": restart.spinup_steps, "n_written": restart.n_written}
    out["attrs"] = {k: v for k, v in ds.attrs.items() if k != "ensda_testbed"}
    if "ensda_testbed" in ds.attrs:
        out["testbed"] = json.loads(ds.attrs["ensda_testbed"])
    return out
