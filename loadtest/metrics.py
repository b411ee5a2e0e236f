"""Scrape the worker's histograms (named by ``workers.metrics``, summed over label sets) and take
differences between two scrapes. A worker without a metrics endpoint gives ``None``, not an error."""

from __future__ import annotations

import logging
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from workers.metrics import BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC

__all__ = ["HISTOGRAMS", "Histogram", "Scrape", "delta", "parse", "scrape"]

logger = logging.getLogger(__name__)

#: The worker's histograms a report reads.
HISTOGRAMS = (BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC)


@dataclass(frozen=True)
class Histogram:
    """Observations and their sum, over every label set."""

    count: float = 0.0
    sum: float = 0.0


@dataclass
class Scrape:
    """The :data:`HISTOGRAMS` of one scrape (or the difference of two), by metric name."""

    histograms: dict[str, Histogram] = field(default_factory=dict)

    def mean(self, name: str) -> float | None:
        """Mean observation of histogram ``name``, None when it is absent or empty."""
        found = self.histograms.get(name)
        return found.sum / found.count if found and found.count > 0 else None

    def to_json(self) -> dict[str, Any]:
        """JSON form, for run.json."""
        return {"histograms": {n: {"count": h.count, "sum": h.sum}
                               for n, h in sorted(self.histograms.items())}}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Scrape | None:
        """Inverse of ``to_json``; None stays None."""
        if not data:
            return None
        return cls({n: Histogram(float(h["count"]), float(h["sum"])) for n, h in data["histograms"].items()})


def parse(text: str) -> Scrape:
    """The :data:`HISTOGRAMS` in Prometheus text exposition ``text``."""
    result = Scrape()
    for family in text_string_to_metric_families(text):
        if family.type != "histogram" or family.name not in HISTOGRAMS:
            continue
        count = sum(s.value for s in family.samples if s.name == f"{family.name}_count")
        total = sum(s.value for s in family.samples if s.name == f"{family.name}_sum")
        result.histograms[family.name] = Histogram(count, total)
    return result


def scrape(url: str, timeout: float = 3.0) -> Scrape | None:
    """GET ``url`` and parse it; None (logged) when the endpoint does not answer or is not Prometheus text."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return parse(response.read().decode("utf-8", errors="replace"))
    except (OSError, ValueError) as exc:
        logger.warning("no worker metrics from %s: %s", url, exc)
        return None


def delta(before: Scrape | None, after: Scrape | None) -> Scrape | None:
    """What happened between two scrapes (``after - before``); None if either is missing."""
    if before is None or after is None:
        return None
    old = before.histograms
    return Scrape({n: Histogram(h.count - old.get(n, Histogram()).count, h.sum - old.get(n, Histogram()).sum)
                   for n, h in after.histograms.items()})
