"""Figures of a cycled run on the sphere (matplotlib, headless): lat–lon maps of one channel
at the last cycle, and the per-channel time-mean errors.

Inputs are a ``CycleResult`` and the run's ``experiment.SphereRun`` (grid, channel names,
climatological σ_c, truth at the last cycle). Flat states are channel-major
``(C · n_lat · n_lon)``; latitudes run south to north.
"""

from __future__ import annotations

import numpy as np

from ensda.cycle import CycleResult
from ensda.figures import plt

#: channel units (SI) by variable, for colour-bar labels
UNITS = {"geopotential": "m²/s²", "temperature": "K", "u_component_of_wind": "m/s", "v_component_of_wind": "m/s",
         "surface_pressure": "Pa"}


def last_cycle_fields(result: CycleResult, sphere) -> dict[str, np.ndarray]:
    """Fields ``(C, n_lat, n_lon)`` at the last cycle: truth, background (forecast) mean,
    analysis mean, analysis spread (unbiased member std; zero for one member) and analysis
    error (analysis mean − truth)."""
    shape = sphere.truth_last.shape
    final = np.asarray(result.final_ensemble, np.float64)
    spread = final.std(0, ddof=1) if final.shape[0] > 1 else np.zeros(final.shape[1:])
    mean_a = np.asarray(result.mean_a[-1], np.float64).reshape(shape)
    return {"truth": sphere.truth_last, "background mean": np.asarray(result.mean_f[-1], np.float64).reshape(shape),
            "analysis mean": mean_a, "analysis spread": spread.reshape(shape), "analysis error": mean_a - sphere.truth_last}


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
    styles = {"truth": dict(cmap="viridis", vmin=lo, vmax=hi),
              "background mean": dict(cmap="viridis", vmin=lo, vmax=hi),
              "analysis mean": dict(cmap="viridis", vmin=lo, vmax=hi),
              "analysis spread": dict(cmap="magma", vmin=0.0),
              "analysis error": dict(cmap="RdBu_r", vmin=-err, vmax=err)}
    for ax, (name, style) in zip(axes.flat, styles.items()):
        mesh = ax.pcolormesh(lon, lat, fields[name][c], shading="nearest", **style)
        fig.colorbar(mesh, ax=ax, shrink=0.6, label=units)
        ax.set_title(name)
        ax.set_xlabel("longitude (°E)")
        ax.set_ylabel("latitude (°N)")
        ax.set_aspect("equal")
    summary = axes.flat[-1]
    summary.axis("off")
    rms = lambda v: float(np.sqrt(np.average(v**2, weights=np.broadcast_to(np.cos(np.deg2rad(lat))[:, None], v.shape))))  # noqa: E731
    summary.text(0.0, 0.9, f"{channel} at the last cycle\n\ncos-lat weighted\nRMSE of the analysis mean: "
                 f"{rms(fields['analysis error'][c]):.4g} {units}\nRMSE of the background mean: "
                 f"{rms(fields['background mean'][c] - fields['truth'][c]):.4g} {units}\n"
                 f"climatological σ: {float(sphere.channel_std[c]):.4g} {units}", va="top", fontsize=10)
    fig.suptitle(f"{title}  {channel}".strip())
    return fig


def channel_rmse_figure(per_channel: dict[str, np.ndarray], sphere, title: str = ""):
    """Time-mean RMSE of the background and analysis means of every channel in units of its
    climatological σ_c (``cycle.channel_summary`` over ``SphereRun.channel_std``), as bars."""
    names = sphere.names
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.22 * len(names)), constrained_layout=True)
    ax.barh(y + 0.2, per_channel["rmse_f"] / sphere.channel_std, height=0.4, color="tab:orange", label="background")
    ax.barh(y - 0.2, per_channel["rmse_a"] / sphere.channel_std, height=0.4, color="tab:blue", label="analysis")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":", label="climatological σ")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time-mean RMSE / climatological σ")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig
