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
    strict: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """``met``: measured < target when ``below``, else >= target (> when ``strict``)."""
    if measured is None:
        met = None
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
    doc["aims"] = aims(doc)
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
        for k in ("throughput", "latency", "scaling", "soak", "peer", "read_path")
        if measurements.get(k) is not None
    }
    return doc


def missing_keys(doc: Mapping[str, Any]) -> list[str]:
    return [k for k in REQUIRED_KEYS if k not in doc]
