"""The run's figures as Markdown tables (into ``docs/bench/README.md``) and PNG plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.waterfall import SDK_STEPS, WORKER_OFF_PATH_STEPS, path_steps, stacked

BEGIN = "<!-- bench:results:begin (written by make bench) -->"
END = "<!-- bench:results:end -->"


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _met(value: Any) -> str:
    return {True: "**met**", False: "not met", None: "not measured"}[value]


def _path_rows(label: str, by_rate: Mapping[str, Any]) -> list[str]:
    rows = []
    for rate, q in by_rate.items():
        if not q:
            rows.append(f"| {_n(float(rate))}/s | {label} | - | - | - | - | - |")
            continue
        rows.append(
            f"| {_n(float(rate))}/s | {label} | {_n(q['p50'], 1)} | {_n(q['p95'], 1)} | "
            f"{_n(q['p99'], 1)} | {_n(q['max'], 1)} | {_n(q.get('missing'))} |"
        )
    return rows


def markdown(doc: Mapping[str, Any]) -> str:
    """The tables of one run, for the results block of ``docs/bench/README.md``."""
    m = doc.get("machine") or {}
    quick = " (quick run: `BENCH_QUICK=1`, smaller sizes, indicative only)" if doc["quick"] else ""
    lines = [
        f"Measured {doc.get('measured_at')} in {_n(doc.get('duration_s'))} s{quick}, on "
        f"{m.get('cores')} cores ({m.get('cpu_model')}), {m.get('memory_gib')} GiB; Python "
        f"{m.get('python')}, Kafka {m.get('kafka')}, PostgreSQL {m.get('postgresql')}, Redis "
        f"{m.get('redis')}; commit {m.get('service_commit')}; load average "
        f"{m.get('load_average_at_start')} at the start, {m.get('load_average_at_end')} at "
        "the end.",
        "",
        "**Aims** (issues 11 and 20), ratios within this run:",
        "",
        "| issue | aim | measured | target | |",
        "| ---: | --- | ---: | ---: | --- |",
    ]
    for aim in doc["aims"]:
        lines.append(
            f"| {aim.get('issue', '')} | {aim['aim']} | "
            f"{_n(aim['measured'], 3 if (aim['measured'] or 0) < 100 else 0)} "
            f"| {_n(aim['target'], 3 if aim['target'] < 100 else 0)} | {_met(aim['met'])} |"
        )
    details = doc.get("details") or {}
    throughput = details.get("throughput") or {}
    lines += [
        "",
        "**Backlog throughput** (first to last output; CPU in cores: the processes under "
        "test, and the whole machine's share busy):",
        "",
        "| configuration | commands/s | ratio to the passthrough | process CPU | machine busy |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    passthrough = doc.get("passthrough_msgs_per_s")
    for n, rate in (doc.get("throughput_by_worker_processes") or {}).items():
        ratio = rate / passthrough if rate and passthrough else None
        cpu = _cpu((throughput.get("workers") or {}).get(n))
        lines.append(
            f"| service, {n} worker process{'es' if n != '1' else ''} | {_n(rate)} | "
            f"{_n(ratio, 3)} | {cpu} |"
        )
    lines.append(
        f"| passthrough (Kafka only) | {_n(passthrough)} | 1 | "
        f"{_cpu(throughput.get('passthrough'))} |"
    )
    if doc.get("peer_sink_cmds_per_s") is not None:
        ratio = (
            doc["peer_sink_cmds_per_s"] / passthrough
            if passthrough and doc["peer_sink_cmds_per_s"]
            else None
        )
        lines.append(
            f"| peer: Debezium JDBC sink | {_n(doc['peer_sink_cmds_per_s'])} | {_n(ratio, 3)} | | |"
        )
    budgets = doc.get("cpu_ms_per_command") or {}
    if budgets:
        lines += [
            "",
            "**CPU per command drained**, ms (from /proc: the processes under test, each "
            "server, and the rest of the machine; the last column is the rate the cores would "
            "allow if the processes under test cost nothing):",
            "",
            "| configuration | under test | PostgreSQL | Kafka broker | Redis | rest | machine "
            "| servers-only bound, commands/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, b in budgets.items():
            lines.append(
                f"| {name} | {_n(b.get('processes_under_test'), 3)} | "
                f"{_n(b.get('postgresql'), 3)} | {_n(b.get('kafka'), 3)} | "
                f"{_n(b.get('redis'), 3)} | {_n(b.get('everything_else'), 3)} | "
                f"{_n(b.get('machine'), 3)} | {_n(b.get('servers_only_bound_cmds_per_s'))} |"
            )
    by_part = doc.get("postgresql_cpu_us_per_command") or {}
    if by_part:
        steps = by_part.get("us_per_command") or {}
        parts = by_part.get("store_parts_us_per_command") or {}
        lines += [
            "",
            f"**PostgreSQL's CPU per command by part**, µs (`benchmarks/store_parts.py`: read "
            f"on the backend, medians of {by_part.get('batches_per_variant')} batches of "
            f"{by_part.get('batch_size')}; a part is the store statement less the statement "
            "without it):",
            "",
            "| load | store | commit | all | rules | versions | consent history | events "
            "| processed log |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            "| "
            + " | ".join(
                _n(v, 1)
                for v in (
                    steps.get("load"),
                    steps.get("store"),
                    steps.get("commit"),
                    steps.get("total"),
                    parts.get("upsert_rules"),
                    parts.get("bump_versions"),
                    parts.get("history"),
                    parts.get("events"),
                    parts.get("processed"),
                )
            )
            + " |",
        ]
    lines += [
        "",
        "**Latency** at a steady rate, ms (missing: commands with no answer within 10 s of "
        "the last one):",
        "",
        "| rate | path | p50 | p95 | p99 | max | missing |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rates = sorted(
        set(doc.get("latency_ms") or {}) | set(doc.get("passthrough_latency_ms") or {}),
        key=float,
    )
    for rate in rates:
        for label, key in (
            ("produce → event", "latency_ms"),
            ("produce → outcome", "outcome_latency_ms"),
            ("produce → sender's SDK says no", "sender_effect_ms"),
            ("passthrough: produce → copy", "passthrough_latency_ms"),
        ):
            value = (doc.get(key) or {}).get(rate)
            lines += _path_rows(label, {rate: value})
    peer_latency = doc.get("peer_cdc_latency_ms")
    if isinstance(peer_latency, Mapping):
        lines.append(
            f"| peer | Debezium CDC: commit → event | {_n(peer_latency.get('p50'), 1)} | "
            f"{_n(peer_latency.get('p95'), 1)} | {_n(peer_latency.get('p99'), 1)} | "
            f"{_n(peer_latency.get('max'), 1)} | |"
        )
    lines += _idle_rows(doc)
    lines += _waterfall_rows(doc)
    lines += [
        "",
        "**Cost growth**: one worker, backlog over the stored subjects:",
        "",
        "| subjects (and processed commands, events) stored | commands/s | ratio to the "
        "smallest | PostgreSQL ms per command | stored tables GiB | seeding s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    scaling = doc.get("subjects_scaling") or {}
    tiers = _tier_details(doc)
    smallest = next(iter(scaling.values()), None)
    for subjects, rate in scaling.items():
        tier = tiers.get(subjects) or {}
        seeding = tier.get("seeding") or {}
        postgres = (tier.get("per_batch") or {}).get("postgres_ms") or {}
        gib = sum(t.get("mib", 0) for t in (tier.get("tables") or {}).values()) / 1024
        ratio = rate / smallest if rate and smallest else None
        lines.append(
            f"| {_n(int(subjects))} | {_n(rate)} | {_n(ratio, 3)} | "
            f"{_n(postgres.get('per_command'), 3)} | {_n(gib, 1)} | "
            f"{_n(seeding.get('total_s'), 1)} |"
        )
    soak = details.get("soak") or {}
    lines += [
        "",
        f"**Memory**: one worker at {_n(soak.get('rate_per_s'))} commands/s for "
        f"{_n(soak.get('seconds'))} s (warm-up {_n(soak.get('warmup_s'))} s): RSS "
        f"{_n(soak.get('rss_after_warmup_mib'), 1)} MiB after the warm-up, "
        f"{_n(soak.get('rss_at_end_mib'), 1)} MiB at the end, growth "
        f"{_n(doc.get('rss_growth_pct'), 2)} %; peak RSS {_n(doc.get('rss_peak_mib'), 1)} MiB.",
    ]
    peer = (doc.get("details") or {}).get("peer") or {}
    if peer:
        note = peer.get("notes") or peer.get("error") or peer.get("skipped")
        lines += ["", f"**Peer**: {note}"]
    if doc.get("notes"):
        lines += ["", "Notes: " + "; ".join(str(n) for n in doc["notes"]) + "."]
    if doc.get("errors"):
        lines += [
            "",
            "Errors: " + "; ".join(f"{k}: {v}" for k, v in doc["errors"].items()) + ".",
        ]
    lines += [
        "",
        "![latency CDF per rate](latency_cdf.png)",
        "![throughput against stored subjects](subjects_scaling.png)",
        "![worker RSS over the soak](soak_rss.png)",
        "![latency waterfall: p50 of each step on a sender's path, per rate](waterfall.png)",
    ]
    return "\n".join(lines)


def _idle_rows(doc: Mapping[str, Any]) -> list[str]:
    idle = doc.get("idle_probes_ms") or {}
    if not idle.get("service") and not idle.get("passthrough"):
        return []
    lines = [
        "",
        f"**One at a time, idle** ({_n(idle.get('probes'))} probes each, every probe sent "
        "once the one before took effect), ms:",
        "",
        "| path | p50 | p95 | p99 | max | missing |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, key in (
        ("produce → sender's SDK says no", "service"),
        ("passthrough (Kafka only, two hops): produce → copy", "passthrough"),
    ):
        q = idle.get(key) or {}
        lines.append(
            f"| {label} | {_n(q.get('p50'), 1)} | {_n(q.get('p95'), 1)} | "
            f"{_n(q.get('p99'), 1)} | {_n(q.get('max'), 1)} | {_n(q.get('missing'))} |"
        )
    return lines


def waterfall_table(waterfall: Mapping[str, Any], sender: Mapping[str, Any] | None) -> list[str]:
    """One rate's steps, in the order of a sender's path, then those off it."""
    lines = [
        "| step | p50 ms | p99 ms | observed |",
        "| --- | ---: | ---: | ---: |",
    ]
    on_path = path_steps(waterfall)
    for label, q in on_path:
        lines.append(
            f"| {label} | {_n(q.get('p50_ms'), 2)} | {_n(q.get('p99_ms'), 2)} | "
            f"{_n(q.get('count'))} |"
        )
    p50s = [q.get("p50_ms") for _, q in on_path]
    if on_path and all(v is not None for v in p50s):
        lines.append(f"| sum of the p50s above | {_n(sum(p50s), 2)} | | |")
    if sender:
        lines.append(
            f"| sender-visible, measured end to end | {_n(sender.get('p50'), 2)} | "
            f"{_n(sender.get('p99'), 2)} | {_n(sender.get('count'))} |"
        )
    worker = waterfall.get("worker") or {}
    for step in WORKER_OFF_PATH_STEPS:
        q = worker.get(step) or {}
        if q:
            lines.append(
                f"| worker {step} (off the sender's path) | {_n(q.get('p50_ms'), 2)} | "
                f"{_n(q.get('p99_ms'), 2)} | {_n(q.get('count'))} |"
            )
    return lines


def _waterfall_rows(doc: Mapping[str, Any]) -> list[str]:
    by_rate = doc.get("waterfall_ms") or {}
    idle = doc.get("idle_probes_ms") or {}
    if not by_rate and not idle.get("waterfall"):
        return []
    lines = [
        "",
        "**Latency waterfall** (`benchmarks/waterfall.py`): each step's p50 and p99 over the "
        "phase, from the histograms in the worker's `/metrics` (`optout_waterfall_seconds`, "
        "once per batch, for its oldest record) and in the sender's "
        f"(`optout_sdk_follower_seconds`: {', '.join(SDK_STEPS)}, once per event), read "
        "before and after the phase and interpolated within their buckets as "
        "`histogram_quantile` does. A sum of p50s is not the p50 of a sum, and the worker's "
        "steps are per batch, the SDK's per event: the sum shows where the time goes, not the "
        "total.",
    ]
    sender = doc.get("sender_effect_ms") or {}
    for rate, waterfall in by_rate.items():
        lines += ["", f"At {_n(float(rate))} commands/s:", ""]
        lines += waterfall_table(waterfall or {}, sender.get(rate))
    if idle.get("waterfall"):
        lines += ["", "Idle, one at a time:", ""]
        lines += waterfall_table(idle["waterfall"], idle.get("service"))
    return lines


def _cpu(figures: Any) -> str:
    """Cores used by the processes under test, and the machine's busy share, in a phase."""
    cpu = (figures or {}).get("cpu") or {}
    wall = cpu.get("wall_s")
    if not wall:
        return "- | -"
    return (
        f"{_n(cpu.get('process_under_test_cpu_s', 0) / wall, 2)} | "
        f"{_n(cpu.get('machine_utilisation', 0) * 100)} %"
    )


