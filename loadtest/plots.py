"""PNG plots for the reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

from .results import Spread  # noqa: E402

__all__ = ["plot_batch_distribution", "plot_vs_users"]

#: One series per variant: users -> median and range over repeats.
Series = Mapping[str, Mapping[int, Spread]]


def plot_vs_users(series: Series, path: Path, *, title: str, ylabel: str) -> Path:
    """Line per variant of a metric against users, with min–max error bars; saved to ``path``."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    all_users: set[int] = set()
    try:
        for name, points in series.items():
            users = sorted(points)
            if not users:
                continue
            all_users.update(users)
            medians = [points[u].median for u in users]
            lower = [points[u].median - points[u].low for u in users]
            upper = [points[u].high - points[u].median for u in users]
            ax.errorbar(users, medians, yerr=[lower, upper], marker="o", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_users))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent users (closed loop)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_batch_distribution(distributions: Mapping[str, Mapping[int, float]], path: Path, *,
                            title: str) -> Path:
    """Grouped bars: share of forward passes per batch size, one group member per variant."""
    all_sizes = sorted({s for d in distributions.values() for s in d})
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        width = 0.8 / max(len(distributions), 1)
        for i, (name, dist) in enumerate(distributions.items()):
            total = sum(dist.values()) or 1.0
            xs = [j + i * width for j in range(len(all_sizes))]
            ax.bar(xs, [100.0 * dist.get(s, 0.0) / total for s in all_sizes], width, label=name)
        ax.set_xticks([j + width * (len(distributions) - 1) / 2 for j in range(len(all_sizes))])
        ax.set_xticklabels([str(s) for s in all_sizes])
        ax.set_xlabel("batch size (images per forward pass)")
        ax.set_ylabel("% of forward passes")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        if distributions:
            ax.legend()
        return _save(fig, path)
    finally:
        plt.close(fig)


def _save(fig: Figure, path: Path) -> Path:
    """Lay out ``fig`` and write it to ``path`` (its folder made as needed)."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
