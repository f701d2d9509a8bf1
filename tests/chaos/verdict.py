"""The checks of a run: the log, the outputs and the stores, against the oracle.

Every figure is attributed to the labels (ordinary kinds and hostile classes) of the
records involved, so a failure names the class that caused it. Examples carry partitions,
offsets, labels and statuses, never record contents.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from service.adapters.redis_client import create_redis
from tests.chaos.commands import DLQ, DLQ_OR_REJECTED, FOLD, REJECTED_INVALID, Planned
from tests.chaos.kafka_io import LogRecord, Output, OutputLog, Sent, dlq_position
from tests.chaos.monitor import Sample, Window, longest_stall
from tests.chaos.oracle import Fold, Rules, Statement, SubjectRef, is_register
from tests.chaos.reads import Read, rules_from_cache, stale_allow

MAX_EXAMPLES = 5


@dataclass(frozen=True)
class StoredState:
    version: int
    rules: Rules


EMPTY = StoredState(0, {})


def statements_only(state: StoredState) -> StoredState:
    """The stored state without the SMS restore registers: what the oracle states."""
    rules = {pair: rule for pair, rule in state.rules.items() if not is_register(pair[0])}
    return StoredState(state.version, rules)


async def snapshot_postgres(dsn: str, schema: str) -> tuple[dict[SubjectRef, StoredState], int]:
    """Every subject's version and rules, and how many history rows repeat a change."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        versions = await conn.fetch("SELECT tenant, subject_id, version FROM subjects")
        rules = await conn.fetch(
            "SELECT tenant, subject_id, topic, channel, action, occurred_at, command_id FROM rules"
        )
        repeated = await conn.fetchval(
            "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM consent_history"
            " GROUP BY tenant, command_id, topic, channel) AS c"
        )
    finally:
        await conn.close()
    table: dict[SubjectRef, Rules] = defaultdict(dict)
    for r in rules:
        table[(r["tenant"], r["subject_id"])][(r["topic"], r["channel"])] = Statement(
            r["occurred_at"], r["action"] == "opt_out", r["command_id"]
        )
    states = {
        (v["tenant"], v["subject_id"]): StoredState(
            v["version"], table.get((v["tenant"], v["subject_id"]), {})
        )
        for v in versions
    }
    for ref, found in table.items():
        states.setdefault(ref, StoredState(-1, found))  # rules without a subject row
    return states, int(repeated)


def parse_cache_key(key: bytes, prefix: str) -> SubjectRef | None:
    """(tenant, subject_id) from `{prefix}:s:{len(tenant)}:{tenant}:{subject_id}`."""
    text = key.decode("utf-8", "surrogateescape")
    head = f"{prefix}:s:"
    if not text.startswith(head):
        return None
    length, _, rest = text[len(head) :].partition(":")
    if not length.isdigit():
        return None
    n = int(length)
    return rest[:n], rest[n + 1 :]


async def snapshot_redis(dsn: str, prefix: str) -> dict[SubjectRef, StoredState]:
    redis = create_redis(dsn)
    try:
        found: dict[SubjectRef, StoredState] = {}
        async for key in redis.scan_iter(match=f"{prefix}:s:*", count=1000):
            ref = parse_cache_key(key, prefix)
            raw = await redis.hget(key, "d")
            if ref is not None and isinstance(raw, bytes):
                version, rules = rules_from_cache(raw)
                found[ref] = StoredState(version, rules)
        return found
    finally:
        await redis.aclose()


def event_rules(doc: Mapping[str, Any]) -> Rules:
    return {
        (p["topic"], p["channel"]): Statement(
            datetime.fromisoformat(p["occurred_at"]), p["action"] == "opt_out", p["command_id"]
        )
        for p in doc.get("preferences", [])
    }


def _token(outcome: Mapping[str, Any]) -> str:
    status = str(outcome.get("status"))
    return f"rejected:{outcome.get('reason')}" if status == "rejected" else status


