"""Figures of one cycled run (matplotlib, headless): error and spread over cycles, rank histogram,
forecast RMSE against lead with the lead-time loss marked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ensda.cycle import CycleResult, rank_histogram_counts  # noqa: E402


def error_spread_figure(result: CycleResult, burn_in: int, title: str = ""):
    """RMSE of the mean and spread of forecast and analysis over cycles."""
    cycles = np.arange(1, result.n_cycles + 1)
    fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
    for stage, colour in (("f", "tab:orange"), ("a", "tab:blue")):
        label = {"f": "forecast", "a": "analysis"}[stage]
        ax.plot(cycles, np.sqrt(np.asarray(getattr(result, f"mse_{stage}"))), color=colour, lw=0.8, label=f"RMSE {label}")
        if result.n_members > 1:
            ax.plot(cycles, np.sqrt(np.asarray(getattr(result, f"spread2_{stage}"))), color=colour, lw=0.8, ls="--", label=f"spread {label}")
    ax.axvline(burn_in, color="grey", lw=0.8, ls=":", label="end of burn-in")
    ax.set_yscale("log")
    ax.set_xlabel("cycle")
    ax.set_ylabel("RMSE / spread")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=3)
    return fig


def rank_histogram_figure(result: CycleResult, burn_in: int, title: str = ""):
    """Rank histogram of the truth among the analysis members, after burn-in."""
    counts = rank_histogram_counts(result, burn_in)
    freq = counts / counts.sum()
    fig, ax = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
    ax.bar(np.arange(counts.size), freq, width=1.0, color="tab:blue", edgecolor="white")
    ax.axhline(1.0 / counts.size, color="k", lw=0.8, ls="--", label="flat")
    ax.set_xlabel("rank of truth among members")
    ax.set_ylabel("frequency")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def lead_time_figure(curves, title: str = ""):
    """Forecast RMSE against lead (hours) from the analyses and from the reference states
    (``metrics.LeadTimeCurves``), with the lead-time loss marked: r at lead L, and the lead
    ℓ* where the reference curve reaches r."""
    loss = curves.loss
    lead, r = float(loss.lead_h), float(loss.rmse)
    fig, ax = plt.subplots(figsize=(6, 3.8), constrained_layout=True)
    ax.plot(curves.leads_h, curves.reference_curve, color="k", lw=1.2, label="from the reference states")
    ax.plot(curves.leads_h, curves.analysis_curve, color="tab:blue", lw=1.2, label="from the analyses")
    ax.plot([lead], [r], "o", color="tab:blue")
    ax.axhline(r, color="grey", lw=0.7, ls=":")
    if not bool(loss.off_curve):
        matched = float(loss.matched_lead_h)
        ax.plot([matched], [r], "o", color="k")
        ax.annotate("", xy=(matched, r), xytext=(lead, r), arrowprops={"arrowstyle": "<->", "color": "tab:red"})
    ax.set_xlabel("lead (h)")
    ax.set_ylabel("forecast RMSE")
    ax.set_title(f"{title}  lead-time loss at {lead:g} h: {loss.text} ({curves.n_starts} starts)".strip())
    ax.legend(fontsize=7, loc="upper left")
    return fig


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
