"""Figures of a report over many runs (matplotlib, headless).

Each function takes the collected ``ReportData`` (``analysis.report``) and returns
``(figure, note)``: the figure, or ``None`` with the reason it was left out (one density
only, no diffusion runs over several guidance strengths, no stored rank-histogram counts or
lead-time curves); a note also names runs that a figure could not show. Per-run drawing
(rank histogram bars, one RMSE-vs-lead curve with its loss marked) is ``ensda.run_figures``'.

Sphere reports (``figures_for``) add ``SPHERE_FIGURES``: the analysis RMSE and CRPS of every
channel in units of its climatological σ_c against pressure, a panel per variable
(``channel_skill_table`` is its data, from each run's ``channel_metrics.json``), and the
observed columns of the parent run on a lon–lat map.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np

from ensda import run_figures as run_figures
from ensda.run_figures import plt

#: (figure name, title) in the order the report shows them
FIGURES = (
    ("crps_density.png", "CRPS against observation density"),
    ("crps_heatmap.png", "CRPS over density × guidance strength (diffusion)"),
    ("ssr_density.png", "Spread-skill ratio against observation density"),
    ("rank_histograms.png", "Rank histograms"),
    ("lead_time.png", "Forecast RMSE against lead, lead-time loss marked"),
)
#: the figures of a report on the sphere, after ``FIGURES``
SPHERE_FIGURES = (
    (
        "channel_skill.png",
        "Analysis RMSE and CRPS per channel in units of the climatological σ, against pressure",
    ),
    ("observed_columns.png", "Observed columns"),
)


def figures_for(data) -> tuple:
    """(figure name, title) of the report of ``data``: ``FIGURES``, and on the sphere
    ``SPHERE_FIGURES``."""
    return FIGURES + SPHERE_FIGURES if data.sphere else FIGURES


def colours(series: list[str], data) -> dict[str, object]:
    """A colour per series: diffusion guidance strengths in viridis order, the rest tab10."""
    guided = [s for s in series if data.series_guidance.get(s) is not None]
    plain = [s for s in series if s not in guided]
    out = {s: plt.cm.tab10(i % 10) for i, s in enumerate(plain)}
    for i, s in enumerate(guided):
        out[s] = plt.cm.viridis(0.1 + 0.75 * i / max(1, len(guided) - 1))
    return out


def _means(records, metric: str) -> dict[tuple[str, float], float]:
    """Mean of ``metric`` per (series, density) over the records that have it."""
    values = defaultdict(list)
    for r in records:
        v = r.metrics.get(metric)
        if r.density is not None and v is not None and math.isfinite(v):
            values[(r.series, r.density)].append(v)
    return {k: float(np.mean(v)) for k, v in values.items()}


def _density_axis(ax, densities: list[float]) -> None:
    if max(densities) / min(densities) >= 4:
        ax.set_xscale("log")
    ax.set_xticks(densities)
    ax.set_xticklabels([f"{d:g}" for d in densities])
    ax.minorticks_off()
    ax.set_xlabel("observed fraction of sites")


def _metric_against_density(data, metric: str, ylabel: str, records, skipped_note: str = ""):
    densities = data.densities
    if len(densities) < 2:
        return (
            None,
            f"left out: all runs have one observation density ({_fmt_densities(densities)})",
        )
    means = _means(records, metric)
    if not means:
        return None, f"left out: no run has {metric}"
    series = [s for s in data.series if any(k[0] == s for k in means)]
    col = colours(data.series, data)
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for s in series:
        xs = [d for d in densities if (s, d) in means]
        ax.plot(xs, [means[(s, d)] for d in xs], "o-", color=col[s], label=s)
    _density_axis(ax, densities)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return (fig, ax), skipped_note


def crps_density_figure(data):
    """CRPS (time mean after burn-in) against observation density, one line per method
    (diffusion: one per guidance strength when the runs have several)."""
    out, note = _metric_against_density(data, "crps_a", "analysis CRPS", data.finished)
    if out is None:
        return None, note
    fig, ax = out
    values = [v for line in ax.get_lines() for v in line.get_ydata()]
    if min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("CRPS against observation density (lower is better)")
    return fig, note


def ssr_density_figure(data):
    """Spread-skill ratio against density per ensemble method, with the SSR = 1 line."""
    ensembles = [r for r in data.finished if r.n_members is None or r.n_members > 1]
    deterministic = sorted({r.series for r in data.finished if r.n_members == 1})
    note = (
        f"deterministic methods left out (no spread): {', '.join(deterministic)}"
        if deterministic
        else ""
    )
    if not ensembles and len(data.densities) >= 2:
        return None, "left out: no ensemble method among the runs"
    out, why = _metric_against_density(data, "ssr_a", "spread-skill ratio", ensembles, note)
    if out is None:
        return None, why
    fig, ax = out
    ax.axhline(1.0, color="k", lw=1.0, ls="--", label="SSR = 1 (reliable)")
    ax.legend(fontsize=7)
    ax.set_title("Spread-skill ratio against observation density")
    return fig, note


def crps_heatmap_figure(data):
    """Mean CRPS of the diffusion runs per (guidance strength, density), values in the cells;
    drawn only when the diffusion runs span two or more of each."""
    runs = [
        r
        for r in data.finished
        if r.guidance is not None and r.density is not None and r.metrics.get("crps_a") is not None
    ]
    strengths = sorted({r.guidance for r in runs})
    densities = sorted({r.density for r in runs})
    if len(strengths) < 2 or len(densities) < 2:
        found = (
            f"{len(strengths)} guidance strength(s) × {len(densities)} density(ies)"
            if runs
            else "no guided (diffusion, ens-diffusion) runs"
        )
        return (
            None,
            "left out: needs diffusion runs at two or more densities and guidance strengths "
            f"({found})",
        )
    cells = defaultdict(list)
    for r in runs:
        cells[(r.guidance, r.density)].append(r.metrics["crps_a"])
    grid = np.full((len(strengths), len(densities)), np.nan)
    for (g, d), v in cells.items():
        grid[strengths.index(g), densities.index(d)] = np.mean(v)
    fig, ax = plt.subplots(
        figsize=(1.3 * len(densities) + 2.5, 0.6 * len(strengths) + 2), constrained_layout=True
    )
    cmap = plt.cm.viridis_r.with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower")
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    for i in range(len(strengths)):
        for j in range(len(densities)):
            v = grid[i, j]
            text = "-" if np.isnan(v) else f"{v:.3g}"
            dark = not np.isnan(v) and (
                hi == lo or (v - lo) / (hi - lo) > 0.5
            )  # viridis_r: high values are dark
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black"
            )
    ax.set_xticks(range(len(densities)), [f"{d:g}" for d in densities])
    ax.set_yticks(range(len(strengths)), [f"{g:g}" for g in strengths])
    ax.set_xlabel("observed fraction of sites")
    ax.set_ylabel("guidance strength λ")
    ax.set_title(f"{', '.join(sorted({r.method for r in runs}))}: analysis CRPS")
    fig.colorbar(image, ax=ax, label="CRPS")
    missing = int(np.isnan(grid).sum())
    return fig, (f"{missing} cell(s) without a finished run (grey)" if missing else "")


def rank_histograms_figure(data):
    """Small multiples of the stored rank-histogram counts: a row per series, a column per
    density."""
    runs = [r for r in data.finished if r.rank_counts is not None]
    lacking = sorted(
        {r.series for r in data.finished if r.rank_counts is None and (r.n_members or 2) > 1}
    )
    note = f"no stored rank-histogram counts for: {', '.join(lacking)}" if lacking else ""
    if not runs:
        return (
            None,
            "left out: no run has stored rank-histogram counts (rank_histogram.json; ensemble "
            "methods only)",
        )
    counts = defaultdict(list)
    for r in runs:
        counts[(r.series, r.density)].append(np.asarray(r.rank_counts, np.float64))
    series = [s for s in data.series if any(k[0] == s for k in counts)]
    densities = sorted({k[1] for k in counts}, key=lambda d: (d is None, d or 0.0))
    col = colours(data.series, data)
    if len(densities) > 1:  # a row per series, a column per density
        shape, cells = (len(series), len(densities)), [(s, d) for s in series for d in densities]
    else:  # one density: the series wrapped into rows of up to four
        n_cols = min(4, len(series))
        shape, cells = (
            (math.ceil(len(series) / n_cols), n_cols),
            [(s, densities[0]) for s in series],
        )
    fig, axes = plt.subplots(
        *shape,
        figsize=(2.3 * shape[1] + 0.8, 1.7 * shape[0] + 0.8),
        squeeze=False,
        constrained_layout=True,
    )
    for ax in axes.flat[len(cells) :]:
        ax.set_axis_off()
    for ax, (s, d) in zip(axes.flat, cells):
        if (s, d) not in counts:
            ax.set_axis_off()
            continue
        summed = np.sum(counts[(s, d)], axis=0)  # replicate runs of one cell pooled
        title = f"{s}" + (f", density {d:g}" if d is not None else "")
        run_figures.rank_histogram_axes(ax, summed, title, colour=col[s])
        ax.title.set_fontsize(8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    fig.supxlabel("rank of truth among members", fontsize=9)
    fig.supylabel("frequency (dashed: flat)", fontsize=9)
    return fig, note


def lead_time_figure(data):
    """RMSE against lead from each run's analyses and the reference curve, one panel per
    density, the lead-time loss marked (arrow from L to ℓ*; none when off the curve)."""
    runs = [r for r in data.finished if r.lead_time is not None]
    lacking = sorted({r.series for r in data.finished if r.lead_time is None})
    note = f"no lead-time curves (lead_time.json) for: {', '.join(lacking)}" if lacking else ""
    if not runs:
        return None, "left out: no run has lead-time curves (lead_time.json; lead_time.enabled)"
    densities = sorted({r.density for r in runs}, key=lambda d: (d is None, d or 0.0))
    n_cols = min(3, len(densities))
    n_rows = math.ceil(len(densities) / n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(5.2 * n_cols, 3.8 * n_rows), squeeze=False, constrained_layout=True
    )
    col = colours(data.series, data)
    for ax, d in zip(axes.flat, densities):
        here = sorted(
            (r for r in runs if r.density == d), key=lambda r: data.series.index(r.series)
        )
        first = here[0].lead_time
        ax.plot(
            first["leads_h"], first["rmse_reference"], color="k", lw=1.4, label="reference states"
        )
        shown = set()
        for r in here:
            lt = r.lead_time
            loss = lt.get("lead_time_loss_h")
            matched = lt["lead_h"] + loss if loss is not None and math.isfinite(loss) else None
            rmse = float(np.interp(lt["lead_h"], lt["leads_h"], lt["rmse_analysis"]))
            label = f"{r.series}: {lt.get('lead_time_loss', '-')}" if r.series not in shown else ""
            shown.add(r.series)
            run_figures.lead_time_axes(
                ax,
                lt["leads_h"],
                lt["rmse_analysis"],
                lt["lead_h"],
                rmse,
                matched,
                colour=col[r.series],
                label=label,
            )
        ax.set_yscale("log")
        ax.set_xlabel("lead (h)")
        ax.set_ylabel("forecast RMSE")
        where = f"density {d:g}, " if d is not None else ""
        ax.set_title(f"{where}lead-time loss at L = {first['lead_h']:g} h (legend)", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(densities) :]:
        ax.set_axis_off()
    return fig, note


def channel_level(channel: str) -> tuple[str, float | None]:
    """``"temperature_850"`` -> ``("temperature", 850.0)``; a surface channel has no level."""
    m = re.fullmatch(r"(.+)_(\d+)", channel)
    return (m.group(1), float(m.group(2))) if m else (channel, None)


def channel_skill_table(data) -> list[dict]:
    """One row per finished run with ``channel_metrics.json`` and channel: its series,
    density, variable and level (hPa; None at the surface), climatological σ_c, time-mean
    analysis RMSE, CRPS and spread (SI units) and RMSE and CRPS divided by σ_c."""
    rows = []
    for r in data.finished:
        cm = r.channel_metrics
        if not cm:
            continue
        for i, channel in enumerate(cm["channels"]):
            variable, level = channel_level(channel)
            std = float(cm["climatological_std"][i])
            rmse, crps = float(cm["rmse_a"][i]), float(cm["crps_a"][i])
            rows.append(
                {
                    "run_id": r.run_id,
                    "series": r.series,
                    "density": r.density,
                    "channel": channel,
                    "variable": variable,
                    "level_hpa": level,
                    "climatological_std": std,
                    "rmse_a": rmse,
                    "crps_a": crps,
                    "spread_a": float(cm["spread_a"][i]),
                    "rmse_a_over_std": rmse / std if std > 0 else math.nan,
                    "crps_a_over_std": crps / std if std > 0 else math.nan,
                }
            )
    return rows


def channel_skill_figure(data):
    """Analysis RMSE / σ_c (top row) and CRPS / σ_c (bottom row) of every channel: a panel per
    variable against pressure (log, surface at the bottom), one line per series (and density
    when the runs have several; replicate runs averaged); surface channels in a last panel
    of markers."""
    rows = channel_skill_table(data)
    lacking = sorted({r.series for r in data.finished if r.sphere and not r.channel_metrics})
    note = f"no channel_metrics.json for: {', '.join(lacking)}" if lacking else ""
    if not rows:
        return None, "left out: no run has per-channel metrics (channel_metrics.json; sphere runs)"
    several = len({r["density"] for r in rows}) > 1
    line = lambda r: (
        f"{r['series']}, density {r['density']:g}"
        if several and r["density"] is not None
        else r["series"]
    )
    values = defaultdict(list)  # (line, channel, metric) -> values of replicate runs
    for r in rows:
        for m in ("rmse_a_over_std", "crps_a_over_std"):
            values[(line(r), r["channel"], m)].append(r[m])
    lines = list(
        dict.fromkeys(
            line(r)
            for r in sorted(rows, key=lambda r: (data.series.index(r["series"]), r["density"] or 0))
        )
    )
    channels = list(dict.fromkeys(r["channel"] for r in rows))
    levelled = list(
        dict.fromkeys(channel_level(c)[0] for c in channels if channel_level(c)[1] is not None)
    )
    surface = [c for c in channels if channel_level(c)[1] is None]
    panels = levelled + (["surface"] if surface else [])
    col = colours(data.series, data)
    line_colour = {ln: col.get(ln.split(", density")[0], "k") for ln in lines}
    if several:  # one colour per line
        line_colour = {ln: plt.cm.tab10(i % 10) for i, ln in enumerate(lines)}
    profiles = any(
        len({channel_level(c)[1] for c in channels if channel_level(c)[0] == v}) > 1
        for v in levelled
    )
    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(2.9 * len(panels) + 1.2, 7.2 if profiles else 4.8),
        squeeze=False,
        constrained_layout=True,
    )
    for row, (metric, label) in enumerate(
        (("rmse_a_over_std", "analysis RMSE / σ_c"), ("crps_a_over_std", "analysis CRPS / σ_c"))
    ):
        for ax, panel in zip(axes[row], panels):
            if panel == "surface":
                for k, ln in enumerate(lines):
                    offset = (k - (len(lines) - 1) / 2) * 0.12
                    for j, c in enumerate(surface):
                        v = values.get((ln, c, metric))
                        if v:
                            ax.plot([np.mean(v)], [j + offset], "D", color=line_colour[ln], ms=6)
                ax.set_yticks(
                    range(len(surface)), [c.replace("_", " ") for c in surface], fontsize=7
                )
                ax.set_ylim(len(surface) - 0.5, -0.5)
            else:
                levels = sorted(
                    {channel_level(c)[1] for c in channels if channel_level(c)[0] == panel}
                )
                for ln in lines:
                    pts = [
                        (np.mean(values[(ln, c, metric)]), channel_level(c)[1])
                        for c in channels
                        if channel_level(c)[0] == panel and (ln, c, metric) in values
                    ]
                    if pts:
                        pts.sort(key=lambda p: p[1])
                        ax.plot(
                            [p[0] for p in pts],
                            [p[1] for p in pts],
                            "o-",
                            color=line_colour[ln],
                            ms=3,
                            lw=1.3,
                            label=ln,
                        )
                ax.set_yscale("log")
                ax.set_ylim(max(levels) * 1.15, min(levels) / 1.15)
                labelled = (
                    [v for v in levels if v in (1000, 850, 700, 500, 300, 200, 100, 50, 10)]
                    if len(levels) > 7
                    else levels
                )
                ax.set_yticks(
                    levels, [f"{v:g}" if v in labelled else "" for v in levels], fontsize=7
                )
                ax.minorticks_off()
                if ax is axes[row][0]:
                    ax.set_ylabel("pressure (hPa)")
            drawn = [x for ln in ax.get_lines() for x in ln.get_xdata()]
            if metric == "rmse_a_over_std":
                ax.axvline(1.0, color="grey", lw=0.8, ls=":")
                drawn.append(1.0)
            ax.set_xlim(0.0, 1.08 * max([x for x in drawn if math.isfinite(x)], default=1.0))
            ax.set_xlabel(label, fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(panel.replace("_component_of_wind", " wind").replace("_", " "), fontsize=9)
            ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], color=line_colour[ln], marker="o", ms=4, label=ln) for ln in lines
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(lines), 6), fontsize=8)
    fig.suptitle("time-mean analysis error per channel (dotted: the climatological σ)", fontsize=10)
    return fig, note


def observed_columns_figure(data):
    """The parent run's observed grid columns on a lon–lat map, coloured by the number of
    cycles that observe each column."""
    obs = data.observations
    if obs is None:
        return None, data.notes.get(
            "observed_columns.png", "left out: the parent run has no observations.zarr"
        )
    fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
    order = np.argsort(obs.n_cycles)  # often-observed columns on top
    points = ax.scatter(
        obs.longitude[order],
        obs.latitude[order],
        c=obs.n_cycles[order],
        s=18,
        cmap="viridis",
        vmin=0,
        vmax=max(obs.cycles, 1),
        edgecolors="k",
        linewidths=0.3,
    )
    fig.colorbar(points, ax=ax, shrink=0.75, label=f"cycles observing the column (of {obs.cycles})")
    ax.set_xlim(0, 360)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(0, 361, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    network = f"{obs.kind}" + (f", density {obs.density:g}" if obs.density is not None else "")
    network += ", redrawn each cycle" if obs.redraw else ", fixed"
    each = f"{obs.per_cycle} per cycle, " if obs.per_cycle is not None else ""
    ax.set_title(
        f"{len(obs.n_cycles)} observed columns over {obs.cycles} cycles"
        + (f", grid {obs.grid}" if obs.grid else "")
        + f"\n{each}{network}; {obs.channels} channel(s) per column",
        fontsize=9,
    )
    return fig, ""


def _fmt_densities(densities) -> str:
    return ", ".join(f"{d:g}" for d in densities) or "unknown"


BUILDERS = {
    "crps_density.png": crps_density_figure,
    "crps_heatmap.png": crps_heatmap_figure,
    "ssr_density.png": ssr_density_figure,
    "rank_histograms.png": rank_histograms_figure,
    "lead_time.png": lead_time_figure,
    "channel_skill.png": channel_skill_figure,
    "observed_columns.png": observed_columns_figure,
}


def save(fig, path) -> None:
    fig.savefig(path, dpi=110)
    run_figures.close(fig)
