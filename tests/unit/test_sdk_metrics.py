"""The SDK's follower metrics: the names, types and labels the README documents, observed on
the registry the sender passes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.client.follower_metrics import FOLLOWER_STEPS, SdkMetrics
from tests.support.metric_names import SDK_METRICS


def test_registered_metrics_are_the_documented_ones() -> None:
    registry = SdkMetrics().registry
    found = {family.name: family.type for family in registry.collect()}
    assert found == {name: metric.type for name, metric in SDK_METRICS.items()}
    metric = SdkMetrics().follower_steps
    assert frozenset(metric._labelnames) == SDK_METRICS[metric._name].labels


def test_each_event_is_observed_once_per_step_on_the_senders_registry() -> None:
    registry = CollectorRegistry()
    metrics = SdkMetrics(registry)
    metrics.events([0.004, 0.012, -0.001], [0.0001, 0.0002, 0.0003])

    def value(suffix: str, step: str) -> float | None:
        return registry.get_sample_value(f"optout_sdk_follower_seconds{suffix}", {"step": step})

    assert FOLLOWER_STEPS == ("fetch", "apply")
    assert value("_count", "fetch") == 3
    assert value("_count", "apply") == 3
    # A Kafka timestamp a little ahead of the local clock counts as no wait, not a negative.
    assert value("_sum", "fetch") == 0.004 + 0.012
    assert value("_bucket", "fetch") is None  # buckets carry `le`
    assert (
        registry.get_sample_value(
            "optout_sdk_follower_seconds_bucket", {"step": "fetch", "le": "0.005"}
        )
        == 2
    )  # the clamped one and 0.004
