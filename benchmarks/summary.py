"""The report of one ``make bench`` run: headline figures, the issue's aims, the details.

Pure: it turns the measurements (a dict, as ``run`` collects them, any phase possibly
missing or failed) into the document written to ``docs/bench/latest.json``. Every headline
key is always there; a figure that could not be measured is ``null`` and its aim's ``met``
is ``null`` too, never ``true``. Ratios are taken within the run, as the issue asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

AIM_THROUGHPUT = 10_000.0
AIM_THROUGHPUT_RATIO = 0.5
AIM_EVENT_P99_MS = 15.0
AIM_SENDER_P99_MS = 20.0
AIM_RATE = 1000
AIM_SCALING_RATIO = 0.8
AIM_RSS_GROWTH_PCT = 10.0
# Issue 20, item 3: sender-visible latency as a ratio to the passthrough's, same run.
AIM_RATIO_RATES = (200, 500)
AIM_RATIO_LOW = 3.0
AIM_RATIO_P99_RATE = 1000
AIM_RATIO_P99_HIGH = 5.0
AIM_IDLE_P99_MS = 15.0
# Issue 20, item 2: the largest of the idle probes under 50 ms, or under twice the largest
# Kafka-only probe's when that is larger.
AIM_IDLE_MAX_MS = 50.0
AIM_IDLE_MAX_FLOOR_FACTOR = 2.0
SCALING_SMALL = 10_000
SCALING_LARGE = 10_000_000

REQUIRED_KEYS = (
    "throughput_cmds_per_s",
    "passthrough_msgs_per_s",
    "latency_ms",
    "passthrough_latency_ms",
    "sender_effect_ms",
    "subjects_scaling",
    "rss_growth_pct",
    "peer_sink_cmds_per_s",
    "peer_cdc_latency_ms",
    "machine",
    "aims",
)


def _get(doc: Mapping[str, Any] | None, *path: str) -> Any:
    value: Any = doc
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _quantiles(figures: Any) -> dict[str, Any] | None:
    """{p50, p95, p99, max, count, missing} from a ``percentiles`` result, or None."""
    if not isinstance(figures, Mapping) or "p50_ms" not in figures:
        return None
    return {
        "p50": figures.get("p50_ms"),
        "p95": figures.get("p95_ms"),
        "p99": figures.get("p99_ms"),
        "max": figures.get("max_ms"),
        "count": figures.get("count"),
        "missing": figures.get("missing"),
    }


def _by_rate(latency: Mapping[str, Any], who: str, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rate, sides in sorted(latency.items(), key=lambda kv: float(kv[0])):
        out[rate] = _quantiles(_get(sides, who, path))
    return out


def _aim(
    aim: str,
    measured: float | None,
    target: float,
    *,
    below: bool = False,
    at_most: bool = False,
    strict: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """``met``: measured < target when ``below``, <= when ``at_most``, else >= target (>
    when ``strict``)."""
    if measured is None:
        met = None
    elif at_most:
        met = measured <= target
    elif below:
        met = measured < target
    else:
        met = measured > target if strict else measured >= target
    return {"aim": aim, "measured": measured, "target": target, "met": met, **extra}


def _scaling_pair(scaling: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The tiers to compare: 10k and 10M when measured, else the smallest and largest."""
    sizes = sorted(int(k) for k, v in scaling.items() if v is not None)
    if not sizes:
        return None, None
    small = SCALING_SMALL if SCALING_SMALL in sizes else sizes[0]
    large = SCALING_LARGE if SCALING_LARGE in sizes else sizes[-1]
    return small, large


