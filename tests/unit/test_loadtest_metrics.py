"""loadtest.metrics: the worker's histograms (named by workers.metrics) out of Prometheus text, and deltas."""

from __future__ import annotations

from loadtest.metrics import HISTOGRAMS, Histogram, Scrape, delta, parse, scrape
from workers.metrics import BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC

TEXT = """\
# HELP inference_batch_size Requests per forward pass
# TYPE inference_batch_size histogram
inference_batch_size_bucket{le="1.0"} 2.0
inference_batch_size_bucket{le="+Inf"} 6.0
inference_batch_size_count 6.0
inference_batch_size_sum 17.0
# HELP inference_forward_seconds Time of one forward pass
# TYPE inference_forward_seconds histogram
inference_forward_seconds_bucket{le="+Inf",task="a"} 2.0
inference_forward_seconds_count{task="a"} 2.0
inference_forward_seconds_sum{task="a"} 0.3
inference_forward_seconds_bucket{le="+Inf",task="b"} 1.0
inference_forward_seconds_count{task="b"} 1.0
inference_forward_seconds_sum{task="b"} 0.2
# HELP other_seconds Not the worker's
# TYPE other_seconds histogram
other_seconds_count 1.0
other_seconds_sum 1.0
# HELP inference_requests_total Requests finished
# TYPE inference_requests_total counter
inference_requests_total{outcome="succeeded"} 17.0
"""


def test_the_names_are_the_workers() -> None:
    assert HISTOGRAMS == (BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC)
    assert BATCH_SIZE_METRIC in TEXT and FORWARD_METRIC in TEXT  # the sample above uses them


def test_parse_keeps_the_workers_histograms_summed_over_labels() -> None:
    data = parse(TEXT)
    assert data.histograms == {BATCH_SIZE_METRIC: Histogram(6.0, 17.0), FORWARD_METRIC: Histogram(3.0, 0.5)}
    assert data.mean(BATCH_SIZE_METRIC) == 17.0 / 6.0
    assert data.mean(BATCH_WAIT_METRIC) is None


def test_delta_and_json_round_trip() -> None:
    before = parse(TEXT)
    after = parse(TEXT.replace("inference_batch_size_count 6.0", "inference_batch_size_count 10.0")
                  .replace("inference_batch_size_sum 17.0", "inference_batch_size_sum 33.0"))
    moved = delta(before, after)
    assert moved is not None
    assert moved.histograms == {BATCH_SIZE_METRIC: Histogram(4.0, 16.0), FORWARD_METRIC: Histogram(0.0, 0.0)}
    assert Scrape.from_json(moved.to_json()) == moved
    assert Scrape.from_json(None) is None
    assert delta(None, after) is None and delta(before, None) is None


def test_scrape_of_nothing_is_none() -> None:
    assert scrape("http://127.0.0.1:9/metrics", timeout=0.5) is None
