"""Climatology of a nature run: zonal- and time-mean fields and the numbers that say whether
the simulated climate is plausible (westerly jets in the midlatitudes of each hemisphere,
temperature decreasing poleward, a sensible global mean surface pressure).

Inputs are ``xarray.Dataset`` objects in the ERA5 / WeatherBench 2 layout of
``store.open_store`` (``u_component_of_wind``, ``temperature`` on ``time, level, latitude,
longitude``; ``surface_pressure`` on ``time, latitude, longitude``). Dims are used by name,
so any dim order and either latitude order (south-to-north or north-to-south) will do;
results are given with latitude ascending and levels ascending in hPa.
"""

from __future__ import annotations

import numpy as np

#: hemispheres by name, with the test that selects their latitude rows (the equator row,
#: where the grid has one, belongs to both)
HEMISPHERES = {"north": lambda lat: lat >= 0.0, "south": lambda lat: lat <= 0.0}


def last_times(ds, max_times: int | None = None):
    """``ds`` restricted to its last ``max_times`` times (all when ``None``)."""
    if max_times is None or "time" not in ds.dims:
        return ds
    if max_times < 1:
        raise ValueError(f"max_times must be at least 1, got {max_times}")
    return ds.isel(time=slice(-max_times, None))


def _sorted(da):
    """``da`` with latitude (and level, if it has one) ascending."""
    da = da.sortby("latitude")
    return da.sortby("level") if "level" in da.dims else da


def _mean_over(da, dims):
    return da.mean([d for d in dims if d in da.dims])


def zonal_time_mean(da):
    """The zonal- and time-mean of ``da`` as a loaded ``DataArray`` (level × latitude for 3D
    fields), float64, latitude and level ascending."""
    mean = _sorted(_mean_over(da.astype(np.float64), ("time", "longitude")))
    return mean.transpose(*[d for d in ("level", "latitude") if d in mean.dims], ...).load()


def time_mean_map(da, level_hpa: float | None = None):
    """The time mean of ``da`` (on the level nearest ``level_hpa`` if it has levels) as a
    loaded latitude × longitude ``DataArray``, latitude ascending, and the level used."""
    if "level" in da.dims:
        da = da.sel(level=level_hpa, method="nearest")
    used = float(da["level"]) if "level" in da.coords else None
    mean = (
        _mean_over(da.astype(np.float64), ("time",))
        .sortby("latitude")
        .transpose("latitude", "longitude")
        .load()
    )
    return mean, used


def global_mean(field2d, latitudes: np.ndarray) -> float:
    """Area mean of a latitude × longitude field on a regular lat–lon grid (cos-latitude
    weights over latitude, plain mean over longitude)."""
    w = np.cos(np.deg2rad(np.asarray(latitudes, np.float64)))
    return float(np.average(np.asarray(field2d, np.float64).mean(-1), weights=w))


def jet(u_zm, hemisphere: str) -> dict:
    """Latitude, level and speed of the maximum of a zonal-mean u (level × latitude) in one
    hemisphere."""
    lat = u_zm["latitude"].values
    rows = HEMISPHERES[hemisphere](lat)
    values = np.asarray(u_zm.values, np.float64)[..., rows]
    if values.ndim == 1:
        values = values[None]
    k, j = np.unravel_index(int(np.nanargmax(values)), values.shape)
    level = float(u_zm["level"].values[k]) if "level" in u_zm.dims else None
    return {"latitude": float(lat[rows][j]), "level_hpa": level, "u_m_s": float(values[k, j])}


def poleward_contrast(t_zm_level, hemisphere: str) -> dict:
    """Zonal-mean T (a latitude profile) at the equator-most and the pole-most latitude rows
    of one hemisphere, and equator minus pole."""
    lat = t_zm_level["latitude"].values
    rows = np.flatnonzero(HEMISPHERES[hemisphere](lat))
    eq = rows[np.argmin(np.abs(lat[rows]))]
    pole = rows[np.argmax(np.abs(lat[rows]))]
    t_eq, t_pole = float(t_zm_level.values[eq]), float(t_zm_level.values[pole])
    return {
        "equator_latitude": float(lat[eq]),
        "equator_K": t_eq,
        "pole_latitude": float(lat[pole]),
        "pole_K": t_pole,
        "equator_minus_pole_K": t_eq - t_pole,
    }


def climatology_numbers(ds, max_times: int | None = None, t_level_hpa: float = 850.0) -> dict:
    """JSON-able numbers on the climate of ``ds`` (its last ``max_times`` times):

    - ``jets``: per hemisphere, latitude, level (hPa) and speed (m/s) of the maximum of the
      zonal- and time-mean u;
    - ``temperature``: the level used (the one nearest ``t_level_hpa``) and, per hemisphere,
      the zonal- and time-mean T there at the equator-most and pole-most latitude rows and
      their difference (K);
    - ``surface_pressure_global_mean_pa``: the time mean of the cos-latitude weighted global
      mean surface pressure (``None`` without ``surface_pressure``);
    - ``n_times``, ``first_time``, ``last_time``: the times used.
    """
    ds = last_times(ds, max_times)
    out: dict = {}
    if "time" in ds.dims:
        t = ds["time"].values
        out.update(n_times=int(t.size), first_time=str(t[0])[:19], last_time=str(t[-1])[:19])
    if "u_component_of_wind" in ds:
        u_zm = zonal_time_mean(ds["u_component_of_wind"])
        out["jets"] = {h: jet(u_zm, h) for h in HEMISPHERES}
    if "temperature" in ds:
        t_zm = zonal_time_mean(ds["temperature"])
        level = None
        if "level" in t_zm.dims:
            t_zm = t_zm.sel(level=t_level_hpa, method="nearest")
            level = float(t_zm["level"])
        out["temperature"] = {
            "level_hpa": level,
            **{h: poleward_contrast(t_zm, h) for h in HEMISPHERES},
        }
    if "surface_pressure" in ds:
        ps, _ = time_mean_map(ds["surface_pressure"])
        out["surface_pressure_global_mean_pa"] = global_mean(ps.values, ps["latitude"].values)
    else:
        out["surface_pressure_global_mean_pa"] = None
    return out


def format_numbers(numbers: dict) -> list[str]:
    """``climatology_numbers`` as lines of text."""
    lines = []
    if "n_times" in numbers:
        lines.append(
            f"climatology over {numbers['n_times']} times, {numbers['first_time']} .. "
            f"{numbers['last_time']}"
        )
    for h, j in numbers.get("jets", {}).items():
        at = f"{j['level_hpa']:g} hPa, " if j["level_hpa"] is not None else ""
        lines.append(f"  {h} jet: {j['u_m_s']:.2f} m/s at {at}{j['latitude']:.2f}°")
    if "temperature" in numbers:
        tt = numbers["temperature"]
        where = f"{tt['level_hpa']:g} hPa" if tt["level_hpa"] is not None else "the level"
        for h in HEMISPHERES:
            c = tt[h]
            lines.append(
                f"  {h} zonal-mean T at {where}: {c['equator_K']:.2f} K at "
                f"{c['equator_latitude']:.2f}°, {c['pole_K']:.2f} K at {c['pole_latitude']:.2f}° "
                f"(equator − pole {c['equator_minus_pole_K']:.2f} K)"
            )
    if numbers.get("surface_pressure_global_mean_pa") is not None:
        lines.append(
            "  global mean surface pressure: "
            f"{numbers['surface_pressure_global_mean_pa'] / 100:.2f} hPa"
        )
    return lines