@dataclass
class LabelStats:
    records: int = 0
    ok: int = 0
    lost: int = 0
    wrong_outcome: int = 0
    wrong_disposition: int = 0
    dlq_mismatches: int = 0
    state_mismatches: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(text)

    @property
    def failures(self) -> int:
        return (
            self.lost
            + self.wrong_outcome
            + self.wrong_disposition
            + self.dlq_mismatches
            + self.state_mismatches
        )


@dataclass
class Evidence:
    """Everything a run observed; `verdict` turns it into the report's figures."""

    topic: str
    log: list[LogRecord]
    sent: list[Sent]
    outputs: OutputLog
    postgres: dict[SubjectRef, StoredState]
    history_repeats: int
    redis: dict[SubjectRef, StoredState]
    now: datetime
    reads: list[Read] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    refill_failures: list[str] = field(default_factory=list)
    subjects: set[SubjectRef] | None = None  # restrict the store checks (probes share a store)
    batch_max_records: int = 100


def attach(log: Sequence[LogRecord], sent: Sequence[Sent]) -> list[Planned | None]:
    """The planned record behind each log record: by position, else by content."""
    by_position = {(s.partition, s.offset): s.planned for s in sent}
    by_content: dict[tuple[bytes | None, bytes | None, Any], Planned] = {}
    for s in sent:
        by_content.setdefault((s.planned.key, s.planned.value, s.planned.headers), s.planned)
    return [
        by_position.get((r.partition, r.offset)) or by_content.get((r.key, r.value, r.headers))
        for r in log
    ]


