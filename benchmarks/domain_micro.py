"""In-process microbenchmark of the worker's pure hot path: decode, then apply_batch.

No Kafka, PostgreSQL or Redis: it generates realistic contract-v1 command documents, then
times `decode_command` over all of them and `apply_batch` over batches of 500 (mostly new
subjects, some repeats within a batch, a few with a small stored state), and prints the
best-of-N microseconds per command for each stage.

    .venv/bin/python -m benchmarks.domain_micro [--commands 20000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from benchmarks.common import CommandGenerator
from service.contract.decode import DeadLetter, decode_command
from service.domain.apply import CommandKey, ProcessedRecord, apply_batch
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.commands import Delivery, Malformed, Received
from service.domain.model import Rule, SubjectKey, SubjectState

_BATCH = 500
_MAX_BYTES = 64 * 1024


def generate(count: int, subjects: int, seed: int) -> list[bytes]:
    """Command values as a producer would publish them (the write-path benchmark's mix)."""
    generator = CommandGenerator(subjects, seed)
    return [generator.next()[2] for _ in range(count)]


def _decode_all(values: Sequence[bytes]) -> list[Received | Malformed]:
    decoded: list[Received | Malformed] = []
    for offset, value in enumerate(values):
        record = decode_command(
            value, Delivery("optout.commands.v1", 0, offset), max_bytes=_MAX_BYTES
        )
        if isinstance(record, DeadLetter):
            raise AssertionError(f"benchmark command dead-lettered: {record.error}")
        decoded.append(record)
    return decoded


def _stored_states(
    batches: Sequence[Sequence[Received | Malformed]], now: datetime
) -> list[dict[SubjectKey, SubjectState]]:
    """A small stored state (two older rules) for roughly one subject in ten."""
    rng = random.Random(7)
    stored = []
    older = now - timedelta(days=30)
    for batch in batches:
        states: dict[SubjectKey, SubjectState] = {}
        for record in batch:
            if isinstance(record, Received) and rng.random() < 0.1:
                key = record.command.key
                rules = {
                    (topic, "email"): Rule(topic, "email", "opt_out", older, "web", f"old-{i}")
                    for i, topic in enumerate(("marketing", "product.tips"))
                }
                states[key] = SubjectState(key, 3, rules)
        stored.append(states)
    return stored


def _best(run: Callable[[], object], repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    now = datetime.now(UTC)
    values = generate(args.commands, args.subjects, seed=42)
    decoded = _decode_all(values)
    batches = [decoded[i : i + _BATCH] for i in range(0, len(decoded), _BATCH)]
    stored = _stored_states(batches, now)
    no_processed: dict[CommandKey, ProcessedRecord] = {}

    def apply_all() -> None:
        for batch, states in zip(batches, stored, strict=True):
            apply_batch(
                DEFAULT_CATALOG,
                states,
                no_processed,
                batch,
                now=now,
                effective_at=now,
                max_future=timedelta(minutes=5),
            )

    decode_s = _best(lambda: _decode_all(values), args.repeat)
    apply_s = _best(apply_all, args.repeat)
    per = 1e6 / len(values)
    print(f"commands: {len(values)}, batches of {_BATCH}, best of {args.repeat}")
    print(f"decode_command: {decode_s * per:7.2f} us/command")
    print(f"apply_batch:    {apply_s * per:7.2f} us/command")
    print(f"total:          {(decode_s + apply_s) * per:7.2f} us/command")


if __name__ == "__main__":
    main()
