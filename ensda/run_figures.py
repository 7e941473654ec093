"""Figures of one cycled run (matplotlib): error and spread over cycles, rank histogram,
forecast RMSE against lead with the lead-time loss marked.

The backend is left to matplotlib (Agg on a machine without a display), so importing ensda
in a notebook keeps the notebook's backend."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ensda.cycle import CycleResult, rank_histogram_counts


def error_spread_figure(result: CycleResult, burn_in: int, title: str = ""):
    """RMSE of the mean and spread of forecast and analysis over cycles."""
    cycles = np.arange(1, result.n_cycles + 1)
    fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
    for stage, colour in (("f", "tab:orange"), ("a", "tab:blue")):
        label = {"f": "forecast", "a": "analysis"}[stage]
        ax.plot(
            cycles,
            np.sqrt(np.asarray(getattr(result, f"mse_{stage}"))),
            color=colour,
            lw=0.8,
            label=f"RMSE {label}",
        )
        if result.n_members > 1:
            ax.plot(
                cycles,
                np.sqrt(np.asarray(getattr(result, f"spread2_{stage}"))),
                color=colour,
                lw=0.8,
                ls="--",
                label=f"spread {label}",
            )
    ax.axvline(burn_in, color="grey", lw=0.8, ls=":", label="end of burn-in")
    ax.set_yscale("log")
    ax.set_xlabel("cycle")
    ax.set_ylabel("RMSE / spread")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=3)
    return fig


def rank_histogram_figure(result: CycleResult, burn_in: int, title: str = ""):
    """Rank histogram of the truth among the analysis members, after burn-in."""
    fig, ax = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
    rank_histogram_axes(ax, rank_histogram_counts(result, burn_in), title)
    ax.set_xlabel("rank of truth among members")
    ax.set_ylabel("frequency")
    ax.legend(fontsize=7)
    return fig


def rank_histogram_axes(ax, counts, title: str = "", colour: str = "tab:blue") -> None:
    """Rank-histogram frequencies from ``counts`` (N + 1 ranks) with the flat line, on ``ax``."""
    counts = np.asarray(counts, np.float64)
    ax.bar(
        np.arange(counts.size), counts / counts.sum(), width=1.0, color=colour, edgecolor="white"
    )
    ax.axhline(1.0 / counts.size, color="k", lw=0.8, ls="--", label="flat")
    ax.set_title(title)


def lead_time_figure(curves, title: str = ""):
    """Forecast RMSE against lead (hours) from the analyses and from the reference states
    (``metrics.LeadTimeCurves``), with the lead-time loss marked: r at lead L, and the lead
    ℓ* where the reference curve reaches r."""
    loss = curves.loss
    matched = None if bool(loss.off_curve) else float(loss.matched_lead_h)
    fig, ax = plt.subplots(figsize=(6, 3.8), constrained_layout=True)
    ax.plot(
        curves.leads_h, curves.reference_curve, color="k", lw=1.2, label="from the reference states"
    )
    lead_time_axes(
        ax,
        curves.leads_h,
        curves.analysis_curve,
        float(loss.lead_h),
        float(loss.rmse),
        matched,
        label="from the analyses",
    )
    ax.set_xlabel("lead (h)")
    ax.set_ylabel("forecast RMSE")
    ax.set_title(
        f"{title}  lead-time loss at {float(loss.lead_h):g} h: {loss.text} ({curves.n_starts} "
        "starts)".strip()
    )
    ax.legend(fontsize=7, loc="upper left")
    return fig


def lead_time_axes(
    ax,
    leads_h,
    analysis_curve,
    lead_h: float,
    rmse: float,
    matched_lead_h: float | None,
    colour: str = "tab:blue",
    label: str = "",
) -> None:
    """One analysis RMSE-vs-lead curve on ``ax`` with its lead-time loss marked: r at lead L,
    and (unless off the reference curve: ``matched_lead_h`` None) an arrow to the lead ℓ*
    where the reference curve reaches r."""
    ax.plot(leads_h, analysis_curve, color=colour, lw=1.2, label=label or None)
    ax.plot([lead_h], [rmse], "o", color=colour)
    ax.axhline(rmse, color=colour, lw=0.7, ls=":", alpha=0.6)
    if matched_lead_h is not None:
        ax.plot([matched_lead_h], [rmse], "o", color="k", ms=4)
        ax.annotate(
            "",
            xy=(matched_lead_h, rmse),
            xytext=(lead_h, rmse),
            arrowprops={"arrowstyle": "<->", "color": "tab:red"},
        )


def close(fig) -> None:
    plt.close(fig)


def training_figure(steps, loss, val_loss, title: str = ""):
    """Training and validation (EMA weights) EDM loss against step, log scale."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, label="training loss")
    ax.plot(steps, val_loss, label="validation loss (EMA weights)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("EDM loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
