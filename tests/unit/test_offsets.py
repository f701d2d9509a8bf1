"""The gap check: a batch starting past the expected offset is sought back once, and
accepted only when the same gap is found again from the expected offset."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.adapters.kafka.offsets import GapCheck

P = ("commands", 0)


@given(expected=st.integers(0, 10**9), ahead=st.integers(1, 10**6))
def test_a_gap_is_sought_back_then_accepted_if_it_is_still_there(expected: int, ahead: int) -> None:
    gaps = GapCheck({P: expected})
    assert gaps.judge(P, expected + ahead) == "seek_back"
    assert gaps.judge(P, expected + ahead) == "accept_gap"


@given(expected=st.integers(0, 10**9), ahead=st.integers(1, 10**6))
def test_a_gap_that_closes_after_the_seek_is_in_order(expected: int, ahead: int) -> None:
    gaps = GapCheck({P: expected})
    assert gaps.judge(P, expected + ahead) == "seek_back"
    assert gaps.judge(P, expected) == "in_order"
    gaps.processed(P, expected + ahead + 1)
    # A later, different gap is sought back again, not accepted on the old one's account.
    assert gaps.judge(P, expected + ahead + 5) == "seek_back"


@given(expected=st.integers(0, 10**9), behind=st.integers(0, 10**6))
def test_redelivered_or_expected_records_are_in_order(expected: int, behind: int) -> None:
    gaps = GapCheck({P: expected})
    assert gaps.judge(P, max(0, expected - behind)) == "in_order"


def test_unknown_and_forgotten_partitions_are_taken_as_they_come() -> None:
    gaps = GapCheck()
    assert gaps.judge(P, 42) == "in_order"
    gaps.processed(P, 43)
    assert gaps.knows(P)
    gaps.forget([P])
    assert not gaps.knows(P)
    assert gaps.judge(P, 100) == "in_order"
