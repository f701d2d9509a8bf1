"""The decision rule from the brief, case by case: the latest covering statement decides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.domain.catalog import (
    DEFAULT_CATALOG,
    Catalog,
    CatalogLookupError,
    InvalidChannel,
    TopicSpec,
    UnknownChannel,
    UnknownTopic,
)
from service.domain.decision import effective_preferences, is_allowed
from service.domain.model import Action, Decision, Rule, SubjectKey, SubjectState

T0 = datetime(2026, 11, 29, 10, 15, 30, 123000, tzinfo=UTC)


def rule(topic: str, channel: str, action: Action, minutes: int = 0, command_id: str = "c") -> Rule:
    return Rule(topic, channel, action, T0 + timedelta(minutes=minutes), "web", command_id)


def rules(*items: Rule) -> dict[tuple[str, str], Rule]:
    return {(r.topic, r.channel): r for r in items}


def test_no_rules_uses_catalog_default() -> None:
    decision = is_allowed(DEFAULT_CATALOG, {}, "reminders", "email")
    assert decision == Decision(True, "default", None, "reminders", "email")
    assert decision.explain() == "allowed: catalog default for reminders"


def test_brief_example_unsubscribe_all_after_newsletter_opt_in() -> None:
    newsletter_in = rule("marketing.newsletter", "email", "opt_in", 0, "a")
    all_out = rule("*", "*", "opt_out", 1, "b")
    state = rules(newsletter_in, all_out)
    decision = is_allowed(DEFAULT_CATALOG, state, "marketing.newsletter", "email")
    assert not decision.allowed
    assert decision.rule == all_out
    # A later newsletter opt-in re-enables just the newsletter.
    newsletter_again = rule("marketing.newsletter", "email", "opt_in", 2, "c")
    state = rules(newsletter_in, all_out, newsletter_again)
    assert is_allowed(DEFAULT_CATALOG, state, "marketing.newsletter", "email").allowed
    assert not is_allowed(DEFAULT_CATALOG, state, "marketing.newsletter", "sms").allowed
    assert not is_allowed(DEFAULT_CATALOG, state, "marketing.promotions", "email").allowed
    assert not is_allowed(DEFAULT_CATALOG, state, "data.sale", "*").allowed


def test_wildcard_then_specific() -> None:
    state = rules(rule("*", "email", "opt_out", 0), rule("product.tips", "email", "opt_in", 1))
    assert is_allowed(DEFAULT_CATALOG, state, "product.tips", "email").allowed
    assert not is_allowed(DEFAULT_CATALOG, state, "product.updates", "email").allowed
    assert is_allowed(DEFAULT_CATALOG, state, "product.updates", "sms").allowed


def test_specific_then_wildcard() -> None:
    state = rules(rule("product.tips", "email", "opt_in", 0), rule("*", "email", "opt_out", 1))
    assert not is_allowed(DEFAULT_CATALOG, state, "product.tips", "email").allowed


def test_parent_covers_child_but_not_sibling_parent() -> None:
    state = rules(rule("marketing", "sms", "opt_out"))
    assert not is_allowed(DEFAULT_CATALOG, state, "marketing.newsletter", "sms").allowed
    assert not is_allowed(DEFAULT_CATALOG, state, "marketing", "sms").allowed
    assert is_allowed(DEFAULT_CATALOG, state, "product", "sms").allowed
    assert is_allowed(DEFAULT_CATALOG, state, "marketing", "email").allowed


def test_child_does_not_cover_parent() -> None:
    state = rules(rule("marketing.newsletter", "email", "opt_out"))
    assert is_allowed(DEFAULT_CATALOG, state, "marketing", "email").allowed


def test_tie_opt_out_wins() -> None:
    state = rules(rule("marketing", "email", "opt_in", 0, "z"), rule("*", "*", "opt_out", 0, "a"))
    decision = is_allowed(DEFAULT_CATALOG, state, "marketing", "email")
    assert not decision.allowed
    assert decision.rule is not None
    assert decision.rule.topic == "*"


def test_full_tie_larger_command_id_decides_explanation() -> None:
    state = rules(rule("marketing", "email", "opt_out", 0, "a"), rule("*", "*", "opt_out", 0, "b"))
    decision = is_allowed(DEFAULT_CATALOG, state, "marketing", "email")
    assert decision.rule is not None
    assert decision.rule.command_id == "b"


def test_mandatory_topics_are_always_allowed() -> None:
    state = rules(rule("*", "*", "opt_out", 5))
    for topic in ("security", "security.alerts", "transactional.receipts"):
        decision = is_allowed(DEFAULT_CATALOG, state, topic, "email")
        assert decision.allowed
        assert decision.basis == "mandatory"
    assert (
        is_allowed(DEFAULT_CATALOG, state, "security", "sms").explain()
        == "allowed: security is mandatory"
    )


def test_deny_default_topic_needs_opt_in() -> None:
    catalog = Catalog(
        frozenset({"email", "sms"}),
        {
            "promo": TopicSpec("promo", default_allowed=False),
            "promo.flash": TopicSpec("promo.flash", default_allowed=False),
        },
    )
    assert not is_allowed(catalog, {}, "promo.flash", "email").allowed
    assert is_allowed(catalog, {}, "promo.flash", "email").explain() == (
        "denied: catalog default for promo.flash"
    )
    state = rules(rule("promo", "email", "opt_in"))
    assert is_allowed(catalog, state, "promo.flash", "email").allowed
    assert not is_allowed(catalog, state, "promo.flash", "sms").allowed
    state = rules(rule("*", "*", "opt_in"))
    assert is_allowed(catalog, state, "promo.flash", "sms").allowed


def test_data_use_asked_with_wildcard_channel() -> None:
    assert is_allowed(DEFAULT_CATALOG, {}, "data.sale", "*").allowed
    state = rules(rule("data.sale", "*", "opt_out"))
    assert not is_allowed(DEFAULT_CATALOG, state, "data.sale", "*").allowed
    assert is_allowed(DEFAULT_CATALOG, state, "data.analytics", "*").allowed
    # A channel-specific wildcard-topic opt-out is about messages, not data uses.
    state = rules(rule("*", "email", "opt_out"))
    assert is_allowed(DEFAULT_CATALOG, state, "data.sale", "*").allowed
    # The universal opt-out covers data uses too.
    state = rules(rule("*", "*", "opt_out"))
    assert not is_allowed(DEFAULT_CATALOG, state, "data.sale", "*").allowed


def test_subject_state_accepted() -> None:
    key = SubjectKey("default", "u")
    state = SubjectState(key, 1, rules(rule("reminders", "*", "opt_out")))
    assert not is_allowed(DEFAULT_CATALOG, state, "reminders", "push").allowed


def test_unknown_names_raise() -> None:
    with pytest.raises(UnknownTopic):
        is_allowed(DEFAULT_CATALOG, {}, "nope", "email")
    with pytest.raises(UnknownTopic):
        is_allowed(DEFAULT_CATALOG, {}, "*", "email")
    with pytest.raises(UnknownChannel):
        is_allowed(DEFAULT_CATALOG, {}, "marketing", "fax")
    assert issubclass(UnknownTopic, CatalogLookupError)
    assert issubclass(CatalogLookupError, ValueError)


def test_explain_names_rule_time_source_and_command() -> None:
    r = Rule("marketing", "email", "opt_out", T0, "email", "0b9d6c1e")
    decision = is_allowed(DEFAULT_CATALOG, rules(r), "marketing.newsletter", "email")
    assert decision.explain() == (
        "denied by opt_out of marketing on email at 2026-11-29T10:15:30.123000+00:00"
        " (via email, command 0b9d6c1e)"
    )


def test_effective_preferences_covers_catalog() -> None:
    state = rules(rule("*", "sms", "opt_out"))
    prefs = effective_preferences(DEFAULT_CATALOG, state)
    assert ("data.sale", "*") in prefs
    assert ("data.sale", "email") not in prefs
    assert ("marketing", "whatsapp") in prefs
    non_data = [t for t, s in DEFAULT_CATALOG.topics.items() if not s.data_use]
    assert len(prefs) == len(non_data) * 6 + 3
    assert not prefs[("marketing", "sms")].allowed
    assert prefs[("security", "sms")].allowed
    assert prefs[("marketing", "email")].allowed


def test_naive_rule_time_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Rule("marketing", "email", "opt_out", datetime(2026, 1, 1), "web", "c")


def test_channel_wildcard_is_refused_on_message_topics_and_required_on_data_uses() -> None:
    # An opt-out of email and an opt-in of SMS: "may I send on some channel?" has no answer.
    state = rules(rule("marketing", "email", "opt_out"), rule("marketing", "sms", "opt_in"))
    for topic in ("marketing", "marketing.newsletter", "security"):
        with pytest.raises(InvalidChannel):
            is_allowed(DEFAULT_CATALOG, state, topic, "*")
    with pytest.raises(InvalidChannel):
        is_allowed(DEFAULT_CATALOG, state, "data.sale", "email")
    assert is_allowed(DEFAULT_CATALOG, state, "data.sale", "*").allowed
    # The SDK's callers get a ValueError, as for any invalid question.
    assert issubclass(InvalidChannel, ValueError)
