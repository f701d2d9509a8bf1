"""Fuzzing through one real worker: thousands of generated and mutated payloads.

A plain seeded generator (``random.Random``) writes random JSON documents and mutates valid
commands (bytes flipped, fields swapped for other JSON types, strings with control
characters, huge numbers such as 1e400 and 2**64, deep nesting, lone surrogates, truncation),
on records with arbitrary header bytes and keys. Each mutation family can be switched off.
What must hold: every record ends as an outcome or a DLQ record, the DLQ holds the original
bytes, the worker stays up, and no partition stalls more than a second. A stall is reported
with the family of the record the partition was stuck on.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.topics import ensure_topics
from service.bootstrap import contract_topics
from service.settings import Settings
from tests.chaos.commands import DLQ_OR_REJECTED, CommandFactory, Planned
from tests.chaos.kafka_io import (
    CommandProducer,
    LogRecord,
    OutputLog,
    bounded,
    dlq_position,
    read_log,
)
from tests.chaos.monitor import GroupMonitor, Sample, Window, longest_stall
from tests.chaos.processes import WorkerPool, worker_trouble
from tests.chaos.verdict import dlq_problem, stuck_partitions

FAMILIES = (
    "random_json",
    "flip_bytes",
    "swap_type",
    "control_chars",
    "nul_chars",
    "surrogates",
    "huge_numbers",
    "deep_nesting",
    "truncated",
    "headers",
    "keys",
)

_CONTROL = [chr(c) for c in range(1, 32)] + ["\x7f", "\u0085", "\u2028", "\u2029", "\ufeff"]
_TEXT = "abcxyz_-:./ éß漢字🙂\"\\'{}[]," + "".join(_CONTROL[:4])
_FIELDS = ("command_id", "subject_id", "occurred_at", "source", "changes", "reason", "tenant")
_HUGE = ["1e400", "-1e400", "1e-400", str(2**64), str(-(2**64)), "1" + "0" * 60, "NaN"]


@dataclass(frozen=True)
class FuzzConfig:
    seed: int = 1
    records: int = 10_000
    families: tuple[str, ...] = FAMILIES
    partitions: int = 3
    rate_per_s: float = 1500.0
    drain_idle_s: float = 20.0
    drain_max_s: float = 180.0


class Fuzzer:
    def __init__(self, config: FuzzConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.factory = CommandFactory(self.rng, datetime.now(UTC) - timedelta(days=3), "fz")
        self._n = 0

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth > 4 or roll < 0.35:
            return rng.choice(
                [
                    None,
                    True,
                    False,
                    rng.randint(-(2**70), 2**70),
                    rng.uniform(-1e300, 1e300),
                    self.text(),
                    0,
                    -0.0,
                ]
            )
        if roll < 0.65:
            return {
                rng.choice([*_FIELDS, self.text()]): self.value(depth + 1)
                for _ in range(rng.randint(0, 6))
            }
        return [self.value(depth + 1) for _ in range(rng.randint(0, 5))]

    def text(self, length: int | None = None) -> str:
        n = length if length is not None else self.rng.randint(0, 24)
        return "".join(self.rng.choice(_TEXT) for _ in range(n))

    def command(self) -> dict[str, Any]:
        self._n += 1
        doc = self.factory.fresh(self.rng.randint(1, 3))
        doc["command_id"] = f"fz{self.config.seed}-{self._n}"
        doc["subject_id"] = f"fz{self._n}"
        return doc

    def payload(self, family: str) -> Planned:
        rng = self.rng
        doc = self.command()
        key: bytes | None = doc["subject_id"].encode()
        headers: tuple[tuple[str, bytes | None], ...] = ()
        if family == "random_json":
            generated = self.value()
            if isinstance(generated, dict) and rng.random() < 0.5:
                generated["command_id"] = doc["command_id"]
            value: bytes | None = json.dumps(generated).encode()
        elif family == "flip_bytes":
            data = bytearray(json.dumps(doc).encode())
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            value = bytes(data)
        elif family == "swap_type":
            path = rng.choice(["source.channel", "changes", "occurred_at", "reason", "tenant"])
            self._set(doc, path, rng.choice([None, True, 3, 2.5, "x", [], {}, [1, "a"], {"a": 1}]))
            value = json.dumps(doc).encode()
        elif family in ("control_chars", "nul_chars"):
            pool = ["\x00"] if family == "nul_chars" else _CONTROL
            path = rng.choice(["subject_id", "reason", "source.app", "source.user_agent", "tenant"])
            text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 3)))
            self._set(doc, path, f"a{text}b")
            if path == "subject_id":
                key = f"a{text}b".encode()
            value = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        elif family == "surrogates":
            path = rng.choice(["subject_id", "reason", "source.app", "command_id", "tenant"])
            self._set(doc, path, rng.choice(["\ud800", "a\udfffb", "\udbff"]))
            value = json.dumps(doc).encode()
        elif family == "huge_numbers":
            text = json.dumps({**doc, "reason": "@@"})
            value = text.replace('"@@"', rng.choice(_HUGE)).encode()
            if rng.random() < 0.5:
                value = json.dumps({**doc, "version": 2**64, "count": 10**30}).encode()
        elif family == "deep_nesting":
            depth = rng.choice([64, 500, 2_000, 20_000])
            nested = "[" * depth + "1" + "]" * depth
            if rng.random() < 0.5:
                nested = '{"a":' * depth + "1" + "}" * depth
            text = json.dumps({**doc, "reason": "@@"})
            value = text.replace('"@@"', nested).encode()
        elif family == "truncated":
            encoded = json.dumps(doc).encode()
            value = encoded[: rng.randrange(len(encoded))]
        elif family == "headers":
            headers = tuple(
                (
                    self.text(rng.randint(0, 8)),
                    rng.choice([None, rng.randbytes(rng.randint(0, 16))]),
                )
                for _ in range(rng.randint(1, 5))
            )
            value = json.dumps(doc).encode()
        else:  # keys
            key = rng.choice([None, b"", rng.randbytes(rng.randint(1, 40)), b"\xff" * 3])
            value = json.dumps(doc).encode()
        return Planned(
            label=family,
            key=key,
            value=value,
            expect=DLQ_OR_REJECTED,
            command_id=doc["command_id"],
            subject=None,
            headers=headers,
        )

    @staticmethod
    def _set(doc: dict[str, Any], path: str, value: Any) -> None:
        target = doc
        *parents, last = path.split(".")
        for part in parents:
            target = target[part]
        target[last] = value

    def payloads(self) -> list[Planned]:
        families = list(self.config.families)
        return [self.payload(self.rng.choice(families)) for _ in range(self.config.records)]


def _command_id(value: bytes | None) -> str | None:
    """The id an outcome for this value could carry, read as leniently as any parser would."""
    if not value:
        return None
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return None
    command_id = doc.get("command_id") if isinstance(doc, dict) else None
    return command_id if isinstance(command_id, str) else None


async def fuzz(settings: Settings, config: FuzzConfig, run_dir: Path) -> dict[str, Any]:
    """Send the payloads through one worker; report accounting, DLQ bytes and stalls."""
    started = time.monotonic()
    await asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True)
    settings = settings.model_copy(
        update={"topic_partitions": config.partitions, "batch_max_records": 100}
    )
    await ensure_topics(KafkaConnection(settings.kafka_bootstrap), contract_topics(settings))
    payloads = Fuzzer(config).payloads()
    outputs = OutputLog(
        settings.kafka_bootstrap,
        settings.topic_outcomes,
        settings.topic_preferences,
        settings.topic_dlq,
        config.partitions,
    )
    monitor = GroupMonitor(
        settings.kafka_bootstrap,
        settings.consumer_group,
        settings.topic_commands,
        config.partitions,
    )
    pool = WorkerPool(settings, run_dir)
    producer = CommandProducer(settings.kafka_bootstrap, settings.topic_commands)
    await outputs.start()
    await monitor.start()
    await producer.start()
    windows: list[Window] = []
    late: list[str] = []
    try:
        pool.start()
        stable = await monitor.stable(started, 1, cap_s=90)
        # As in a chaos run: the worker's start and its first batch are not a stall.
        windows.append(Window("start", started, (stable or time.monotonic()) + 1.0))
        t0 = time.monotonic()
        for i, planned in enumerate(payloads):
            delay = t0 + i / config.rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(planned)
        await producer.flush()
        log_ids = {(s.partition, s.offset): _command_id(s.planned.value) for s in producer.sent}

        def count() -> int:
            return sum(
                position in outputs.dlq_positions or (cid is not None and cid in outputs.by_command)
                for position, cid in log_ids.items()
            )

        drained = await outputs.wait_for(
            lambda: count() == len(log_ids),
            within_s=config.drain_max_s,
            idle_s=config.drain_idle_s,
            progress=count,
        )
        await asyncio.sleep(1.0)
        worker_alive = bool(pool.live())
    finally:
        await asyncio.to_thread(pool.stop_all)
        await bounded("offsets monitor", monitor.stop(), late)
        await bounded("producer", producer.stop(), late)
        await bounded("outputs consumer", outputs.stop(), late)
    log = await read_log(settings.kafka_bootstrap, settings.topic_commands, config.partitions)
    report = _report(
        config,
        settings.topic_commands,
        payloads,
        producer.sent,
        log,
        outputs,
        monitor.samples,
        windows,
    )
    return report | {
        "drained": drained,
        "worker_alive": worker_alive,
        "teardown_timeouts": late,
        "worker_trouble": await asyncio.to_thread(worker_trouble, run_dir),
        "duration_s": round(time.monotonic() - started, 1),
        "logs": str(run_dir),
    }


def _report(
    config: FuzzConfig,
    topic: str,
    payloads: list[Planned],
    sent: list[Any],
    log: list[LogRecord],
    outputs: OutputLog,
    samples: list[Sample],
    windows: list[Window],
) -> dict[str, Any]:
    family_at = {(s.partition, s.offset): s.planned.label for s in sent}
    lost: Counter[str] = Counter()
    answered_ok: set[tuple[int, int]] = set()
    for record in log:
        position = (record.partition, record.offset)
        cid = _command_id(record.value)
        if position not in outputs.dlq_positions and (cid is None or cid not in outputs.by_command):
            lost[family_at.get(position, "unplanned")] += 1
        else:
            answered_ok.add(position)
    by_position = {(r.partition, r.offset): r for r in log}
    dlq_mismatches: Counter[str] = Counter()
    for out in outputs.dead_letters:
        origin = dlq_position(out)
        original = by_position.get(origin) if origin is not None else None
        if dlq_problem(out, original, topic):
            dlq_mismatches[family_at.get(origin or (-1, -1), "unplanned")] += 1
    stall = longest_stall(samples, windows)
    records = [
        (r.partition, r.offset, family_at.get((r.partition, r.offset), "unplanned"), True)
        for r in log
    ]
    stuck = stuck_partitions(samples[-1], records, answered_ok, 100) if samples else []
    return {
        "seed": config.seed,
        "payloads": len(log),
        "families": dict(sorted(Counter(p.label for p in payloads).items())),
        "families_enabled": list(config.families),
        "outcomes": len(outputs.outcomes),
        "dlq_records": len(outputs.dead_letters),
        "lost": sum(lost.values()),
        "lost_by_family": dict(sorted(lost.items())),
        "dlq_mismatches": sum(dlq_mismatches.values()),
        "dlq_mismatches_by_family": dict(sorted(dlq_mismatches.items())),
        "max_partition_stall_s": round(stall.seconds, 3) if stall else 0.0,
        "longest_stall": None
        if stall is None
        else {
            "partition": stall.partition,
            "committed_offset": stall.committed,
            "family_at_offset": family_at.get((stall.partition, stall.committed)),
        },
        "stuck_partitions": stuck,
    }
