"""The service's Prometheus metrics as on-call relies on them: names, types and labels.

The alert rules, the Grafana dashboard and the README's "Metrics" table are all checked
against this one table, so a renamed metric breaks a test instead of silently emptying a
panel or an alert (an expression naming a missing series matches nothing and never fires).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    type: str  # counter, gauge or histogram
    labels: frozenset[str]


def _m(name: str, type_: str, *labels: str) -> Metric:
    return Metric(name, type_, frozenset(labels))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _m("optout_commands_consumed_total", "counter"),
        _m("optout_outcomes_total", "counter", "status", "reason"),
        _m("optout_dead_letters_total", "counter", "error"),
        _m("optout_poison_records_total", "counter", "dependency"),
        _m("optout_batch_records", "histogram"),
        _m("optout_stage_duration_seconds", "histogram", "stage"),
        _m("optout_record_to_event_seconds", "histogram"),
        _m("optout_waterfall_seconds", "histogram", "step"),
        _m("optout_occurred_to_effective_seconds", "histogram"),
        _m("optout_consumer_lag_records", "gauge", "topic", "partition"),
        _m("optout_sender_effect_seconds", "histogram", "sender"),
        _m("optout_sender_behind_records", "gauge", "sender"),
        _m("optout_sender_last_report_age_seconds", "gauge", "sender"),
        _m("optout_consumer_lag_seconds", "gauge", "topic", "partition"),
        _m("optout_dependency_errors_total", "counter", "dependency"),
        _m("optout_retries_total", "counter", "dependency"),
        _m("optout_ready", "gauge"),
        _m("optout_dependency_up", "gauge", "dependency"),
        _m("optout_checks_total", "counter", "answer", "source"),
        _m("optout_check_duration_seconds", "histogram", "source"),
        _m("optout_rate_limited_total", "counter", "rule"),
        _m("optout_opt_out_repeats_absorbed_total", "counter", "channel"),
        _m("optout_rate_limit_errors_total", "counter"),
    )
}

# The SDK's metrics (``service.client.follower_metrics``), on a registry the sender serves:
# README, "The SDK's metrics". Not the worker's, so not on the worker's dashboard.
SDK_METRICS: dict[str, Metric] = {
    m.name: m for m in (_m("optout_sdk_follower_seconds", "histogram", "step"),)
}

# Labels the scrape adds to every series (Prometheus, the Prometheus Operator, Kubernetes).
TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "container", "service"})

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def series_names() -> dict[str, Metric]:
    """Every series name a scrape can return, mapped to its metric (histograms expanded)."""
    names: dict[str, Metric] = {}
    for metric in METRICS.values():
        if metric.type == "histogram":
            for suffix in HISTOGRAM_SUFFIXES:
                names[metric.name + suffix] = metric
        else:
            names[metric.name] = metric
    return names


def labels_of(series: str) -> frozenset[str]:
    """The labels a series may carry: its metric's, ``le`` on buckets, and the target's."""
    metric = series_names()[series]
    extra = {"le"} if series.endswith("_bucket") else set()
    return metric.labels | extra | TARGET_LABELS
