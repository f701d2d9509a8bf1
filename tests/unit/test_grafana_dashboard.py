"""deploy/grafana/optout.json: every panel queries only the service's real metrics.

An expression naming a metric that does not exist draws an empty panel, which on-call reads
as "nothing happening". Each expression's series names and labels are checked against the
metrics table (tests/support/metric_names.py), and every metric has a panel.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.metric_names import METRICS, labels_of, series_names
from tests.support.promql_names import UnknownFunction, references

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "optout.json"


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(_dashboard()["panels"])
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_dashboard_shape() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard["panels"]):
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_expression_names_only_real_metrics_and_their_labels() -> None:
    known = series_names()
    for title, expr in _queries():
        found = references(expr)
        assert found.series, f"{title}: no metric in {expr!r}"
        assert found.series <= set(known), f"{title}: unknown {sorted(found.series - set(known))}"
        allowed = frozenset().union(*(labels_of(s) for s in found.series))
        assert found.labels <= allowed, f"{title}: unknown labels {sorted(found.labels - allowed)}"


def test_every_metric_has_a_panel() -> None:
    known = series_names()
    shown = {known[s].name for _, expr in _queries() for s in references(expr).series}
    assert set(METRICS) - shown == set()


def test_the_panels_on_call_asked_for() -> None:
    titles = " | ".join(title.lower() for title, _ in _queries())
    for words in (
        "lag per partition (records)",
        "lag per partition (seconds)",
        "throughput",
        "stage latency",
        "end-to-end latency",
        "outcomes by status",
        "dlq",
        "poison",
        "dependencies up",
        "ready",
        "checks by source",
        "check latency",
    ):
        assert words in titles, words


# The name extraction itself, on expressions with a known answer.


@pytest.mark.parametrize(
    ("expr", "series", "labels"),
    [
        ("optout_ready == 0", {"optout_ready"}, set()),
        ("sum(optout_ready)", {"optout_ready"}, set()),
        (
            "histogram_quantile(0.99, sum by (le, stage) "
            "(rate(optout_stage_duration_seconds_bucket[$__rate_interval])))",
            {"optout_stage_duration_seconds_bucket"},
            {"le", "stage"},
        ),
        (
            'sum without (instance) (increase(optout_outcomes_total{status="rejected", '
            'reason=~"a|b"}[1h] offset 5m)) > 1e3',
            {"optout_outcomes_total"},
            {"instance", "status", "reason"},
        ),
        (
            "max(a) by (topic) / on (topic) group_left (partition) b_total",
            {"a", "b_total"},
            {"topic", "partition"},
        ),
        ('label_replace(up, "x", "$1", "y", "(.*)")', {"up"}, set()),
    ],
)
def test_references(expr: str, series: set[str], labels: set[str]) -> None:
    found = references(expr)
    assert found.series == series
    assert found.labels == labels


def test_an_unknown_function_is_an_error() -> None:
    with pytest.raises(UnknownFunction):
        references("rates(optout_ready[5m])")


_WRAPPERS = [
    "rate({}[5m])",
    "increase({}[$__range])",
    "sum by (topic) ({})",
    "max without (instance) ({})",
    "histogram_quantile(0.5, sum by (le) (rate({}[1m])))",
    "({}) > 0.1",
    "avg_over_time({}[10m:1m])",
    "{} offset 1h",
    "clamp_min({}, 0)",
]


@given(
    name=st.sampled_from(sorted(series_names())),
    matcher=st.sampled_from(["", '{status="applied"}', '{le=~"0.1|+Inf", job!="x"}']),
    wrappers=st.lists(st.sampled_from(_WRAPPERS), max_size=4),
)
def test_a_metric_wrapped_in_functions_is_found_alone(
    name: str, matcher: str, wrappers: list[str]
) -> None:
    expr = name + matcher
    for wrapper in wrappers:
        expr = wrapper.format(expr)
    assert references(expr).series == {name}
