"""Figures on the sphere (matplotlib, headless): lat–lon maps of one channel of a cycled run
at the last cycle, the per-channel time-mean errors, and the climatology of a nature run.

Inputs of the cycled-run figures are a ``CycleResult`` and the run's
``plugin.SphereRun`` (grid, channel names, climatological σ_c, truth at the last cycle).
Flat states are channel-major ``(C · n_lat · n_lon)``; latitudes run south to north. The
climatology figure takes a store's ``xarray.Dataset`` (``store.open_store``) in either
latitude order.
"""

from __future__ import annotations

import numpy as np

from ensda.cycle import CycleResult
from ensda.run_figures import plt
from ensda.testbeds.sphere import climate

#: channel units (SI) by variable, for colour-bar labels
UNITS = {
    "geopotential": "m²/s²",
    "temperature": "K",
    "u_component_of_wind": "m/s",
    "v_component_of_wind": "m/s",
    "surface_pressure": "Pa",
}


def last_cycle_fields(result: CycleResult, sphere) -> dict[str, np.ndarray]:
    """Fields ``(C, n_lat, n_lon)`` at the last cycle: truth, background (forecast) mean,
    analysis mean, analysis spread (unbiased member std; zero for one member) and analysis
    error (analysis mean − truth)."""
    shape = sphere.truth_last.shape
    final = np.asarray(result.final_ensemble, np.float64)
    spread = final.std(0, ddof=1) if final.shape[0] > 1 else np.zeros(final.shape[1:])
    mean_a = np.asarray(result.mean_a[-1], np.float64).reshape(shape)
    return {
        "truth": sphere.truth_last,
        "background mean": np.asarray(result.mean_f[-1], np.float64).reshape(shape),
        "analysis mean": mean_a,
        "analysis spread": spread.reshape(shape),
        "analysis error": mean_a - sphere.truth_last,
    }


def channel_maps_figure(fields: dict[str, np.ndarray], sphere, channel: str, title: str = ""):
    """Maps of ``channel`` from ``last_cycle_fields``: truth, background and analysis means
    on one colour scale (the truth's range), analysis spread, and analysis error on a
    symmetric diverging scale."""
    c = sphere.names.index(channel)
    variable = next((v for v in UNITS if channel == v or channel.startswith(v + "_")), "")
    units = UNITS.get(variable, "")
    lon, lat = sphere.grid.longitudes, sphere.grid.latitudes
    fig, axes = plt.subplots(2, 3, figsize=(13, 6), constrained_layout=True)
    lo, hi = float(fields["truth"][c].min()), float(fields["truth"][c].max())
    err = float(np.abs(fields["analysis error"][c]).max()) or 1.0
    styles = {
        "truth": dict(cmap="viridis", vmin=lo, vmax=hi),
        "background mean": dict(cmap="viridis", vmin=lo, vmax=hi),
        "analysis mean": dict(cmap="viridis", vmin=lo, vmax=hi),
        "analysis spread": dict(cmap="magma", vmin=0.0),
        "analysis error": dict(cmap="RdBu_r", vmin=-err, vmax=err),
    }
    for ax, (name, style) in zip(axes.flat, styles.items()):
        mesh = ax.pcolormesh(lon, lat, fields[name][c], shading="nearest", **style)
        fig.colorbar(mesh, ax=ax, shrink=0.6, label=units)
        ax.set_title(name)
        ax.set_xlabel("longitude (°E)")
        ax.set_ylabel("latitude (°N)")
        ax.set_aspect("equal")
    summary = axes.flat[-1]
    summary.axis("off")
    rms = lambda v: float(
        np.sqrt(
            np.average(v**2, weights=np.broadcast_to(np.cos(np.deg2rad(lat))[:, None], v.shape))
        )
    )  # noqa: E731
    summary.text(
        0.0,
        0.9,
        f"{channel} at the last cycle\n\ncos-lat weighted\nRMSE of the analysis mean: "
        f"{rms(fields['analysis error'][c]):.4g} {units}\nRMSE of the background mean: "
        f"{rms(fields['background mean'][c] - fields['truth'][c]):.4g} {units}\n"
        f"climatological σ: {float(sphere.channel_std[c]):.4g} {units}",
        va="top",
        fontsize=10,
    )
    fig.suptitle(f"{title}  {channel}".strip())
    return fig


def channel_rmse_figure(per_channel: dict[str, np.ndarray], sphere, title: str = ""):
    """Time-mean RMSE of the background and analysis means of every channel in units of its
    climatological σ_c (``cycle.channel_summary`` over ``SphereRun.channel_std``), as bars."""
    names = sphere.names
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.22 * len(names)), constrained_layout=True)
    ax.barh(
        y + 0.2,
        per_channel["rmse_f"] / sphere.channel_std,
        height=0.4,
        color="tab:orange",
        label="background",
    )
    ax.barh(
        y - 0.2,
        per_channel["rmse_a"] / sphere.channel_std,
        height=0.4,
        color="tab:blue",
        label="analysis",
    )
    ax.axvline(1.0, color="grey", lw=0.8, ls=":", label="climatological σ")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time-mean RMSE / climatological σ")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


#: standard gravity (m/s²), geopotential to geopotential height
GRAVITY = 9.80665


