"""Figures of one cycled run (matplotlib, headless): error and spread over cycles, rank histogram."""

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


def close(fig) -> None:
    plt.close(fig)
