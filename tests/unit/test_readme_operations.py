"""The README's operations sections say what the deploy files do.

The "Metrics" table is the one on-call reads: it must list exactly the metrics the alerts and
the dashboard are checked against, with their types and labels.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.metric_names import METRICS, SDK_METRICS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    match = re.search(rf"^(#+) {re.escape(title)}\n(.*?)(?=^#{{1,3}} )", README, re.M | re.S)
    assert match is not None, f"README has no section {title!r}"
    return match.group(2)


def test_metrics_table_matches_the_metric_list() -> None:
    rows = re.findall(r"^\| `(optout_\w+)` \| (\w+) \|([^|]*)\|", _section("Metrics"), re.M)
    documented = {
        name: (kind, frozenset(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows
    }
    assert len(rows) == len(documented), "a metric is listed twice"
    expected = {m.name: (m.type, m.labels) for m in METRICS.values()}
    assert documented == expected


def test_operations_sections_exist() -> None:
    for title in ("Alerts and runbooks", "Deploying to Kubernetes", "Metrics"):
        assert _section(title).strip()
    deploying = _section("Deploying to Kubernetes")
    for words in (
        "kubectl apply -k deploy/kubernetes",
        "secret.example.yaml",
        "KEDA",
        "maxReplicaCount",
    ):
        assert words in deploying, words


def test_links_within_the_readme_lead_to_a_heading() -> None:
    anchors = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{1,6} (.+)$", README, re.M)
    }
    for target in re.findall(r"\]\(#([^)]+)\)", README):
        assert target in anchors, f"#{target} leads nowhere"


def test_sdk_metrics_table_matches_the_sdk_metric_list() -> None:
    rows = re.findall(
        r"^\| `(optout_\w+)` \| (\w+) \|([^|]*)\|", _section("The SDK's metrics"), re.M
    )
    documented = {
        name: (kind, frozenset(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows
    }
    assert documented == {m.name: (m.type, m.labels) for m in SDK_METRICS.values()}