def _zonal_section(fig, ax, field, cmap: str, step: float, units: str, centred: bool = False):
    """A zonal-mean field (level × latitude) on latitude × pressure (log, surface at the
    bottom), filled, with labelled contours every ``step``; a line against latitude when the
    field has one level only."""
    lat = field["latitude"].values
    if "level" not in field.dims or field.sizes["level"] < 2:
        ax.plot(lat, np.ravel(field.values), color="k")
        ax.set_ylabel(units)
        ax.set_xlabel("latitude (°N)")
        return
    p, values = field["level"].values.astype(np.float64), np.asarray(field.values, np.float64)
    lo, hi = np.floor(values.min() / step) * step, np.ceil(values.max() / step) * step
    if centred:
        hi = max(abs(lo), abs(hi), step)
        lo = -hi
    levels = np.arange(lo, hi + 0.5 * step, step)
    if levels.size < 2:
        levels = np.array([lo, lo + step])
    filled = ax.contourf(lat, p, values, levels=levels, cmap=cmap, extend="both")
    lines = ax.contour(lat, p, values, levels=levels[::2], colors="k", linewidths=0.5)
    ax.clabel(lines, fmt="%g", fontsize=6)
    if centred and lo < 0 < hi:
        ax.contour(lat, p, values, levels=[0.0], colors="k", linewidths=1.2)
    fig.colorbar(filled, ax=ax, shrink=0.8, label=units)
    ax.set_yscale("log")
    ax.set_ylim(p.max(), p.min())
    ticks = [v for v in (1000, 850, 700, 500, 300, 200, 100, 50, 10) if p.min() <= v <= p.max()]
    ax.set_yticks(ticks, [str(v) for v in ticks])
    ax.minorticks_off()
    ax.set_ylabel("pressure (hPa)")
    ax.set_xlabel("latitude (°N)")


def _map(fig, ax, field, cmap: str, step: float, units: str, title: str):
    """A time-mean latitude × longitude field, filled, with labelled contours every ``step``."""
    lat, lon, values = (
        field["latitude"].values,
        field["longitude"].values,
        np.asarray(field.values, np.float64),
    )
    mesh = ax.pcolormesh(lon, lat, values, shading="nearest", cmap=cmap)
    lo, hi = np.floor(values.min() / step) * step, np.ceil(values.max() / step) * step
    if hi > lo:
        lines = ax.contour(
            lon,
            lat,
            values,
            levels=np.arange(lo, hi + 0.5 * step, step),
            colors="k",
            linewidths=0.5,
        )
        ax.clabel(lines, fmt="%g", fontsize=6)
    fig.colorbar(mesh, ax=ax, shrink=0.6, label=units)
    ax.set_title(title)
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    ax.set_aspect("equal")


def climatology_figure(
    ds, max_times: int | None = None, title: str = "", numbers: dict | None = None
):
    """Climatology of a nature run (its last ``max_times`` times, all when ``None``): zonal-
    and time-mean u and T on latitude × pressure with the jet maxima marked, and time-mean
    maps of z500 (as geopotential height) and T850. Panels whose variable the store lacks
    are left blank. ``numbers``: ``climate.climatology_numbers`` of the same times, if
    already at hand."""
    ds = climate.last_times(ds, max_times)
    numbers = numbers if numbers is not None else climate.climatology_numbers(ds)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), constrained_layout=True)
    (ax_u, ax_t), (ax_z, ax_t850) = axes
    if "u_component_of_wind" in ds:
        _zonal_section(
            fig,
            ax_u,
            climate.zonal_time_mean(ds["u_component_of_wind"]),
            "RdBu_r",
            5.0,
            "m/s",
            centred=True,
        )
        for j in numbers["jets"].values():
            if j["level_hpa"] is not None:
                ax_u.plot(j["latitude"], j["level_hpa"], marker="x", color="k", ms=8, mew=2)
                ax_u.annotate(
                    f"{j['u_m_s']:.1f} m/s",
                    (j["latitude"], j["level_hpa"]),
                    xytext=(4, 6),
                    textcoords="offset points",
                    fontsize=7,
                )
        ax_u.set_title("zonal- and time-mean u (× jet maxima)")
    if "temperature" in ds:
        _zonal_section(fig, ax_t, climate.zonal_time_mean(ds["temperature"]), "plasma", 10.0, "K")
        ax_t.set_title("zonal- and time-mean T")
    if "geopotential" in ds:
        z, level = climate.time_mean_map(ds["geopotential"], 500.0)
        at = f" at {level:g} hPa" if level is not None else ""
        _map(fig, ax_z, z / GRAVITY, "viridis", 100.0, "m", f"time-mean geopotential height{at}")
    if "temperature" in ds:
        t, level = climate.time_mean_map(ds["temperature"], 850.0)
        at = f" at {level:g} hPa" if level is not None else ""
        _map(fig, ax_t850, t, "plasma", 5.0, "K", f"time-mean temperature{at}")
    for ax, name in (
        (ax_u, "u_component_of_wind"),
        (ax_t, "temperature"),
        (ax_z, "geopotential"),
        (ax_t850, "temperature"),
    ):
        if name not in ds:
            ax.axis("off")
            ax.set_title(f"no {name}")
    span = (
        f"{numbers['n_times']} times, {numbers['first_time']} .. {numbers['last_time']}"
        if "n_times" in numbers
        else ""
    )
    fig.suptitle(f"{title}  climatology over {span}".strip())
    return fig
