"""The service registers exactly the metrics that alerts, dashboard and README rely on."""

from __future__ import annotations

from service.adapters.prometheus_metrics import PrometheusMetrics
from tests.support.metric_names import METRICS


def test_registered_metrics_are_the_documented_ones() -> None:
    registry = PrometheusMetrics().registry
    found = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = family.type
    assert found == {name: metric.type for name, metric in METRICS.items()}


def test_labels_are_the_documented_ones() -> None:
    metrics = PrometheusMetrics()
    for attribute in vars(metrics).values():
        names = getattr(attribute, "_labelnames", None)
        metric_name = getattr(attribute, "_name", None)
        if names is None or metric_name is None:
            continue
        documented = METRICS.get(metric_name) or METRICS[f"{metric_name}_total"]
        assert frozenset(names) == documented.labels, metric_name