class Judge:
    def __init__(self, evidence: Evidence) -> None:
        self.e = evidence
        self.planned = attach(evidence.log, evidence.sent)
        self.labels: dict[str, LabelStats] = defaultdict(LabelStats)
        self.touching: dict[SubjectRef, set[str]] = defaultdict(set)
        self.fold = Fold(now=evidence.now)
        self.expected: list[str] = []
        self.results: dict[tuple[int, int], str] = {}
        for planned in self.planned:
            if planned is not None and planned.subject is not None:
                self.touching[planned.subject].add(planned.label)
        self.dlq: dict[tuple[int, int], list[Output]] = defaultdict(list)
        for out in evidence.outputs.dead_letters:
            position = dlq_position(out)
            if (
                position is not None
                and out.headers.get("x-original-topic") == evidence.topic.encode()
            ):
                self.dlq[position].append(out)
        self.outcomes: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for out in evidence.outputs.outcomes:
            if out.doc is not None and isinstance(out.doc.get("command_id"), str):
                self.outcomes[out.doc["command_id"]].append(out.doc)

    def label(self, planned: Planned | None) -> str:
        return planned.label if planned is not None else "unplanned"

    def label_at(self, partition: int, offset: int) -> str | None:
        """The label of the record at a position: what a stuck partition is stuck on."""
        for record, planned in zip(self.e.log, self.planned, strict=True):
            if (record.partition, record.offset) == (partition, offset):
                return self.label(planned)
        return None

    # -- every record answered, and answered as the contract says ---------------------------

    def expectations(self) -> None:
        for planned in self.planned:
            if planned is None:
                self.expected.append("any")
            elif planned.expect == FOLD:
                assert planned.doc is not None
                outcome = self.fold.feed(planned.doc)
                self.expected.append(
                    f"rejected:{outcome.reason}" if outcome.status == "rejected" else outcome.status
                )
            else:
                self.expected.append(planned.expect)

    def records(self) -> dict[str, int]:
        self.expectations()
        groups: dict[tuple[str | None, str], set[str]] = defaultdict(set)
        for planned, expected in zip(self.planned, self.expected, strict=True):
            if planned is not None and planned.command_id is not None:
                groups[(self._tenant(planned), planned.command_id)].add(expected)
        totals: Counter[str] = Counter()
        for record, planned, expected in zip(self.e.log, self.planned, self.expected, strict=True):
            stats = self.labels[self.label(planned)]
            stats.records += 1
            result, seen = self._judge(record, planned, expected, groups)
            self.results[(record.partition, record.offset)] = result
            totals[result] += 1
            if result == "ok":
                stats.ok += 1
                continue
            setattr(stats, result, getattr(stats, result) + 1)
            stats.note(
                f"{result}: partition {record.partition} offset {record.offset}"
                f" expected {expected}, saw {seen or 'nothing'}"
            )
        return dict(totals)

    @staticmethod
    def _tenant(planned: Planned) -> str | None:
        if planned.expect == FOLD and planned.doc is not None:
            return str(planned.doc.get("tenant", "default"))
        return None

    def _judge(
        self,
        record: LogRecord,
        planned: Planned | None,
        expected: str,
        groups: Mapping[tuple[str | None, str], set[str]],
    ) -> tuple[str, str | None]:
        dead = bool(self.dlq.get((record.partition, record.offset)))
        if planned is None or planned.command_id is None:
            if dead:
                return "ok", "dlq"
            return (
                ("lost", None)
                if expected in (DLQ, DLQ_OR_REJECTED, "any")
                else (
                    "wrong_disposition",
                    None,
                )
            )
        tenant = self._tenant(planned)
        docs = [
            d
            for d in self.outcomes.get(planned.command_id, [])
            if tenant is None or d.get("tenant") == tenant
        ]
        tokens = {_token(d) for d in docs}
        seen = ", ".join(sorted(tokens | ({"dlq"} if dead else set()))) or None
        if expected == DLQ:
            if dead:
                return "ok", seen
            return ("wrong_disposition", seen) if tokens else ("lost", None)
        if expected == DLQ_OR_REJECTED:
            if dead or REJECTED_INVALID in tokens:
                return "ok", seen
            return ("wrong_outcome", seen) if tokens else ("lost", None)
        if expected in tokens:
            return "ok", seen
        if dead:
            return "wrong_disposition", seen
        unexplained = tokens - groups.get((tenant, planned.command_id), set())
        return ("wrong_outcome", seen) if unexplained else ("lost", None)

    def stuck(self) -> list[dict[str, Any]]:
        if not self.e.samples:
            return []
        records = [
            (r.partition, r.offset, self.label(p), p is not None and p.hostile)
            for r, p in zip(self.e.log, self.planned, strict=True)
        ]
        ok = {position for position, result in self.results.items() if result == "ok"}
        return stuck_partitions(self.e.samples[-1], records, ok, self.e.batch_max_records)

    # -- the DLQ holds the original bytes ---------------------------------------------------

    def dead_letters(self) -> tuple[int, list[str]]:
        by_position = {
            (r.partition, r.offset): (r, p) for r, p in zip(self.e.log, self.planned, strict=True)
        }
        mismatches = 0
        examples: list[str] = []
        for out in self.e.outputs.dead_letters:
            position = dlq_position(out)
            found = by_position.get(position) if position is not None else None
            problem = dlq_problem(out, found[0] if found else None, self.e.topic)
            if problem is None:
                continue
            mismatches += 1
            label = self.label(found[1]) if found else "unplanned"
            self.labels[label].dlq_mismatches += 1
            self.labels[label].note(f"dlq: {problem} (dlq offset {out.offset})")
            if len(examples) < MAX_EXAMPLES:
                examples.append(f"{label}: {problem}")
        return mismatches, examples

    # -- nothing applied twice, no version gaps ---------------------------------------------

    def applied_twice(self) -> dict[str, Any]:
        events: dict[SubjectRef, dict[int, set[bytes]]] = defaultdict(lambda: defaultdict(set))
        for out in self.e.outputs.events:
            doc = out.doc
            if doc is None or not isinstance(doc.get("version"), int):
                continue
            ref = (str(doc.get("tenant")), str(doc.get("subject_id")))
            events[ref][doc["version"]].add(out.value or b"")
        applied: dict[SubjectRef, set[str]] = defaultdict(set)
        contradictions = 0
        for command_id, docs in self.outcomes.items():
            by_tenant: dict[str, set[str]] = defaultdict(set)
            for d in docs:
                by_tenant[str(d.get("tenant"))].add(json.dumps(d, sort_keys=True))
                if d.get("status") == "applied":
                    applied[(str(d.get("tenant")), str(d.get("subject_id")))].add(command_id)
            for variants in by_tenant.values():
                statuses = Counter(json.loads(v)["status"] for v in variants)
                contradictions += sum(n - 1 for s, n in statuses.items() if s == "applied")
        twice = contradictions + self.e.history_repeats
        gaps = 0
        examples: list[str] = []
        refs = set(events) | {r for r, s in self.e.postgres.items() if s.version > 0}
        for ref in self._restrict(refs):
            version = max(self.e.postgres.get(ref, EMPTY).version, 0)
            by_version = events.get(ref, {})
            repeated = sum(len(v) - 1 for v in by_version.values())
            extra_applied = max(len(applied.get(ref, set())) - version, 0)
            missing = len(set(range(1, version + 1)) - set(by_version))
            beyond = len({v for v in by_version if v > version})
            twice += repeated + extra_applied + beyond
            gaps += missing
            if (repeated or extra_applied or beyond or missing) and len(examples) < MAX_EXAMPLES:
                examples.append(
                    f"{sorted(self.touching.get(ref, {'?'}))}: version {version}, events "
                    f"{len(by_version)} (repeated {repeated}, beyond {beyond}, missing {missing}),"
                    f" applied outcomes {len(applied.get(ref, set()))}"
                )
        return {"applied_twice": twice, "event_gaps": gaps, "examples": examples}

    def _restrict(self, refs: Iterable[SubjectRef]) -> list[SubjectRef]:
        if self.e.subjects is None:
            return list(refs)
        return [r for r in refs if r in self.e.subjects]

    # -- PostgreSQL equals the oracle; Redis and the compacted topic equal PostgreSQL ---------

    def postgres_vs_oracle(self) -> tuple[int, list[str]]:
        expected = {
            ref: StoredState(self.fold.versions[ref], rules)
            for ref, rules in self.fold.rules.items()
        }
        refs = {r for r, s in expected.items() if s.version > 0} | {
            r for r, s in self.e.postgres.items() if s.version != 0 or s.rules
        }
        stored = {ref: statements_only(state) for ref, state in self.e.postgres.items()}
        return self._compare("postgres", expected, stored, self._restrict(refs))

    def redis_vs_postgres(self) -> tuple[int, list[str]]:
        refs = self._restrict(self.e.redis)
        return self._compare("redis", self.e.postgres, self.e.redis, refs)

    def _compare(
        self,
        what: str,
        expected: Mapping[SubjectRef, StoredState],
        actual: Mapping[SubjectRef, StoredState],
        refs: Iterable[SubjectRef],
    ) -> tuple[int, list[str]]:
        mismatches = 0
        examples: list[str] = []
        for ref in refs:
            want = expected.get(ref, EMPTY)
            got = actual.get(ref, EMPTY)
            if want.version == got.version and want.rules == got.rules:
                continue
            mismatches += 1
            labels = sorted(self.touching.get(ref, {"unplanned"}))
            for label in labels:
                self.labels[label].state_mismatches += 1
                self.labels[label].note(
                    f"{what}: version {got.version} (expected {want.version}),"
                    f" {len(got.rules)} rules (expected {len(want.rules)})"
                )
            if len(examples) < MAX_EXAMPLES:
                examples.append(
                    f"{labels}: {what} version {got.version}/{len(got.rules)} rules,"
                    f" expected {want.version}/{len(want.rules)}"
                )
        return mismatches, examples

    def compacted(self) -> tuple[int, list[str]]:
        """The last event of each `{tenant}:{subject_id}` key equals PostgreSQL's state."""
        last: dict[bytes | None, Output] = {}
        for event in sorted(self.e.outputs.events, key=lambda o: (o.partition, o.offset)):
            last[event.key] = event
        mismatches = 0
        examples: list[str] = []
        refs = [r for r, s in self.e.postgres.items() if s.version > 0]
        for ref in self._restrict(refs):
            state = self.e.postgres[ref]
            key = f"{ref[0]}:{ref[1]}".encode()
            out = last.get(key)
            doc = out.doc if out is not None else None
            if (
                doc is not None
                and doc.get("version") == state.version
                and event_rules(doc) == state.rules
            ):
                continue
            mismatches += 1
            if len(examples) < MAX_EXAMPLES:
                labels = sorted(self.touching.get(ref, {"unplanned"}))
                if out is None:
                    bare = ref[1].encode() in last
                    examples.append(
                        f"{labels}: no event under the key '{{tenant}}:{{subject_id}}'"
                        + (" (events are keyed by the bare subject id)" if bare else "")
                    )
                else:
                    seen = doc.get("version") if doc is not None else None
                    examples.append(
                        f"{labels}: last event under the key has version {seen},"
                        f" PostgreSQL {state.version}"
                    )
        return mismatches, examples

    # -- no stale allow ------------------------------------------------------------------------

    def stale_reads(self) -> dict[str, Any]:
        states: dict[SubjectRef, dict[int, list[Rules]]] = defaultdict(lambda: defaultdict(list))
        for out in self.e.outputs.events:
            doc = out.doc
            if doc is not None and isinstance(doc.get("version"), int):
                ref = (str(doc.get("tenant")), str(doc.get("subject_id")))
                states[ref][doc["version"]].append(event_rules(doc))
        for ref, history in self.fold.history.items():
            for version, rules in enumerate(history, start=1):
                states[ref][version].append(rules)
        by_reader: dict[str, Counter[str]] = defaultdict(Counter)
        examples: list[str] = []
        for read in self.e.reads:
            verdict = stale_allow(read, states.get((read.tenant, read.subject_id), {}))
            tally = by_reader[read.reader]
            tally["reads"] += 1
            if read.error is not None:
                tally["errors"] += 1
            elif read.allowed is None:
                tally["misses"] += 1
            elif verdict is None:
                tally["unjudged"] += 1
            elif verdict:
                tally["stale_allow"] += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append(
                        f"{read.reader}: allowed {read.topic}/{read.channel} after the applied"
                        f" opt-out at version {read.version}"
                    )
        return {
            "stale_allow_reads": sum(t["stale_allow"] for t in by_reader.values()),
            "by_reader": {r: dict(t) for r, t in sorted(by_reader.items())},
            "examples": examples,
        }


