"""Replaying dead letters: chosen records of the dead-letter topic, their original bytes, onto
the bulk lane's commands topic, where the worker judges them again like any other command.

A dead letter is chosen by its place (partition, offset range) and/or its reason (the
``x-error`` header, by prefix: ``failed with`` for records a dependency kept refusing,
``invalid payload``...). Its original key and value are republished untouched, so a command
that was applied before (its id is in the processed log) is answered ``duplicate``, never
applied twice. Records that cannot be replayed faithfully are counted and left alone: a value
cut to fit the dead-letter topic (``x-truncated``; the whole value is still in the source
topic at ``x-original-offset``), and records without a key or a value. Replays go to the bulk
lane so a large one never holds live opt-outs up (README, The bulk lane).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.application.intake import CommandSink

REPLAY_WAVE = 1_000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: str
    truncated: bool


@dataclass(frozen=True, slots=True)
class ReplaySelection:
    """Which dead letters to replay: every condition given must hold."""

    partitions: frozenset[int] | None = None
    from_offset: int | None = None
    to_offset: int | None = None  # inclusive
    reason: str | None = None  # a prefix of the x-error header

    def __post_init__(self) -> None:
        if (
            self.from_offset is not None
            and self.to_offset is not None
            and self.from_offset > self.to_offset
        ):
            raise ValueError("from_offset must not be after to_offset")

    def chooses(self, letter: DeadLetter) -> bool:
        return (
            (self.partitions is None or letter.partition in self.partitions)
            and (self.from_offset is None or letter.offset >= self.from_offset)
            and (self.to_offset is None or letter.offset <= self.to_offset)
            and (self.reason is None or letter.error.startswith(self.reason))
        )


class DeadLetterSource(Protocol):
    def read(self, selection: ReplaySelection) -> AsyncIterator[Sequence[DeadLetter]]:
        """The topic's records from the start (or `selection.from_offset`) up to its end as
        it was when reading began, in pages; it may skip what `selection` cannot choose."""


@dataclass
class ReplayTally:
    read: int = 0
    chosen: int = 0
    replayed: int = 0
    truncated: int = 0
    without_key_or_value: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class ReplayDeadLetters:
    """Without a sink it is a dry run: the tally of what would be replayed, nothing sent."""

    def __init__(self, source: DeadLetterSource, sink: CommandSink | None) -> None:
        self._source = source
        self._sink = sink

    async def run(self, selection: ReplaySelection) -> ReplayTally:
        tally = ReplayTally()
        wave: list[tuple[bytes, bytes]] = []
        async for page in self._source.read(selection):
            tally.read += len(page)
            for letter in page:
                if not selection.chooses(letter):
                    continue
                tally.chosen += 1
                if letter.truncated:
                    tally.truncated += 1
                    continue
                if letter.key is None or letter.value is None:
                    tally.without_key_or_value += 1
                    continue
                tally.reasons[letter.error] = tally.reasons.get(letter.error, 0) + 1
                wave.append((letter.key, letter.value))
                if len(wave) >= REPLAY_WAVE:
                    tally.replayed += await self._send(wave)
                    wave = []
        tally.replayed += await self._send(wave)
        return tally

    async def _send(self, wave: list[tuple[bytes, bytes]]) -> int:
        if wave and self._sink is not None:
            await self._sink.publish(wave)
        return len(wave)
