"""loadtest.metrics: Prometheus text in, histograms and counters out, differences between scrapes."""

from __future__ import annotations

import math

from loadtest.metrics import Scrape, delta, find_histogram, parse, scrape

TEXT = """\
# HELP inference_batch_size Requests per forward pass
# TYPE inference_batch_size histogram
inference_batch_size_bucket{le="1.0"} 2.0
inference_batch_size_bucket{le="4.0"} 5.0
inference_batch_size_bucket{le="+Inf"} 6.0
inference_batch_size_count 6.0
inference_batch_size_sum 17.0
# HELP inference_forward_seconds Time of one forward pass
# TYPE inference_forward_seconds histogram
inference_forward_seconds_bucket{le="0.1",task="a"} 1.0
inference_forward_seconds_bucket{le="+Inf",task="a"} 2.0
inference_forward_seconds_count{task="a"} 2.0
inference_forward_seconds_sum{task="a"} 0.3
inference_forward_seconds_bucket{le="0.1",task="b"} 0.0
inference_forward_seconds_bucket{le="+Inf",task="b"} 1.0
inference_forward_seconds_count{task="b"} 1.0
inference_forward_seconds_sum{task="b"} 0.2
# HELP inference_requests_total Requests finished
# TYPE inference_requests_total counter
inference_requests_total{outcome="succeeded"} 17.0
inference_requests_total{outcome="failed"} 1.0
# HELP inference_queue_depth Buffered
# TYPE inference_queue_depth gauge
inference_queue_depth 3.0
"""


def test_parse_sums_label_sets() -> None:
    data = parse(TEXT)
    batch = data.histograms["inference_batch_size"]
    assert (batch.count, batch.sum, batch.mean) == (6.0, 17.0, 17.0 / 6.0)
    assert batch.counts_by_bucket() == {1.0: 2.0, 4.0: 3.0, math.inf: 1.0}
    forward = data.histograms["inference_forward_seconds"]
    assert (forward.count, forward.sum) == (3.0, 0.5)
    assert forward.buckets == {0.1: 1.0, math.inf: 3.0}
    assert data.counters == {"inference_requests": 18.0}


def test_delta_and_json_round_trip() -> None:
    before = parse(TEXT)
    after = parse(
        TEXT.replace("inference_batch_size_count 6.0", "inference_batch_size_count 10.0").replace(
            "inference_batch_size_sum 17.0", "inference_batch_size_sum 33.0"
        )
    )
    moved = delta(before, after)
    assert moved is not None
    assert (moved.histograms["inference_batch_size"].count, moved.histograms["inference_batch_size"].sum) == (
        4,
        16,
    )
    assert moved.histograms["inference_forward_seconds"].count == 0
    back = Scrape.from_json(moved.to_json())
    assert back is not None and back.histograms["inference_batch_size"].mean == 4.0
    assert back.histograms["inference_batch_size"].buckets[math.inf] == 0.0
    assert delta(None, after) is None and delta(before, None) is None


def test_find_histogram_by_name_pattern() -> None:
    data = parse(TEXT)
    assert find_histogram(data, suffix="batch_size")[0] == "inference_batch_size"  # type: ignore[index]
    found = find_histogram(data, suffix="seconds", contains=("forward", "inference"))
    assert found is not None and found[0] == "inference_forward_seconds"
    assert find_histogram(data, suffix="latency") is None
    assert find_histogram(None, suffix="batch_size") is None


def test_scrape_of_nothing_is_none() -> None:
    assert scrape("http://127.0.0.1:9/metrics", timeout=0.5) is None
