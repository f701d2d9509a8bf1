"""The benchmark's sender reports an opt-out once its SDK's local cache says no, and only asks
about topics a sender would ask about (nothing here is timed)."""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime
from functools import partial

import pytest

from benchmarks.sender import EffectReporter
from service.client.local_cache import LocalCache
from service.domain.catalog import DEFAULT_CATALOG
from service.domain.decision import is_allowed
from service.domain.model import Rule, SubjectKey, SubjectState
from service.domain.sms_restore import KEPT

AT = datetime(2026, 12, 1, tzinfo=UTC)


def _rule(topic: str, channel: str, command_id: str) -> Rule:
    return Rule(
        topic=topic,
        channel=channel,
        action="opt_out",
        occurred_at=AT,
        source_channel="sms",
        command_id=command_id,
    )


def test_an_sms_keyword_stop_is_reported_by_its_wildcard_rule_not_its_register(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    cache = LocalCache(partial(is_allowed, DEFAULT_CATALOG), clock=lambda: now[0])
    cache.vouch(now[0] + 60)
    reporter = EffectReporter(client=None, cache=cache, catalog=DEFAULT_CATALOG)  # type: ignore[arg-type]  # never asked: the cache answers
    rules = [_rule(KEPT, "sms", "stop-1"), _rule("*", "sms", "stop-1")]
    state = SubjectState(
        SubjectKey("default", "user-1"), 1, {(r.topic, r.channel): r for r in rules}
    )

    cache.apply(state)  # asking the catalog about `#kept` raised UnknownTopic

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    reporter.flush()
    lines = out.getvalue().split()
    assert lines[0] == "stop-1"
    assert lines[2] == "local_cache"
