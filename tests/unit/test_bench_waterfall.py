"""The benchmark's latency waterfall, issue 20's ratio aims and the scaling page: pure
computations over recorded figures (nothing here is timed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from benchmarks import report, scaling_doc, summary, waterfall
from benchmarks.common import percentiles
from service.adapters.prometheus_metrics import PrometheusMetrics
from service.client.follower_metrics import SdkMetrics

LATEST = Path(__file__).resolve().parents[2] / "docs" / "bench" / "latest.json"


def _latency(p50: float, p99: float, top: float | None = None) -> dict[str, Any]:
    figures: dict[str, Any] = percentiles([p50] * 98 + [p99] + [top or p99])
    figures["missing"] = 0
    return figures


# --- reading the histograms --------------------------------------------------------------


def _worker_exposition(steps: list[tuple[str, float]]) -> str:
    metrics = PrometheusMetrics()
    metrics.waterfall(steps)  # type: ignore[arg-type]
    return generate_latest(metrics.registry).decode()


def test_the_worker_and_sdk_expositions_are_read_by_step() -> None:
    before = waterfall.parse_buckets(_worker_exposition([]), waterfall.WORKER_METRIC)
    text = _worker_exposition([("fetch", 0.003), ("postgresql", 0.012), ("redis", 0.0004)])
    after = waterfall.parse_buckets(text, waterfall.WORKER_METRIC)

    assert after["fetch"][0.005] == 1
    assert after["fetch"][0.002] == 0
    assert after["postgresql"][math.inf] == 1
    figures = waterfall.step_figures(waterfall.delta(before, after), ("fetch", "decode"))
    assert figures["fetch"]["count"] == 1
    # One observation in (2, 5] ms: the p50 is halfway through that bucket.
    assert figures["fetch"]["p50_ms"] == 3.5
    assert figures["decode"] == {"count": 0, "p50_ms": None, "p99_ms": None}

    sdk = SdkMetrics(CollectorRegistry())
    sdk.events([0.004], [0.0002])
    read = waterfall.parse_buckets(generate_latest(sdk.registry).decode(), waterfall.SDK_METRIC)
    assert set(read) == {"fetch", "apply"}
    assert waterfall.parse_buckets(text, waterfall.SDK_METRIC) == {}


def test_a_phase_counts_only_what_was_observed_during_it() -> None:
    first = {"fetch": {0.001: 5.0, 0.002: 9.0, math.inf: 10.0}}
    later = {
        "fetch": {0.001: 5.0, 0.002: 19.0, math.inf: 20.0},
        "redis": {0.001: 2.0, math.inf: 2.0},
    }
    phase = waterfall.delta(first, later)
    assert phase == {
        "fetch": {0.001: 0.0, 0.002: 10.0, math.inf: 10.0},
        "redis": {0.001: 2.0, math.inf: 2.0},
    }
    both = waterfall.phase_waterfall((first, later), None)
    assert both["worker"]["fetch"]["count"] == 10
    assert both["worker"]["redis"]["count"] == 2
    assert "sdk" not in both


def test_a_quantile_in_the_open_bucket_is_the_largest_finite_bound() -> None:
    assert waterfall.quantile({0.01: 0.0, 0.1: 0.0, math.inf: 4.0}, 0.99) == 0.1
    assert waterfall.quantile({0.01: 0.0, math.inf: 0.0}, 0.5) is None
    assert waterfall.quantile({}, 0.5) is None


_BOUNDS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 1.0, math.inf)


@given(
    counts=st.lists(st.integers(0, 50), min_size=len(_BOUNDS), max_size=len(_BOUNDS)),
    q1=st.floats(0.01, 1.0),
    q2=st.floats(0.01, 1.0),
)
def test_quantiles_grow_with_q_and_stay_within_the_buckets(
    counts: list[int], q1: float, q2: float
) -> None:
    cumulative, total = {}, 0
    for bound, count in zip(_BOUNDS, counts, strict=True):
        total += count
        cumulative[bound] = float(total)
    low, high = sorted((q1, q2))
    a, b = waterfall.quantile(cumulative, low), waterfall.quantile(cumulative, high)
    if total == 0:
        assert a is None
        assert b is None
        return
    assert a is not None
    assert b is not None
    assert 0.0 <= a <= b <= 1.0
    largest_finite = _BOUNDS[-2]
    if cumulative[largest_finite] < high * total:
        # The rank falls in the open bucket: the figure is its lower bound.
        assert b == largest_finite
        return
    # The rank's bucket holds the figure: at least as many observations at or below it.
    above = next(x for x in _BOUNDS if x >= b)
    assert cumulative[above] >= high * total - 1e-9


def test_the_stacked_bars_follow_a_senders_path_in_order() -> None:
    steps = {s: {"count": 1, "p50_ms": 1.0, "p99_ms": 2.0} for s in waterfall.WORKER_PATH_STEPS}
    rates = {
        "200": {"worker": steps, "sdk": {"fetch": {"p50_ms": 3.0}, "apply": {"p50_ms": 0.1}}},
        "500": {"worker": {**steps, "redis": {"p50_ms": None}}},
    }
    bars = waterfall.stacked(["200", "500"], rates)
    assert list(bars) == [
        *(f"worker {s}" for s in waterfall.WORKER_PATH_STEPS),
        "sdk fetch",
        "sdk apply",
    ]
    assert bars["sdk fetch"] == [3.0, 0.0]
    assert bars["worker redis"] == [1.0, 0.0]


def test_the_waterfall_table_sums_the_path_and_shows_the_measured_total() -> None:
    steps = {s: {"count": 4, "p50_ms": 1.0, "p99_ms": 2.0} for s in waterfall.WORKER_PATH_STEPS}
    steps["event_ack"] = {"count": 4, "p50_ms": 5.0, "p99_ms": 6.0}
    wf = {"worker": steps, "sdk": {"fetch": {"count": 9, "p50_ms": 3.0, "p99_ms": 7.0}}}
    lines = report.waterfall_table(wf, {"p50": 12.5, "p99": 30.0, "count": 9})
    text = "\n".join(lines)
    assert "| worker fetch | 1.00 | 2.00 | 4 |" in text
    assert "| sdk apply | - | - | - |" in text
    assert "sum of the p50s above" not in text  # one step not measured: no sum
    assert "| sender-visible, measured end to end | 12.50 | 30.00 | 9 |" in text
    assert "| worker event_ack (off the sender's path) | 5.00 | 6.00 | 4 |" in text
    wf["sdk"]["apply"] = {"count": 9, "p50_ms": 0.5, "p99_ms": 1.0}
    assert "| sum of the p50s above | 9.50 | | |" in report.waterfall_table(wf, None)


# --- issue 20's aims --------------------------------------------------------------------


def _measurements(*, sender_p50: float, sender_p99: float) -> dict[str, Any]:
    rates = {
        str(rate): {
            "service": {
                "produce_to_event": _latency(4.0, 12.0),
                "produce_to_outcome": _latency(5.0, 13.0),
                "produce_to_sender_no": _latency(sender_p50, sender_p99),
                "waterfall": {"worker": {"fetch": {"count": 3, "p50_ms": 1.0, "p99_ms": 2.0}}},
            },
            "passthrough": {"produce_to_output": _latency(2.0, 6.0)},
        }
        for rate in (200, 500, 1000)
    }
    return {
        "latency": rates,
        "idle_probes": {
            "probes": 100,
            "service": {"produce_to_sender_no": _latency(9.0, 14.0, top=40.0)},
            "passthrough": {"produce_to_output": _latency(3.0, 10.0, top=30.0)},
        },
    }


def _issue_20(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["aim"]: a for a in doc["aims"] if a.get("issue") == 20}


def test_the_ratio_aims_are_met_at_three_and_five_times_the_passthrough() -> None:
    # Exactly 3x the passthrough's p50 and p99, and 3x its p99 at 1,000/s: all met (at most).
    doc = summary.build(_measurements(sender_p50=6.0, sender_p99=18.0))
    aims = _issue_20(doc)
    assert len(aims) == 7
    ratio = [a for name, a in aims.items() if "passthrough's" in name]
    assert [a["measured"] for a in ratio] == [3.0, 3.0, 3.0, 3.0, 3.0]
    assert all(a["met"] is True for a in ratio)
    idle_p99 = aims["idle, one at a time: sender-visible p99 <= 15 ms"]
    assert (idle_p99["measured"], idle_p99["met"]) == (14.0, True)
    largest = next(a for name, a in aims.items() if "largest" in name)
    # Twice the Kafka-only maximum (60 ms) is larger than 50 ms: it is the bound.
    assert (largest["measured"], largest["target"], largest["met"]) == (40.0, 60.0, True)
    assert largest["kafka_only_max_ms"] == 30.0
    assert doc["waterfall_ms"]["200"]["worker"]["fetch"]["p50_ms"] == 1.0
    assert doc["idle_probes_ms"]["service"]["max"] == 40.0


def test_above_the_ratios_the_aims_are_missed_and_unmeasured_ones_unjudged() -> None:
    measurements = _measurements(sender_p50=6.2, sender_p99=31.0)
    del measurements["latency"]["500"], measurements["idle_probes"]
    aims = _issue_20(summary.build(measurements))
    at_200 = [a for name, a in aims.items() if "at 200/s" in name]
    assert [a["met"] for a in at_200] == [False, False]
    at_500 = [a for name, a in aims.items() if "at 500/s" in name]
    assert [(a["measured"], a["met"]) for a in at_500] == [(None, None), (None, None)]
    at_1000 = next(a for name, a in aims.items() if "at 1,000/s" in name)
    assert (at_1000["measured"], at_1000["met"]) == (5.167, False)
    idle = [a for name, a in aims.items() if "idle" in name]
    assert [a["met"] for a in idle] == [None, None]
    largest = next(a for name, a in aims.items() if "largest" in name)
    assert largest["target"] == 50.0


def test_the_readme_block_has_a_waterfall_table_per_rate_and_the_idle_probes() -> None:
    text = report.markdown(summary.build(_measurements(sender_p50=6.0, sender_p99=18.0)))
    for rate in ("200", "500", "1,000"):
        assert f"At {rate} commands/s:" in text
    assert "| produce → sender's SDK says no | 9.0 |" in text
    assert "| 20 | idle, one at a time: sender-visible p99 <= 15 ms | 14.000 |" in text
    assert "waterfall.png" in text


def test_the_waterfall_plot_is_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    doc = summary.build(_measurements(sender_p50=6.0, sender_p99=18.0))
    report.plot_waterfall(tmp_path / "waterfall.png", doc)
    assert (tmp_path / "waterfall.png").read_bytes().startswith(b"\x89PNG")


# --- the scaling page ------------------------------------------------------------------

_COST = scaling_doc.PerCommand("service", worker=0.25, postgresql=0.24, kafka=0.02, redis=0.01)


@given(
    rate=st.integers(1, 2_000_000),
    utilisation=st.floats(0.1, 1.0),
    worker=st.floats(0.01, 5.0),
)
def test_a_plan_has_the_cores_for_its_rate_and_room_to_double(
    rate: int, utilisation: float, worker: float
) -> None:
    cost = scaling_doc.PerCommand("x", worker=worker, postgresql=0.2, kafka=0.0, redis=0.0)
    plan = scaling_doc.plan(rate, cost, utilisation=utilisation, min_partitions=6)
    capacity = plan.worker_processes * scaling_doc.per_core(worker) * utilisation
    assert capacity >= rate * (1 - 1e-9)
    assert plan.worker_processes == 1 or (plan.worker_processes - 1) * scaling_doc.per_core(
        worker
    ) * utilisation < rate * (1 + 1e-9)
    assert plan.partitions >= max(6, 2 * plan.worker_processes)
    assert plan.partitions == 6 or plan.partitions & (plan.partitions - 1) == 0
    assert plan.postgresql_cores == pytest.approx(rate * 0.2 / 1000 / utilisation, abs=0.01)


def test_a_plan_refuses_a_rate_or_utilisation_it_cannot_mean() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        scaling_doc.plan(0, _COST)
    with pytest.raises(ValueError, match="utilisation"):
        scaling_doc.plan(1000, _COST, utilisation=1.5)


def test_the_plan_at_the_measured_costs() -> None:
    plan = scaling_doc.plan(20_000, _COST, min_partitions=6)
    # 20,000 x 0.25 ms = 5 cores busy, at 50 %: 10 processes, 20 partitions -> 32.
    assert (plan.worker_processes, plan.partitions) == (10, 32)
    assert plan.postgresql_cores == 9.6
    assert plan.one_primary is True
    assert scaling_doc.primary_saturates_at(16, _COST) == round(16 * 1000 / 0.24)
    assert scaling_doc.plan(300_000, _COST).one_primary is False


def test_the_costliest_service_configuration_is_the_one_planned_from() -> None:
    doc = {
        "cpu_ms_per_command": {
            "service, 1 worker process": {"processes_under_test": 0.25, "postgresql": 0.24},
            "service, 2 worker processes": {
                "processes_under_test": 0.3,
                "postgresql": 0.22,
                "kafka": 0.01,
            },
            "passthrough": {"processes_under_test": 0.9, "postgresql": 0.0},
        }
    }
    cost = scaling_doc.per_command(doc)
    assert cost == scaling_doc.PerCommand(
        "service, 2 worker processes", worker=0.3, postgresql=0.22, kafka=0.01, redis=0.0
    )
    assert scaling_doc.per_command({}) is None
    assert "nothing to plan from" in scaling_doc.markdown({})


def test_the_committed_scaling_page_is_the_one_the_committed_run_writes() -> None:
    doc = json.loads(LATEST.read_text(encoding="utf-8"))
    committed = (LATEST.parents[1] / "scaling.md").read_text(encoding="utf-8")
    assert committed == scaling_doc.markdown(doc)
    cost = scaling_doc.per_command(doc)
    assert cost is not None
    # Each per-core figure in the page is 1,000 over the run's CPU ms per command.
    assert f"| {1000 / cost.postgresql:,.0f} |" in committed
    assert f"| {1000 / cost.worker:,.0f} |" in committed
