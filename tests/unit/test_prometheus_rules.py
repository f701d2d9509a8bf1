"""deploy/prometheus/: the alert rules load, fire where they should and stay silent elsewhere.

``promtool`` (Debian's prometheus package, which ``deploy/local/stack up`` installs) checks the
rules and the compose Prometheus config and runs alerts.test.yml. The test fails, never skips,
without promtool: CI must have it. The rest checks what promtool cannot: that every alert has
a firing and a silent scenario, names only real metrics, and links a runbook that exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metric_names import labels_of, series_names
from tests.support.promql_names import references

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUNBOOK_BASE = "https://github.com/optout/optout-service/blob/main/README.md#"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is missing: `deploy/local/stack up` (what `make test` runs) installs it from "
            "Debian's prometheus package (apt-get install --no-install-recommends prometheus)"
        )
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((RULES / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = _run("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_of_the_compose_prometheus() -> None:
    result = _run("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = _run("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_a_scenario_and_stays_silent_in_another() -> None:
    suite = yaml.safe_load((RULES / "alerts.test.yml").read_text(encoding="utf-8"))
    assert suite["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fires == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    assert (fires | silent) - names == set(), "tests of alerts that do not exist"


def test_required_alerts_exist() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in _alerts()}
    wanted = {
        "optout_consumer_lag_records": "lag rising",
        "optout_consumer_lag_seconds": "lag over the objective",
        "optout_record_to_event_seconds_bucket": "end-to-end p99",
        "optout_dead_letters_total": "DLQ records",
        "optout_poison_records_total": "poison records",
        "optout_dependency_up": "a dependency down",
        "optout_ready": "not ready",
    }
    used = {name for expr in exprs.values() for name in references(expr).series}
    assert set(wanted) <= used, [wanted[m] for m in set(wanted) - used]


def test_alert_expressions_name_only_real_metrics_and_labels() -> None:
    known = series_names()
    for rule in _alerts():
        found = references(rule["expr"])
        assert found.series, rule["alert"]
        assert found.series <= set(known), (rule["alert"], found.series - set(known))
        allowed = frozenset().union(*(labels_of(s) for s in found.series))
        assert found.labels <= allowed, (rule["alert"], found.labels - allowed)


def _readme_anchors() -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", README, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_is_labelled_annotated_and_has_its_runbook() -> None:
    anchors = _readme_anchors()
    for rule in _alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert annotations["description"], name
        anchor = f"runbook-{name.lower()}"
        assert annotations["runbook_url"] == RUNBOOK_BASE + anchor, name
        assert anchor in anchors, f"README has no heading for #{anchor}"


def test_every_runbook_heading_belongs_to_an_alert() -> None:
    names = {f"runbook-{rule['alert'].lower()}" for rule in _alerts()}
    runbooks = {a for a in _readme_anchors() if a.startswith("runbook-")}
    assert runbooks == names
