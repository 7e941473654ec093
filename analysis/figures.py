"""Figures of a report over many runs (matplotlib, headless).

Each function takes the collected ``ReportData`` (``analysis.report``) and returns
``(figure, note)``: the figure, or ``None`` with the reason it was left out (one density
only, no diffusion runs over several guidance strengths, no stored rank-histogram counts or
lead-time curves); a note also names runs that a figure could not show. Per-run drawing
(rank histogram bars, one RMSE-vs-lead curve with its loss marked) is ``ensda.figures``'.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ensda import figures as run_figures
from ensda.figures import plt

#: (figure name, title) in the order the report shows them
FIGURES = (
    ("crps_density.png", "CRPS against observation density"),
    ("crps_heatmap.png", "CRPS over density × guidance strength (diffusion)"),
    ("ssr_density.png", "Spread-skill ratio against observation density"),
    ("rank_histograms.png", "Rank histograms"),
    ("lead_time.png", "Forecast RMSE against lead, lead-time loss marked"),
)


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
        return None, f"left out: all runs have one observation density ({_fmt_densities(densities)})"
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
    note = f"deterministic methods left out (no spread): {', '.join(deterministic)}" if deterministic else ""
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
    runs = [r for r in data.finished if r.guidance is not None and r.density is not None and r.metrics.get("crps_a") is not None]
    strengths = sorted({r.guidance for r in runs})
    densities = sorted({r.density for r in runs})
    if len(strengths) < 2 or len(densities) < 2:
        found = (f"{len(strengths)} guidance strength(s) × {len(densities)} density(ies)" if runs else "no diffusion runs")
        return None, f"left out: needs diffusion runs at two or more densities and guidance strengths ({found})"
    cells = defaultdict(list)
    for r in runs:
        cells[(r.guidance, r.density)].append(r.metrics["crps_a"])
    grid = np.full((len(strengths), len(densities)), np.nan)
    for (g, d), v in cells.items():
        grid[strengths.index(g), densities.index(d)] = np.mean(v)
    fig, ax = plt.subplots(figsize=(1.3 * len(densities) + 2.5, 0.6 * len(strengths) + 2), constrained_layout=True)
    cmap = plt.cm.viridis_r.with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower")
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    for i in range(len(strengths)):
        for j in range(len(densities)):
            v = grid[i, j]
            text = "-" if np.isnan(v) else f"{v:.3g}"
            dark = not np.isnan(v) and (hi == lo or (v - lo) / (hi - lo) > 0.5)  # viridis_r: high values are dark
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(densities)), [f"{d:g}" for d in densities])
    ax.set_yticks(range(len(strengths)), [f"{g:g}" for g in strengths])
    ax.set_xlabel("observed fraction of sites")
    ax.set_ylabel("guidance strength λ")
    ax.set_title("diffusion: analysis CRPS")
    fig.colorbar(image, ax=ax, label="CRPS")
    missing = int(np.isnan(grid).sum())
    return fig, (f"{missing} cell(s) without a finished run (grey)" if missing else "")


def rank_histograms_figure(data):
    """Small multiples of the stored rank-histogram counts: a row per series, a column per density."""
    runs = [r for r in data.finished if r.rank_counts is not None]
    lacking = sorted({r.series for r in data.finished if r.rank_counts is None and (r.n_members or 2) > 1})
    note = f"no stored rank-histogram counts for: {', '.join(lacking)}" if lacking else ""
    if not runs:
        return None, "left out: no run has stored rank-histogram counts (rank_histogram.json; ensemble methods only)"
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
        shape, cells = (math.ceil(len(series) / n_cols), n_cols), [(s, densities[0]) for s in series]
    fig, axes = plt.subplots(*shape, figsize=(2.3 * shape[1] + 0.8, 1.7 * shape[0] + 0.8), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(cells):]:
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
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.2 * n_cols, 3.8 * n_rows), squeeze=False, constrained_layout=True)
    col = colours(data.series, data)
    for ax, d in zip(axes.flat, densities):
        here = sorted((r for r in runs if r.density == d), key=lambda r: data.series.index(r.series))
        first = here[0].lead_time
        ax.plot(first["leads_h"], first["rmse_reference"], color="k", lw=1.4, label="reference states")
        shown = set()
        for r in here:
            lt = r.lead_time
            loss = lt.get("lead_time_loss_h")
            matched = lt["lead_h"] + loss if loss is not None and math.isfinite(loss) else None
            rmse = float(np.interp(lt["lead_h"], lt["leads_h"], lt["rmse_analysis"]))
            label = f"{r.series}: {lt.get('lead_time_loss', '-')}" if r.series not in shown else ""
            shown.add(r.series)
            run_figures.lead_time_axes(ax, lt["leads_h"], lt["rmse_analysis"], lt["lead_h"], rmse, matched, colour=col[r.series], label=label)
        ax.set_yscale("log")
        ax.set_xlabel("lead (h)")
        ax.set_ylabel("forecast RMSE")
        where = f"density {d:g}, " if d is not None else ""
        ax.set_title(f"{where}lead-time loss at L = {first['lead_h']:g} h (legend)", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(densities):]:
        ax.set_axis_off()
    return fig, note


def _fmt_densities(densities) -> str:
    return ", ".join(f"{d:g}" for d in densities) or "unknown"


BUILDERS = {
    "crps_density.png": crps_density_figure,
    "crps_heatmap.png": crps_heatmap_figure,
    "ssr_density.png": ssr_density_figure,
    "rank_histograms.png": rank_histograms_figure,
    "lead_time.png": lead_time_figure,
}


def save(fig, path) -> None:
    fig.savefig(path, dpi=110)
    run_figures.close(fig)
