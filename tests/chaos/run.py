"""``python -m tests.chaos.run``: probes, the chaos run and fuzzing; a JSON report.

By default everything runs against PostgreSQL, Redis and Kafka servers started for the run
(so they can be restarted; the shared stack is never touched) and the report goes to
``--out``. The exit status is 0 only if every check of every phase passed.

    python -m tests.chaos.run --out docs/reliability/latest.json       # make chaos
    python -m tests.chaos.run --phases fuzz --out docs/reliability/fuzz.json   # make fuzz
    python -m tests.chaos.run --without nul,headers                    # class by class
    python -m tests.chaos.run --list-classes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.chaos import hostile
from tests.chaos.environment import Environment, cleanup, isolated, own_servers, prepare
from tests.chaos.fuzz import FAMILIES, FuzzConfig, fuzz
from tests.chaos.probes import ProbeConfig, probe_classes
from tests.chaos.profiles import full_config, short_config, with_overrides
from tests.chaos.scenario import chaos
from tests.support.services import service_endpoints

PHASES = ("probes", "chaos", "fuzz")


def summary(report: dict[str, Any]) -> str:
    lines = []
    if "chaos" in report:
        c = report["chaos"]
        lines.append(
            f"chaos: {c['commands']} records ({c['hostile_records']} hostile), "
            f"{c['kills']} kills, {c['restarts']} restarts, {c['duration_s']} s"
        )
        for name, ok in c["checks"].items():
            lines.append(f"  {'ok  ' if ok else 'FAIL'} {name}")
        lines.append(
            f"  lost {c['lost']}, applied twice {c['applied_twice']}, stale allows "
            f"{c['stale_allow_reads']}, dlq mismatches {c['dlq_mismatches']}, "
            f"max stall {c['max_partition_stall_s']} s"
        )
    if "classes" in report:
        probed = {n: r["probe"] for n, r in report["classes"].items() if "probe" in r}
        failing = [n for n, r in probed.items() if not r["passed"]]
        lines.append(
            f"probes: {len(probed) - len(failing)} of {len(probed)} classes"
            " hold" + (f"; failing: {', '.join(failing)}" if failing else "")
        )
    if "fuzz" in report:
        z = report["fuzz"]
        lines.append(
            f"fuzz: {z['payloads']} payloads, lost {z['lost']}, dlq mismatches "
            f"{z['dlq_mismatches']}, max stall {z['max_partition_stall_s']} s, "
            f"worker alive {z['worker_alive']}"
        )
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)


def fuzz_passed(z: dict[str, Any]) -> bool:
    return bool(
        z["lost"] == 0
        and z["dlq_mismatches"] == 0
        and z["max_partition_stall_s"] <= 1.0
        and z["worker_alive"]
    )


async def run_phases(
    env: Environment,
    *,
    phases: Sequence[str],
    seed: int,
    classes: tuple[str, ...],
    profile: str,
    fuzz_config: FuzzConfig,
    run_dir: Path,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "seed": seed,
        "profile": profile,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "own_servers": env.own_servers,
    }
    started = time.monotonic()
    passed = True

    async def in_isolation(name: str) -> Any:
        settings = isolated(env.settings, name)
        await prepare(settings)
        return settings

    names: list[Any] = []
    try:
        if "probes" in phases:
            settings = await in_isolation("probe")
            names.append(settings)
            results = await probe_classes(
                settings, list(classes), ProbeConfig(seed=seed), run_dir / "probes"
            )
            report["classes"] = {n: {"probe": r} for n, r in results.items()}
            passed &= all(r["passed"] for r in results.values())
        if "chaos" in phases:
            settings = await in_isolation("run")
            names.append(settings)
            config = (full_config if profile == "full" else short_config)(seed, classes)
            config = with_overrides(config, overrides or {})
            c = await chaos(env, settings, config, run_dir / "chaos")
            report["chaos"] = c
            for name in classes:
                entry = report.setdefault("classes", {}).setdefault(name, {})
                entry["in_run"] = c["labels"].get(name)
            passed &= bool(c["passed"])
        if "fuzz" in phases:
            settings = await in_isolation("fuzz")
            names.append(settings)
            z = await fuzz(settings, fuzz_config, run_dir / "fuzz")
            z["passed"] = fuzz_passed(z)
            report["fuzz"] = z
            passed &= z["passed"]
    finally:
        if not env.own_servers:
            for settings in names:
                await cleanup(settings)
    if "chaos" in report:
        # The brief's headline keys at the top level, beside the per-phase detail.
        for key in (
            "kills",
            "restarts",
            "commands",
            "hostile_records",
            "lost",
            "applied_twice",
            "stale_allow_reads",
            "dlq_mismatches",
            "max_partition_stall_s",
            "hostile_by_class",
        ):
            report[key] = report["chaos"][key]
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["passed"] = passed
    return report


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__)
    parser.add_argument("--profile", choices=["full", "short"], default="full")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated: " + ",".join(PHASES)
    )
    parser.add_argument("--only", default="", help="hostile classes or families to switch on")
    parser.add_argument("--without", default="", help="hostile classes or families to switch off")
    parser.add_argument("--records", type=int, default=None, help="override the profile's")
    parser.add_argument("--rate", type=float, default=None, help="records per second")
    parser.add_argument("--kills", type=int, default=None, help="override the profile's")
    parser.add_argument("--fuzz-records", type=int, default=10_000)
    parser.add_argument("--fuzz-without", default="", help="fuzz families to switch off")
    parser.add_argument("--shared-stack", action="store_true", help="no servers of its own")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--list-classes", action="store_true")
    return parser.parse_args(argv)


def _commit() -> str | None:
    """The code the run exercised (the checkout's HEAD), for the report."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return found.stdout.strip() or None


def _names(text: str) -> list[str]:
    return [n for n in (part.strip() for part in text.split(",")) if n]


async def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    # The suite's own Kafka clients complain loudly while it restarts the broker on purpose.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if args.list_classes:
        meaning = {
            "fold": "processed like any command (the oracle's outcome)",
            "dlq": "the DLQ, original bytes",
            "dlq_or_rejected": "the DLQ, or rejected (invalid_payload)",
        }
        for c in hostile.CLASSES.values():
            print(f"{c.name:28} {c.family:12} {meaning.get(c.expects, c.expects)}")
        print("fuzz families:", ", ".join(FAMILIES))
        return 0
    classes = tuple(hostile.select(_names(args.only) or None, _names(args.without)))
    phases = [p for p in _names(args.phases) if p in PHASES]
    unknown = set(_names(args.fuzz_without)) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"unknown fuzz families: {sorted(unknown)}")
    fuzz_config = FuzzConfig(
        seed=args.seed,
        records=args.fuzz_records,
        families=tuple(f for f in FAMILIES if f not in _names(args.fuzz_without)),
    )
    run_dir = Path(".chaos") / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    options: dict[str, Any] = {
        "phases": phases,
        "seed": args.seed,
        "classes": classes,
        "profile": args.profile,
        "fuzz_config": fuzz_config,
        "run_dir": run_dir,
        "overrides": {"records": args.records, "rate_per_s": args.rate, "kills": args.kills},
    }
    print(f"chaos: phases {', '.join(phases)}, {len(classes)} hostile classes, logs in {run_dir}")
    if args.shared_stack:
        with service_endpoints() as found:
            from pydantic import SecretStr

            from service.settings import Settings

            base = Settings(
                kafka_bootstrap=found.kafka_bootstrap,
                database_url=SecretStr(found.database_url),
                redis_url=SecretStr(found.redis_url),
            )
            report = await run_phases(Environment(base), **options)
    else:
        async with own_servers() as env:
            report = await run_phases(env, **options)
    report["commit"] = _commit()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    print(summary(report))
    return 0 if report["passed"] else 1


async def _main_until_signalled(argv: Sequence[str]) -> int:
    """`main`, cancelled by SIGTERM as by Ctrl-C: the servers of the run's own are stopped."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await main(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(_main_until_signalled(sys.argv[1:])))