def _tier_details(doc: Mapping[str, Any]) -> dict[str, Any]:
    tiers = ((doc.get("details") or {}).get("scaling") or {}).get("tiers") or {}
    return dict(tiers)


def write_readme(path: Path, results: str) -> None:
    """Replace the results block of the README (or start one); the rest is hand-written."""
    block = f"{BEGIN}\n{results}\n{END}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Latest run\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


# --- plots -----------------------------------------------------------------------------


def _cdf(ax: Any, samples: Sequence[float], label: str, style: str) -> None:
    if not samples:
        return
    ordered = sorted(samples)
    n = len(ordered)
    ax.plot(ordered, [(i + 1) / n for i in range(n)], style, label=f"{label} (n={n:,})")


def plot_latency(path: Path, samples: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
    """One panel per rate: the CDFs of the service's paths beside the passthrough's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted(samples, key=float)
    fig, axes = plt.subplots(1, max(1, len(rates)), figsize=(5.5 * max(1, len(rates)), 4.2))
    panels = list(axes) if len(rates) > 1 else [axes]
    for ax, rate in zip(panels, rates, strict=False):
        by_path = samples[rate]
        _cdf(ax, by_path.get("passthrough", []), "passthrough: produce → copy", "k--")
        _cdf(ax, by_path.get("event", []), "produce → event", "C0-")
        _cdf(ax, by_path.get("outcome", []), "produce → outcome", "C1-")
        _cdf(ax, by_path.get("sender", []), "produce → SDK says no", "C2-")
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("fraction of commands")
        ax.set_title(f"{float(rate):,.0f} commands/s")
        ax.axhline(0.99, color="grey", linewidth=0.5)
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(
    path: Path, scaling: Mapping[str, float | None], passthrough: float | None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(int(k), v) for k, v in scaling.items() if v is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], "C0o-", label="service")
        ax.axhline(0.8 * points[0][1], color="C3", linestyle=":", label="0.8 x the smallest")
    if passthrough:
        ax.axhline(passthrough, color="k", linestyle="--", label="passthrough (no storage)")
    ax.set_xscale("log")
    ax.set_xlabel("subjects stored (each with a rule, a processed command, an event)")
    ax.set_ylabel("commands/s")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Backlog throughput against stored data")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rss(path: Path, samples: Sequence[tuple[float, int]], warmup_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if samples:
        ax.plot([t for t, _ in samples], [r / 2**20 for _, r in samples], "C0-")
        ax.axvline(warmup_s, color="grey", linestyle=":", label="end of warm-up")
        ax.legend(fontsize=8)
    ax.set_xlabel("s")
    ax.set_ylabel("worker RSS, MiB")
    ax.set_ylim(bottom=0)
    ax.grid(True, linewidth=0.3)
    ax.set_title("Worker memory over the soak")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_waterfall(path: Path, doc: Mapping[str, Any]) -> None:
    """Stacked bars, one per rate (and idle): the p50 of each step on a sender's path, with
    the sender-visible p50 measured end to end marked beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    waterfalls = dict(doc.get("waterfall_ms") or {})
    sender = dict(doc.get("sender_effect_ms") or {})
    idle = doc.get("idle_probes_ms") or {}
    columns = sorted(waterfalls, key=float)
    labels = [f"{float(r):,.0f}/s" for r in columns]
    if idle.get("waterfall"):
        waterfalls["idle"] = idle["waterfall"]
        sender["idle"] = idle.get("service")
        columns.append("idle")
        labels.append("idle, one at a time")
    bars = stacked(columns, waterfalls)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(columns) + 3), 4.5))
    bottom = [0.0] * len(columns)
    for index, (label, heights) in enumerate(bars.items()):
        ax.bar(labels, heights, bottom=bottom, label=label, color=f"C{index % 10}")
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    measured = [(sender.get(c) or {}).get("p50") for c in columns]
    points = [(label, m) for label, m in zip(labels, measured, strict=True) if m is not None]
    if points:
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            "k_",
            markersize=28,
            markeredgewidth=2,
            label="sender-visible p50, measured",
        )
    ax.set_ylabel("ms (p50 of each step, stacked)")
    ax.set_title("Latency waterfall: produce → the sender's SDK says no")
    ax.grid(True, axis="y", linewidth=0.3)
    handles, names = ax.get_legend_handles_labels()
    # The legend reads top to bottom as the stack does.
    ax.legend(handles[::-1], names[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Redraw the README block and the plots from a run's files (after editing this module):
    ``python -m benchmarks.report [docs/bench]``."""
    import json
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench")
    doc = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    samples_path = Path("bench-results") / "samples.json"
    if (out / "samples.json").exists():
        samples_path = out / "samples.json"
    if samples_path.exists():
        samples = json.loads(samples_path.read_text(encoding="utf-8"))
        plot_latency(out / "latency_cdf.png", samples["latency_ms"])
        plot_rss(
            out / "soak_rss.png",
            [tuple(s) for s in samples["rss"]],
            float((doc.get("plan") or {}).get("soak_warmup_s") or 0),
        )
    plot_scaling(
        out / "subjects_scaling.png", doc["subjects_scaling"], doc["passthrough_msgs_per_s"]
    )
    if doc.get("waterfall_ms") or (doc.get("idle_probes_ms") or {}).get("waterfall"):
        plot_waterfall(out / "waterfall.png", doc)
    write_readme(out / "README.md", markdown(doc))


if __name__ == "__main__":
    main()