def stuck_partitions(
    last: Sample,
    records: Sequence[tuple[int, int, str, bool]],
    answered_ok: set[tuple[int, int]],
    reach: int,
) -> list[dict[str, Any]]:
    """Partitions whose committed offset ended behind the log, and what they hold there.

    `records`: (partition, offset, label, hostile). A worker retries a failing batch as a
    whole and a batch spans partitions, so the record that stops a partition may sit at the
    head of another: for every stuck partition, the hostile records left unanswered within
    `reach` (a batch) of its committed offset are counted by label. Those are the suspects.
    """
    found = []
    for partition, end in sorted(last.end.items()):
        committed = last.committed.get(partition, 0)
        if committed >= end:
            continue
        suspects: Counter[str] = Counter()
        at_head = None
        for p, offset, label, hostile in records:
            if p != partition:
                continue
            if offset == committed:
                at_head = label
            if (
                committed <= offset < committed + reach
                and hostile
                and (p, offset) not in answered_ok
            ):
                suspects[label] += 1
        found.append(
            {
                "partition": partition,
                "committed": committed,
                "end": end,
                "label_at_committed": at_head,
                "unanswered_hostile_near_head": dict(suspects.most_common()),
            }
        )
    return found


def dlq_problem(out: Output, original: LogRecord | None, topic: str) -> str | None:
    if original is None:
        return "names no record of the commands topic"
    if out.headers.get("x-original-topic") != topic.encode():
        return "x-original-topic is not the commands topic"
    if not out.headers.get("x-error"):
        return "no x-error header"
    if out.key != original.key:
        return "key differs from the original"
    value = out.value or b""
    source = original.value or b""
    if out.headers.get("x-truncated") == b"true":
        if out.headers.get("x-original-size") != str(len(source)).encode():
            return "x-original-size does not match the original"
        if len(value) >= len(source) or source[: len(value)] != value:
            return "truncated value is not a prefix of the original"
        return None
    if value != source:
        return f"value differs from the original ({len(value)} of {len(source)} bytes)"
    return None


