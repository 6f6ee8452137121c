"""The Prometheus exposition of /metrics: histogram buckets as Prometheus reads them."""

from __future__ import annotations

from coordinator.metrics import Histogram, Metrics


def _samples(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = Histogram([0.01, 0.001])
    for seconds in (0.0005, 0.001, 0.002, 0.01, 0.5):
        histogram.observe(seconds)
    text = Metrics().render([], [("ait_x_seconds", "Test.", histogram)])
    assert "# TYPE ait_x_seconds histogram" in text
    samples = _samples(text)
    # le is "less than or equal": 0.001 falls in the 0.001 bucket, 0.01 in the 0.01 one.
    assert samples['ait_x_seconds_bucket{le="0.001"}'] == "2"
    assert samples['ait_x_seconds_bucket{le="0.01"}'] == "4"
    assert samples['ait_x_seconds_bucket{le="+Inf"}'] == "5"
    assert samples["ait_x_seconds_count"] == "5"
    assert float(samples["ait_x_seconds_sum"]) == 0.5135


def test_empty_histogram_renders_zero_buckets() -> None:
    text = Metrics().render([], [("ait_y_seconds", "Test.", Histogram([1.0]))])
    samples = _samples(text)
    assert samples['ait_y_seconds_bucket{le="1"}'] == "0"
    assert samples['ait_y_seconds_bucket{le="+Inf"}'] == "0"
    assert samples["ait_y_seconds_sum"] == "0.000000"
