"""The throttle's rules without Redis: opt-outs are counted but never refused, their repeats
are absorbed until an opt-in, subjects are keyed, and a store that fails lets requests by."""

from __future__ import annotations

import pytest

from service.application.rate_limits import Rule, Throttle, Verdict

KEY = b"k" * 32


class Store:
    """Counts per (rule, key) against one limit; markers in dicts; can be made to fail."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[tuple[Rule, str], int] = {}
        self.groups: dict[str, set[str]] = {}
        self.failing = False

    async def hit(self, rule: Rule, key: str, cost: int = 1) -> Verdict:
        if self.failing:
            raise ConnectionError("redis down")
        used = self.counts.get((rule, key), 0)
        if used + cost > self.limit:
            return Verdict(False, 42)
        self.counts[rule, key] = used + cost
        return Verdict(True)

    async def mark_once(self, group: str, marker: str, seconds: int) -> bool:
        if self.failing:
            raise ConnectionError("redis down")
        markers = self.groups.setdefault(group, set())
        new = marker not in markers
        markers.add(marker)
        return new

    async def unmark(self, group: str) -> None:
        self.groups.pop(group, None)


class Telemetry:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def limited(self, rule: str) -> None:
        self.events.append(("limited", rule))

    def absorbed(self, channel: str) -> None:
        self.events.append(("absorbed", channel))

    def limit_error(self) -> None:
        self.events.append(("error", ""))


def throttle(store: Store, telemetry: Telemetry | None = None) -> Throttle:
    return Throttle(store, key=KEY, repeat_window_seconds=60, telemetry=telemetry)


async def test_past_the_limit_checks_are_refused_with_a_retry_after() -> None:
    telemetry = Telemetry()
    limits = throttle(Store(limit=2), telemetry)
    answers = [await limits.check([("page_ip", "203.0.113.7")]) for _ in range(3)]
    assert [a.allowed for a in answers] == [True, True, False]
    assert answers[2].retry_after_seconds == 42
    assert telemetry.events == [("limited", "page_ip")]


async def test_opt_outs_are_counted_but_never_refused() -> None:
    store = Store(limit=1)
    limits = throttle(store)
    subject = limits.subject("default", "user-1")
    for _ in range(5):
        await limits.count([("subject_changes", subject)])  # never raises, never refuses
    assert store.counts["subject_changes", subject] == 1
    assert not (await limits.check([("subject_changes", subject)])).allowed


async def test_a_repeated_opt_out_is_absorbed_until_an_opt_in() -> None:
    telemetry = Telemetry()
    limits = throttle(Store(limit=10), telemetry)
    cells = [("marketing", "email")]
    assert await limits.first_opt_out("default", "user-1", cells, channel="email")
    assert not await limits.first_opt_out("default", "user-1", cells, channel="email")
    # Another subject, or other cells, are their own.
    assert await limits.first_opt_out("default", "user-2", cells, channel="email")
    assert await limits.first_opt_out("default", "user-1", [("*", "*")], channel="web")
    await limits.forget_opt_outs("default", "user-1")
    assert await limits.first_opt_out("default", "user-1", cells, channel="email")
    assert telemetry.events == [("absorbed", "email")]


async def test_subjects_are_keyed_never_in_clear() -> None:
    limits = throttle(Store(limit=1))
    named = limits.subject("default", "phone:+14155550100")
    assert "14155550100" not in named
    assert named != Throttle(Store(1), key=b"x" * 32, repeat_window_seconds=1).subject(
        "default", "phone:+14155550100"
    )
    assert named != limits.subject("other", "phone:+14155550100")


async def test_a_store_that_fails_lets_everything_through_and_says_so() -> None:
    store = Store(limit=0)
    store.failing = True
    telemetry = Telemetry()
    limits = Throttle(
        store, key=KEY, repeat_window_seconds=60, telemetry=telemetry, failures=(OSError,)
    )
    assert (await limits.check([("page_ip", "x")])).allowed
    assert await limits.first_opt_out("default", "u", [("marketing", "email")], channel="email")
    await limits.count([("subject_changes", "s")])
    assert telemetry.events == [("error", "")] * 3


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Throttle(Store(1), key=b"short", repeat_window_seconds=1)


def test_limits_are_read_as_limits_strings_and_a_bad_one_names_its_setting() -> None:
    from service.adapters.redis_rate_limits import parse_limits, storage_uri

    items = parse_limits({"page_ip": "120/minute", "subject_changes": "30 per hour"})
    assert (items["page_ip"].amount, items["subject_changes"].amount) == (120, 30)
    with pytest.raises(ValueError, match="OPTOUT_RATE_LIMIT_PAGE_IP: 'lots'"):
        parse_limits({"page_ip": "lots"})
    assert storage_uri("redis://:pw@h:6379/0", cluster=False) == "async+redis://:pw@h:6379/0"
    assert storage_uri("redis://h:6379", cluster=True) == "async+redis+cluster://h:6379"