def aims(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's aims, each with the value measured in this run and whether it is met."""
    throughput = _num(doc.get("throughput_cmds_per_s"))
    passthrough = _num(doc.get("passthrough_msgs_per_s"))
    at_rate = str(AIM_RATE)
    event_p99 = _num(_get(doc, "latency_ms", at_rate, "p99"))
    sender_p99 = _num(_get(doc, "sender_effect_ms", at_rate, "p99"))
    scaling = doc.get("subjects_scaling") or {}
    small, large = _scaling_pair(scaling)
    small_rate = _num(scaling.get(str(small))) if small else None
    large_rate = _num(scaling.get(str(large))) if large else None
    peer_sink = _num(doc.get("peer_sink_cmds_per_s"))
    peer_p99 = _num(_get(doc, "peer_cdc_latency_ms", "p99"))
    return [
        _aim("throughput >= 10,000 commands/s", throughput, AIM_THROUGHPUT),
        _aim(
            "throughput >= 0.5 x the passthrough's, same run",
            _ratio(throughput, passthrough),
            AIM_THROUGHPUT_RATIO,
        ),
        _aim(
            "p99 produce -> event < 15 ms at 1,000 commands/s",
            event_p99,
            AIM_EVENT_P99_MS,
            below=True,
        ),
        _aim(
            "sender-visible p99 (produce -> the SDK's local cache says no) < 20 ms at 1,000/s",
            sender_p99,
            AIM_SENDER_P99_MS,
            below=True,
        ),
        _aim(
            f"throughput with {large or SCALING_LARGE:,} subjects stored >= 0.8 x with "
            f"{small or SCALING_SMALL:,}",
            _ratio(large_rate, small_rate),
            AIM_SCALING_RATIO,
            compared=[small, large],
        ),
        _aim(
            "RSS growth < 10% over the soak",
            _num(doc.get("rss_growth_pct")),
            AIM_RSS_GROWTH_PCT,
            below=True,
        ),
        _aim(
            "ahead of the Debezium JDBC sink on throughput (ratio > 1)",
            _ratio(throughput, peer_sink),
            1.0,
            strict=True,
        ),
        _aim(
            "ahead of Debezium CDC on latency (our p99 produce -> event over its p99 "
            "commit -> event, < 1)",
            _ratio(event_p99, peer_p99),
            1.0,
            below=True,
        ),
    ]


def ratio_aims(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 20, items 2 and 3: the sender-visible latency at 200, 500 and 1,000/s as ratios
    to the passthrough's in the same run, and the idle one-at-a-time probes."""
    found: list[dict[str, Any]] = []

    def ratio_of(rate: int, q: str) -> float | None:
        sender = _num(_get(doc, "sender_effect_ms", str(rate), q))
        passthrough = _num(_get(doc, "passthrough_latency_ms", str(rate), q))
        return _ratio(sender, passthrough)

    for rate in AIM_RATIO_RATES:
        for q in ("p50", "p99"):
            found.append(
                _aim(
                    f"sender-visible {q} at {rate:,}/s <= {AIM_RATIO_LOW:g} x the passthrough's "
                    f"{q}, same run",
                    ratio_of(rate, q),
                    AIM_RATIO_LOW,
                    at_most=True,
                    issue=20,
                )
            )
    found.append(
        _aim(
            f"sender-visible p99 at {AIM_RATIO_P99_RATE:,}/s <= {AIM_RATIO_P99_HIGH:g} x the "
            "passthrough's p99, same run",
            ratio_of(AIM_RATIO_P99_RATE, "p99"),
            AIM_RATIO_P99_HIGH,
            at_most=True,
            issue=20,
        )
    )
    idle = doc.get("idle_probes_ms") or {}
    found.append(
        _aim(
            "idle, one at a time: sender-visible p99 <= 15 ms",
            _num(_get(idle, "service", "p99")),
            AIM_IDLE_P99_MS,
            at_most=True,
            issue=20,
        )
    )
    floor_max = _num(_get(idle, "passthrough", "max"))
    target = max(AIM_IDLE_MAX_MS, AIM_IDLE_MAX_FLOOR_FACTOR * (floor_max or 0.0))
    found.append(
        _aim(
            "idle, one at a time: the largest sender-visible time < 50 ms, or < 2 x the "
            "largest Kafka-only two-hop probe's if that is larger",
            _num(_get(idle, "service", "max")),
            round(target, 2),
            below=True,
            issue=20,
            kafka_only_max_ms=floor_max,
        )
    )
    return found


def waterfalls(latency: Mapping[str, Any]) -> dict[str, Any]:
    """The latency waterfall measured at each rate (``benchmarks/waterfall.py``)."""
    return {
        rate: _get(sides, "service", "waterfall")
        for rate, sides in sorted(latency.items(), key=lambda kv: float(kv[0]))
        if _get(sides, "service", "waterfall") is not None
    }


def idle_probes(idle: Mapping[str, Any]) -> dict[str, Any]:
    """The idle one-at-a-time probes: the service's, the Kafka-only floor's, the waterfall."""
    return {
        "probes": idle.get("probes"),
        "service": _quantiles(_get(idle, "service", "produce_to_sender_no")),
        "passthrough": _quantiles(_get(idle, "passthrough", "produce_to_output")),
        "waterfall": _get(idle, "service", "waterfall"),
    }


def cpu_per_command(figures: Any, cores: float | None) -> dict[str, Any] | None:
    """Where a drain's CPU went, in ms of CPU per command: the processes under test, each
    server, and everything else. ``servers_only_bound_cmds_per_s`` is the rate the machine's
    cores would allow if the processes under test cost nothing: the servers' cost alone."""
    cpu = _get(figures, "cpu") or {}
    commands = _num(_get(figures, "commands_in_cpu_window"))
    servers = cpu.get("servers_cpu_s")
    if not commands or not isinstance(servers, Mapping):
        return None
    per = {name: round(seconds * 1000 / commands, 4) for name, seconds in servers.items()}
    under_test = (_num(cpu.get("process_under_test_cpu_s")) or 0.0) * 1000 / commands
    machine = (_num(cpu.get("machine_cpu_s")) or 0.0) * 1000 / commands
    server_total = sum(per.values())
    return {
        "processes_under_test": round(under_test, 4),
        **per,
        "everything_else": round(machine - under_test - server_total, 4),
        "machine": round(machine, 4),
        "servers_only_bound_cmds_per_s": (
            round(cores * 1000 / server_total) if cores and server_total > 0 else None
        ),
    }


def build(measurements: Mapping[str, Any]) -> dict[str, Any]:
    """The document for ``docs/bench/latest.json``."""
    throughput = measurements.get("throughput") or {}
    workers = throughput.get("workers") or {}
    by_workers = {n: _num(_get(fig, "cmds_per_s")) for n, fig in sorted(workers.items())}
    measured = [v for v in by_workers.values() if v is not None]
    latency = measurements.get("latency") or {}
    scaling_tiers = _get(measurements, "scaling", "tiers") or {}
    subjects_scaling = {
        k: _num(_get(v, "cmds_per_s"))
        for k, v in sorted(scaling_tiers.items(), key=lambda kv: int(kv[0]))
    }
    soak = measurements.get("soak") or {}
    peer = measurements.get("peer") or {}
    largest = max((int(k) for k in subjects_scaling), default=None)
    doc: dict[str, Any] = {
        "quick": bool(measurements.get("quick")),
        "measured_at": measurements.get("measured_at"),
        "duration_s": measurements.get("duration_s"),
        # The better of one and two worker processes; both are below.
        "throughput_cmds_per_s": max(measured) if measured else None,
        "throughput_by_worker_processes": by_workers,
        "passthrough_msgs_per_s": _num(_get(throughput, "passthrough", "cmds_per_s")),
        "latency_ms": _by_rate(latency, "service", "produce_to_event"),
        "outcome_latency_ms": _by_rate(latency, "service", "produce_to_outcome"),
        "sender_effect_ms": _by_rate(latency, "service", "produce_to_sender_no"),
        "passthrough_latency_ms": _by_rate(latency, "passthrough", "produce_to_output"),
        "subjects_scaling": subjects_scaling,
        # The largest tier also holds that many processed commands and stored events.
        "processed_commands_scaling": dict(subjects_scaling),
        "throughput_with_10m_processed_cmds_per_s": subjects_scaling.get(str(SCALING_LARGE)),
        "rss_growth_pct": _num(soak.get("rss_growth_pct")),
        "rss_peak_mib": _num(soak.get("peak_rss_mib")),
        "peer_sink_cmds_per_s": _num(peer.get("peer_sink_cmds_per_s")),
        "peer_cdc_latency_ms": peer.get("peer_cdc_latency_ms"),
        "machine": measurements.get("machine"),
        "settings": measurements.get("settings"),
        "plan": measurements.get("plan"),
    }
    for key, value in peer.items():
        if key.startswith("peer_") and key not in doc:
            doc[key] = value
    cores = _num(_get(measurements, "machine", "cores"))
    doc["cpu_ms_per_command"] = {
        name: budget
        for name, figures in [
            *(
                (f"service, {n} worker process{'es' if n != '1' else ''}", fig)
                for n, fig in sorted(workers.items())
            ),
            ("passthrough", throughput.get("passthrough")),
        ]
        if (budget := cpu_per_command(figures, cores)) is not None
    }
    doc["postgresql_cpu_us_per_command"] = measurements.get("postgresql_by_part")
    doc["waterfall_ms"] = waterfalls(latency)
    doc["idle_probes_ms"] = idle_probes(measurements.get("idle_probes") or {})
    doc["aims"] = [*({**a, "issue": 11} for a in aims(doc)), *ratio_aims(doc)]
    notes = list(measurements.get("notes") or [])
    if largest is not None and largest < SCALING_LARGE:
        notes.append(
            f"cost growth measured up to {largest:,} subjects, not {SCALING_LARGE:,} "
            "(quick run or BENCH_TIERS)"
        )
    doc["notes"] = notes
    doc["errors"] = dict(measurements.get("errors") or {})
    doc["details"] = {
        k: measurements.get(k)
        for k in ("throughput", "latency", "idle_probes", "scaling", "soak", "peer", "read_path")
        if measurements.get(k) is not None
    }
    return doc


def missing_keys(doc: Mapping[str, Any]) -> list[str]:
    return [k for k in REQUIRED_KEYS if k not in doc]
