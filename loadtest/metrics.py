"""Scrape the worker's Prometheus endpoint and take differences between two scrapes.

Metric names are not hard-coded: a scrape keeps every histogram (count, sum,
cumulative buckets) and every counter, summed over their labels. The report
then looks for a histogram whose name ends in ``batch_size`` and one whose name
mentions ``forward`` or ``inference`` (seconds). Missing metrics, or a worker
without a metrics endpoint, give ``None``, never an error.
"""

from __future__ import annotations

import logging
import math
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Histogram", "Scrape", "delta", "find_histogram", "parse", "scrape"]

logger = logging.getLogger(__name__)


@dataclass
class Histogram:
    """One histogram summed over its label sets: ``buckets`` maps upper bound to cumulative count."""

    count: float = 0.0
    sum: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    @property
    def mean(self) -> float | None:
        """Mean observation, or None when nothing was observed."""
        return self.sum / self.count if self.count > 0 else None

    def to_json(self) -> dict[str, Any]:
        """JSON form (bucket bounds as strings, ``+Inf`` included)."""
        return {"count": self.count, "sum": self.sum, "buckets": {_le(k): v for k, v in self.buckets.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        """Inverse of ``to_json``."""
        buckets = {float(k): float(v) for k, v in (data.get("buckets") or {}).items()}
        return cls(float(data.get("count", 0.0)), float(data.get("sum", 0.0)), buckets)

    def counts_by_bucket(self) -> dict[float, float]:
        """Non-cumulative counts per upper bound."""
        out: dict[float, float] = {}
        previous = 0.0
        for bound in sorted(self.buckets):
            out[bound] = self.buckets[bound] - previous
            previous = self.buckets[bound]
        return out


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


@dataclass
class Scrape:
    """Histograms and counters of one scrape, keyed by metric family name."""

    histograms: dict[str, Histogram] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON form, for run.json."""
        return {
            "histograms": {name: h.to_json() for name, h in sorted(self.histograms.items())},
            "counters": dict(sorted(self.counters.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Scrape | None:
        """Inverse of ``to_json``; None stays None."""
        if not data:
            return None
        histograms = {name: Histogram.from_json(h) for name, h in (data.get("histograms") or {}).items()}
        counters = {name: float(v) for name, v in (data.get("counters") or {}).items()}
        return cls(histograms, counters)


def parse(text: str) -> Scrape:
    """Parse Prometheus text exposition into a ``Scrape``."""
    result = Scrape()
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            hist = result.histograms.setdefault(family.name, Histogram())
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    hist.buckets[bound] = hist.buckets.get(bound, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    hist.count += sample.value
                elif sample.name.endswith("_sum"):
                    hist.sum += sample.value
        elif family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    result.counters[family.name] = result.counters.get(family.name, 0.0) + sample.value
    return result


def scrape(url: str, timeout: float = 3.0) -> Scrape | None:
    """GET ``url`` and parse it; None (logged) when the endpoint does not answer or is not Prometheus text."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", errors="replace")
        return parse(text)
    except (OSError, ValueError) as exc:
        logger.warning("no worker metrics from %s: %s", url, exc)
        return None


def delta(before: Scrape | None, after: Scrape | None) -> Scrape | None:
    """What happened between two scrapes (``after - before``); None if either is missing."""
    if before is None or after is None:
        return None
    out = Scrape()
    for name, hist in after.histograms.items():
        old = before.histograms.get(name, Histogram())
        buckets = {b: v - old.buckets.get(b, 0.0) for b, v in hist.buckets.items()}
        out.histograms[name] = Histogram(hist.count - old.count, hist.sum - old.sum, buckets)
    for name, value in after.counters.items():
        out.counters[name] = value - before.counters.get(name, 0.0)
    return out


def find_histogram(
    data: Scrape | None, *, suffix: str = "", contains: tuple[str, ...] = ()
) -> tuple[str, Histogram] | None:
    """First histogram (by name) ending in ``suffix`` and containing one of ``contains``, in that order."""
    if data is None:
        return None
    names = sorted(data.histograms)
    for word in contains or ("",):
        for name in names:
            if name.endswith(suffix) and word in name:
                return name, data.histograms[name]
    return None
