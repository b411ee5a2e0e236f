"""PNG plots for the reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

from .results import Spread  # noqa: E402

__all__ = ["plot_batch_distribution", "plot_vs_users"]

#: One series per variant: users -> median and range over repeats.
Series = Mapping[str, Mapping[int, Spread]]


@contextmanager
def _figure(path: Path, title: str, xlabel: str, ylabel: str,
            grid: Literal["both", "x", "y"] = "both") -> Iterator[Axes]:
    """Axes to draw on; labelled, laid out and saved to ``path`` (its folder made as needed) on exit."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        yield ax
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, axis=grid, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


def plot_vs_users(series: Series, path: Path, *, title: str, ylabel: str) -> Path:
    """Line per variant of a metric against users, with min–max error bars; saved to ``path``."""
    with _figure(path, title, "concurrent users (closed loop)", ylabel) as ax:
        for name, points in series.items():
            users = sorted(points)
            if users:
                ax.errorbar(users, [points[u].median for u in users], marker="o", capsize=3, label=name,
                            yerr=[[points[u].median - points[u].low for u in users],
                                  [points[u].high - points[u].median for u in users]])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({u for points in series.values() for u in points}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=0)
    return path


def plot_batch_distribution(distributions: Mapping[str, Mapping[int, float]], path: Path, *,
                            title: str) -> Path:
    """Grouped bars: share of forward passes per batch size, one group member per variant."""
    sizes = sorted({s for d in distributions.values() for s in d})
    width = 0.8 / max(len(distributions), 1)
    with _figure(path, title, "batch size (images per forward pass)", "% of forward passes", "y") as ax:
        for i, (name, dist) in enumerate(distributions.items()):
            shares = [100.0 * dist.get(s, 0.0) / (sum(dist.values()) or 1.0) for s in sizes]
            ax.bar([j + i * width for j in range(len(sizes))], shares, width, label=name)
        ax.set_xticks([j + width * (len(distributions) - 1) / 2 for j in range(len(sizes))])
        ax.set_xticklabels([str(s) for s in sizes])
    return path
