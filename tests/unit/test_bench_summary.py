"""The benchmark's report: every key the performance issue asks for, from any measurements.

Fake measurements only: nothing here is timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import report, summary
from benchmarks.common import percentiles
from benchmarks.soak import rss_growth_pct


def _latency(p50: float, p99: float) -> dict[str, Any]:
    figures: dict[str, Any] = percentiles([p50] * 98 + [p99] * 2)
    figures["missing"] = 0
    return figures


def _measurements() -> dict[str, Any]:
    rates = {
        str(rate): {
            "service": {
                "produce_to_event": _latency(4.0, 12.0),
                "produce_to_outcome": _latency(5.0, 13.0),
                "produce_to_sender_no": _latency(6.0, 18.0),
            },
            "passthrough": {"produce_to_output": _latency(2.0, 6.0)},
        }
        for rate in (500, 1000, 2000)
    }
    return {
        "quick": False,
        "measured_at": "2026-11-29T12:00:00Z",
        "duration_s": 1800.0,
        "machine": {"cores": 2, "memory_gib": 23.5, "python": "3.11.7", "kafka": "4.1.1"},
        "throughput": {
            "passthrough": {"cmds_per_s": 30_000.0},
            "workers": {"1": {"cmds_per_s": 12_000.0}, "2": {"cmds_per_s": 16_000.0}},
        },
        "latency": rates,
        "scaling": {
            "tiers": {
                "10000": {"cmds_per_s": 12_000.0},
                "1000000": {"cmds_per_s": 11_000.0},
                "10000000": {"cmds_per_s": 10_000.0},
            }
        },
        "soak": {"rss_growth_pct": 3.5, "peak_rss_mib": 140.0},
        "peer": {
            "peer_sink_cmds_per_s": 25_000.0,
            "peer_cdc_latency_ms": {"p50": 20.0, "p99": 60.0},
            "notes": "does less per record",
        },
    }


def test_every_required_key_is_there_with_the_issue_shapes() -> None:
    doc = summary.build(_measurements())

    assert summary.missing_keys(doc) == []
    assert doc["throughput_cmds_per_s"] == 16_000.0
    assert doc["passthrough_msgs_per_s"] == 30_000.0
    assert set(doc["latency_ms"]) == {"500", "1000", "2000"}
    assert doc["latency_ms"]["1000"]["p50"] == 4.0
    assert doc["latency_ms"]["1000"]["p99"] == 12.0
    assert doc["passthrough_latency_ms"]["1000"]["p99"] == 6.0
    assert doc["sender_effect_ms"]["2000"]["p99"] == 18.0
    assert doc["subjects_scaling"] == {
        "10000": 12_000.0,
        "1000000": 11_000.0,
        "10000000": 10_000.0,
    }
    assert doc["rss_growth_pct"] == 3.5
    assert doc["peer_sink_cmds_per_s"] == 25_000.0
    assert doc["peer_cdc_latency_ms"] == {"p50": 20.0, "p99": 60.0}
    assert doc["machine"]["cores"] == 2


def test_the_aims_are_judged_as_ratios_within_the_run() -> None:
    aims = {a["aim"]: a for a in summary.build(_measurements())["aims"]}

    assert aims["throughput >= 10,000 commands/s"]["met"] is True
    assert aims["throughput >= 0.5 x the passthrough's, same run"]["measured"] == 0.533
    scaling = next(a for a in aims.values() if a["aim"].startswith("throughput with"))
    assert scaling["measured"] == 0.833
    assert scaling["met"] is True
    peer_throughput = next(a for a in aims.values() if "sink on throughput" in a["aim"])
    assert peer_throughput["measured"] == 0.64
    assert peer_throughput["met"] is False
    peer_latency = next(a for a in aims.values() if "CDC on latency" in a["aim"])
    assert peer_latency["measured"] == 0.2
    assert peer_latency["met"] is True


def test_a_failed_phase_leaves_its_keys_null_and_its_aims_unjudged() -> None:
    measurements = _measurements()
    del measurements["latency"], measurements["peer"], measurements["soak"]
    measurements["errors"] = {"latency": "RuntimeError: broken"}

    doc = summary.build(measurements)

    assert summary.missing_keys(doc) == []
    assert doc["latency_ms"] == {}
    assert doc["peer_sink_cmds_per_s"] is None
    assert doc["rss_growth_pct"] is None
    assert doc["errors"] == {"latency": "RuntimeError: broken"}
    unjudged = {a["aim"] for a in doc["aims"] if a["met"] is None}
    assert "RSS growth < 10% over the soak" in unjudged
    assert "p99 produce -> event < 15 ms at 1,000 commands/s" in unjudged


def test_growth_is_measured_from_the_end_of_the_warm_up() -> None:
    samples = [(0.0, 50), (5.0, 100), (6.0, 104), (30.0, 110)]

    assert rss_growth_pct(samples, warmup_s=5.0) == 10.0
    assert rss_growth_pct(samples[:1], warmup_s=5.0) is None


def test_the_readme_keeps_its_hand_written_text_around_the_results(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\nbefore\n\n{report.BEGIN}\nold\n{report.END}\n\nafter\n")

    report.write_readme(readme, report.markdown(summary.build(_measurements())))

    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n")
    assert text.endswith("\n\nafter\n")
    assert "old" not in text
    assert "| 1,000/s | produce → event | 4.0 |" in text


def test_cpu_per_command_splits_the_machine_and_bounds_the_rate_by_the_servers_alone() -> None:
    figures = {
        "commands": 20_000,
        "commands_in_cpu_window": 10_000,
        "cpu": {
            "process_under_test_cpu_s": 2.0,
            "machine_cpu_s": 5.0,
            "servers_cpu_s": {"postgresql": 1.5, "kafka": 0.9, "redis": 0.1},
        },
    }
    budget = summary.cpu_per_command(figures, cores=2)
    assert budget == {
        "processes_under_test": 0.2,
        "postgresql": 0.15,
        "kafka": 0.09,
        "redis": 0.01,
        "everything_else": 0.05,
        "machine": 0.5,
        # 2 cores, 0.25 ms of server CPU per command.
        "servers_only_bound_cmds_per_s": 8000,
    }
    assert summary.cpu_per_command({"commands_in_cpu_window": 10, "cpu": {}}, cores=2) is None
    text = report.markdown(
        {**summary.build({}), "quick": True, "cpu_ms_per_command": {"x": budget}}
    )
    assert "| x | 0.200 | 0.150 | 0.090 | 0.010 | 0.050 | 0.500 | 8,000 |" in text


def test_postgresql_cpu_by_part_reaches_the_document_and_its_table() -> None:
    by_part = {
        "batch_size": 500,
        "batches_per_variant": 30,
        "us_per_command": {"load": 40.0, "store": 130.0, "commit": 2.5, "total": 172.5},
        "store_parts_us_per_command": {
            "upsert_rules": 30.0,
            "bump_versions": 10.0,
            "history": 30.0,
            "events": 25.0,
            "processed": 25.0,
        },
    }
    doc = summary.build({**_measurements(), "postgresql_by_part": by_part})
    assert doc["postgresql_cpu_us_per_command"] == by_part
    text = report.markdown(doc)
    assert "| 40.0 | 130.0 | 2.5 | 172.5 | 30.0 | 10.0 | 30.0 | 25.0 | 25.0 |" in text
    assert "by part" not in report.markdown(summary.build(_measurements()))
