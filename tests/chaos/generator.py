"""The seeded command stream: ordinary traffic with every awkward case, plus hostile records.

Ordinary traffic covers what real producers send: opt-outs and opt-ins, wildcards on topic
and channel, data uses, mandatory topics (rejected), unknown names (rejected), the same
command resent (`duplicate`), a command id reused for other content (`command_id_conflict`),
a rejected id reused by a corrected command, unknown extra fields, timestamps in any order
and with any offset, and several tenants sharing subject ids. About ``hostile_share`` of
the records belong to the switched-on hostile classes, each at least ``min_per_class`` times.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.chaos import hostile
from tests.chaos.commands import FOLD, CommandFactory, Planned
from tests.chaos.oracle import CHANNELS, DATA_USE_TOPICS, MESSAGE_TOPICS, TOPICS, WILDCARD

TENANTS = ("default", "acme", "globex")

# Weights of the ordinary kinds of record.
BASE_KINDS: dict[str, int] = {
    "opt_out": 30,
    "opt_in": 14,
    "mixed": 14,
    "wildcard": 12,
    "data_use": 5,
    "mandatory": 4,
    "unknown_name": 2,
    "extra_fields": 3,
    "duplicate": 8,
    "conflict": 4,
    "reuse_after_rejection": 2,
}


@dataclass(frozen=True)
class StreamSpec:
    seed: int
    records: int
    subjects: int = 300
    hostile_share: float = 0.05
    classes: tuple[str, ...] = tuple(hostile.CLASSES)
    min_per_class: int = 1
    run_id: str = "c"


@dataclass
class _Base:
    f: CommandFactory
    subjects: int
    produced: list[Planned] = field(default_factory=list)
    rejected: list[Planned] = field(default_factory=list)

    def subject(self) -> tuple[str, str]:
        rng = self.f.rng
        tenant = rng.choices(TENANTS, weights=(2, 1, 1))[0]
        return tenant, f"u{rng.randrange(self.subjects)}"

    def command(self, kind: str, changes: list[dict[str, str]]) -> Planned:
        tenant, subject_id = self.subject()
        doc = self.f.doc(subject_id, tenant, changes)
        return self.f.planned(f"base.{kind}", doc)

    def next(self, kind: str) -> Planned:
        f, rng = self.f, self.f.rng
        earlier = [p for p in self.produced if p.doc is not None]
        if kind == "duplicate" and earlier:
            original = rng.choice(earlier)
            assert original.doc is not None
            return f.planned("base.duplicate", original.doc, value=original.value)
        if kind == "conflict" and earlier:
            original = rng.choice(earlier)
            assert original.doc is not None
            doc: dict[str, Any] = dict(original.doc)
            while doc["changes"] == original.doc["changes"]:
                doc["changes"] = [f.change() for _ in range(rng.randint(1, 2))]
            return f.planned("base.conflict", doc)
        if kind == "reuse_after_rejection" and self.rejected:
            original = self.rejected.pop(rng.randrange(len(self.rejected)))
            assert original.doc is not None
            doc = dict(original.doc)
            doc["changes"] = [f.change("opt_out")]
            return f.planned("base.reuse_after_rejection", doc)
        n = rng.randint(1, 3)
        if kind == "opt_in":
            return self.command(kind, [f.change("opt_in") for _ in range(n)])
        if kind == "mixed":
            return self.command(kind, [f.change() for _ in range(n)])
        if kind == "wildcard":
            return self.command(kind, [f.change(wildcard=True) for _ in range(n)])
        if kind == "data_use":
            return self.command(kind, [f.data_use_change() for _ in range(n)])
        if kind == "mandatory":
            changes = [f.mandatory_change(), *(f.change() for _ in range(n - 1))]
            rng.shuffle(changes)
            planned = self.command(kind, changes)
            self.rejected.append(planned)
            return planned
        if kind == "unknown_name":
            change = f.change()
            if rng.random() < 0.5:
                change["topic"] = "marketing.unknown"
            else:
                change["channel"] = "carrier_pigeon"
            return self.command(kind, [change])
        if kind == "extra_fields":
            planned = self.command(kind, [f.change() for _ in range(n)])
            assert planned.doc is not None
            doc = {**planned.doc, "x_future_field": {"nested": [1, 2, 3]}, "priority": 7}
            return f.planned("base.extra_fields", doc)
        return self.command("opt_out", [f.change("opt_out") for _ in range(n)])


def hostile_counts(spec: StreamSpec, rng: random.Random) -> dict[str, int]:
    """How many instances of each switched-on class: the share, and at least the minimum."""
    if not spec.classes:
        return {}
    total = max(round(spec.records * spec.hostile_share), spec.min_per_class * len(spec.classes))
    counts = dict.fromkeys(spec.classes, spec.min_per_class)
    open_classes = [
        c for c in spec.classes if (hostile.CLASSES[c].limit or total) > spec.min_per_class
    ]
    for _ in range(total - sum(counts.values())):
        if not open_classes:
            break
        name = rng.choice(open_classes)
        counts[name] += 1
        if counts[name] >= (hostile.CLASSES[name].limit or total):
            open_classes.remove(name)
    return counts


def base_time() -> datetime:
    """Two to four days ago, on the hour: every ordinary timestamp lies in the past."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(days=4)


def generate(spec: StreamSpec, start: datetime | None = None) -> list[Planned]:
    rng = random.Random(spec.seed)
    f = CommandFactory(rng, start or base_time(), spec.run_id)
    counts = hostile_counts(spec, rng)
    units: list[list[Planned]] = []
    for name, count in counts.items():
        units += [hostile.build(name, f, variant) for variant in range(count)]
    n_hostile = sum(len(u) for u in units)
    base = _Base(f, spec.subjects)
    kinds, weights = list(BASE_KINDS), list(BASE_KINDS.values())
    stream: list[Planned] = []
    n_base = max(spec.records - n_hostile, 0)
    slots = sorted(rng.sample(range(n_base + len(units)), len(units)))
    slot_i = 0
    for position in range(n_base + len(units)):
        if slot_i < len(slots) and slots[slot_i] == position:
            stream += units[slot_i]
            slot_i += 1
            continue
        planned = base.next(rng.choices(kinds, weights)[0])
        base.produced.append(planned)
        stream.append(planned)
    return stream


def poll_question(doc: dict[str, Any], rng: random.Random) -> tuple[str, str] | None:
    """A concrete (topic, channel) one of the command's opt-outs covers, or None.

    Wildcards become a catalog topic or channel, a topic sometimes one of its children, so
    the reads exercise the hierarchy as a sender would ask.
    """
    outs = [
        c
        for c in doc.get("changes", [])
        if c.get("action") == "opt_out"
        and (c.get("topic") == WILDCARD or c.get("topic") in TOPICS)
        and (c.get("channel") == WILDCARD or c.get("channel") in CHANNELS)
    ]
    if not outs:
        return None
    change = rng.choice(outs)
    topic, channel = change["topic"], change["channel"]
    if topic == WILDCARD:
        topic = rng.choice([*MESSAGE_TOPICS, *DATA_USE_TOPICS])
    else:
        children = [t for t in TOPICS if t.startswith(topic + ".")]
        if children and rng.random() < 0.5:
            topic = rng.choice(children)
    if TOPICS[topic].data_use:
        return topic, WILDCARD
    if channel == WILDCARD:
        channel = rng.choice(sorted(CHANNELS))
    return topic, channel


__all__ = ["FOLD", "StreamSpec", "generate", "hostile_counts", "poll_question"]