def verdict(evidence: Evidence) -> dict[str, Any]:
    judge = Judge(evidence)
    totals = judge.records()
    dlq_mismatches, dlq_examples = judge.dead_letters()
    twice = judge.applied_twice()
    pg_mismatches, pg_examples = judge.postgres_vs_oracle()
    redis_mismatches, redis_examples = judge.redis_vs_postgres()
    compacted, compacted_examples = judge.compacted()
    stale = judge.stale_reads()
    stall = longest_stall(evidence.samples, evidence.windows) if evidence.samples else None
    hostile = Counter(p.label for p in judge.planned if p is not None and p.hostile)
    present_in_pg = {r for r, s in evidence.postgres.items() if s.version > 0}
    return {
        "commands": len(evidence.log),
        "hostile_records": sum(hostile.values()),
        "hostile_by_class": dict(sorted(hostile.items())),
        "lost": totals.get("lost", 0),
        "wrong_outcomes": totals.get("wrong_outcome", 0),
        "wrong_dispositions": totals.get("wrong_disposition", 0),
        "applied_twice": twice["applied_twice"],
        "event_gaps": twice["event_gaps"],
        "stale_allow_reads": stale["stale_allow_reads"],
        "reads": stale["by_reader"],
        "dlq_records": len(evidence.outputs.dead_letters),
        "dlq_mismatches": dlq_mismatches,
        "postgres_mismatches": pg_mismatches,
        "redis_mismatches": redis_mismatches,
        "redis_subjects": len(evidence.redis),
        "redis_missing_subjects": len(judge._restrict(present_in_pg - set(evidence.redis))),
        "redis_refill_failures": len(evidence.refill_failures),
        "compacted_mismatches": compacted,
        "max_partition_stall_s": round(stall.seconds, 3) if stall else 0.0,
        "longest_stall": None
        if stall is None
        else {
            "partition": stall.partition,
            "committed_offset": stall.committed,
            "seconds": round(stall.seconds, 3),
            # Seconds since the first sample, to set beside the fault timeline.
            "from_s": round(stall.started_at - evidence.samples[0].at, 1),
            "to_s": round(stall.ended_at - evidence.samples[0].at, 1),
            "label_at_offset": judge.label_at(stall.partition, stall.committed),
        },
        "stuck_partitions": judge.stuck(),
        "labels": {
            name: {
                "records": s.records,
                "ok": s.ok,
                "lost": s.lost,
                "wrong_outcome": s.wrong_outcome,
                "wrong_disposition": s.wrong_disposition,
                "dlq_mismatches": s.dlq_mismatches,
                "state_mismatches": s.state_mismatches,
                "examples": s.examples,
            }
            for name, s in sorted(judge.labels.items())
        },
        "examples": {
            "applied_twice": twice["examples"],
            "dlq": dlq_examples,
            "postgres": pg_examples,
            "redis": redis_examples,
            "refill": evidence.refill_failures[:MAX_EXAMPLES],
            "compacted": compacted_examples,
            "stale_allow": stale["examples"],
        },
    }


def label_failures(report: Mapping[str, Any], label: str) -> dict[str, int]:
    """The non-zero failure counts of one label (a hostile class or an ordinary kind)."""
    stats = report["labels"].get(label, {})
    keys = ("lost", "wrong_outcome", "wrong_disposition", "dlq_mismatches", "state_mismatches")
    return {k: stats[k] for k in keys if stats.get(k)}
