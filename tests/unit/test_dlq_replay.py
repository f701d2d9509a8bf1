"""Replaying dead letters: which are chosen, which cannot be replayed faithfully, and that
the original bytes go out in their order, in waves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.application import dlq_replay
from service.application.dlq_replay import DeadLetter, ReplayDeadLetters, ReplaySelection


class Letters:
    def __init__(self, letters: list[DeadLetter], page: int = 3) -> None:
        self.letters = letters
        self.page = page

    async def read(self, selection: ReplaySelection) -> AsyncIterator[Sequence[DeadLetter]]:
        for i in range(0, len(self.letters), self.page):
            yield self.letters[i : i + self.page]


class Sink:
    def __init__(self) -> None:
        self.waves: list[list[tuple[bytes, bytes]]] = []

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        self.waves.append(list(records))


def letter(
    offset: int, error: str = "failed with UniqueViolationError", **kw: object
) -> DeadLetter:
    fields: dict[str, object] = {
        "partition": 0,
        "offset": offset,
        "key": b"k%d" % offset,
        "value": b"v%d" % offset,
        "error": error,
        "truncated": False,
    }
    fields.update(kw)
    return DeadLetter(**fields)  # type: ignore[arg-type]


async def test_chosen_letters_go_out_untouched_and_in_order() -> None:
    letters = [
        letter(0),
        letter(1, error="invalid payload: changes: missing"),
        letter(2, truncated=True),
        letter(3, key=None),
        letter(4, partition=1),
        letter(5),
    ]
    sink = Sink()
    tally = await ReplayDeadLetters(Letters(letters), sink).run(ReplaySelection(reason="failed"))
    assert [r for wave in sink.waves for r in wave] == [
        (b"k0", b"v0"),
        (b"k4", b"v4"),
        (b"k5", b"v5"),
    ]
    assert (tally.read, tally.chosen, tally.replayed) == (6, 5, 3)
    assert (tally.truncated, tally.without_key_or_value) == (1, 1)
    assert tally.reasons == {"failed with UniqueViolationError": 3}


async def test_a_dry_run_counts_and_sends_nothing() -> None:
    tally = await ReplayDeadLetters(Letters([letter(0), letter(1)]), None).run(
        ReplaySelection(partitions=frozenset({0}))
    )
    assert (tally.chosen, tally.replayed) == (2, 2)


async def test_large_replays_go_out_in_waves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlq_replay, "REPLAY_WAVE", 4)
    sink = Sink()
    await ReplayDeadLetters(Letters([letter(i) for i in range(10)]), sink).run(
        ReplaySelection(from_offset=0)
    )
    assert [len(w) for w in sink.waves] == [4, 4, 2]


@given(
    offset=st.integers(0, 100),
    low=st.integers(0, 100) | st.none(),
    high=st.integers(0, 100) | st.none(),
)
def test_an_offset_range_is_inclusive(offset: int, low: int | None, high: int | None) -> None:
    if low is not None and high is not None and low > high:
        with pytest.raises(ValueError, match="must not be after"):
            ReplaySelection(from_offset=low, to_offset=high)
        return
    chosen = ReplaySelection(from_offset=low, to_offset=high).chooses(letter(offset))
    assert chosen == ((low is None or offset >= low) and (high is None or offset <= high))
